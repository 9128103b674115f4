"""The model shards on a (data, fsdp, tensor) mesh of 8 simulated CPU devices and gives the unsharded
result (tolerance 1e-5 absolute: only the reduction order of sharded matmuls differs)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flow3r_jax import sharding
from flow3r_jax.models import build_model
from flow3r_jax.models.sizes import get_model_config


def _inputs():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(4, 2, 28, 42, 3)), jnp.float32)
    pairs = jnp.asarray(np.tile([[[0, 1], [1, 0]]], (4, 1, 1)), jnp.int32)
    return images, pairs


def test_every_parameter_has_logical_axis_names():
    cfg = get_model_config("flow3r_tiny")
    abstract = nnx.state(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    for path, var in nnx.to_flat_state(abstract):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), path


def test_sharded_forward_equals_unsharded():
    assert jax.device_count() == 8
    cfg = get_model_config("flow3r_tiny")
    images, pairs = _inputs()
    model = build_model(cfg, rngs=nnx.Rngs(0))
    expected = nnx.jit(lambda m, x, p: m(x, p))(model, images, pairs)

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    rules = sharding.DEFAULT_RULES
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))
    state_sharding = sharding.state_shardings(abstract_state, mesh, rules)
    with sharding.use_rules(mesh, rules):
        state = jax.jit(lambda: nnx.state(build_model(cfg, rngs=nnx.Rngs(0))), out_shardings=state_sharding)()
        kernel = state["decoder"]["frame_blocks"]["mlp"]["fc1"]["kernel"][...]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
        batch = sharding.batch_sharding(mesh, rules, images.ndim)
        x = jax.device_put(images, batch)
        p = jax.device_put(pairs, sharding.batch_sharding(mesh, rules, pairs.ndim))

        @jax.jit
        def forward(state, x, p):
            return nnx.merge(graphdef, state)(x, p)

        got = forward(state, x, p)
    assert got["points"].sharding.spec[0] == ("data", "fsdp")
    for key in expected:
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(expected[key]), atol=1e-5, rtol=0, err_msg=key)
