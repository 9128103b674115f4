"""Pinhole camera maths: depth -> camera-frame points, projection, and depth-induced reprojection flow.

Intrinsics are 3x3 in pixel units with (0, 0) the centre of the top-left pixel; camera axes are OpenCV
(x right, y down, z forward); poses are camera-to-world. numpy or jax arrays (see `transforms`).
"""

from typing import NamedTuple

import numpy as np

from flow3r_jax.geometry import ndc
from flow3r_jax.geometry._backend import array_module
from flow3r_jax.geometry.transforms import se3_inverse, transform_points


def _broadcast_matrix(matrix, points_ndim):
    """(*batch, 3, 3) -> (*batch, 1, ..., 1, 3, 3) matching (*batch, *spatial, 3) points."""
    extra = points_ndim - 1 - (matrix.ndim - 2)
    return matrix.reshape(matrix.shape[:-2] + (1,) * extra + (3, 3))


def depth_to_local_points(depth, intrinsics):
    """(*batch, H, W) z-depth and (*batch, 3, 3) intrinsics -> (*batch, H, W, 3) camera-frame points."""
    xp = array_module(depth, intrinsics)
    height, width = depth.shape[-2:]
    pixels = ndc.pixel_grid(height, width, xp).astype(depth.dtype)
    homogeneous = xp.concatenate([pixels, xp.ones_like(pixels[..., :1])], axis=-1)
    inverse = _broadcast_matrix(xp.linalg.inv(intrinsics), intrinsics.ndim - 2 + 3)
    rays = xp.einsum("...ij,...j->...i", inverse, homogeneous)
    return rays * depth[..., None]


def project_points(points, intrinsics):
    """(*batch, *spatial, 3) camera-frame points -> ((*batch, *spatial, 2) pixels (x, y), (*batch, *spatial) z).

    Pixels of points with z <= 0 are not meaningful; callers mask them with z.
    """
    xp = array_module(points, intrinsics)
    projected = xp.einsum("...ij,...j->...i", _broadcast_matrix(intrinsics, points.ndim), points)
    z = points[..., 2]
    safe_z = xp.where(xp.abs(projected[..., 2]) > 1e-12, projected[..., 2], 1.0)
    return projected[..., :2] / safe_z[..., None], z


def intrinsics_from_local_points(local_points, valid=None, min_depth: float = 1e-8):
    """(*batch, H, W, 3) camera-frame points -> (*batch, 3, 3) pinhole K with the principal point at the
    image centre ((W - 1) / 2, (H - 1) / 2).

    The focal lengths are the least-squares solutions of u - cx = fx * x / z and v - cy = fy * y / z over
    the pixels with z > min_depth (and `valid`, (*batch, H, W) bool, when given). numpy input is solved
    in float64; jax input stays in its dtype and is differentiable.
    """
    xp = array_module(local_points)
    local_points = local_points.astype(xp.float64) if xp is np else local_points
    dtype = local_points.dtype
    height, width = local_points.shape[-3:-1]
    pixels = ndc.pixel_grid(height, width, xp).astype(dtype)
    du, dv = pixels[..., 0] - (width - 1) / 2.0, pixels[..., 1] - (height - 1) / 2.0
    z = local_points[..., 2]
    usable = z > min_depth if valid is None else xp.asarray(valid, bool) & (z > min_depth)
    safe_z = xp.where(usable, z, 1.0)
    xn = xp.where(usable, local_points[..., 0] / safe_z, 0.0)
    yn = xp.where(usable, local_points[..., 1] / safe_z, 0.0)
    fx = xp.sum(xn * du, axis=(-2, -1)) / xp.maximum(xp.sum(xn * xn, axis=(-2, -1)), 1e-12)
    fy = xp.sum(yn * dv, axis=(-2, -1)) / xp.maximum(xp.sum(yn * yn, axis=(-2, -1)), 1e-12)
    zeros, ones = xp.zeros_like(fx), xp.ones_like(fx)
    rows = [[fx, zeros, zeros + (width - 1) / 2.0], [zeros, fy, zeros + (height - 1) / 2.0], [zeros, zeros, ones]]
    return xp.stack([xp.stack(row, axis=-1) for row in rows], axis=-2)


class Reprojection(NamedTuple):
    """Where each source pixel lands in the target image. Shapes (*batch, H, W, 2) and (*batch, H, W)."""

    coords_px: object
    coords_ndc: object
    in_front: object
    in_bounds: object


def reprojection_flow(depth_src, pose_src, pose_tgt, intrinsics_src, intrinsics_tgt, min_depth: float = 1e-6):
    """Reproject every pixel of a source frame into a target frame through its depth.

    Args: depth_src (*batch, H, W) z-depth (0 = unknown); pose_src, pose_tgt (*batch, 4, 4)
    camera-to-world; intrinsics_src, intrinsics_tgt (*batch, 3, 3).
    Returns a `Reprojection`: target pixel coordinates, the same in NDC (`ndc.pixel_to_ndc`, sized by
    the source image), `in_front` (source depth > min_depth and target z > min_depth) and `in_bounds`
    (in front and 0 <= x <= W-1, 0 <= y <= H-1, i.e. inside the pixel-centre extent of the target).
    """
    xp = array_module(depth_src, pose_src, pose_tgt, intrinsics_src, intrinsics_tgt)
    height, width = depth_src.shape[-2:]
    local_src = depth_to_local_points(depth_src, intrinsics_src)
    src_to_tgt = xp.einsum("...ij,...jk->...ik", se3_inverse(pose_tgt), pose_src)
    local_tgt = transform_points(src_to_tgt, local_src)
    coords_px, z_tgt = project_points(local_tgt, intrinsics_tgt)
    in_front = (depth_src > min_depth) & (z_tgt > min_depth)
    x, y = coords_px[..., 0], coords_px[..., 1]
    in_bounds = in_front & (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return Reprojection(coords_px, ndc.pixel_to_ndc(coords_px, height, width), in_front, in_bounds)
