"""Whole-clip sample transforms (host half numpy + OpenCV, device half with numpy and jax.numpy) against
the step-by-step formulas they replace (float64 or per-step float32 references written out here), with the
stated float32 tolerances; label selection must match exactly."""

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from flow3r_jax.data.records import FLOW_NDC_SCALE
from flow3r_jax.data.transforms import (
    ColorJitter,
    CropResize,
    apply_color_transform,
    color_transform,
    flow_maps,
    flow_targets,
    pixel_to_world,
    random_color_jitter,
    random_crop,
    world_points,
)
from flow3r_jax.geometry.ndc import ndc_to_pixel, pixel_to_ndc

SOURCE_HW = (28, 42)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _crops():
    rng = np.random.default_rng(0)
    crops = [random_crop(SOURCE_HW, out_hw, (0.5, 1.0), rng) for out_hw in ((14, 28), (28, 42), (42, 56))
             for _ in range(3)]
    return crops + [CropResize(0, 0, 42, 28, 42, 28)]


def _flow_targets(coords_q, mask_u8, crop, xp):
    """Flow targets of stored pairs through `crop` with the array module `xp`, as numpy arrays."""
    rows, cols = crop.nearest_source_index()
    to_ndc, bounds = flow_maps(SOURCE_HW, crop)
    stored = np.ones(len(coords_q), bool)
    args = (coords_q[:, rows][:, :, cols], mask_u8[:, rows][:, :, cols], stored, to_ndc, bounds)
    return tuple(np.asarray(a) for a in flow_targets(*(xp.asarray(a) for a in args), xp))


def _reference_flow(coords_q, mask_u8, crop):
    """Old per-step float32 path: NDC -> source pixel -> output pixel -> NDC; inside test in pixels."""
    rows, cols = crop.nearest_source_index()
    coords = (coords_q / np.float32(FLOW_NDC_SCALE)).astype(np.float32)[rows][:, cols]
    mask = (mask_u8 / np.float32(255.0)).astype(np.float32)[rows][:, cols]
    source_px = ndc_to_pixel(coords, *SOURCE_HW).astype(np.float64)
    out_px = (source_px + 0.5 - np.array([crop.x0, crop.y0])) * np.array(crop.scale) - 0.5
    inside = ((out_px[..., 0] >= -0.5) & (out_px[..., 0] <= crop.out_width - 0.5)
              & (out_px[..., 1] >= -0.5) & (out_px[..., 1] <= crop.out_height - 0.5))
    border = np.minimum(np.abs(out_px + 0.5), np.abs(out_px - (np.array([crop.out_width, crop.out_height]) - 0.5)))
    return pixel_to_ndc(out_px, crop.out_height, crop.out_width), np.where(inside, mask, 0.0), border.min(-1)


@pytest.mark.parametrize("crop", _crops())
def test_flow_transform_matches_the_per_step_formula(crop):
    rng = np.random.default_rng(1)
    coords_q = rng.integers(-6000, 6000, (3,) + SOURCE_HW + (2,)).astype(np.int16)
    mask_u8 = rng.integers(0, 256, (3,) + SOURCE_HW).astype(np.uint8)
    coords, mask = _flow_targets(coords_q, mask_u8, crop, np)
    assert coords.dtype == mask.dtype == np.float32
    assert coords.shape == (3, crop.out_height, crop.out_width, 2)
    on_device = _flow_targets(coords_q, mask_u8, crop, jnp)
    np.testing.assert_allclose(on_device[0], coords, rtol=0, atol=1e-6)  # float32 rounding of NDC <= 8
    np.testing.assert_allclose(on_device[1], mask, rtol=2e-7, atol=0)  # XLA may divide by 255 as a product
    for k in range(3):
        ref_coords, ref_mask, border = _reference_flow(coords_q[k], mask_u8[k], crop)
        np.testing.assert_allclose(coords[k], ref_coords, rtol=0, atol=2e-6)  # float32 rounding of NDC <= 8
        clear = border > 1e-4  # the exact integer bounds and float32 pixels may disagree on the border
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(mask[k][clear], ref_mask[clear].astype(np.float32))


def test_flow_inside_bounds_are_exact_at_the_border():
    crop = CropResize(0, 0, 42, 28, 42, 28)  # identity crop: inside <=> |NDC| <= 1 + 1 / (n - 1)
    limit_x = round((1 + 1 / 41) * FLOW_NDC_SCALE - 0.5)
    coords_q = np.zeros((1,) + SOURCE_HW + (2,), np.int16)
    coords_q[0, 0, :4, 0] = [limit_x, limit_x + 1, -limit_x, -limit_x - 1]
    mask = _flow_targets(coords_q, np.full((1,) + SOURCE_HW, 255, np.uint8), crop, np)[1]
    np.testing.assert_array_equal(mask[0, 0, :4], [1.0, 0.0, 1.0, 0.0])


def _reference_jitter(images, jitter):
    """Old sequential float32 path: brightness, contrast, saturation, hue, clip."""
    out = images * np.float32(jitter.brightness)
    luma_weights = np.array([0.299, 0.587, 0.114], np.float32)
    mean = (out @ luma_weights).mean(axis=(1, 2), keepdims=True)[..., None]
    out = (out - mean) * np.float32(jitter.contrast) + mean
    luma = (out @ luma_weights)[..., None]
    out = (out - luma) * np.float32(jitter.saturation) + luma
    cos, sin = np.cos(jitter.hue), np.sin(jitter.hue)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    out = out @ (np.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ).T.astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def test_colour_jitter_matches_the_sequential_formula():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 14, 28, 3)).astype(np.uint8)
    values = images * np.float32(1.0 / 255.0)
    identity = apply_color_transform(images, color_transform(None), np)
    np.testing.assert_array_equal(identity, values)  # exactly images / 255 without jitter
    for jitter in [ColorJitter(), ColorJitter(1.2, 0.8, 1.2, 0.0)] + \
                  [random_color_jitter(rng, 0.3, 0.3, 0.3, 0.05) for _ in range(4)]:
        transform = color_transform(jitter)
        out = apply_color_transform(images, transform, np)
        assert transform.shape == (3, 4) and out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_allclose(out, _reference_jitter(values, jitter), rtol=0, atol=2e-6)
        on_device = apply_color_transform(jnp.asarray(images), jnp.asarray(transform), jnp)
        np.testing.assert_allclose(on_device, out, rtol=0, atol=1e-6)


