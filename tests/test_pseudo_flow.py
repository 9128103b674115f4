"""Pseudo-flow: DIS accuracy against exact synthetic flow (direct and composed along the clip), forward-backward
occlusion mask, chain-break masking, plug-in slot."""

import numpy as np
import pytest

from data_pipelines.flow_chain import chain_links, compose_flows
from data_pipelines.pseudo_flow import (
    PseudoFlowError,
    estimator_epe,
    forward_backward_mask,
    make_estimator,
    pseudo_flow_targets,
    pseudo_flows,
    registered_estimators,
)
from flow3r_jax.data.synthetic import generate_clip
from flow3r_jax.geometry.ndc import ndc_coords_to_pixel_flow, pixel_grid

# Adjacent frames of 112 x 154 synthetic clips move 5-12 px; DIS "medium" measures about 1.2 px EPE on all
# co-visible pixels and about 0.6 px on the pixels its forward-backward mask keeps.
EPE_BOUND_PX = 2.0
EPE_KEPT_BOUND_PX = 1.0


@pytest.fixture(scope="module")
def clips():
    return [generate_clip(seed, 112, 154, 8, dynamic=seed % 2 == 1) for seed in range(4)]


def test_dis_epe_against_synthetic_ground_truth(clips):
    stats = estimator_epe(make_estimator("dis"), clips, [(0, 1), (5, 4)], mode="direct")
    assert stats["epe"] < EPE_BOUND_PX, stats
    assert stats["epe_kept"] < EPE_KEPT_BOUND_PX, stats
    assert stats["kept_fraction"] > 0.7, stats
    # The mask drops most pixels that are occluded or leave the frame.
    assert stats["occluded_kept"] < 0.35, stats


def test_forward_backward_mask_on_exact_flows(clips):
    clip = clips[0]
    grid = np.stack(np.meshgrid(np.arange(154), np.arange(112)), -1)
    forward_coords, covisible = clip.flow(0, 2)
    backward_coords, _ = clip.flow(2, 0)
    mask = forward_backward_mask(forward_coords - grid, backward_coords - grid)
    # With exact flows the test keeps every co-visible pixel except a thin band at occlusion edges,
    # where bilinear sampling of the backward flow mixes two surfaces.
    assert np.mean(mask[covisible]) > 0.95
    occluded = ~covisible & (forward_coords[..., 0] >= 0) & (forward_coords[..., 0] <= 153) \
        & (forward_coords[..., 1] >= 0) & (forward_coords[..., 1] <= 111)
    assert occluded.sum() > 30 and np.mean(mask[occluded]) < 0.5
    assert not np.any(mask[~covisible & ~occluded])


def test_composed_dis_holds_at_gap_4(clips):
    # Gap 4 of 8-frame clips (half the camera arc). Measured: composed 1.9 px EPE on kept pixels with 84% of
    # the co-visible pixels kept; direct DIS 5.5 px with 46% kept (the displacement is beyond its reach).
    pairs = [(0, 4), (3, 7), (6, 2)]
    composed = estimator_epe(make_estimator("dis"), clips, pairs, mode="composed")
    direct = estimator_epe(make_estimator("dis"), clips, pairs, mode="direct")
    assert composed["epe_kept"] < 3.0 and composed["kept_fraction"] > 0.7, composed
    assert composed["occluded_kept"] < 0.35, composed
    assert composed["epe_kept"] < direct["epe_kept"] and composed["kept_fraction"] > direct["kept_fraction"] + 0.2, \
        (composed, direct)


def test_composing_exact_links_reproduces_exact_long_gap_flow(clips):
    # Links are exact flows with their exact co-visibility; the only error left is the bilinear lookup.
    grid = pixel_grid(112, 154, np)
    for clip in clips:
        for i, j in [(0, 4), (6, 2)]:
            links = [clip.flow(a, b) for a, b in chain_links(i, j)]
            flow, keep = compose_flows([coords - grid for coords, _ in links], [covisible for _, covisible in links])
            exact, covisible = clip.flow(i, j)
            error = np.linalg.norm(flow - (exact - grid), axis=-1)[covisible & keep]
            assert error.mean() < 0.2, (i, j, error.mean())
            assert np.mean(keep[covisible]) > 0.95 and np.mean(keep[~covisible]) < 0.01


