"""Host -> device wire format of batches, and its expansion into the batch contract.

The input pipeline (flow3r_jax/data/pipeline.py) builds samples on the host in the wire format and
`expand_batch(wire, xp)` turns them into the batch contract (SAMPLE_CONTRACT of
flow3r_jax/data/samples.py) that every consumer sees: with jax.numpy as the first operation of the train
step, on the device; with numpy for host-side consumers of evaluation batches (`make_eval_dataset`
expands its batches).

The host does as little per pixel as it can. Every per-pixel field (frames, depth, validity, flow and
its confidence) ships in one of two layouts, chosen per sample and field by the host:
  - as stored: the decoded frame or the inflated blob, row-major, in the first H_src x W_src (flow: Hf x Wf
    cells) slots of the field's buffer, with index vectors naming the stored pixel (cell) each output row
    and column reads; the device samples it (bilinear for frames, nearest for labels and flow). This is
    the usual case: the buffers hold P = `Bucket.source_pixels` pixels per frame, set by the config's
    `data.wire_source_area` (P = ceil(area x H x W)), and the host then only decodes and copies.
  - resampled on the host, H x W, with identity index vectors: when the stored grid exceeds P, and for
    frames shrunk by more than AREA_MIN_SHRINK (area averaging, OpenCV on uint8).
Either way the device gathers with the same vectors, so both give the same batch (frames within OpenCV's
uint8 rounding, everything else exactly). Slots after the used ones are zero (batches are
deterministic bytes).

Wire keys (one sample; a batch adds a leading B axis to every key). Row and column "offsets" are the
index of a stored pixel in its buffer: row offsets are row x row length, column offsets the column, and
a pixel's index is row offset + column offset.

===================  ===================  =======  ===================================================
key                  shape                dtype    meaning
===================  ===================  =======  ===================================================
images               (N, P, 3)            uint8    frame pixels (stored frames or host-resized frames)
image_rows           (H, 2)               int32    row offsets of the two rows each output row blends
image_row_weights    (H,)                 float32  weight of the second of them (OpenCV INTER_LINEAR)
image_cols           (W, 2)               int32    column offsets of the two columns blended
image_col_weights    (W,)                 float32  weight of the second column
color_transform      (3, 4)               float32  colour map x -> A x + b m of the frames' values x =
                                                   images / 255 (m: each frame's mean luma) before the
                                                   clip to [0, 1]; identity when off
depth                (N, P)               float16  stored z-depth, 0 when unlabeled
valid_mask           (N, P)               uint8    stored validity (nonzero = valid); the contract's is
                                                   this and 0 < depth < inf
label_rows           (H,)                 int32    row offsets in depth / valid_mask of each output
                                                   row's nearest source pixel
label_cols           (W,)                 int32    column offsets likewise
source_rows          (H,)                 int32    source row of every output row (nearest pixel)
source_cols          (W,)                 int32    source column of every output column
pixel_to_world       (N, 3, 3)            float32  R K^-1 of the source frames (float64 product)
camera_poses         (N, 4, 4)            float32  camera-to-world (as the contract)
intrinsics           (N, 3, 3)            float32  of the output image (as the contract)
is_labeled           ()                   bool     (as the contract)
normal_ok            ()                   bool     (as the contract)
pair_indices         (S, 2)               int32    (as the contract)
flow_quantized       (S, P, 2)            int16    stored flow (NDC x FLOW_NDC_SCALE at source size), per
                                                   pixel or per cell; 0 for padding pairs
flow_mask            (S, P)               uint8    stored confidence x 255
flow_rows            (H,)                 int32    row offsets of the cell holding each output row's
                                                   nearest source pixel (stride 1: that pixel)
flow_cols            (W,)                 int32    column offsets likewise
flow_row_shift       (H,)                 int32    stored integers from the cell centre's y target to the
                                                   pixel's (flow3r_jax/data/flow_grid.py `cell_offsets`)
flow_col_shift       (W,)                 int32    likewise in x (0 for flow stored per pixel)
pair_stored          (S,)                 bool     False for padding pairs (identity flow, zero mask)
flow_to_ndc          (2, 2)               float32  per axis (x, y): (scale, offset) from the stored
                                                   integers to NDC of the output image
flow_bounds          (2, 2)               int32    per axis: inclusive range of stored integers whose
                                                   target lies inside the cropped target image
===================  ===================  =======  ===================================================

Non-finite values: the host checks the records' intrinsics and poses (and the ray maps made of them);
stored depth that is not finite or not positive is invalid, as in the contract. Anything non-finite
computed on the device makes the step's loss non-finite, which the train step skips.
"""

from __future__ import annotations

import numpy as np

from flow3r_jax.data.transforms import apply_color_transform, flow_targets, world_points

