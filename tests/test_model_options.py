"""Model options from config: rematerialisation of scanned blocks changes memory, not results;
bfloat16 compute stays close to float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flow3r_jax.models import build_model
from flow3r_jax.models.layers import Block, scan_layers, stacked
from flow3r_jax.models.rope import token_positions
from flow3r_jax.models.sizes import get_model_config

IMAGES = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 2, 28, 42, 3)), jnp.float32)
PAIRS = jnp.asarray([[[0, 1], [1, 0]]], jnp.int32)


def _scanned_blocks_loss_and_grads(remat_policy):
    blocks = stacked(lambda r: Block(32, 2, 4, layerscale_init=0.1, qk_norm=True, attention_impl="auto",
                                     dtype=jnp.float32, rngs=r), 3, nnx.Rngs(0))
    graphdef, params = nnx.split(blocks)
    tokens = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 32)), jnp.float32)
    positions = token_positions(2, 2, 3, 1)

    def loss(p):
        out, _ = scan_layers(nnx.merge(graphdef, p), tokens, lambda blk, h: (blk(h, positions), None), remat_policy)
        return jnp.sum(jnp.sin(out))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_loss_and_gradients(policy):
    loss_ref, grads_ref = _scanned_blocks_loss_and_grads("none")
    loss, grads = _scanned_blocks_loss_and_grads(policy)
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_bfloat16_compute_close_to_float32():
    cfg = get_model_config("flow3r_tiny")
    model32 = build_model(cfg, rngs=nnx.Rngs(0))
    cfg.dtype = "bfloat16"
    model16 = build_model(cfg, rngs=nnx.Rngs(0))
    forward = nnx.jit(lambda m, x, p: m(x, p))
    out32 = forward(model32, IMAGES, PAIRS)
    out16 = forward(model16, IMAGES, PAIRS)
    for key in out32:
        assert out16[key].dtype == jnp.float32, key
        scale = float(jnp.max(jnp.abs(out32[key])))
        # bf16 keeps 8 mantissa bits: errors of a few percent of the output scale through the trunk.
        assert float(jnp.max(jnp.abs(out16[key] - out32[key]))) <= 0.05 * scale + 1e-3, key
    assert model16.encoder.blocks.mlp.fc1.kernel[...].dtype == jnp.float32


def test_unknown_remat_policy_is_rejected():
    cfg = get_model_config("flow3r_tiny")
    cfg.remat_policy = "sometimes"
    with pytest.raises(ValueError, match="remat_policy"):
        build_model(cfg, rngs=nnx.Rngs(0))
