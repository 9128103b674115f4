"""Neural RGB-D (NRGBD) synthetic scenes for static camera and geometry evaluation.

Layout (the dataset's own, as prepared by Spann3R/pi3)::

    <root>/<scene>/images/img<i>.png
    <root>/<scene>/depth/depth<i>.png     (16-bit millimetres)
    <root>/<scene>/poses.txt              (one 4x4 camera-to-world per frame, 4 lines each, OpenGL axes)

Protocol (Spann3R/CUT3R/pi3 multi-view reconstruction): every scene folder, keyframes every
`kf_every` frames starting at 0 (pi3 reports kf_every 500 "sparse" and 100 "dense"; default 100).
OpenGL poses are turned into OpenCV ones by negating the camera y and z axes. Intrinsics are fixed
(fx = fy = 554.2562584220408, cx 320, cy 240). Depth is valid in (0.001, 10] m.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from flow3r_jax.evaluation.benchmarks.rgbd_frames import read_rgbd_sequence
from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError, BenchmarkDataMissing

NAME = "nrgbd"
KIND = "static"
LAYOUT = __doc__.split("Layout")[1].split("Protocol")[0]
INTRINSICS = np.array([[554.2562584220408, 0, 320], [0, 554.2562584220408, 240], [0, 0, 1]])
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def read_poses(path: pathlib.Path) -> np.ndarray:
    """poses.txt -> (T, 4, 4) camera-to-world in OpenCV axes."""
    values = np.array(path.read_text().split(), dtype=np.float64)
    if values.size % 16:
        raise BenchmarkDataError(f"{path}: {values.size} numbers is not a whole number of 4x4 matrices")
    return values.reshape(-1, 4, 4) @ OPENGL_TO_OPENCV


def load(root: pathlib.Path, *, kf_every: int = 100) -> Iterator:
    """Yields one Sequence per scene folder (sorted by name)."""
    root = pathlib.Path(root)
    scenes = sorted(p for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []
    if not scenes:
        raise BenchmarkDataMissing(NAME, f"scene folders with images/ under {root}", LAYOUT)
    for scene in scenes:
        if not (scene / "poses.txt").is_file():
            raise BenchmarkDataMissing(NAME, str(scene / "poses.txt"), LAYOUT)
        poses = read_poses(scene / "poses.txt")
        count = len(list((scene / "images").glob("img*.png")))
        if count != len(poses):
            raise BenchmarkDataError(f"{scene}: {count} images but {len(poses)} poses in poses.txt")
        ids = list(range(0, count, kf_every))
        colors = [scene / "images" / f"img{i}.png" for i in ids]
        depths = [scene / "depth" / f"depth{i}.png" for i in ids]
        for needed in colors + depths:
            if not needed.is_file():
                raise BenchmarkDataMissing(NAME, str(needed), LAYOUT)
        yield read_rgbd_sequence(f"{NAME}/{scene.name}", colors, depths, poses[ids], INTRINSICS,
                                 units_per_metre=1000.0, max_depth=10.0, frame_ids=ids)
