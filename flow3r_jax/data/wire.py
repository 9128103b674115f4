"""Host -> device wire format of batches, and its expansion into the batch contract.

The input pipeline (flow3r_jax/data/pipeline.py) builds samples on the host in the wire format: the
decoded frames resized on uint8, the stored labels nearest-sampled in their stored dtypes (float16 depth,
int16 flow, uint8 flow confidence) and a few per-sample numbers of the remaining per-pixel steps (colour
jitter, world points, flow to NDC). `expand_batch(wire, xp)` runs those steps and returns the batch
contract (SAMPLE_CONTRACT of flow3r_jax/data/samples.py) that every consumer sees: with jax.numpy as the
first operation of the train step, on the device; with numpy for host-side consumers of evaluation
batches (`make_eval_dataset` expands its batches). About a quarter of the contract's bytes cross the
host -> device link, and the host skips the float32 passes.

Wire keys (one sample; a batch adds a leading B axis to every key):

===================  ===================  =======  ===================================================
key                  shape                dtype    meaning
===================  ===================  =======  ===================================================
images               (N, H, W, 3)         uint8    frames cropped and resized (OpenCV, on uint8)
color_transform      (N, 3, 4)            float32  per-frame colour map x -> A x + t on images / 255
                                                   before the clip to [0, 1]; identity when off
depth                (N, H, W)            float16  stored z-depth of the nearest source pixel, 0 when
                                                   unlabeled
valid_mask           (N, H, W)            bool     stored validity of the nearest source pixel; the
                                                   contract's is this and 0 < depth < inf
source_rows          (H,)                 int32    source row of every output row (nearest pixel)
source_cols          (W,)                 int32    source column of every output column
pixel_to_world       (N, 3, 3)            float32  R K^-1 of the source frames (float64 product)
camera_poses         (N, 4, 4)            float32  camera-to-world (as the contract)
intrinsics           (N, 3, 3)            float32  of the output image (as the contract)
is_labeled           ()                   bool     (as the contract)
normal_ok            ()                   bool     (as the contract)
pair_indices         (S, 2)               int32    (as the contract)
flow_quantized       (S, H, W, 2)         int16    stored flow (NDC x FLOW_NDC_SCALE at source size) of
                                                   the nearest source pixel (flow stored per cell: its
                                                   cell's, shifted to the pixel); 0 for padding pairs
flow_mask            (S, H, W)            uint8    stored confidence x 255 of the nearest source pixel
                                                   (or of its cell)
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

# The wire contract: key -> (shape in terms of N frames, S pairs, H, W; dtype).
WIRE_CONTRACT = {
    "images": (("N", "H", "W", 3), np.uint8),
    "color_transform": (("N", 3, 4), np.float32),
    "depth": (("N", "H", "W"), np.float16),
    "valid_mask": (("N", "H", "W"), np.bool_),
    "source_rows": (("H",), np.int32),
    "source_cols": (("W",), np.int32),
    "pixel_to_world": (("N", 3, 3), np.float32),
    "camera_poses": (("N", 4, 4), np.float32),
    "intrinsics": (("N", 3, 3), np.float32),
    "is_labeled": ((), np.bool_),
    "normal_ok": ((), np.bool_),
    "pair_indices": (("S", 2), np.int32),
    "flow_quantized": (("S", "H", "W", 2), np.int16),
    "flow_mask": (("S", "H", "W"), np.uint8),
    "pair_stored": (("S",), np.bool_),
    "flow_to_ndc": ((2, 2), np.float32),
    "flow_bounds": ((2, 2), np.int32),
}


def wire_batch_shapes(batch_size: int, num_frames: int, num_pairs: int, height: int,
                      width: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of a wire batch of `batch_size` samples (leading B axis)."""
    sizes = {"N": num_frames, "S": num_pairs, "H": height, "W": width}
    return {key: ((batch_size,) + tuple(sizes.get(d, d) for d in shape), np.dtype(dtype))
            for key, (shape, dtype) in WIRE_CONTRACT.items()}


def empty_wire_batch(batch_size: int, num_frames: int, num_pairs: int, height: int,
                     width: int) -> dict[str, np.ndarray]:
    """Uninitialised arrays of a wire batch (`wire_batch_shapes`), for the pipeline to fill in place."""
    shapes = wire_batch_shapes(batch_size, num_frames, num_pairs, height, width)
    return {key: np.empty(shape, dtype) for key, (shape, dtype) in shapes.items()}


def expand_batch(wire: dict, xp) -> dict:
    """Wire batch (leading B axis, WIRE_CONTRACT) -> batch in the sample contract (SAMPLE_CONTRACT), with
    the array module `xp` (numpy on the host, jax.numpy on the device)."""
    depth = wire["depth"].astype(xp.float32)
    valid = wire["valid_mask"] & (depth > 0) & (depth < xp.inf)
    depth = xp.where(valid, depth, xp.float32(0.0))
    flow_coords, flow_mask = flow_targets(wire["flow_quantized"], wire["flow_mask"], wire["pair_stored"],
                                          wire["flow_to_ndc"], wire["flow_bounds"], xp)
    return {
        "images": apply_color_transform(wire["images"], wire["color_transform"], xp),
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
