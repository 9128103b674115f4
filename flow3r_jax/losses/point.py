"""Scale-invariant local point loss, its per-sample scale solve and the confidence loss.

Follows the released Flow3r loss: weights 1/z of the ground-truth depth (z clamped from below at 0.1 x
the frame's mean valid z, plus 1e-6); one scale per sample, solved without gradient as the exact
weighted-L1 optimum on a fixed-size subset of valid pixels; L1 between scaled predicted and
ground-truth local points, weighted 1/z, averaged over valid pixels and xyz.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flow3r_jax.geometry.alignment import align_points_scale

_DEPTH_CLAMP_FRACTION = 0.1
_WEIGHT_EPS = 1e-6
_FRAME_MEAN_EPS = 1e-7


def inverse_depth_weights(gt_local_points, valid):
    """(B, N, H, W, 3), (B, N, H, W) -> (B, N, H, W) weights 1 / (max(z, 0.1 mean_frame z) + 1e-6); 0 off valid."""
    z = gt_local_points[..., 2]
    valid_f = valid.astype(z.dtype)
    frame_mean = jnp.mean(z * valid_f, axis=(-2, -1)) / (jnp.mean(valid_f, axis=(-2, -1)) + _FRAME_MEAN_EPS)
    clamped = jnp.maximum(z, _DEPTH_CLAMP_FRACTION * frame_mean[..., None, None])
    weights = 1.0 / jnp.where(valid, clamped + _WEIGHT_EPS, 1.0)
    return jnp.where(valid, weights, 0.0)


def nearest_resample_indices(valid_flat, count: int):
    """(B, P) bool -> (B, count) int32 flat indices of valid pixels chosen by nearest resampling.

    The valid pixels, in raster order, are resampled to `count` entries with the nearest rule
    k -> floor(k * n_valid / count) (float32, as PyTorch's nearest interpolation computes it), so the
    subset repeats pixels when fewer than `count` are valid. Samples with no valid pixel get index P-1
    (callers ignore them).
    """
    cumulative = jnp.cumsum(valid_flat.astype(jnp.int32), axis=-1)
    n_valid = cumulative[:, -1]
    step = n_valid.astype(jnp.float32) / count
    rank = jnp.floor(jnp.arange(count, dtype=jnp.float32)[None, :] * step[:, None]).astype(jnp.int32)
    rank = jnp.minimum(rank, jnp.maximum(n_valid - 1, 0)[:, None])
    indices = jax.vmap(lambda c, r: jnp.searchsorted(c, r, side="left"))(cumulative, rank + 1)
    return jnp.minimum(indices, valid_flat.shape[-1] - 1).astype(jnp.int32)


def solve_point_scale(pred_local_points, gt_local_points, weights, valid, count: int):
    """Per-sample scale s >= 0 minimising sum w |s p - g|_1 on a `count`-point subset; no gradient.

    (B, N, H, W, 3) x2, (B, N, H, W), (B, N, H, W) bool -> (B,). 1 for samples without valid pixels.
    """
    batch = pred_local_points.shape[0]
    valid_flat = valid.reshape(batch, -1)
    indices = nearest_resample_indices(valid_flat, count)

    def take(values, channels):
        flat = values.reshape(batch, -1, channels)
        return jnp.take_along_axis(flat, indices[..., None], axis=1)

    pred = take(jax.lax.stop_gradient(pred_local_points), 3)
    gt = take(jax.lax.stop_gradient(gt_local_points), 3)
    w = take(jax.lax.stop_gradient(weights)[..., None], 1)[..., 0]
    scale = jnp.abs(align_points_scale(pred, gt, w))
    return jax.lax.stop_gradient(jnp.where(jnp.any(valid_flat, axis=-1), scale, 1.0))


class PointTerms(NamedTuple):
    scale: jnp.ndarray  # (B,)
    aligned_local_points: jnp.ndarray  # (B, N, H, W, 3) scale * prediction
    pixel_error: jnp.ndarray  # (B, N, H, W) weighted L1 averaged over xyz, 0 off valid
    sums: jnp.ndarray  # (B,) sum of pixel_error
    counts: jnp.ndarray  # (B,) valid pixels


def point_terms(pred_local_points, gt_local_points, valid, align_points: int) -> PointTerms:
    """Scale-aligned, 1/z-weighted L1 local point error per sample (inputs already normalised)."""
    weights = inverse_depth_weights(gt_local_points, valid)
    scale = solve_point_scale(pred_local_points, gt_local_points, weights, valid, align_points)
    aligned = scale[:, None, None, None, None] * pred_local_points
    pixel_error = jnp.mean(jnp.abs(aligned - gt_local_points), axis=-1) * weights
    counts = jnp.sum(valid, axis=(1, 2, 3)).astype(pixel_error.dtype)
    return PointTerms(scale, aligned, pixel_error, jnp.sum(pixel_error, axis=(1, 2, 3)), counts)


def confidence_bce_sums(conf_logits, pixel_error, valid, threshold: float):
    """Per-sample sums of BCE-with-logits over valid pixels, target 1 where pixel_error < threshold.

    conf_logits (B, N, H, W, 1); pixel_error, valid (B, N, H, W) -> (B,). Pool with the point counts.
    """
    logits = conf_logits[..., 0]
    target = jax.lax.stop_gradient((pixel_error < threshold).astype(logits.dtype))
    bce = jnp.maximum(logits, 0.0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(jnp.where(valid, bce, 0.0), axis=(1, 2, 3))
