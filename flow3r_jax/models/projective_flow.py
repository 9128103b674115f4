"""Projective flow: flow from image i to image j computed from the predicted geometry alone.

No parameters. For every frame the intrinsics are estimated from its predicted local points by least
squares with the principal point at the image centre (geometry.camera.intrinsics_from_local_points);
the local points of i are moved into camera j with the predicted poses (inv(P_j) @ P_i) and projected
with j's estimated intrinsics. Gradients reach the points, the poses and, through the intrinsics, the
points of j.
"""

from __future__ import annotations

import jax.numpy as jnp

from flow3r_jax.geometry.camera import intrinsics_from_local_points, project_points
from flow3r_jax.geometry.ndc import pixel_to_ndc
from flow3r_jax.geometry.transforms import se3_inverse, transform_points
from flow3r_jax.models.flow_head import gather_frames

# Camera-frame depths are clamped to at least this before the division by z (the model's points are
# normalised to about unit scale), so points at or behind camera j give large but finite coordinates.
MIN_PROJECTION_DEPTH = 1e-2


def projective_flow(local_points, camera_poses, pair_indices, min_depth: float = MIN_PROJECTION_DEPTH):
    """local_points (B, N, H, W, 3) camera frame, camera_poses (B, N, 4, 4) camera-to-world,
    pair_indices (B, S, 2) int (i, j) -> (B, S, H, W, 2): NDC coordinates in image j of every pixel of
    image i (geometry/ndc.py)."""
    height, width = local_points.shape[2:4]
    intrinsics = intrinsics_from_local_points(local_points)
    src, tgt = pair_indices[..., 0], pair_indices[..., 1]
    src_to_tgt = jnp.einsum("bsij,bsjk->bsik", se3_inverse(gather_frames(camera_poses, tgt)),
                            gather_frames(camera_poses, src))
    in_tgt = transform_points(src_to_tgt, gather_frames(local_points, src))
    in_tgt = jnp.concatenate([in_tgt[..., :2], jnp.maximum(in_tgt[..., 2:], min_depth)], axis=-1)
    coords_px, _ = project_points(in_tgt, gather_frames(intrinsics, tgt))
    return pixel_to_ndc(coords_px, height, width)
