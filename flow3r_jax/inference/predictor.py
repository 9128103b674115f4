"""Running a model on a long image sequence: chunked forward with a shared anchor frame.

pi3/Flow3r reconstructs all frames of a forward pass jointly, and memory grows with the number of
frames (global attention over N x tokens). Sequences longer than `chunk_size` frames are split into
chunks that each contain frame 0 (the anchor) followed by up to chunk_size - 1 further frames. Each
chunk's prediction is moved into the first chunk's frame with the similarity transform that maps
the chunk's anchor camera onto the first chunk's anchor camera: the scale is the median ratio of
the anchor's local depths (first chunk / this chunk) and the rotation/translation those of the two
anchor poses. Flow for a requested pair (i, j) comes from the chunk holding both frames, or, when
they are in different chunks, from a two-frame forward pass on (i, j).

`predict_fn(images, pair_indices) -> outputs` is any function with the model's output contract
(see `model_predict_fn`); numpy in, numpy out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from tqdm import tqdm

from flow3r_jax import sharding

PredictFn = Callable[[np.ndarray, np.ndarray | None], dict]


def inference_rules(rules=sharding.DEFAULT_RULES):
    """`rules` with the batch axis replicated: for inputs whose batch does not split over the devices
    (one sequence at a time), devices share the work by holding slices of the parameters (fsdp) and of
    the heads/MLP (tensor)."""
    return tuple((name, None if name == "batch" else axes) for name, axes in rules)


def _global_array(x: np.ndarray, mesh, rules) -> jax.Array:
    """A global array from the full value present on every host, batch axis on the "batch" rule."""
    target = sharding.batch_sharding(mesh, rules, x.ndim)
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


def make_forward(graphdef, mesh, rules) -> Callable[..., dict]:
    """forward(params, buffers, images, pair_indices) -> numpy outputs of the model `graphdef` on `mesh`.

    images (B, N, H, W, 3) and pair_indices (B, S, 2) or None are numpy arrays holding the whole batch on
    every host; the outputs are the same on every host. A batch that splits over the devices of the
    "batch" rule is sharded over them; any other batch (e.g. B = 1) is replicated and the model runs with
    `inference_rules`. Compiled once per input shape and layout; bind weights with `functools.partial`.
    """
    from flax import nnx

    batch_devices = int(np.prod([mesh.shape[a] for a in sharding.mesh_axes_of(rules, "batch")]))
    layouts = {True: rules, False: inference_rules(rules)}

    def model_outputs(params, buffers, images, pair_indices):
        return nnx.merge(graphdef, params, buffers)(images, pair_indices)

    compiled = {split: jax.jit(model_outputs, out_shardings=sharding.replicated(mesh)) for split in layouts}

    def forward(params, buffers, images, pair_indices):
        images = np.asarray(images, np.float32)
        split = images.shape[0] % batch_devices == 0
        used = layouts[split]
        pairs = None if pair_indices is None else _global_array(np.asarray(pair_indices, np.int32), mesh, used)
        with sharding.use_rules(mesh, used):
            out = compiled[split](params, buffers, _global_array(images, mesh, used), pairs)
        return {k: np.asarray(v) for k, v in out.items()}

    return forward


def model_predict_fn(model, mesh=None, rules=None) -> PredictFn:
    """A predict function (`make_forward` bound to the weights) for an nnx model: its parameters are placed on `mesh` (default: every device
    on `fsdp`) by their logical axis names, so models larger than one device's memory still run."""
    from flax import nnx

    mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=1) if mesh is None else mesh
    rules = sharding.DEFAULT_RULES if rules is None else rules
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    params = jax.device_put(params, sharding.state_shardings(params, mesh, rules))
    buffers = jax.device_put(buffers, sharding.state_shardings(buffers, mesh, rules))
    return functools.partial(make_forward(graphdef, mesh, rules), params, buffers)


