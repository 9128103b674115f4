"""Kinetics-700 and EPIC-KITCHENS clips for dynamic camera evaluation against pseudo ground truth.

Neither dataset has ground-truth cameras; the paper evaluates on clips with pseudo-ground-truth
trajectories, and its clip list and how those trajectories were made were not published. This
loader reads clips prepared in one documented layout, so any pseudo-ground truth (e.g. from an
offline SfM / SLAM run over the full video) can be used::

    <root>/<clip>/images/<frame>.jpg|png        (the frames to evaluate, sorted by name)
    <root>/<clip>/poses.txt                     (TUM format, one line per image in sorted order:
                                                 'index tx ty tz qx qy qz qw', camera-to-world)
    <root>/<clip>/intrinsics.txt                (optional: 3x3 pixel K for all frames)
    <root>/<clip>/depth/<frame>.png             (optional: 16-bit millimetres, same stem as the image)

Protocol: every clip folder under <root> (sorted), every frame in it. With depth/ present the
point metrics are computed too (depth valid in (0.001, 100] m); otherwise only camera metrics.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from flow3r_jax.evaluation.benchmarks import io
from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError, BenchmarkDataMissing, Sequence
from flow3r_jax.inference.preprocess import list_image_files

KIND = "dynamic"
LAYOUT = __doc__.split("::")[1].split("Protocol")[0]
MAX_DEPTH = 100.0


def load(root: pathlib.Path, *, benchmark: str) -> Iterator[Sequence]:
    """Yields one Sequence per clip folder under root (names are '<benchmark>/<clip>')."""
    root = pathlib.Path(root)
    clips = sorted(p for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []
    if not clips:
        raise BenchmarkDataMissing(benchmark, f"clip folders with images/ under {root}", LAYOUT)
    for clip in clips:
        frames = list_image_files(clip / "images")
        if not (clip / "poses.txt").is_file():
            raise BenchmarkDataMissing(benchmark, str(clip / "poses.txt"), LAYOUT)
        _, poses = io.read_tum_trajectory(clip / "poses.txt")
        if len(poses) != len(frames):
            raise BenchmarkDataError(f"{clip}: {len(frames)} images but {len(poses)} poses in poses.txt")
        images = np.stack([io.read_rgb(p) for p in frames])
        intrinsics = None
        if (clip / "intrinsics.txt").is_file():
            intrinsics = np.tile(io.read_matrix(clip / "intrinsics.txt", (3, 3)), (len(frames), 1, 1))
        depth = valid = None
        if (clip / "depth").is_dir():
            depth_paths = [clip / "depth" / f"{p.stem}.png" for p in frames]
            for needed in depth_paths:
                if not needed.is_file():
                    raise BenchmarkDataMissing(benchmark, str(needed), LAYOUT)
            depth = np.stack([io.read_depth_png(p, 1000.0) for p in depth_paths])
            valid = (depth > 1e-3) & (depth <= MAX_DEPTH)
            depth = np.where(valid, depth, 0)
        yield Sequence(name=f"{benchmark}/{clip.name}", images=images, camera_poses=poses, intrinsics=intrinsics,
                       depth=depth, valid_mask=valid, frame_ids=[p.stem for p in frames])
