"""ScanNet-style RGB-D sequences -> labeled clip records with ground-truth flow from depth and poses.

Input layout (one scene directory, as exported by the ScanNet SensReader)::

    color/<id>.jpg                   RGB frames, any size
    depth/<id>.png                   uint16 depth in millimetres, 0 = unknown (may differ in size)
    pose/<id>.txt                    4 x 4 camera-to-world (OpenCV axes); rows of -inf/nan = tracking lost
    intrinsic/intrinsic_color.txt    4 x 4 (top-left 3 x 3 used) for the colour images
    intrinsic/intrinsic_depth.txt    4 x 4 for the depth images

Frame ids are sorted numerically; every `frame_step`-th frame is used (ScanNet is 30 fps, timestamps are
id / SCANNET_FPS). Clips are `clip_length` used frames, starting every `clip_stride` used frames; a clip
containing a frame with an invalid pose is skipped and logged. Colour is resized (area) to `size`
(H, W, multiples of 14); depth is re-projected into that camera (its own intrinsics, the shared pose,
a z-buffer keeping the nearest point per pixel), so colour and depth align even when the sensors differ.
Flow pairs follow flow3r_jax/data/pairs.py; flow is the static-scene reprojection of frame i's depth into
frame j, co-visible when inside frame j, in front of it, and within `depth_rtol` (relative) of frame j's
depth at the nearest pixel (occlusion test); pixels without depth are not co-visible. It is stored per
`flow_stride` cell as video ingestion stores pseudo-flow (cells whose pixels move more than
`flow_cell_error_px` apart masked; flow_stride=1: per pixel; flow3r_jax/data/flow_grid.py).
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterator

import cv2
import numpy as np

from data_pipelines.video import VideoClipConfig
from flow3r_jax.data.flow_grid import coarsen_flow
from flow3r_jax.data.pairs import sample_pairs
from flow3r_jax.data.records import FLOW_NDC_LIMIT, Clip, encode_frame
from flow3r_jax.geometry.ndc import pixel_grid, pixel_to_ndc

SCANNET_FPS = 30.0


def convert_scannet_scene(scene_dir, size: tuple[int, int], clip_length: int = 8, clip_stride: int = 8,
                          frame_step: int = 10, pairs_per_clip: int = 8, max_gap: int | None = None,
                          depth_rtol: float = 0.05, seed: int = 0, normal_ok: bool = False,
                          image_format: str = "jpeg", flow_stride: int = VideoClipConfig.flow_stride,
                          flow_cell_error_px: float = VideoClipConfig.flow_cell_error_px) -> Iterator[Clip]:
    """Yield labeled record Clips of one scene (module doc); clip k draws its pairs from (seed, k)."""
    scene_dir = pathlib.Path(scene_dir)
    height, width = size
    if height % 14 or width % 14:
        raise ValueError(f"size must be multiples of 14, got {size}")
    ids = sorted(int(p.stem) for p in (scene_dir / "color").glob("*.jpg"))[::frame_step]
    if not ids:
        raise FileNotFoundError(f"{scene_dir / 'color'}: no *.jpg frames")
    k_color = _read_matrix(scene_dir / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    k_depth = _read_matrix(scene_dir / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
    for index, start in enumerate(range(0, len(ids) - clip_length + 1, clip_stride)):
        window = ids[start:start + clip_length]
        poses = np.stack([_read_matrix(scene_dir / "pose" / f"{i}.txt") for i in window])
        if not np.all(np.isfinite(poses)):
            bad = [i for i, pose in zip(window, poses, strict=True) if not np.all(np.isfinite(pose))]
            logging.warning("%s: clip of frames %d-%d skipped, invalid poses for frames %s",
                            scene_dir, window[0], window[-1], bad)
            continue
        images, depths, intrinsics = [], [], []
        for frame_id in window:
            colour = _read_image(scene_dir / "color" / f"{frame_id}.jpg", cv2.IMREAD_COLOR)[..., ::-1]
            target_k = _scaled_intrinsics(k_color, colour.shape[:2], size)
            depth_mm = _read_image(scene_dir / "depth" / f"{frame_id}.png", cv2.IMREAD_UNCHANGED)
            images.append(cv2.resize(colour, (width, height), interpolation=cv2.INTER_AREA))
            depths.append(reproject_depth(depth_mm.astype(np.float32) / 1000.0, k_depth, target_k, size))
            intrinsics.append(target_k)
        depth, intrinsics = np.stack(depths), np.stack(intrinsics).astype(np.float32)
        pairs = sample_pairs(clip_length, pairs_per_clip, seed=(seed, index), max_gap=max_gap)
        coords, masks = coarsen_flow(*depth_flow(depth, intrinsics, poses, pairs, depth_rtol), flow_stride,
                                     flow_cell_error_px)
        yield Clip(source_id=f"{scene_dir.name}:{window[0]}-{window[-1]}",
                   timestamps=np.array(window, np.float64) / SCANNET_FPS,
                   frames=[encode_frame(np.ascontiguousarray(im), image_format) for im in images],
                   height=height, width=width, depth=depth, intrinsics=intrinsics,
                   camera_poses=poses.astype(np.float32), valid_mask=depth > 0, normal_ok=normal_ok,
                   flow_pairs=pairs, flow_coords=coords, flow_mask=masks, flow_stride=flow_stride)


def reproject_depth(depth: np.ndarray, k_source: np.ndarray, k_target: np.ndarray, size) -> np.ndarray:
    """(h, w) metric depth seen with k_source -> (H, W) depth of the same camera centre and orientation
    seen with k_target; each target pixel keeps the nearest point landing on it (0 where none)."""
    height, width = size
    valid = depth > 0
    pixels = pixel_grid(*depth.shape, np)[valid]
    rays = np.concatenate([pixels, np.ones_like(pixels[:, :1])], 1) @ np.linalg.inv(k_source).T
    points = rays * depth[valid][:, None]
    projected = points @ np.asarray(k_target).T
    x = np.rint(projected[:, 0] / projected[:, 2]).astype(np.int64)
    y = np.rint(projected[:, 1] / projected[:, 2]).astype(np.int64)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    out = np.full(height * width, np.inf, np.float32)
    np.minimum.at(out, y[inside] * width + x[inside], points[inside, 2].astype(np.float32))
    out[~np.isfinite(out)] = 0.0
    return out.reshape(height, width)


def depth_flow(depth: np.ndarray, intrinsics: np.ndarray, poses: np.ndarray, pairs: np.ndarray,
               depth_rtol: float):
    """Static-scene flow from (T, H, W) depth, (T, 3, 3) intrinsics, (T, 4, 4) camera-to-world poses for
    (P, 2) pairs -> (P, H, W, 2) NDC target coordinates, (P, H, W) float32 co-visibility (module doc)."""
    height, width = depth.shape[1:]
    grid = pixel_grid(height, width, np)
    homogeneous = np.concatenate([grid, np.ones_like(grid[..., :1])], -1)
    coords = np.zeros((len(pairs), height, width, 2), np.float32)
    masks = np.zeros((len(pairs), height, width), np.float32)
    for p, (i, j) in enumerate(np.asarray(pairs, int)):
        world = (homogeneous @ np.linalg.inv(intrinsics[i]).T) * depth[i][..., None]
        world = world @ poses[i][:3, :3].T + poses[i][:3, 3]
        cam = (world - poses[j][:3, 3]) @ poses[j][:3, :3]
        z = cam[..., 2]
        in_front = (z > 1e-6) & (depth[i] > 0)
        projected = cam @ intrinsics[j].T
        target = np.where(in_front[..., None], projected[..., :2] / np.where(in_front, z, 1.0)[..., None], grid)
        nearest = np.rint(target).astype(np.int64)
        inside = in_front & (nearest[..., 0] >= 0) & (nearest[..., 0] < width) \
            & (nearest[..., 1] >= 0) & (nearest[..., 1] < height)
        depth_j = depth[j][np.clip(nearest[..., 1], 0, height - 1), np.clip(nearest[..., 0], 0, width - 1)]
        masks[p] = inside & (depth_j > 0) & (np.abs(depth_j - z) <= depth_rtol * z)
        coords[p] = np.clip(pixel_to_ndc(target, height, width), -FLOW_NDC_LIMIT, FLOW_NDC_LIMIT)
    return coords, masks


def _scaled_intrinsics(k: np.ndarray, source_size, target_size) -> np.ndarray:
    """Intrinsics of an image resized from source_size to target_size ((0, 0) = centre of a pixel)."""
    sy, sx = target_size[0] / source_size[0], target_size[1] / source_size[1]
    return np.array([[k[0, 0] * sx, k[0, 1] * sx, (k[0, 2] + 0.5) * sx - 0.5],
                     [0.0, k[1, 1] * sy, (k[1, 2] + 0.5) * sy - 0.5],
                     [0.0, 0.0, 1.0]])


def _read_matrix(path: pathlib.Path) -> np.ndarray:
    try:
        matrix = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read a 4 x 4 matrix: {err}") from err
    if matrix.shape != (4, 4):
        raise ValueError(f"{path}: expected a 4 x 4 matrix, got shape {matrix.shape}")
    return matrix


def _read_image(path: pathlib.Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ValueError(f"{path}: missing or undecodable image")
    return image
