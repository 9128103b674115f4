"""Pseudo-flow: DIS accuracy against exact synthetic flow, forward-backward occlusion mask, plug-in slot."""

import numpy as np
import pytest

from data_pipelines.pseudo_flow import (PseudoFlowError, estimator_epe, forward_backward_mask, make_estimator,
                                        pseudo_flow_targets, registered_estimators)
from flow3r_jax.data.synthetic import generate_clip
from flow3r_jax.geometry.ndc import ndc_coords_to_pixel_flow

# Adjacent frames of 112 x 154 synthetic clips move 5-12 px; DIS "medium" measures about 1.2 px EPE on all
# co-visible pixels and about 0.6 px on the pixels its forward-backward mask keeps.
EPE_BOUND_PX = 2.0
EPE_KEPT_BOUND_PX = 1.0


@pytest.fixture(scope="module")
def clips():
    return [generate_clip(seed, 112, 154, 8, dynamic=seed % 2 == 1) for seed in range(4)]


def test_dis_epe_against_synthetic_ground_truth(clips):
    stats = estimator_epe(make_estimator("dis"), clips, [(0, 1), (5, 4)])
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


def test_pseudo_flow_targets_are_ndc_and_reuse_flows(clips):
    calls = []
    dis = make_estimator("dis")

    def counting(source, target):
        calls.append(1)
        return dis(source, target)

    coords, masks = pseudo_flow_targets(clips[0].images, np.array([[0, 1], [1, 0], [0, 2]]), counting)
    assert len(calls) == 4  # (0,1), (1,0), (0,2), (2,0)
    assert coords.shape == (3, 112, 154, 2) and masks.shape == (3, 112, 154)
    np.testing.assert_allclose(ndc_coords_to_pixel_flow(coords[0], np), dis(clips[0].images[0], clips[0].images[1]),
                               atol=1e-3)


def test_learned_matcher_slot_errors_say_what_is_missing(tmp_path):
    assert {"dis", "ufm", "roma", "sea_raft"} <= set(registered_estimators())
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
