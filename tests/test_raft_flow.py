"""RAFT (torchvision model code) through the estimator slot, with seeded random weights: shapes, padding,
batching, device placement, checkpoint loading. The flow of random weights is meaningless; accuracy needs a
downloaded checkpoint and is not tested here."""

import numpy as np
import pytest
import torch

from data_pipelines.pseudo_flow import PseudoFlowError, make_estimator, pseudo_flows
from data_pipelines.raft_flow import MIN_SIDE, _padded_side
from flow3r_jax.data.synthetic import generate_clip

SETTINGS = dict(num_flow_updates=2, batch_size=2)


@pytest.fixture(scope="module")
def frames():
    return generate_clip(3, 50, 70, 4, dynamic=True).images


@pytest.fixture(scope="module")
def raft():
    return make_estimator("raft_small", random_weights=True, seed=0, **SETTINGS)


def test_padding_to_multiples_of_8_and_the_pyramid_minimum():
    assert [_padded_side(s) for s in (50, MIN_SIDE, 129, 392, 518)] == [128, 128, 136, 392, 520]


def test_batching_does_not_change_flows_and_output_is_cropped(raft, frames):
    assert raft.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    # batch_size 2: pairs (0, 1), (1, 2) run together, then (0, 1) again alone.
    batched = raft.estimate_batch(frames[[0, 1, 0]], frames[[1, 2, 1]])
    assert batched.shape == (3, 50, 70, 2) and batched.dtype == np.float32 and np.isfinite(batched).all()
    np.testing.assert_allclose(batched[0], batched[2], atol=1e-4)  # float32 CPU kernels, batch independent
    assert np.abs(batched[0] - batched[1]).max() > 1e-3
    # Composed pseudo-flow asks for every link flow of the clip in one batch.
    flows, masks = pseudo_flows(frames, [(1, 0)], raft)
    assert flows.shape == (1, 50, 70, 2) and masks.shape == (1, 50, 70)
    np.testing.assert_allclose(flows[0], raft(frames[1], frames[0]), atol=1e-4)


def test_seeded_weights_and_checkpoint_loading(raft, frames, tmp_path):
    same = make_estimator("raft_small", random_weights=True, seed=0, **SETTINGS)
    other = make_estimator("raft_small", random_weights=True, seed=1, **SETTINGS)
    expected = raft(frames[0], frames[1])
    np.testing.assert_array_equal(same(frames[0], frames[1]), expected)
    assert np.abs(other(frames[0], frames[1]) - expected).max() > 1e-3
    checkpoint = tmp_path / "raft_small.pth"
    torch.save(raft._model.state_dict(), checkpoint)
    loaded = make_estimator("raft_small", checkpoint_path=str(checkpoint), seed=1, **SETTINGS)
    np.testing.assert_allclose(loaded(frames[0], frames[1]), expected, atol=1e-5)
    with pytest.raises(PseudoFlowError, match="is not a torchvision raft_large state dict"):
        make_estimator("raft_large", checkpoint_path=str(checkpoint))
    with pytest.raises(PseudoFlowError, match="checkpoint file .*missing.pth.* not found"):
        make_estimator("raft_small", checkpoint_path=str(tmp_path / "missing.pth"))
    with pytest.raises(PseudoFlowError, match="needs exactly one of checkpoint_path"):
        make_estimator("raft_small")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(PseudoFlowError, match="torch sees no CUDA GPU"):
        make_estimator("raft_small", random_weights=True, device="cuda")
