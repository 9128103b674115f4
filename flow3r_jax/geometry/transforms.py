"""Rigid transforms of points and camera poses.

Poses are 4x4 camera-to-world matrices (OpenCV camera axes). Every function accepts numpy arrays
(computed in numpy, float64 stays float64) or jax arrays (computed in jax.numpy, jit-compatible).
"""

from flow3r_jax.geometry._backend import array_module


def se3_inverse(transform):
    """(..., 4, 4) rigid transform -> its inverse, using R^T (no general matrix inverse)."""
    xp = array_module(transform)
    rotation_t = xp.swapaxes(transform[..., :3, :3], -1, -2)
    translation = -xp.einsum("...ij,...j->...i", rotation_t, transform[..., :3, 3])
    top = xp.concatenate([rotation_t, translation[..., None]], axis=-1)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype=top.dtype), top.shape[:-2] + (1, 4))
    return xp.concatenate([top, bottom], axis=-2)


def homogenize_points(points):
    """(..., 3) -> (..., 4) with a trailing 1."""
    xp = array_module(points)
    return xp.concatenate([points, xp.ones_like(points[..., :1])], axis=-1)


def transform_points(transform, points):
    """Apply (*batch, 4, 4) transforms to (*batch, *spatial, 3) points -> (*batch, *spatial, 3).

    The transform's batch dimensions are the leading dimensions of `points`; any number of spatial
    dimensions may follow (e.g. poses (B, N, 4, 4) and point maps (B, N, H, W, 3)).
    """
    xp = array_module(transform, points)
    batch_ndim = transform.ndim - 2
    extra = points.ndim - 1 - batch_ndim
    if extra < 0:
        raise ValueError(f"points {points.shape} need the transform's batch dims {transform.shape[:-2]} in front")
    rotation = transform[..., :3, :3].reshape(transform.shape[:-2] + (1,) * extra + (3, 3))
    translation = transform[..., :3, 3].reshape(transform.shape[:-2] + (1,) * extra + (3,))
    return xp.einsum("...ij,...j->...i", rotation, points) + translation


def relative_poses(poses):
    """(..., N, 4, 4) camera-to-world -> (..., N, N, 4, 4) with [i, j] = inv(P_i) @ P_j.

    Entry [i, j] is camera j's pose expressed in camera i's frame; it does not depend on the world frame.
    """
    xp = array_module(poses)
    return xp.einsum("...iab,...jbc->...ijac", se3_inverse(poses), poses)


def rotation_angle(rotation_a, rotation_b, eps: float = 0.0):
    """Geodesic angle (radians) between (..., 3, 3) rotations: acos((tr(A^T B) - 1) / 2).

    The cosine is clipped to [-1 + eps, 1 - eps]; eps > 0 keeps the gradient of acos finite.
    """
    xp = array_module(rotation_a, rotation_b)
    trace = xp.einsum("...ij,...ij->...", rotation_a, rotation_b)
    cosine = xp.clip((trace - 1.0) / 2.0, -1.0 + eps, 1.0 - eps)
    return xp.arccos(cosine)
