"""One decoded clip -> one training sample in the wire format (unbatched numpy arrays), and the batch
contract every consumer of batches sees.

The batch contract (SAMPLE_CONTRACT; keys and shapes without the leading B):
  images (N, H, W, 3) float32 [0, 1]; depth (N, H, W) float32, 0 where unknown; valid_mask (N, H, W) bool;
  points (N, H, W, 3) float32 world, 0 where invalid; camera_poses (N, 4, 4) float32 camera-to-world;
  intrinsics (N, 3, 3) float32; is_labeled () bool; normal_ok () bool; pair_indices (S, 2) int32;
  flow_coords (S, H, W, 2) float32 NDC of the target frame; flow_mask (S, H, W) float32 [0, 1].

`build_sample` returns the wire format of flow3r_jax/data/wire.py (WIRE_CONTRACT), which `expand_batch`
turns into this contract. Labeled samples take depth, validity (stored mask and 0 < depth < inf),
intrinsics and poses from the record; world points are those of the nearest source pixel (its ray
K^-1 [x, y, 1] times its depth, then camera-to-world), so the depth, points and flow of an output pixel
all come from one source pixel. Unlabeled samples (and every sample of a source declared unlabeled) have
zero depth/points, all-False validity, identity poses and nominal intrinsics: focal max(H_src, W_src),
principal point at the image centre, passed through the same crop. Padding pairs have identity flow and
a zero mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from flow3r_jax.data.flow_grid import cell_offsets, flow_grid_shape
from flow3r_jax.data.records import FLOW_NDC_SCALE, ClipRecord, RecordError, decode_frame
from flow3r_jax.data.sampling import FrameSelection
from flow3r_jax.data.transforms import ColorJitter, CropResize, color_transform, flow_maps, pixel_to_world
from flow3r_jax.data.wire import empty_wire_batch

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


def build_sample(clip: ClipRecord, selection: FrameSelection, crop: CropResize, jitter: ColorJitter | None,
                 labeled: bool, where: str, source_pixels: int,
                 out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Decode the selected frames, labels and flow pairs of `clip` into a wire sample
    (flow3r_jax/data/wire.py WIRE_CONTRACT) whose per-pixel buffers hold `source_pixels` pixels per frame;
    only the selected frames and flow pairs of the record are decompressed. Each per-pixel field ships
    as stored when it fits the buffers (and, for frames, when `crop` resamples bilinearly), else
    resampled here to the output size. `jitter` becomes the sample's colour transform (identity when
    None). `out`: the wire sample's arrays to write every key of (e.g. one slot of a batch, its buffers of
    `source_pixels` per frame), else new.

    `labeled` says whether the clip's source provides 3D labels; a labeled source whose record has none
    raises RecordError. The record's intrinsics and poses are checked to be finite (RecordError naming
    `where`); stored depth that is not finite is invalid, as in the batch contract.
    """
    frames = selection.frames
    if out is None:
        shape = (len(frames), len(selection.pair_rows), crop.out_height, crop.out_width, source_pixels)
        out = {key: array[0, ...] for key, array in empty_wire_batch(1, *shape).items()}
    try:
        decoded = [decode_frame(clip, t) for t in frames]
    except RecordError as err:
        raise RecordError(f"{where}: {err}") from err
    if labeled and not clip.is_labeled:
        raise RecordError(f"{where}: the source is declared labeled but the record has no 3D labels")
    rows, cols = crop.nearest_source_index()
    small = {"color_transform": color_transform(jitter), "source_rows": rows, "source_cols": cols,
             "normal_ok": labeled and clip.normal_ok, "pair_indices": selection.pair_indices}
    small.update(_images(decoded, crop, out))
    small.update(_labels(clip, frames, crop, (rows, cols), where, out) if labeled else
                 _no_labels(len(frames), (clip.height, clip.width), crop, out))
    small.update(_flow(clip, selection.pair_rows, crop, (rows, cols), out))
    for key, value in small.items():
        out[key][...] = value
    return out


def _fits(buffer: np.ndarray, height: int, width: int) -> bool:
    """Whether a height x width grid fits the per-frame buffers (K, P, ...) of `buffer`."""
    return height * width <= buffer.shape[1]


def _grids(buffer: np.ndarray, count: int, height: int, width: int) -> np.ndarray:
    """The first `count` per-frame buffers of `buffer` (K, P, ...) as (count, height, width, ...) grids
    (a view), after zeroing every slot outside them."""
    used = height * width
    buffer[count:] = 0
    buffer[:count, used:] = 0
    return buffer[:count, :used].reshape((count, height, width) + buffer.shape[2:])


def _output_offsets(crop: CropResize) -> tuple[np.ndarray, np.ndarray]:
    """(rows (H,), cols (W,)) offsets of a grid resampled to the output size (identity sampling)."""
    return np.arange(crop.out_height) * crop.out_width, np.arange(crop.out_width)


