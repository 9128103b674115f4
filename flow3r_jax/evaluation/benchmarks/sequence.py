"""The common structure every benchmark loader returns, and the error for missing data."""

from __future__ import annotations

import dataclasses

import numpy as np


class BenchmarkDataMissing(FileNotFoundError):
    """A benchmark's files are not where the loader expects them; the message says where to put them."""

    def __init__(self, benchmark: str, expected: str, layout: str):
        super().__init__(f"[{benchmark}] expected {expected} but it does not exist. Put the data there "
                         f"(or pass --data-root) in this layout:\n{layout}")
        self.benchmark = benchmark


class BenchmarkDataError(ValueError):
    """A benchmark file exists but its content is not what the layout promises."""


@dataclasses.dataclass
class Sequence:
    """One evaluation sample: N frames of one scene at the benchmark's native resolution.

    images        (N, H, W, 3) float32 in [0, 1]
    camera_poses  (N, 4, 4) float64 camera-to-world, OpenCV axes (x right, y down, z forward)
    intrinsics    (N, 3, 3) float64 pixels, (0, 0) the centre of the top-left pixel; None if unknown
    depth         (N, H, W) float32 z-depth in metres (dataset units), 0 where unknown; None if none
    valid_mask    (N, H, W) bool, pixels with trusted depth; None when depth is None
    name          "<benchmark>/<sequence>"
    frame_ids     the dataset frame identifiers that were sampled, in order
    """

    name: str
    images: np.ndarray
    camera_poses: np.ndarray
    intrinsics: np.ndarray | None = None
    depth: np.ndarray | None = None
    valid_mask: np.ndarray | None = None
    frame_ids: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        n, h, w, c = self.images.shape
        if c != 3:
            raise BenchmarkDataError(f"{self.name}: images must be (N, H, W, 3), got {self.images.shape}")
        if self.camera_poses.shape != (n, 4, 4):
            raise BenchmarkDataError(f"{self.name}: camera_poses must be ({n}, 4, 4), got {self.camera_poses.shape}")
        if self.intrinsics is not None and self.intrinsics.shape != (n, 3, 3):
            raise BenchmarkDataError(f"{self.name}: intrinsics must be ({n}, 3, 3), got {self.intrinsics.shape}")
        if self.depth is not None:
            if self.depth.shape != (n, h, w):
                raise BenchmarkDataError(f"{self.name}: depth must be ({n}, {h}, {w}), got {self.depth.shape}")
            if self.valid_mask is None:
                self.valid_mask = np.isfinite(self.depth) & (self.depth > 0)

    @property
    def num_frames(self) -> int:
        return self.images.shape[0]
