"""Normal loss: angles between surface normals of predicted and ground-truth local point maps.

As in the released loss (after MoGe): normals from the 4 cross-product configurations of every 2x2
pixel quad, only where the quad's 3 pixels used are valid and not on a ground-truth depth edge
(rtol 0.03); angle clamped to [1 deg, 90 deg] and smoothed below 3 deg; mean over all quads of the
sample divided by 4 * max(H, W).
"""

import math

import jax.numpy as jnp

from flow3r_jax.geometry.maps import depth_edge
from flow3r_jax.losses.reductions import safe_norm

EDGE_RTOL = 0.03
MIN_ANGLE = math.radians(1.0)
MAX_ANGLE = math.radians(90.0)
SMOOTH_BETA = math.radians(3.0)
_ANGLE_EPS = 1e-12


def _angle_between(v1, v2):
    return jnp.arctan2(safe_norm(jnp.cross(v1, v2)) + _ANGLE_EPS, jnp.sum(v1 * v2, axis=-1))


def _smooth(angle):
    return jnp.where(angle < SMOOTH_BETA, 0.5 * angle**2 / SMOOTH_BETA, angle - 0.5 * SMOOTH_BETA)


def _quad_corners(values):
    """(..., H, W, C) -> the 4 corner maps (left-up, right-up, left-down, right-down) of every 2x2 quad."""
    return values[..., :-1, :-1, :], values[..., :-1, 1:, :], values[..., 1:, :-1, :], values[..., 1:, 1:, :]


def _configurations(values):
    """(..., H, W, C) -> (first, second, pivot), each (4, ..., H-1, W-1, C): the 4 cross-product configurations.

    Configuration k uses cross(first - pivot, second - pivot) with pivots right-down, right-up, left-up, left-down.
    """
    lu, ru, ld, rd = _quad_corners(values)
    return jnp.stack([ru, lu, ld, rd]), jnp.stack([ld, rd, ru, lu]), jnp.stack([rd, ru, lu, ld])


def _normals(points):
    first, second, pivot = _configurations(points)
    return jnp.cross(first - pivot, second - pivot)


def normal_loss_per_sample(pred_local_points, gt_local_points, valid):
    """(B, N, H, W, 3) aligned prediction and ground truth, (B, N, H, W) bool -> (B,) loss per sample."""
    height, width = pred_local_points.shape[-3:-1]
    mask = valid & ~depth_edge(gt_local_points[..., 2], rtol=EDGE_RTOL)
    first, second, pivot = _configurations(mask[..., None])
    config_mask = (first & second & pivot)[..., 0]
    angle = jnp.clip(_angle_between(_normals(pred_local_points), _normals(gt_local_points)), MIN_ANGLE, MAX_ANGLE)
    total = jnp.sum(jnp.where(config_mask, _smooth(angle), 0.0), axis=0)
    return jnp.mean(total, axis=(1, 2, 3)) / (4 * max(height, width))
