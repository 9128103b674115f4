"""Shared frame-set reading for the RGB-D scan benchmarks (ScanNet, NRGBD, 7-Scenes)."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from flow3r_jax.evaluation.benchmarks import io
from flow3r_jax.evaluation.benchmarks.sequence import Sequence


def read_rgbd_sequence(name: str, color_paths: list[pathlib.Path], depth_paths: list[pathlib.Path],
                       camera_poses: np.ndarray, intrinsics: np.ndarray, units_per_metre: float,
                       max_depth: float, frame_ids: list) -> Sequence:
    """Reads colour + 16-bit depth frames into a Sequence.

    Colour images are resized (bilinear) to the depth resolution when the sizes differ (the
    intrinsics must then be those of the depth camera). Depth is valid where
    0.001 m < depth <= max_depth.
    """
    depths, images = [], []
    for color_path, depth_path in zip(color_paths, depth_paths, strict=True):
        depth = io.read_depth_png(depth_path, units_per_metre)
        image = io.read_rgb(color_path)
        if image.shape[:2] != depth.shape:
            pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
            image = np.asarray(pil.resize(depth.shape[::-1], Image.Resampling.BILINEAR), np.float32) / 255.0
        depths.append(depth)
        images.append(image)
    depth = np.stack(depths)
    valid = (depth > 1e-3) & (depth <= max_depth)
    return Sequence(name=name, images=np.stack(images), camera_poses=np.asarray(camera_poses, np.float64),
                    intrinsics=np.tile(intrinsics, (len(images), 1, 1)), depth=np.where(valid, depth, 0),
                    valid_mask=valid, frame_ids=frame_ids)
