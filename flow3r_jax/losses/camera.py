"""All-pairs relative camera loss (released Flow3r/pi3 loss).

For every ordered pair i != j the relative pose inv(P_i) @ P_j of the (normalised, point-scale aligned)
prediction is compared with the ground truth: Huber(delta) on the translation, averaged over pairs
and xyz, times alpha, plus the geodesic rotation angle (acos clamped with eps 1e-6) averaged over pairs.
"""

from typing import NamedTuple

import jax.numpy as jnp

from flow3r_jax.geometry.transforms import relative_poses, rotation_angle

ACOS_EPS = 1e-6


class CameraTerms(NamedTuple):
    translation: jnp.ndarray  # (B,) mean Huber over pairs and xyz
    rotation: jnp.ndarray  # (B,) mean geodesic angle (radians) over pairs


def huber(residual, delta: float):
    """Elementwise Huber: 0.5 r^2 for |r| < delta, else delta (|r| - delta / 2)."""
    absolute = jnp.abs(residual)
    return jnp.where(absolute < delta, 0.5 * residual**2, delta * (absolute - 0.5 * delta))


def camera_terms(pred_poses, gt_poses, scale, huber_delta: float) -> CameraTerms:
    """pred_poses, gt_poses (B, N, 4, 4) normalised camera-to-world; scale (B,) point scale -> per sample."""
    num_frames = pred_poses.shape[1]
    if num_frames < 2:
        zeros = jnp.zeros(pred_poses.shape[:1], pred_poses.dtype)
        return CameraTerms(zeros, zeros)
    pred_poses = pred_poses.at[..., :3, 3].multiply(scale[:, None, None])
    pred_rel, gt_rel = relative_poses(pred_poses), relative_poses(gt_poses)
    off_diagonal = ~jnp.eye(num_frames, dtype=bool)
    pairs = num_frames * (num_frames - 1)
    trans = jnp.sum(huber(pred_rel[..., :3, 3] - gt_rel[..., :3, 3], huber_delta), axis=-1)
    angle = rotation_angle(pred_rel[..., :3, :3], gt_rel[..., :3, :3], eps=ACOS_EPS)
    translation = jnp.sum(jnp.where(off_diagonal, trans, 0.0), axis=(1, 2)) / (3 * pairs)
    rotation = jnp.sum(jnp.where(off_diagonal, angle, 0.0), axis=(1, 2)) / pairs
    return CameraTerms(translation, rotation)
