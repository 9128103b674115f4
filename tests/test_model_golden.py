"""The tiny Flow3r with the official golden weights reproduces the official outputs.

Reference: shared/reference/flow3r_tiny (official PyTorch code, float32, CPU). Tolerance: max absolute
difference 1e-4 on every output (float32 vs float64 of the official code differ by up to 3.5e-6).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flow3r_jax.interop.pytorch import import_pytorch_checkpoint
from flow3r_jax.models import build_model
from flow3r_jax.models.encoder import resize_pos_embed
from flow3r_jax.models.rope import token_positions
from flow3r_jax.models.sizes import get_model_config

TOL = 1e-4


@pytest.fixture(scope="module")
def golden(shared_dir):
    from safetensors.numpy import load_file
    root = shared_dir / "reference" / "flow3r_tiny"
    cfg = get_model_config("flow3r_tiny")
    model = build_model(cfg, rngs=nnx.Rngs(0))
    import_pytorch_checkpoint(root / "weights.safetensors", model, cfg)
    inputs = load_file(str(root / "inputs.safetensors"))
    images = jnp.asarray(inputs["images"]).transpose(0, 1, 3, 4, 2)
    return model, images, jnp.asarray(inputs["pair_indices"]), load_file(str(root / "outputs.safetensors"))


def _maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("name", ["points", "local_points", "conf", "camera_poses", "flow"])
def test_outputs_match_official(golden, name):
    model, images, pairs, ref = golden
    out = nnx.jit(lambda m, x, p: m(x, p))(model, images, pairs)
    assert out[name].shape == ref[name].shape
    assert _maxdiff(out[name], ref[name]) <= TOL


def test_intermediates_match_official(golden):
    model, images, pairs, ref = golden
    b, n, h, w, _ = images.shape
    gh, gw = h // 14, w // 14
    enc = model.encoder
    assert _maxdiff(resize_pos_embed(enc.pos_embed[...], gh, gw), ref["encoder_pos_embed_interp"]) <= TOL
    normalised = ((images - jnp.asarray(model.image_mean)) / jnp.asarray(model.image_std)).reshape(b * n, h, w, 3)
    assert _maxdiff(enc.tokens_in(normalised), ref["encoder_tokens_in"]) <= TOL
    assert _maxdiff(enc(normalised), ref["encoder_x_norm_patchtokens"]) <= TOL
    feats = model.trunk(images)
    np.testing.assert_array_equal(np.asarray(feats["positions"]), ref["decoder_pos"])
    assert _maxdiff(feats["hidden"], ref["decoder_hidden"]) <= TOL
    hidden, pos = feats["hidden"], feats["positions"]
    point_hidden, point_blocks = model.point_decoder(hidden, pos)
    camera_hidden, camera_blocks = model.camera_decoder(hidden, pos)
    assert _maxdiff(point_hidden, ref["point_hidden"]) <= TOL
    assert _maxdiff(model.conf_decoder(hidden, pos)[0], ref["conf_hidden"]) <= TOL
    assert _maxdiff(camera_hidden, ref["camera_hidden"]) <= TOL
    for level in range(4):
        assert _maxdiff(point_blocks[level + 1], ref[f"point_intermediate_{level}"]) <= TOL
        assert _maxdiff(camera_blocks[level + 1], ref[f"camera_intermediate_{level}"]) <= TOL
    rot_raw, trans_raw = model.camera_head.raw_outputs(camera_hidden[:, 5:])
    assert _maxdiff(rot_raw, ref["camera_head_rot_raw"]) <= TOL
    assert _maxdiff(trans_raw, ref["camera_head_trans_raw"]) <= TOL
    levels = [(point_blocks[k + 1, :, 5:].reshape(b, n, gh * gw, -1),
               camera_blocks[k + 1, :, 5:].reshape(b, n, gh * gw, -1)) for k in range(4)]
    fused = model.flow_head.fused_levels([p for p, _ in levels], [c for _, c in levels], pairs, (gh, gw))
    for level in range(4):
        assert _maxdiff(fused[level].transpose(0, 3, 1, 2), ref[f"flow_fused_{level}"]) <= TOL


def test_positions_layout():
    pos = np.asarray(token_positions(1, 2, 3, 5))[0]
    assert (pos[:5] == 0).all()
    np.testing.assert_array_equal(pos[5:], [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]])


def test_flow_is_optional(golden):
    model, images, _, ref = golden
    out = model(images)
    assert "flow" not in out
    assert _maxdiff(out["points"], ref["points"]) <= TOL


def test_rejects_non_multiple_of_patch(golden):
    model, images, _, _ = golden
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(images[:, :, :69])
