"""Microsoft 7-Scenes for static camera and geometry evaluation.

Layout (the dataset's own)::

    <root>/<scene>/TestSplit.txt                        (lines "sequence2", ...)
    <root>/<scene>/seq-XX/frame-XXXXXX.color.png
    <root>/<scene>/seq-XX/frame-XXXXXX.depth.png        (16-bit millimetres, 65535 = invalid)
    <root>/<scene>/seq-XX/frame-XXXXXX.pose.txt         (4x4 camera-to-world)

Protocol (Spann3R/CUT3R/pi3 multi-view reconstruction): the test sequences of every scene listed
in its TestSplit.txt, keyframes every `kf_every` frames starting at 0 (pi3 reports kf_every 200
"sparse" and 40 "dense"; default 40). Intrinsics are the dataset's nominal ones (fx = fy = 525,
cx 320, cy 240). pi3 uses depth re-projected into the colour camera (frame-*.depth.proj.png from
the Spann3R preprocessing) when present; this loader does the same and falls back to the raw
frame-*.depth.png. Depth is valid in (0.001, 10] m (the invalid marker 65535 mm lies outside).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from flow3r_jax.evaluation.benchmarks import io
from flow3r_jax.evaluation.benchmarks.rgbd_frames import read_rgbd_sequence
from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError, BenchmarkDataMissing

NAME = "7scenes"
KIND = "static"
LAYOUT = __doc__.split("Layout")[1].split("Protocol")[0]
INTRINSICS = np.array([[525.0, 0, 320.0], [0, 525.0, 240.0], [0, 0, 1]])


def split_sequences(scene: pathlib.Path) -> list[pathlib.Path]:
    split = scene / "TestSplit.txt"
    if not split.is_file():
        raise BenchmarkDataMissing(NAME, str(split), LAYOUT)
    names = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    if not all(n.startswith("sequence") and n[len("sequence"):].isdigit() for n in names):
        raise BenchmarkDataError(f"{split}: expected lines like 'sequence2', got {names}")
    return [scene / f"seq-{int(n[len('sequence'):]):02d}" for n in names]


def load(root: pathlib.Path, *, kf_every: int = 40) -> Iterator:
    """Yields one Sequence per test sequence (scenes sorted by name)."""
    root = pathlib.Path(root)
    scenes = sorted(p for p in root.iterdir() if (p / "TestSplit.txt").is_file()) if root.is_dir() else []
    if not scenes:
        raise BenchmarkDataMissing(NAME, f"scene folders with TestSplit.txt under {root}", LAYOUT)
    for scene in scenes:
        for seq in split_sequences(scene):
            if not seq.is_dir():
                raise BenchmarkDataMissing(NAME, str(seq), LAYOUT)
            count = len(list(seq.glob("frame-*.color.png")))
            ids = list(range(0, count, kf_every))
            colors = [seq / f"frame-{i:06d}.color.png" for i in ids]
            depths = []
            for i in ids:
                projected = seq / f"frame-{i:06d}.depth.proj.png"
                depths.append(projected if projected.is_file() else seq / f"frame-{i:06d}.depth.png")
            pose_paths = [seq / f"frame-{i:06d}.pose.txt" for i in ids]
            for needed in colors + depths + pose_paths:
                if not needed.is_file():
                    raise BenchmarkDataMissing(NAME, str(needed), LAYOUT)
            poses = np.stack([io.read_matrix(p, (4, 4)) for p in pose_paths])
            yield read_rgbd_sequence(f"{NAME}/{scene.name}/{seq.name}", colors, depths, poses, INTRINSICS,
                                     units_per_metre=1000.0, max_depth=10.0, frame_ids=ids)
