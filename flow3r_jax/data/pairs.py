"""Which frame pairs (i, j) of a clip get flow targets.

Strategy (shared by the synthetic, video and labeled producers): a clip of T frames stores P ordered
pairs, drawn without replacement from all T (T - 1) ordered pairs i != j. The frame gap |i - j| is drawn
uniformly from 1 .. min(max_gap, T - 1) first, then a pair with that gap uniformly, so short and long
gaps are equally represented whatever T is (uniform over pairs would favour short gaps only through
their count). Both directions (i < j and i > j) occur; a pair and its reverse are distinct samples.
When P >= the number of eligible pairs, all of them are returned. Output sorted for readability.
"""

import numpy as np


def sample_pairs(num_frames: int, num_pairs: int, seed, max_gap: int | None = None) -> np.ndarray:
    """(P, 2) int32 ordered frame pairs (i, j), i != j, |i - j| <= max_gap; reproducible from `seed`."""
    if num_frames < 2 or num_pairs <= 0:
        return np.zeros((0, 2), np.int32)
    max_gap = num_frames - 1 if max_gap is None else min(max_gap, num_frames - 1)
    by_gap = {g: [(i, j) for i in range(num_frames) for j in (i - g, i + g) if 0 <= j < num_frames]
              for g in range(1, max_gap + 1)}
    total = sum(len(v) for v in by_gap.values())
    if num_pairs >= total:
        return np.array(sorted(p for v in by_gap.values() for p in v), np.int32)
    rng = np.random.default_rng(seed)
    chosen = set()
    while len(chosen) < num_pairs:
        gaps = [g for g, v in by_gap.items() if v]
        pool = by_gap[gaps[rng.integers(len(gaps))]]
        chosen.add(pool.pop(rng.integers(len(pool))))
    return np.array(sorted(chosen), np.int32)
