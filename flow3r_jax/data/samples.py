"""One decoded clip -> one training sample in the batch contract (unbatched arrays, numpy).

Sample keys and shapes (the batch contract without the leading B):
  images (N, H, W, 3) float32 [0, 1]; depth (N, H, W) float32, 0 where unknown; valid_mask (N, H, W) bool;
  points (N, H, W, 3) float32 world, 0 where invalid; camera_poses (N, 4, 4) float32 camera-to-world;
  intrinsics (N, 3, 3) float32; is_labeled () bool; normal_ok () bool; pair_indices (S, 2) int32;
  flow_coords (S, H, W, 2) float32 NDC of the target frame; flow_mask (S, H, W) float32 [0, 1].

Labeled samples take depth, validity (stored mask and depth > 0), intrinsics and poses from the record;
world points are those of the nearest source pixel (its ray K^-1 [x, y, 1] times its depth, then
camera-to-world), so the depth, points and flow of an output pixel all come from one source pixel.
Unlabeled samples (and every sample of a source declared unlabeled) have zero depth/points, all-False
validity, identity poses and nominal intrinsics: focal max(H_src, W_src), principal point at the image
centre, passed through the same crop. Padding pairs have identity flow and a zero mask.
"""

from __future__ import annotations

import numpy as np

from flow3r_jax.data.records import ClipRecord, RecordError, decode_frames
from flow3r_jax.data.sampling import FrameSelection
from flow3r_jax.data.transforms import ColorJitter, CropResize, apply_color_jitter, transform_flow, world_points
from flow3r_jax.geometry.ndc import pixel_grid, pixel_to_ndc

# The sample contract: key -> (shape in terms of N frames, S pairs, H, W; dtype).
SAMPLE_CONTRACT = {
    "images": (("N", "H", "W", 3), np.float32),
    "depth": (("N", "H", "W"), np.float32),
    "valid_mask": (("N", "H", "W"), np.bool_),
    "points": (("N", "H", "W", 3), np.float32),
    "camera_poses": (("N", 4, 4), np.float32),
    "intrinsics": (("N", 3, 3), np.float32),
    "is_labeled": ((), np.bool_),
    "normal_ok": ((), np.bool_),
    "pair_indices": (("S", 2), np.int32),
    "flow_coords": (("S", "H", "W", 2), np.float32),
    "flow_mask": (("S", "H", "W"), np.float32),
}
SAMPLE_KEYS = tuple(SAMPLE_CONTRACT)
_FLOAT_KEYS = tuple(k for k, (_, dtype) in SAMPLE_CONTRACT.items() if dtype == np.float32)


def batch_shapes(batch_size: int, num_frames: int, num_pairs: int, height: int,
                 width: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of a batch of `batch_size` samples in the sample contract (leading B axis)."""
    sizes = {"N": num_frames, "S": num_pairs, "H": height, "W": width}
    return {key: ((batch_size,) + tuple(sizes.get(d, d) for d in shape), np.dtype(dtype))
            for key, (shape, dtype) in SAMPLE_CONTRACT.items()}


def build_sample(clip: ClipRecord, selection: FrameSelection, crop: CropResize, jitter: ColorJitter | None,
                 labeled: bool, where: str) -> dict[str, np.ndarray]:
    """Decode, crop/resize and (optionally) colour-jitter the selected frames of `clip`; only the selected
    frames and flow pairs of the record are decompressed.

    `labeled` says whether the clip's source provides 3D labels; a labeled source whose record has none
    raises RecordError. Every float output is checked to be finite (RecordError naming `where`).
    """
    frames = selection.frames
    source_hw = (clip.height, clip.width)
    try:
        images = crop.resize_images(decode_frames(clip, frames))
    except RecordError as err:
        raise RecordError(f"{where}: {err}") from err
    if jitter is not None:
        images = apply_color_jitter(images, jitter)
    if labeled and not clip.is_labeled:
        raise RecordError(f"{where}: the source is declared labeled but the record has no 3D labels")
    for key in ("intrinsics", "camera_poses") if labeled else ():
        if not np.all(np.isfinite(getattr(clip, key)[frames])):
            raise RecordError(f"{where}: non-finite values in the record's {key}")
    sample = {"images": images}
    sample.update(_labels(clip, frames, crop) if labeled else _no_labels(len(frames), source_hw, crop))
    sample["normal_ok"] = np.asarray(labeled and clip.normal_ok)
    sample["pair_indices"] = selection.pair_indices.astype(np.int32)
    sample["flow_coords"], sample["flow_mask"] = _flow(clip, selection.pair_rows, crop)
    for key in _FLOAT_KEYS:
        if not np.all(np.isfinite(sample[key])):
            raise RecordError(f"{where}: non-finite values in {key} of the decoded sample")
    return {key: sample[key] for key in SAMPLE_KEYS}


def _labels(clip: ClipRecord, frames: np.ndarray, crop: CropResize) -> dict[str, np.ndarray]:
    depth = crop.sample_nearest(clip.decode_depth_float16(frames)).astype(np.float32)
    valid = crop.sample_nearest(clip.decode_valid_mask(frames))
    valid &= depth > 0
    valid &= depth < np.inf
    np.copyto(depth, 0.0, where=~valid)
    intrinsics = clip.intrinsics[frames].astype(np.float64)
    poses = clip.camera_poses[frames].astype(np.float64)
    world = world_points(depth, valid, *crop.nearest_source_index(), intrinsics, poses)
    return {"depth": depth, "valid_mask": valid, "points": world, "camera_poses": poses.astype(np.float32),
            "intrinsics": crop.transform_intrinsics(intrinsics), "is_labeled": np.asarray(True)}


def _no_labels(num_frames: int, source_hw: tuple[int, int], crop: CropResize) -> dict[str, np.ndarray]:
    height, width = crop.out_height, crop.out_width
    focal = float(max(source_hw))
    nominal = np.array([[focal, 0.0, (source_hw[1] - 1) / 2.0], [0.0, focal, (source_hw[0] - 1) / 2.0],
                        [0.0, 0.0, 1.0]])
    return {"depth": np.zeros((num_frames, height, width), np.float32),
            "valid_mask": np.zeros((num_frames, height, width), bool),
            "points": np.zeros((num_frames, height, width, 3), np.float32),
            "camera_poses": np.broadcast_to(np.eye(4, dtype=np.float32), (num_frames, 4, 4)).copy(),
            "intrinsics": np.broadcast_to(crop.transform_intrinsics(nominal), (num_frames, 3, 3)).copy(),
            "is_labeled": np.asarray(False)}


def _flow(clip: ClipRecord, pair_rows: np.ndarray, crop: CropResize) -> tuple[np.ndarray, np.ndarray]:
    stored = pair_rows >= 0
    coords, masks = transform_flow(*clip.decode_flow_quantized(pair_rows[stored]), (clip.height, clip.width), crop)
    if stored.all():
        return coords, masks
    height, width = crop.out_height, crop.out_width
    all_coords = np.empty((len(pair_rows), height, width, 2), np.float32)
    all_masks = np.zeros((len(pair_rows), height, width), np.float32)
    all_coords[~stored] = pixel_to_ndc(pixel_grid(height, width, np), height, width)
    all_coords[stored], all_masks[stored] = coords, masks
    return all_coords, all_masks
