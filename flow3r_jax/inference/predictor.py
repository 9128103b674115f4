"""Running a model on a long image sequence: chunks of overlapping frames aligned into one world frame.

pi3/Flow3r reconstructs all frames of a forward pass jointly, and memory grows with the number of
frames (global attention over N x tokens). Sequences longer than `chunk_size` frames are split into
consecutive chunks of `chunk_size` frames, each sharing `overlap` frames with the one before (the last
chunk is shifted back to stay full). Every chunk predicts in its own world frame, up to a similarity:
chunk k is moved into the merged (first chunk's) world frame by the Sim(3) (scale, rotation,
translation) that best maps its world points of the overlapping frames onto the merged points of the
same pixels (weighted Umeyama, weights = product of the two confidences; flow3r_jax.geometry.alignment).
Overlapping frames keep the earlier chunk's prediction. Flow for a requested pair (i, j) comes from the
first chunk holding both frames, or, when no chunk holds both, from a two-frame forward pass on (i, j).

`predict_fn(images, pair_indices) -> outputs` is any function with the model's output contract
(see `model_predict_fn`); numpy in, numpy out.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import jax
import numpy as np
from tqdm import tqdm

from flow3r_jax import sharding
from flow3r_jax.geometry.alignment import apply_similarity, umeyama_alignment

log = logging.getLogger(__name__)

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
    """A predict function (`make_forward` bound to the weights) for an nnx model: its parameters are placed
    on `mesh` (default: every device on `fsdp`) by their logical axis names, so models larger than one
    device's memory still run."""
    from flax import nnx

    mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=1) if mesh is None else mesh
    rules = sharding.DEFAULT_RULES if rules is None else rules
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    params = jax.device_put(params, sharding.state_shardings(params, mesh, rules))
    buffers = jax.device_put(buffers, sharding.state_shardings(buffers, mesh, rules))
    return functools.partial(make_forward(graphdef, mesh, rules), params, buffers)


def chunk_frames(num_frames: int, chunk_size: int, overlap: int) -> list[np.ndarray]:
    """Frame indices per chunk: consecutive runs of `chunk_size` frames, each starting `chunk_size - overlap`
    after the previous one; the last run ends at the last frame (it may overlap more)."""
    if num_frames <= chunk_size:
        return [np.arange(num_frames)]
    if not 0 < overlap < chunk_size:
        raise ValueError(f"chunking {num_frames} frames needs 0 < overlap < chunk_size, got overlap {overlap} "
                         f"and chunk_size {chunk_size}")
    starts = list(range(0, num_frames - chunk_size, chunk_size - overlap)) + [num_frames - chunk_size]
    return [np.arange(start, start + chunk_size) for start in starts]


def overlap_similarity(points: np.ndarray, conf: np.ndarray, reference_points: np.ndarray,
                       reference_conf: np.ndarray, max_points: int = 100_000):
    """Sim(3) (scale, rotation (3, 3), translation (3,)) mapping a chunk's world points onto the reference
    points of the same pixels: reference ~= scale * R @ points + t.

    points / reference_points (F, H, W, 3) of the overlapping frames; conf / reference_conf (F, H, W)
    confidence logits. Weights are sigmoid(conf) * sigmoid(reference_conf) on pixels finite in both; at
    most `max_points` pixels (an even stride) enter the fit. Returns None when fewer than 3 pixels are usable.
    """
    source = np.asarray(points, np.float64).reshape(-1, 3)
    target = np.asarray(reference_points, np.float64).reshape(-1, 3)
    weights = (_sigmoid(conf) * _sigmoid(reference_conf)).reshape(-1)
    usable = np.all(np.isfinite(source), -1) & np.all(np.isfinite(target), -1) & np.isfinite(weights) & (weights > 0)
    index = np.flatnonzero(usable)
    if len(index) < 3:
        return None
    index = index[::max(1, len(index) // max_points)]
    return umeyama_alignment(source[index], target[index], weights[index], with_scale=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _apply_similarity(out: dict, scale: float, rotation: np.ndarray, translation: np.ndarray) -> dict:
    """A chunk's outputs moved by the Sim(3): world points and camera centres mapped, local points scaled."""
    poses = np.array(out["camera_poses"], np.float64)
    poses[..., :3, 3] = apply_similarity(scale, rotation, translation, poses[..., :3, 3])
    poses[..., :3, :3] = rotation @ poses[..., :3, :3]
    return {**out, "camera_poses": poses.astype(out["camera_poses"].dtype),
            "points": apply_similarity(scale, rotation, translation, np.asarray(out["points"], np.float64)
                                       ).astype(out["points"].dtype),
            "local_points": out["local_points"] * np.asarray(scale, out["local_points"].dtype)}


def predict_sequence(predict_fn: PredictFn, images: np.ndarray, pairs: np.ndarray | None = None,
                     chunk_size: int = 64, overlap: int = 8, show_progress: bool = True) -> dict[str, np.ndarray]:
    """images (N, H, W, 3) in [0, 1] -> numpy outputs without the batch axis (see the module docstring).

    Returns points/local_points (N, H, W, 3), conf (N, H, W, 1), camera_poses (N, 4, 4) and, when
    `pairs` (S, 2) is given, flow (S, H, W, 2) in NDC target coordinates.
    """
    num_frames = images.shape[0]
    pairs = None if pairs is None or len(pairs) == 0 else np.asarray(pairs, np.int32).reshape(-1, 2)
    if pairs is not None and (pairs.min() < 0 or pairs.max() >= num_frames):
        raise ValueError(f"pair indices {pairs.tolist()} out of range for {num_frames} frames")
    chunks = chunk_frames(num_frames, chunk_size, overlap)
    merged: dict[str, np.ndarray] = {}
    done = np.zeros(num_frames, bool)
    flow = {} if pairs is not None else None
    for frames in tqdm(chunks, desc="forward", unit="chunk", disable=not show_progress or len(chunks) == 1):
        position = {int(f): k for k, f in enumerate(frames)}
        local_pairs = [] if pairs is None else [(s, position[i], position[j]) for s, (i, j) in enumerate(pairs)
                                                if i in position and j in position and s not in flow]
        chunk_pairs = np.array([[p[1], p[2]] for p in local_pairs], np.int32)[None] if local_pairs else None
        out = {k: np.asarray(v)[0] for k, v in predict_fn(images[frames][None], chunk_pairs).items()}
        shared = done[frames]
        if shared.any():
            similarity = overlap_similarity(out["points"][shared], out["conf"][shared, ..., 0],
                                            merged["points"][frames[shared]], merged["conf"][frames[shared], ..., 0])
            if similarity is None:
                log.warning("frames %d-%d: no finite overlapping points to align this chunk; it keeps its own "
                            "world frame", frames[0], frames[-1])
            else:
                out = _apply_similarity(out, *similarity)
        for key in ("points", "local_points", "conf", "camera_poses"):
            if key not in merged:
                merged[key] = np.zeros((num_frames,) + out[key].shape[1:], out[key].dtype)
            merged[key][frames[~shared]] = out[key][~shared]
        done[frames] = True
        for k, (s, _, _) in enumerate(local_pairs):
            flow[s] = out["flow"][k]
    if pairs is not None:
        for s, (i, j) in enumerate(pairs):
            if s not in flow:
                out = predict_fn(images[[i, j]][None], np.array([[[0, 1]]], np.int32))
                flow[s] = np.asarray(out["flow"])[0, 0]
        merged["flow"] = np.stack([flow[s] for s in range(len(pairs))], axis=0)
    return merged
