"""Pixel <-> normalised-device-coordinate conversions of flow targets.

The flow head is trained (as in the released Flow3r loss) on the *target-image coordinates* of each
source pixel expressed in NDC: ``x_ndc = 1 - 2 x / (W - 1)`` and ``y_ndc = 1 - 2 y / (H - 1)``, where
(x, y) are pixel coordinates with (0, 0) the centre of the top-left pixel. These functions work on
numpy and jax arrays alike (elementwise arithmetic only); the last axis holds (x, y).
"""


def pixel_to_ndc(coords_px, height: int, width: int):
    """(..., 2) pixel (x, y) -> (..., 2) NDC (x, y)."""
    x = 1.0 - 2.0 * coords_px[..., 0:1] / (width - 1)
    y = 1.0 - 2.0 * coords_px[..., 1:2] / (height - 1)
    return _concat_last(coords_px, x, y)


def ndc_to_pixel(coords_ndc, height: int, width: int):
    """(..., 2) NDC (x, y) -> (..., 2) pixel (x, y); inverse of `pixel_to_ndc`."""
    x = (1.0 - coords_ndc[..., 0:1]) * (width - 1) / 2.0
    y = (1.0 - coords_ndc[..., 1:2]) * (height - 1) / 2.0
    return _concat_last(coords_ndc, x, y)


def pixel_grid(height: int, width: int, xp):
    """(H, W, 2) pixel coordinates (x, y) of every pixel centre, from the array module `xp`."""
    ys, xs = xp.meshgrid(xp.arange(height, dtype=xp.float32), xp.arange(width, dtype=xp.float32), indexing="ij")
    return xp.stack([xs, ys], axis=-1)


def ndc_coords_to_pixel_flow(coords_ndc, xp):
    """(..., H, W, 2) NDC target coordinates -> (..., H, W, 2) pixel displacement (dx, dy)."""
    height, width = coords_ndc.shape[-3], coords_ndc.shape[-2]
    return ndc_to_pixel(coords_ndc, height, width) - pixel_grid(height, width, xp)


def pixel_flow_to_ndc_coords(flow_px, xp):
    """(..., H, W, 2) pixel displacement -> (..., H, W, 2) NDC target coordinates."""
    height, width = flow_px.shape[-3], flow_px.shape[-2]
    return pixel_to_ndc(flow_px + pixel_grid(height, width, xp), height, width)


def _concat_last(like, x, y):
    module = type(like).__module__
    if module.startswith("numpy"):
        import numpy as xp
    else:
        import jax.numpy as xp
    return xp.concatenate([x, y], axis=-1)
