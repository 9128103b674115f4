"""Scale normalisation of ground truth and predictions (as in the released Flow3r/pi3 loss).

Ground truth is moved into frame 0's camera and divided by the mean norm of its valid points; the
prediction is divided by the mean norm of its own valid local points (pose translations alike).
Samples without valid pixels keep a factor of 1.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flow3r_jax.geometry.transforms import se3_inverse, transform_points
from flow3r_jax.losses.reductions import safe_norm

_COUNT_EPS = 1e-8


class NormalizedGroundTruth(NamedTuple):
    points: jnp.ndarray  # (B, N, H, W, 3) in frame 0's camera, unit mean norm
    local_points: jnp.ndarray  # (B, N, H, W, 3) each frame's camera
    camera_poses: jnp.ndarray  # (B, N, 4, 4) camera-to-frame-0


class NormalizedPrediction(NamedTuple):
    local_points: jnp.ndarray  # (B, N, H, W, 3)
    camera_poses: jnp.ndarray  # (B, N, 4, 4)


def _mean_valid_norm(points, valid):
    """(B, N, H, W, 3), (B, N, H, W) bool -> (B,) mean norm over valid points; 1 where none or zero."""
    norms = jnp.where(valid, safe_norm(points), 0.0)
    counts = jnp.sum(valid, axis=(1, 2, 3)).astype(points.dtype)
    factor = jnp.sum(norms, axis=(1, 2, 3)) / (counts + _COUNT_EPS)
    return jnp.where((counts > 0) & (factor > 0), factor, 1.0)


def _scale_translations(poses, factor):
    return poses.at[..., :3, 3].multiply(factor[:, None, None])


def normalize_ground_truth(points, camera_poses, valid) -> NormalizedGroundTruth:
    """points (B, N, H, W, 3) world; camera_poses (B, N, 4, 4) camera-to-world; valid (B, N, H, W)."""
    world_to_first = se3_inverse(camera_poses[:, 0])
    points = transform_points(world_to_first, points)
    poses = jnp.einsum("bij,bnjk->bnik", world_to_first, camera_poses)
    factor = jax.lax.stop_gradient(_mean_valid_norm(points, valid))
    points = points / factor[:, None, None, None, None]
    poses = _scale_translations(poses, 1.0 / factor)
    local_points = transform_points(se3_inverse(poses), points)
    return NormalizedGroundTruth(points, local_points, poses)


def normalize_prediction(local_points, camera_poses, valid) -> NormalizedPrediction:
    """local_points (B, N, H, W, 3); camera_poses (B, N, 4, 4); valid (B, N, H, W). Differentiable."""
    factor = _mean_valid_norm(local_points, valid)
    return NormalizedPrediction(
        local_points / factor[:, None, None, None, None], _scale_translations(camera_poses, 1.0 / factor)
    )
