"""Bonn RGB-D Dynamic for dynamic camera and geometry evaluation.

Layout (the dataset's own)::

    <root>/rgbd_bonn_<name>/rgb/<timestamp>.png
    <root>/rgbd_bonn_<name>/depth/<timestamp>.png     (16-bit, 5000 units per metre, 0 = unknown)
    <root>/rgbd_bonn_<name>/groundtruth.txt           (TUM: timestamp tx ty tz qx qy qz qw)

Protocol (MonST3R/CUT3R/pi3 video evaluation): the five sequences balloon2, crowd2, crowd3,
person_tracking2, synchronous; frames 30 to 139 (110 frames) of the time-sorted rgb/ images; depth
images matched by sorted position; each frame's pose is the ground-truth pose nearest in time
(within 0.02 s), read as camera-to-world. Intrinsics are the dataset's calibration
(fx 542.822841, fy 542.576870, cx 315.593520, cy 237.756098).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from flow3r_jax.evaluation.benchmarks import io
from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError, BenchmarkDataMissing, Sequence

NAME = "bonn"
KIND = "dynamic"
LAYOUT = __doc__.split("Layout")[1].split("Protocol")[0]
SEQUENCES = ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous")
INTRINSICS = np.array([[542.822841, 0, 315.593520], [0, 542.576870, 237.756098], [0, 0, 1]])
DEPTH_UNITS_PER_METRE = 5000.0
MAX_TIME_DIFFERENCE = 0.02


def load(root: pathlib.Path, *, sequences=SEQUENCES, first_frame: int = 30,
         num_frames: int = 110) -> Iterator[Sequence]:
    """Yields one Sequence per Bonn sequence: frames [first_frame, first_frame + num_frames)."""
    for name in sequences:
        seq_dir = pathlib.Path(root) / f"rgbd_bonn_{name}"
        gt_path = seq_dir / "groundtruth.txt"
        for needed in (seq_dir / "rgb", seq_dir / "depth", gt_path):
            if not needed.exists():
                raise BenchmarkDataMissing(NAME, str(needed), LAYOUT)
        rgb = sorted((seq_dir / "rgb").glob("*.png"), key=lambda p: float(p.stem))
        depth_files = sorted((seq_dir / "depth").glob("*.png"), key=lambda p: float(p.stem))
        if len(rgb) != len(depth_files):
            raise BenchmarkDataError(f"{seq_dir}: {len(rgb)} rgb images but {len(depth_files)} depth images")
        if len(rgb) < first_frame + num_frames:
            raise BenchmarkDataError(f"{seq_dir}: the protocol needs frames {first_frame}.."
                                     f"{first_frame + num_frames - 1}, the sequence has {len(rgb)} frames")
        window = slice(first_frame, first_frame + num_frames)
        rgb, depth_files = rgb[window], depth_files[window]
        gt_times, gt_poses = io.read_tum_trajectory(gt_path)
        times = np.array([float(p.stem) for p in rgb])
        try:
            nearest = io.associate_timestamps(times, gt_times, MAX_TIME_DIFFERENCE)
        except BenchmarkDataError as error:
            raise BenchmarkDataError(f"{gt_path}: {error}") from error
        depth = np.stack([io.read_depth_png(p, DEPTH_UNITS_PER_METRE) for p in depth_files])
        yield Sequence(name=f"{NAME}/{name}", images=np.stack([io.read_rgb(p) for p in rgb]),
                       camera_poses=gt_poses[nearest], intrinsics=np.tile(INTRINSICS, (len(rgb), 1, 1)),
                       depth=depth, valid_mask=depth > 0, frame_ids=[p.stem for p in rgb])