# The wire contract: key -> (shape in terms of N frames, S pairs, H, W, P pixels per frame; dtype).
WIRE_CONTRACT = {
    "images": (("N", "P", 3), np.uint8),
    "image_rows": (("H", 2), np.int32),
    "image_row_weights": (("H",), np.float32),
    "image_cols": (("W", 2), np.int32),
    "image_col_weights": (("W",), np.float32),
    "color_transform": ((3, 4), np.float32),
    "depth": (("N", "P"), np.float16),
    "valid_mask": (("N", "P"), np.uint8),
    "label_rows": (("H",), np.int32),
    "label_cols": (("W",), np.int32),
    "source_rows": (("H",), np.int32),
    "source_cols": (("W",), np.int32),
    "pixel_to_world": (("N", 3, 3), np.float32),
    "camera_poses": (("N", 4, 4), np.float32),
    "intrinsics": (("N", 3, 3), np.float32),
    "is_labeled": ((), np.bool_),
    "normal_ok": ((), np.bool_),
    "pair_indices": (("S", 2), np.int32),
    "flow_quantized": (("S", "P", 2), np.int16),
    "flow_mask": (("S", "P"), np.uint8),
    "flow_rows": (("H",), np.int32),
    "flow_cols": (("W",), np.int32),
    "flow_row_shift": (("H",), np.int32),
    "flow_col_shift": (("W",), np.int32),
    "pair_stored": (("S",), np.bool_),
    "flow_to_ndc": ((2, 2), np.float32),
    "flow_bounds": ((2, 2), np.int32),
}


def wire_batch_shapes(batch_size: int, num_frames: int, num_pairs: int, height: int, width: int,
                      source_pixels: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of a wire batch of `batch_size` samples (leading B axis) whose per-pixel
    buffers hold `source_pixels` pixels per frame (P)."""
    sizes = {"N": num_frames, "S": num_pairs, "H": height, "W": width, "P": source_pixels}
    return {key: ((batch_size,) + tuple(sizes.get(d, d) for d in shape), np.dtype(dtype))
            for key, (shape, dtype) in WIRE_CONTRACT.items()}


def empty_wire_batch(batch_size: int, num_frames: int, num_pairs: int, height: int, width: int,
                     source_pixels: int) -> dict[str, np.ndarray]:
    """Uninitialised arrays of a wire batch (`wire_batch_shapes`), for the pipeline to fill in place."""
    shapes = wire_batch_shapes(batch_size, num_frames, num_pairs, height, width, source_pixels)
    return {key: np.empty(shape, dtype) for key, (shape, dtype) in shapes.items()}


def expand_batch(wire: dict, xp) -> dict:
    """Wire batch (leading B axis, WIRE_CONTRACT) -> batch in the sample contract (SAMPLE_CONTRACT), with
    the array module `xp` (numpy on the host, jax.numpy on the device)."""
    images = _bilinear(wire["images"], wire["image_rows"], wire["image_row_weights"], wire["image_cols"],
                       wire["image_col_weights"], xp)
    depth = gather_pixels(wire["depth"], wire["label_rows"], wire["label_cols"], xp).astype(xp.float32)
    stored_valid = gather_pixels(wire["valid_mask"], wire["label_rows"], wire["label_cols"], xp) != 0
    valid = stored_valid & (depth > 0) & (depth < xp.inf)
    depth = xp.where(valid, depth, xp.float32(0.0))
    flow = gather_pixels(wire["flow_quantized"], wire["flow_rows"], wire["flow_cols"], xp).astype(xp.int32)
    shift = xp.stack(xp.broadcast_arrays(wire["flow_col_shift"][:, None, :], wire["flow_row_shift"][:, :, None]), -1)
    flow_mask = gather_pixels(wire["flow_mask"], wire["flow_rows"], wire["flow_cols"], xp)
    flow_coords, flow_mask = flow_targets(flow + shift[:, None], flow_mask, wire["pair_stored"],
                                          wire["flow_to_ndc"], wire["flow_bounds"], xp)
    return {
        "images": apply_color_transform(images, wire["color_transform"], xp),
        "depth": depth,
        "valid_mask": valid,
        "points": world_points(depth, valid, wire["source_rows"], wire["source_cols"], wire["pixel_to_world"],
                               wire["camera_poses"], xp),
        "camera_poses": wire["camera_poses"],
        "intrinsics": wire["intrinsics"],
        "is_labeled": wire["is_labeled"],
        "normal_ok": wire["normal_ok"],
        "pair_indices": wire["pair_indices"],
        "flow_coords": flow_coords,
        "flow_mask": flow_mask,
    }


def gather_pixels(buffer, rows, cols, xp):
    """Nearest sampling of per-pixel buffers: buffer (B, K, P, ...) values of K frames or pairs, rows (B, H)
    and cols (B, W) offsets (module docstring) -> (B, K, H, W, ...) values at rows[v] + cols[u]."""
    batch, count, trailing = buffer.shape[0], buffer.shape[1], buffer.shape[3:]
    height, width = rows.shape[-1], cols.shape[-1]
    index = (rows[:, :, None] + cols[:, None, :]).reshape((batch, 1, height * width) + (1,) * len(trailing))
    taken = xp.take_along_axis(buffer, index, axis=2)
    return taken.reshape((batch, count, height, width) + trailing)


def _bilinear(images, rows, row_weights, cols, col_weights, xp):
    """(B, N, P, 3) uint8 frame pixels, two-tap rows (B, H, 2) / cols (B, W, 2) offsets with the second
    tap's weights (B, H) / (B, W) -> (B, N, H, W, 3) float32 values in [0, 255]."""
    across = col_weights[:, None, None, :, None]

    def blend_columns(i):
        left, right = (gather_pixels(images, rows[..., i], cols[..., j], xp).astype(xp.float32) for j in (0, 1))
        return left + (right - left) * across
    top, bottom = blend_columns(0), blend_columns(1)
    return top + (bottom - top) * row_weights[:, None, :, None, None]
