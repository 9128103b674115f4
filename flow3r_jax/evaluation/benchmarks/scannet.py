"""ScanNet (v2) scans for static camera and geometry evaluation.

Layout (the ScanNet SensReader export, one folder per scan)::

    <root>/<scene>/color/<i>.jpg                       (1296x968)
    <root>/<scene>/depth/<i>.png                       (640x480, 16-bit millimetres)
    <root>/<scene>/pose/<i>.txt                        (4x4 camera-to-world)
    <root>/<scene>/intrinsic/intrinsic_depth.txt       (4x4, top-left 3x3 used)

Protocol (the MonST3R/CUT3R/pi3 ScanNet pose evaluation): every scan folder under <root>
(normally the test scans scene0707_00 ... scene0806_00), frames sorted by number, every 3rd
frame, the first 90 of those. Colour is resized to the depth resolution and the depth intrinsics
are used. Frames whose ground-truth pose is not finite (ScanNet marks lost tracking with -inf) are
skipped and the skipped frame numbers are logged. Depth is valid in (0.001, 10] m.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterator

import numpy as np

from flow3r_jax.evaluation.benchmarks import io
from flow3r_jax.evaluation.benchmarks.rgbd_frames import read_rgbd_sequence
from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError, BenchmarkDataMissing

NAME = "scannet"
KIND = "static"
LAYOUT = __doc__.split("Layout")[1].split("Protocol")[0]
log = logging.getLogger(__name__)


def load(root: pathlib.Path, *, stride: int = 3, num_frames: int = 90) -> Iterator:
    """Yields one Sequence per scan folder (sorted by name)."""
    root = pathlib.Path(root)
    scenes = sorted(p for p in root.iterdir() if (p / "color").is_dir()) if root.is_dir() else []
    if not scenes:
        raise BenchmarkDataMissing(NAME, f"scan folders with color/ under {root}", LAYOUT)
    for scene in scenes:
        intrinsic_path = scene / "intrinsic" / "intrinsic_depth.txt"
        if not intrinsic_path.is_file():
            raise BenchmarkDataMissing(NAME, str(intrinsic_path), LAYOUT)
        k = io.read_matrix(intrinsic_path, (4, 4))[:3, :3]
        frames = io.sorted_numerically((scene / "color").glob("*.jpg"))[::stride][:num_frames]
        colors, depths, poses, ids = [], [], [], []
        for color in frames:
            depth_path, pose_path = scene / "depth" / f"{color.stem}.png", scene / "pose" / f"{color.stem}.txt"
            for needed in (depth_path, pose_path):
                if not needed.is_file():
                    raise BenchmarkDataMissing(NAME, str(needed), LAYOUT)
            pose = io.read_matrix(pose_path, (4, 4))
            if not np.all(np.isfinite(pose)):
                log.warning("%s: frame %s has no valid ground-truth pose; skipped", scene.name, color.stem)
                continue
            colors.append(color), depths.append(depth_path), poses.append(pose), ids.append(color.stem)
        if not ids:
            raise BenchmarkDataError(f"{scene}: no frames with a valid pose among the sampled ones")
        yield read_rgbd_sequence(f"{NAME}/{scene.name}", colors, depths, np.stack(poses), k,
                                 units_per_metre=1000.0, max_depth=10.0, frame_ids=ids)
