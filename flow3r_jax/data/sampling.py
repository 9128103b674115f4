"""Which frames and flow pairs make up a sample, and the random generator of each training sample.

Frame subset (N frames out of a clip of T >= N): pairs-first. The clip's stored flow pairs are visited
in random order (stored order when deterministic); a pair is kept when its frames are already chosen or
still fit into the N-frame budget, until S pairs are kept. The remaining frame slots are filled with
other frames of the clip, drawn at random (evenly spaced when deterministic). Chosen frames are sorted
by time. The sample's S pairs are then the first S stored pairs (in visiting order) whose two frames
both lie in the subset, re-indexed into the subset; when fewer exist the rest are padding pairs (0, 0)
whose flow mask is all zero.

The number of frames and pairs and the output size come from the batch's shape bucket
(flow3r_jax/data/buckets.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SAMPLE_STREAM = 2


@dataclasses.dataclass(frozen=True)
class FrameSelection:
    """frames (N,) clip frame indices, sorted; pair_rows (S,) rows of the clip's flow pairs, then -1 for
    padding (padding comes last); pair_indices (S, 2) int32 (i, j) into the N selected frames ((0, 0) for padding)."""

    frames: np.ndarray
    pair_rows: np.ndarray
    pair_indices: np.ndarray


def select_frames_and_pairs(num_clip_frames: int, clip_pairs: np.ndarray, num_frames: int, num_pairs: int,
                            rng: np.random.Generator | None) -> FrameSelection:
    """Pairs-first frame subset (module docstring); `rng=None` gives the deterministic selection."""
    if num_clip_frames < num_frames:
        raise ValueError(f"clip has {num_clip_frames} frames, a sample needs {num_frames}")
    order = np.arange(len(clip_pairs)) if rng is None else rng.permutation(len(clip_pairs))
    chosen: set[int] = set()
    kept = 0
    for row in order:
        if kept >= num_pairs:
            break
        new = set(int(f) for f in clip_pairs[row]) - chosen
        if len(chosen) + len(new) <= num_frames:
            chosen |= new
            kept += 1
    rest = np.array(sorted(set(range(num_clip_frames)) - chosen), np.int64)
    missing = num_frames - len(chosen)
    if rng is None:
        fill = rest[np.round(np.linspace(0, len(rest) - 1, missing)).astype(np.int64)] if missing else rest[:0]
    else:
        fill = rng.choice(rest, size=missing, replace=False)
    frames = np.sort(np.concatenate([np.array(sorted(chosen), np.int64), fill]))
    slot = {int(f): k for k, f in enumerate(frames)}
    usable = [int(r) for r in order if all(int(f) in slot for f in clip_pairs[r])][:num_pairs]
    pair_rows = np.full((num_pairs,), -1, np.int64)
    pair_indices = np.zeros((num_pairs, 2), np.int32)
    for k, row in enumerate(usable):
        pair_rows[k] = row
        pair_indices[k] = [slot[int(clip_pairs[row][0])], slot[int(clip_pairs[row][1])]]
    return FrameSelection(frames=frames, pair_rows=pair_rows, pair_indices=pair_indices)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for every random choice of global sample `index` (frames, crop, colour)."""
    return np.random.default_rng([seed, SAMPLE_STREAM, index])