def _images(frames: list[np.ndarray], crop: CropResize, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Writes the frame pixels into `out`: as decoded (the device resamples bilinearly) when they fit and
    `crop` resamples bilinearly, else resized here; returns the taps."""
    source_h, source_w = frames[0].shape[:2]
    if crop.interpolation() == cv2.INTER_LINEAR and _fits(out["images"], source_h, source_w):
        grids = _grids(out["images"], len(frames), source_h, source_w)
        for frame, grid in zip(frames, grids, strict=True):
            grid[...] = frame
        (rows, row_weights), (cols, col_weights) = crop.linear_taps()
        rows = rows * source_w
    else:
        crop.resize_images(frames, out=_grids(out["images"], len(frames), crop.out_height, crop.out_width))
        identity_rows, identity_cols = _output_offsets(crop)
        rows, cols = np.stack([identity_rows] * 2, -1), np.stack([identity_cols] * 2, -1)
        row_weights, col_weights = np.zeros(crop.out_height), np.zeros(crop.out_width)
    return {"image_rows": rows, "image_row_weights": row_weights, "image_cols": cols, "image_col_weights": col_weights}


def _labels(clip: ClipRecord, frames: np.ndarray, crop: CropResize, nearest: tuple[np.ndarray, np.ndarray],
            where: str, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Writes depth and validity into `out` (as stored when they fit, else nearest-sampled here); returns
    the per-frame label arrays and the offsets. `nearest`: `crop.nearest_source_index()`."""
    for key in ("intrinsics", "camera_poses"):
        if not np.all(np.isfinite(getattr(clip, key)[frames])):
            raise RecordError(f"{where}: non-finite values in the record's {key}")
    intrinsics = clip.intrinsics[frames].astype(np.float64)
    poses = clip.camera_poses[frames].astype(np.float64)
    try:
        ray_map = pixel_to_world(intrinsics, poses)
    except np.linalg.LinAlgError as err:
        raise RecordError(f"{where}: the record's intrinsics are not invertible") from err
    if not np.all(np.isfinite(ray_map)):
        raise RecordError(f"{where}: non-finite rays from the record's intrinsics and camera_poses")
    count = len(frames)
    if _fits(out["depth"], clip.height, clip.width):
        clip.decode_depth_float16(frames, out=_grids(out["depth"], count, clip.height, clip.width))
        clip.decode_valid_mask_uint8(frames, out=_grids(out["valid_mask"], count, clip.height, clip.width))
        rows, cols = nearest[0] * clip.width, nearest[1]
    else:
        crop.sample_nearest(clip.decode_depth_float16(frames),
                            out=_grids(out["depth"], count, crop.out_height, crop.out_width))
        crop.sample_nearest(clip.decode_valid_mask_uint8(frames),
                            out=_grids(out["valid_mask"], count, crop.out_height, crop.out_width))
        rows, cols = _output_offsets(crop)
    return {"pixel_to_world": ray_map, "camera_poses": poses, "intrinsics": crop.transform_intrinsics(intrinsics),
            "is_labeled": True, "label_rows": rows, "label_cols": cols}


def _no_labels(num_frames: int, source_hw: tuple[int, int], crop: CropResize,
               out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zero depth and validity in `out`; returns the nominal per-frame label arrays."""
    out["depth"][...] = 0
    out["valid_mask"][...] = 0
    focal = float(max(source_hw))
    nominal = np.array([[focal, 0.0, (source_hw[1] - 1) / 2.0], [0.0, focal, (source_hw[0] - 1) / 2.0],
                        [0.0, 0.0, 1.0]])
    identity = np.broadcast_to(np.eye(4), (num_frames, 4, 4))
    rows, cols = _output_offsets(crop)
    return {"pixel_to_world": pixel_to_world(np.broadcast_to(nominal, (num_frames, 3, 3)), identity),
            "camera_poses": identity, "intrinsics": crop.transform_intrinsics(nominal), "is_labeled": False,
            "label_rows": rows, "label_cols": cols}


def _flow(clip: ClipRecord, pair_rows: np.ndarray, crop: CropResize, nearest: tuple[np.ndarray, np.ndarray],
          out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Writes the stored pairs' flow into `out` (as stored when it fits, else sampled here; padding pairs,
    which come last, get zeros); returns the per-pair and per-sample flow arrays and the offsets.
    `nearest`: `crop.nearest_source_index()`."""
    stored = pair_rows >= 0
    count = int(stored.sum())
    if not stored[:count].all():
        raise ValueError(f"padding pairs must come after the stored pairs, got pair rows {pair_rows.tolist()}")
    stride = clip.flow_stride
    grid_h, grid_w = flow_grid_shape(clip.height, clip.width, stride)
    rows, cols = nearest
    shifts = {"flow_row_shift": cell_offsets(rows, clip.height, stride, FLOW_NDC_SCALE),
              "flow_col_shift": cell_offsets(cols, clip.width, stride, FLOW_NDC_SCALE)}
    if _fits(out["flow_mask"], grid_h, grid_w):
        clip.decode_flow_quantized(pair_rows[:count], out=(_grids(out["flow_quantized"], count, grid_h, grid_w),
                                                          _grids(out["flow_mask"], count, grid_h, grid_w)))
        offsets = {"flow_rows": rows // stride * grid_w, "flow_cols": cols // stride}
    else:
        coords, masks = clip.decode_flow_quantized(pair_rows[:count])
        out_hw = (crop.out_height, crop.out_width)
        crop.sample_cells(coords, stride, out=_grids(out["flow_quantized"], count, *out_hw))
        crop.sample_cells(masks, stride, out=_grids(out["flow_mask"], count, *out_hw))
        offsets = dict(zip(("flow_rows", "flow_cols"), _output_offsets(crop), strict=True))
    to_ndc, bounds = flow_maps((clip.height, clip.width), crop)
    return {"pair_stored": stored, "flow_to_ndc": to_ndc, "flow_bounds": bounds, **shifts, **offsets}