def chunk_frames(num_frames: int, chunk_size: int) -> list[np.ndarray]:
    """Frame indices per chunk: [0, 1..c-1], [0, c..2c-2], ... (every chunk starts with frame 0)."""
    if chunk_size < 2 and num_frames > 1:
        raise ValueError(f"chunk_size must be >= 2 to chunk {num_frames} frames, got {chunk_size}")
    if num_frames <= chunk_size:
        return [np.arange(num_frames)]
    rest = np.arange(1, num_frames)
    step = chunk_size - 1
    return [np.concatenate([[0], rest[s:s + step]]) for s in range(0, len(rest), step)]


def _similarity_to_reference(anchor_pose, anchor_depth, reference_pose, reference_depth):
    """(scale, 4x4 rigid) mapping a chunk's world frame onto the reference chunk's world frame."""
    valid = (anchor_depth > 0) & (reference_depth > 0)
    scale = float(np.median(reference_depth[valid] / anchor_depth[valid])) if valid.any() else 1.0
    scaled_anchor = anchor_pose.copy()
    scaled_anchor[:3, 3] *= scale
    return scale, reference_pose @ np.linalg.inv(scaled_anchor)


def _apply_similarity(out: dict, scale: float, rigid: np.ndarray) -> dict:
    poses = out["camera_poses"].copy()
    poses[..., :3, 3] *= scale
    poses = rigid @ poses
    points = out["points"] * scale
    points = points @ rigid[:3, :3].T + rigid[:3, 3]
    return {**out, "camera_poses": poses, "points": points, "local_points": out["local_points"] * scale}


def predict_sequence(predict_fn: PredictFn, images: np.ndarray, pairs: np.ndarray | None = None,
                     chunk_size: int = 64, show_progress: bool = True) -> dict[str, np.ndarray]:
    """images (N, H, W, 3) in [0, 1] -> numpy outputs without the batch axis.

    Returns points/local_points (N, H, W, 3), conf (N, H, W, 1), camera_poses (N, 4, 4) and, when
    `pairs` (S, 2) is given, flow (S, H, W, 2) in NDC target coordinates.
    """
    num_frames = images.shape[0]
    pairs = None if pairs is None or len(pairs) == 0 else np.asarray(pairs, np.int32).reshape(-1, 2)
    if pairs is not None and (pairs.min() < 0 or pairs.max() >= num_frames):
        raise ValueError(f"pair indices {pairs.tolist()} out of range for {num_frames} frames")
    chunks = chunk_frames(num_frames, chunk_size)
    merged: dict[str, np.ndarray] = {}
    flow = {} if pairs is not None else None
    reference = None
    for frames in tqdm(chunks, desc="forward", unit="chunk", disable=not show_progress or len(chunks) == 1):
        position = {int(f): k for k, f in enumerate(frames)}
        local_pairs = [] if pairs is None else [(s, position[i], position[j]) for s, (i, j) in enumerate(pairs)
                                                if i in position and j in position and s not in flow]
        chunk_pairs = np.array([[p[1], p[2]] for p in local_pairs], np.int32)[None] if local_pairs else None
        out = {k: v[0] for k, v in predict_fn(images[frames][None], chunk_pairs).items()}
        if reference is None:
            reference = (out["camera_poses"][0], out["local_points"][0, ..., 2])
        else:
            scale, rigid = _similarity_to_reference(out["camera_poses"][0], out["local_points"][0, ..., 2],
                                                    *reference)
            out = _apply_similarity(out, scale, rigid)
        for key in ("points", "local_points", "conf", "camera_poses"):
            if key not in merged:
                merged[key] = np.zeros((num_frames,) + out[key].shape[1:], out[key].dtype)
            merged[key][frames] = out[key]
        for k, (s, _, _) in enumerate(local_pairs):
            flow[s] = out["flow"][k]
    if pairs is not None:
        for s, (i, j) in enumerate(pairs):
            if s not in flow:
                out = predict_fn(images[[i, j]][None], np.array([[[0, 1]]], np.int32))
                flow[s] = out["flow"][0, 0]
        merged["flow"] = np.stack([flow[s] for s in range(len(pairs))], axis=0)
    return merged
