"""MPI-Sintel (training set) for dynamic camera evaluation.

Layout (as the MPI-Sintel-complete and MPI-Sintel-depth-training archives unpack)::

    <root>/training/final/<sequence>/frame_0001.png ...      (or clean/, see `pass_name`)
    <root>/training/depth/<sequence>/frame_0001.dpt ...
    <root>/training/camdata_left/<sequence>/frame_0001.cam ...

Protocol (MonST3R/CUT3R/pi3 camera-pose evaluation): the final pass of the 14 sequences below
(the sequences with enough camera motion, as selected by CasualSAM and followed since), every frame
(stride 1), in frame order. Depth is valid where finite and > 0.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from flow3r_jax.evaluation.benchmarks import io
from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError, BenchmarkDataMissing, Sequence

NAME = "sintel"
KIND = "dynamic"
LAYOUT = __doc__.split("Layout")[1].split("Protocol")[0]
POSE_SEQUENCES = ("alley_2", "ambush_4", "ambush_5", "ambush_6", "cave_2", "cave_4", "market_2", "market_5",
                  "market_6", "shaman_3", "sleeping_1", "sleeping_2", "temple_2", "temple_3")


def load(root: pathlib.Path, *, sequences=POSE_SEQUENCES, pass_name: str = "final", stride: int = 1,
         max_frames: int | None = None) -> Iterator[Sequence]:
    """Yields one Sequence per Sintel sequence (frames [::stride][:max_frames])."""
    training = pathlib.Path(root) / "training"
    for seq in sequences:
        image_dir = training / pass_name / seq
        if not image_dir.is_dir():
            raise BenchmarkDataMissing(NAME, str(image_dir), LAYOUT)
        frames = io.sorted_numerically(image_dir.glob("frame_*.png"))[::stride][:max_frames]
        if not frames:
            raise BenchmarkDataError(f"{image_dir}: no frame_*.png images")
        images, depths, intrinsics, poses = [], [], [], []
        for frame in frames:
            depth_path = training / "depth" / seq / f"{frame.stem}.dpt"
            camera_path = training / "camdata_left" / seq / f"{frame.stem}.cam"
            for needed in (depth_path, camera_path):
                if not needed.is_file():
                    raise BenchmarkDataMissing(NAME, str(needed), LAYOUT)
            images.append(io.read_rgb(frame))
            depths.append(io.read_sintel_depth(depth_path))
            k, camera_to_world = io.read_sintel_camera(camera_path)
            intrinsics.append(k)
            poses.append(camera_to_world)
        depth = np.stack(depths)
        yield Sequence(name=f"{NAME}/{seq}", images=np.stack(images), camera_poses=np.stack(poses),
                       intrinsics=np.stack(intrinsics), depth=depth,
                       valid_mask=np.isfinite(depth) & (depth > 0), frame_ids=[f.stem for f in frames])
