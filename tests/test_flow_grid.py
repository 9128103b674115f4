"""Flow stored per cell (flow3r_jax/data/flow_grid.py): exact where the flow is constant per cell, masked
across motion boundaries, and DIS pseudo-flow keeps its accuracy."""

import numpy as np
import pytest

from data_pipelines.pseudo_flow import as_stored_per_cell, flow_accuracy, make_estimator, pseudo_flows
from flow3r_jax.data.flow_grid import cell_centres, coarsen_flow, flow_grid_shape, refine_flow
from flow3r_jax.data.records import FLOW_NDC_LIMIT
from flow3r_jax.data.synthetic import generate_clip
from flow3r_jax.geometry.ndc import ndc_to_pixel, pixel_flow_to_ndc_coords, pixel_grid


def _pixel_error(coords: np.ndarray, reference: np.ndarray) -> np.ndarray:
    height, width = coords.shape[1:3]
    return np.linalg.norm(ndc_to_pixel(coords.astype(np.float64), height, width)
                          - ndc_to_pixel(reference.astype(np.float64), height, width), axis=-1)


def test_cell_layout_of_odd_sizes():
    assert flow_grid_shape(9, 13, 2) == (5, 7) and flow_grid_shape(9, 13, 3) == (3, 5)
    np.testing.assert_array_equal(cell_centres(9, 2), [0.5, 2.5, 4.5, 6.5, 8.0])
    np.testing.assert_array_equal(cell_centres(7, 3), [1.0, 4.0, 6.0])


@pytest.mark.parametrize("stride", [2, 3])
def test_flow_constant_per_cell_comes_back_exactly(stride):
    rng = np.random.default_rng(0)
    height, width = 9, 13
    rows, cols = flow_grid_shape(height, width, stride)
    per_cell = rng.uniform(-6, 6, (2, rows, cols, 2))
    displacement = np.repeat(np.repeat(per_cell, stride, axis=1), stride, axis=2)[:, :height, :width]
    mask = rng.uniform(0.5, 1.0, (2, height, width)).astype(np.float32)
    original = pixel_flow_to_ndc_coords(displacement, np).astype(np.float32)
    coords, cell_mask = coarsen_flow(original, mask, stride, max_error_px=1e-3)
    assert coords.shape == (2, rows, cols, 2) and cell_mask.shape == (2, rows, cols)
    full, full_mask = refine_flow(coords, cell_mask, height, width, stride)
    assert _pixel_error(full, original).max() < 1e-3  # float32 NDC rounding
    lowest = np.minimum.reduceat(np.minimum.reduceat(mask, np.arange(0, height, stride), axis=1),
                                 np.arange(0, width, stride), axis=2)
    np.testing.assert_array_equal(cell_mask, lowest)
    np.testing.assert_array_equal(full_mask, np.repeat(np.repeat(lowest, stride, 1), stride, 2)[:, :height, :width])


@pytest.mark.parametrize("size", [(392, 518), (27, 41)])
def test_cell_targets_stay_within_their_pixels_targets(size):
    """A cell's target is the mean of its pixels' targets: never outside their range, so flow clipped to
    the record's limit stays within it (float rounding of the mean alone would leave it by up to 5e-7)."""
    height, width = size
    rng = np.random.default_rng(0)
    coords = np.full((2, height, width, 2), FLOW_NDC_LIMIT, np.float32)
    coords[1] = -FLOW_NDC_LIMIT
    coords[0, :, : width // 2, 0] = rng.uniform(-FLOW_NDC_LIMIT, FLOW_NDC_LIMIT, (height, width // 2))
    cells, _ = coarsen_flow(coords, np.ones((2, height, width), np.float32), 2, max_error_px=1.0)
    assert np.abs(cells).max() <= np.float32(FLOW_NDC_LIMIT)
    np.testing.assert_array_equal(cells[1], -np.float32(FLOW_NDC_LIMIT))


def test_cells_across_a_motion_boundary_are_masked_and_kept_pixels_stay_within_the_bound():
    height, width = 8, 16
    grid = pixel_grid(height, width, np)
    smooth = 0.3 * (grid - 5.0)                                     # 0.3 px per px: within 1 px per cell
    jump = np.where(grid[..., :1] >= 7, np.array([4.0, 0.0]), 0.0)  # objects part between columns 6 and 7
    displacement = np.stack([smooth, smooth + jump])
    full = pixel_flow_to_ndc_coords(displacement, np).astype(np.float32)
    coords, mask = coarsen_flow(full, np.ones((2, height, width), np.float32), 2, max_error_px=1.0)
    assert mask[0].min() == 1.0
    np.testing.assert_array_equal(np.flatnonzero(mask[1].min(axis=0) == 0), [3])  # the cells of columns 6, 7
    refined, refined_mask = refine_flow(coords, mask, height, width, 2)
    error = _pixel_error(refined, full)
    assert error[refined_mask > 0].max() <= 1.0 and error[refined_mask == 0].min() > 1.0


def test_dis_flow_per_cell_keeps_its_accuracy():
    """DIS "medium" estimates at half resolution: its composed flow stored per 2 x 2 cell keeps the end-point
    error on kept pixels within 0.05 px of the per-pixel flow and at least 95% of its kept pixels."""
    pairs = [(0, 1), (1, 3), (4, 0), (2, 5)]
    exact, per_pixel, per_cell = [], [], []
    for seed in range(2):
        clip = generate_clip(seed, 98, 126, 6, dynamic=seed == 1)
        flows, masks = pseudo_flows(clip.images, pairs, make_estimator("dis"), "composed")
        exact.append([clip.flow(i, j) for i, j in pairs])
        per_pixel.append((flows, masks))
        per_cell.append(as_stored_per_cell(flows, masks, 2, max_error_px=1.0))
    full, cells = flow_accuracy(exact, per_pixel), flow_accuracy(exact, per_cell)
    assert cells["epe_kept"] <= full["epe_kept"] + 0.05
    assert cells["kept_fraction"] >= 0.95 * full["kept_fraction"]
