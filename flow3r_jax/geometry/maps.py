"""Operations on per-pixel maps: depth discontinuities and point-map normals."""

import jax
import jax.numpy as jnp

from flow3r_jax.geometry._backend import array_module


def _window_max(values, kernel_size: int):
    """Max over a kernel_size x kernel_size window on the last two axes; outside the image counts as -inf."""
    window = (1,) * (values.ndim - 2) + (kernel_size, kernel_size)
    pad = kernel_size // 2
    padding = ((0, 0),) * (values.ndim - 2) + ((pad, pad), (pad, pad))
    return jax.lax.reduce_window(values, -jnp.inf, jax.lax.max, window, (1,) * values.ndim, padding)


def depth_edge(depth, rtol: float | None = None, atol: float | None = None, kernel_size: int = 3, mask=None):
    """(..., H, W) depth -> (..., H, W) bool: pixels whose neighbourhood spans a large depth range.

    The range is max - min over a kernel_size window (only `mask` pixels count when given). A pixel is
    an edge when range > atol, or range / depth > rtol (a zero depth with a non-zero range is an edge).
    """
    depth = jnp.asarray(depth)
    if mask is None:
        high, low = _window_max(depth, kernel_size), -_window_max(-depth, kernel_size)
    else:
        mask = jnp.asarray(mask, bool)
        high = _window_max(jnp.where(mask, depth, -jnp.inf), kernel_size)
        low = -_window_max(jnp.where(mask, -depth, -jnp.inf), kernel_size)
    spread = jnp.where(jnp.isfinite(high) & jnp.isfinite(low), high - low, 0.0)
    edge = jnp.zeros(depth.shape, bool)
    if atol is not None:
        edge = edge | (spread > atol)
    if rtol is not None:
        safe_depth = jnp.where(depth != 0, depth, 1.0)
        relative = jnp.where(depth != 0, spread / safe_depth, jnp.where(spread > 0, jnp.inf, 0.0))
        edge = edge | (relative > rtol)
    return edge


def point_map_normals(points, mask=None):
    """(..., H, W, 3) point map -> ((..., H, W, 3) unit normals, (..., H, W) bool valid).

    The normal is cross(d/dx, d/dy) of central differences (one-sided at the border), so with OpenCV
    axes it points away from the camera. A normal is valid where its neighbours used are valid (when a
    mask is given) and the cross product is non-zero.
    """
    xp = array_module(points, mask)
    d_x = _central_difference(points, axis=-2, xp=xp)
    d_y = _central_difference(points, axis=-3, xp=xp)
    normal = xp.cross(d_x, d_y)
    length = xp.sqrt(xp.sum(normal**2, axis=-1))
    valid = length > 0
    if mask is not None:
        valid = valid & _neighbours_valid(xp.asarray(mask, bool), xp)
    normal = normal / xp.where(length > 0, length, 1.0)[..., None]
    return normal, valid


def _central_difference(values, axis: int, xp):
    size = values.shape[axis]
    forward = xp.take(values, xp.minimum(xp.arange(size) + 1, size - 1), axis=axis)
    backward = xp.take(values, xp.maximum(xp.arange(size) - 1, 0), axis=axis)
    return forward - backward


def _neighbours_valid(mask, xp):
    result = mask
    for axis in (-1, -2):
        size = mask.shape[axis]
        result = result & xp.take(mask, xp.minimum(xp.arange(size) + 1, size - 1), axis=axis)
        result = result & xp.take(mask, xp.maximum(xp.arange(size) - 1, 0), axis=axis)
    return result