def test_world_points_match_the_float64_formula():
    rng = np.random.default_rng(3)
    crop = random_crop(SOURCE_HW, (14, 28), (0.6, 1.0), rng)
    rows, cols = crop.nearest_source_index()
    valid = rng.uniform(size=(2, 14, 28)) > 0.3
    depth = np.where(valid, rng.uniform(0.5, 20.0, (2, 14, 28)), 0.0).astype(np.float32)
    intrinsics = np.array([[[40.0, 0.0, 20.5], [0.0, 41.0, 13.5], [0.0, 0.0, 1.0]]] * 2)
    angle = 0.4
    poses = np.tile(np.eye(4), (2, 1, 1))
    poses[1, :3, :3] = [[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]]
    poses[:, :3, 3] = [[0.1, -0.2, 0.3], [2.0, 0.5, -1.0]]
    ray_map, poses32 = pixel_to_world(intrinsics, poses), poses.astype(np.float32)
    points = world_points(depth, valid, rows, cols, ray_map, poses32, np)
    on_device = world_points(*(jnp.asarray(a) for a in (depth, valid, rows, cols, ray_map, poses32)), jnp)
    np.testing.assert_allclose(on_device, points, rtol=1e-6, atol=1e-6)
    pixels = np.stack(np.broadcast_arrays(cols[None, :], rows[:, None], 1.0), -1).astype(np.float64)
    rays = np.einsum("nij,hwj->nhwi", poses[:, :3, :3] @ np.linalg.inv(intrinsics), pixels)
    expected = np.where(valid[..., None], rays * depth[..., None] + poses[:, None, None, :3, 3], 0.0)
    assert points.dtype == np.float32
    np.testing.assert_array_equal(points[~valid], 0.0)
    np.testing.assert_allclose(points, expected, rtol=1e-5, atol=1e-5)  # float32 transform of metric points


def test_nearest_sampling_moves_whole_pixels():
    rng = np.random.default_rng(4)
    crop = random_crop(SOURCE_HW, (42, 56), (0.5, 0.9), rng)
    rows, cols = crop.nearest_source_index()
    for array in (rng.integers(0, 2, (2,) + SOURCE_HW).astype(bool),
                  rng.normal(size=(2,) + SOURCE_HW).astype(np.float16),
                  rng.integers(-999, 999, (2,) + SOURCE_HW + (2,)).astype(np.int16),
                  rng.normal(size=(2,) + SOURCE_HW + (3,)).astype(np.float32)):
        np.testing.assert_array_equal(crop.sample_nearest(array), array[:, rows][:, :, cols])


@pytest.mark.parametrize("out_hw", [(42, 56), (70, 90), (20, 30)])  # shrink, enlarge, shrink near 2x
def test_linear_taps_blend_as_opencv_resizes(out_hw):
    """Two taps per row and column with the second's weight reproduce OpenCV's INTER_LINEAR resize of the
    crop window on float32 frames (tolerance: float32 rounding of values up to 255), borders included."""
    rng = np.random.default_rng(6)
    frame = rng.uniform(0, 255, SOURCE_HW + (3,)).astype(np.float32)
    for scale in (0.5, 0.8, 1.0):
        crop = random_crop(SOURCE_HW, out_hw, (scale, scale), rng)
        (rows, row_weights), (cols, col_weights) = crop.linear_taps()
        assert rows.min() >= crop.y0 and rows.max() < crop.y0 + crop.crop_height
        assert cols.min() >= crop.x0 and cols.max() < crop.x0 + crop.crop_width
        across = col_weights[None, :, None]
        top, bottom = (frame[r][:, cols[:, 0]] + (frame[r][:, cols[:, 1]] - frame[r][:, cols[:, 0]]) * across
                       for r in (rows[:, 0], rows[:, 1]))
        blended = top + (bottom - top) * row_weights[:, None, None]
        window = frame[crop.y0:crop.y0 + crop.crop_height, crop.x0:crop.x0 + crop.crop_width]
        expected = cv2.resize(window, out_hw[::-1], interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(blended, expected, rtol=0, atol=1e-3)


def test_nearest_source_index_is_a_nearest_pixel():
    """Every output pixel samples a source pixel whose centre is within half a pixel (plus 0.01 px, the
    near-ties OpenCV's fixed point may round either way) of the output pixel's centre mapped to the source."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        source = rng.integers(1, 700, 2)
        size = rng.integers(1, source + 1)
        start = rng.integers(0, source - size + 1)
        out = rng.integers(1, 900, 2)
        crop = CropResize(int(start[1]), int(start[0]), int(size[1]), int(size[0]), int(out[1]), int(out[0]))
        for index, first, count, out_size in zip(crop.nearest_source_index(), start, size, out, strict=True):
            centre = first + (np.arange(out_size) + 0.5) * count / out_size - 0.5
            assert np.abs(index - centre).max() <= 0.51 and first <= index.min() and index.max() < first + count