def test_chain_break_masks_pixels_leaving_the_image_or_landing_on_occluders():
    height, width = 64, 96
    grid = pixel_grid(height, width, np)
    shift = lambda dx, dy: np.broadcast_to(np.float32([dx, dy]), (height, width, 2))  # noqa: E731
    everywhere = np.ones((height, width), bool)
    # Out 30 px to the right and back: the pixels that left the image at the middle frame are masked,
    # though they end where they started.
    flow, keep = compose_flows([shift(30, 0), shift(-30, 0)], [everywhere, everywhere])
    np.testing.assert_allclose(flow, 0.0, atol=1e-3)
    assert not keep[:, width - 30:].any() and keep[:, :width - 31].all()
    # Through an occluder: frame 1 pixels in a block are occluded in frame 2 (their link mask is off);
    # frame 0 pixels that land there, or next to it (bilinear neighbours), are masked.
    occluded = everywhere.copy()
    occluded[20:40, 50:70] = False
    flow, keep = compose_flows([shift(10.5, 5), shift(-4, 2), shift(1, 1)], [everywhere, occluded, everywhere])
    np.testing.assert_allclose(flow, shift(7.5, 8), atol=1e-3)
    landing = grid + shift(10.5, 5)
    on_block = (landing[..., 0] > 49) & (landing[..., 0] < 70) & (landing[..., 1] >= 20) & (landing[..., 1] < 40)
    assert not keep[on_block].any()
    # Every other pixel is kept exactly when it stays inside the image at frames 1, 2 and 3.
    inside = np.ones((height, width), bool)
    for offset in [(10.5, 5), (6.5, 7), (7.5, 8)]:
        position = grid + shift(*offset)
        inside &= (position[..., 0] <= width - 1) & (position[..., 1] <= height - 1)
    np.testing.assert_array_equal(keep, inside & ~on_block)
    with pytest.raises(ValueError, match="one mask per link"):
        compose_flows([shift(1, 0)], [])


def test_pseudo_flow_targets_are_ndc_and_reuse_flows(clips):
    calls = []
    dis = make_estimator("dis")

    def counting(source, target):
        calls.append(1)
        return dis(source, target)

    coords, masks = pseudo_flow_targets(clips[0].images, np.array([[0, 1], [1, 0], [0, 2]]), counting, mode="direct")
    assert len(calls) == 4  # (0,1), (1,0), (0,2), (2,0)
    assert coords.shape == (3, 112, 154, 2) and masks.shape == (3, 112, 154)
    np.testing.assert_allclose(ndc_coords_to_pixel_flow(coords[0], np), dis(clips[0].images[0], clips[0].images[1]),
                               atol=1e-3)
    # Composed: each adjacent link once per direction, whatever the pairs; a gap-1 pair is its link.
    calls.clear()
    flows, masks = pseudo_flows(clips[0].images, [(0, 3), (3, 0), (1, 2)], counting, mode="composed")
    assert len(calls) == 6 and flows.shape == (3, 112, 154, 2) and masks.dtype == bool
    link = dis(clips[0].images[1], clips[0].images[2])
    np.testing.assert_allclose(flows[2], link, atol=1e-5)
    np.testing.assert_array_equal(masks[2], forward_backward_mask(link, dis(clips[0].images[2], clips[0].images[1])))
    with pytest.raises(PseudoFlowError, match="mode must be one of"):
        pseudo_flows(clips[0].images, [(0, 1)], dis, mode="chained")


def test_learned_matcher_slot_errors_say_what_is_missing(tmp_path):
    assert {"dis", "raft_small", "raft_large", "ufm", "roma", "sea_raft"} <= set(registered_estimators())
    with pytest.raises(PseudoFlowError, match="needs a local checkpoint file"):
        make_estimator("roma")
    checkpoint = tmp_path / "roma.pth"
    checkpoint.write_bytes(b"weights")
    with pytest.raises(PseudoFlowError, match="needs loader='module:function'"):
        make_estimator("roma", checkpoint_path=str(checkpoint))
    with pytest.raises(PseudoFlowError, match="cannot import loader module 'no_such_matcher'"):
        make_estimator("sea_raft", checkpoint_path=str(checkpoint), loader="no_such_matcher:load")
    with pytest.raises(PseudoFlowError, match="unknown flow estimator 'farneback2'"):
        make_estimator("farneback2")
