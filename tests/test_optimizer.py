"""Optimizer: schedule, clipping, parameter groups (multipliers, decay masks, freezing), and the
train step's gradient accumulation and non-finite-step skipping, on a toy model."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import flow3r_large
from flow3r_jax import sharding
from flow3r_jax.models import build_model, sizes
from flow3r_jax.train import optimizer, train_step
from flow3r_jax.train import state as state_lib


class ToyModel(nnx.Module):
    """A sharded linear map standing in for the model: outputs {"y": images @ W + b}."""

    def __init__(self, rngs):
        init = sharding.partitioned(nnx.initializers.lecun_normal(), ("embed", "mlp"))
        self.linear = nnx.Linear(8, 8, kernel_init=init, rngs=rngs)

    def __call__(self, images, pair_indices):
        del pair_indices
        return {"y": self.linear(images)}


def _toy_loss(outputs, batch):
    mse = jnp.mean((outputs["y"] - batch["target"]) ** 2)
    return mse, {"mse": mse}


def _toy_batch(seed):
    rng = np.random.default_rng(seed)
    return {"images": rng.normal(size=(16, 8)).astype(np.float32),
            "target": rng.normal(size=(16, 8)).astype(np.float32),
            "pair_indices": np.zeros((16, 1, 2), np.int32)}


def _toy_step(accum_steps, mesh):
    cfg = _cfg(warmup_steps=0)
    layout = state_lib.make_layout(ToyModel, lambda p: optimizer.make_optimizer(cfg, 10, p), mesh,
                                   sharding.DEFAULT_RULES, seed=0)
    step = train_step.make_train_step(
        layout, _toy_loss, schedule=optimizer.learning_rate_schedule(cfg, 10),
        frozen=optimizer.frozen_mask(layout.abstract.params, cfg), accum_steps=accum_steps, mesh=mesh,
        rules=sharding.DEFAULT_RULES,
        batch_shardings={k: sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, v.ndim)
                         for k, v in _toy_batch(0).items()})
    return layout, step


def _cfg(**overrides):
    cfg = ml_collections.ConfigDict(dict(
        learning_rate=1e-2, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.5, warmup_steps=4,
        final_lr_ratio=0.1, clip_norm=1.0, param_groups=[], no_decay_patterns=["norm", "bias$"]))
    cfg.update(overrides)
    return cfg


def _params():
    return {"encoder": {"kernel": jnp.full((4, 4), 2.0)},
            "head": {"kernel": jnp.full((4, 4), 2.0), "bias": jnp.full((4,), 2.0)},
            "trunk": {"norm": {"scale": jnp.full((2, 4), 2.0)}, "kernel": jnp.full((4, 4), 2.0)}}


def test_warmup_cosine_schedule():
    schedule = optimizer.learning_rate_schedule(_cfg(), total_steps=20)
    np.testing.assert_allclose([schedule(s) for s in (0, 2, 4)], [0.0, 5e-3, 1e-2], rtol=1e-6)
    np.testing.assert_allclose(schedule(12), 1e-3 + 0.5 * (1e-2 - 1e-3), rtol=1e-5)  # half-way cosine
    np.testing.assert_allclose(schedule(20), 1e-3, rtol=1e-6)
    with pytest.raises(ValueError, match="warmup_steps"):
        optimizer.learning_rate_schedule(_cfg(warmup_steps=20), total_steps=20)


def test_group_labels_multipliers_decay_and_freezing():
    cfg = _cfg(param_groups=[["^encoder/", 0.0, False, True], ["^head/", 10.0, True, False]],
               warmup_steps=0, final_lr_ratio=1.0)
    params = _params()
    assert optimizer.param_labels(params, cfg) == {
        "encoder": {"kernel": "frozen"},
        "head": {"kernel": "group1:decay", "bias": "group1:no_decay"},
        "trunk": {"norm": {"scale": "default:no_decay"}, "kernel": "default:decay"}}
    tx = optimizer.make_optimizer(cfg, total_steps=10, params=params)
    opt_state = tx.init(params)
    moments = [x for x in jax.tree.leaves(opt_state) if x.ndim == 2]
    assert sum(x.size for x in moments) == 2 * (16 + 8 + 16)  # mu and nu, no moments for the encoder
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)  # small: no clipping
    updates, _ = tx.update(grads, opt_state, params)
    # First Adam step: direction 1 (sign of the gradient) per element, then decay * param, times lr.
    lr, wd = 1e-2, 0.5
    np.testing.assert_allclose(updates["encoder"]["kernel"], 0.0)
    np.testing.assert_allclose(updates["trunk"]["kernel"], -lr * (1.0 + wd * 2.0), rtol=1e-4)
    np.testing.assert_allclose(updates["trunk"]["norm"]["scale"], -lr * 1.0, rtol=1e-4)
    np.testing.assert_allclose(updates["head"]["kernel"], -10 * lr * (1.0 + wd * 2.0), rtol=1e-4)
    np.testing.assert_allclose(updates["head"]["bias"], -10 * lr * 1.0, rtol=1e-4)


def test_clipping_ignores_frozen_gradients():
    # b1 = b2 = 0 and a huge eps make Adam linear: update = -lr * g / eps, so clipping shows.
    eps = 1e6
    cfg = _cfg(param_groups=[["^encoder/", 0.0, False, True]], b1=0.0, b2=0.0, eps=eps,
               weight_decay=0.0, warmup_steps=0, final_lr_ratio=1.0, clip_norm=1.0)
    params = _params()
    tx = optimizer.make_optimizer(cfg, 10, params)
    grads = jax.tree.map(jnp.ones_like, params)
    grads["encoder"]["kernel"] = jnp.full((4, 4), 1e6)
    updates, _ = tx.update(grads, tx.init(params), params)
    trainable_norm = np.sqrt(16 + 16 + 4 + 8)
    np.testing.assert_allclose(updates["trunk"]["kernel"], -1e-2 / trainable_norm / eps, rtol=1e-5)
    np.testing.assert_allclose(updates["encoder"]["kernel"], 0.0)


def test_bad_groups_fail_clearly():
    with pytest.raises(ValueError, match=r"param_groups\[0\].*bad regex"):
        optimizer.parse_param_groups([["(", 1.0, True, False]])
    with pytest.raises(ValueError, match=r"param_groups\[1\].*expected"):
        optimizer.parse_param_groups([["a", 1.0, True, False], ["b", 1.0]])


def test_large_recipe_groups_on_the_real_parameter_tree():
    """The flow3r_large groups and no-decay patterns applied to the real Flow3r parameter paths."""
    cfg = flow3r_large.get_config().optimizer
    abstract = nnx.eval_shape(lambda: build_model(sizes.flow3r_tiny(), rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    labels = {optimizer.path_string(p): label for p, label in
              jax.tree_util.tree_leaves_with_path(optimizer.param_labels(params, cfg))}
    assert {v for k, v in labels.items() if k.startswith("encoder/")} == {"frozen"}
    assert "frozen" not in {v for k, v in labels.items() if not k.startswith("encoder/")}
    assert {v for k, v in labels.items() if k.startswith("flow_head/")} == {"group1:decay", "group1:no_decay"}
    no_decay = [k for k, v in labels.items() if v.endswith("no_decay")]
    decay = [k for k, v in labels.items() if v.endswith(":decay")]
    assert "decoder/global_blocks/attn/qkv_bias" in no_decay
    assert "decoder/frame_blocks/ls1/gamma" in no_decay
    assert "register_token" in no_decay and "point_decoder/blocks/norm1/scale" in no_decay
    assert "decoder/global_blocks/attn/qkv_kernel" in decay and "flow_head/mlp/0/kernel" in decay


def test_gradient_accumulation_matches_full_batch_and_non_finite_steps_are_skipped():
    mesh = sharding.make_mesh(data=2, fsdp=4)
    results = {}
    for accum in (1, 4):
        layout, step = _toy_step(accum, mesh)
        state = state_lib.init_state(layout, ToyModel, seed=0)
        with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
            for i in range(3):
                state, metrics = step(state, train_step.global_batch(_toy_batch(i), mesh, sharding.DEFAULT_RULES))
        results[accum] = (jax.device_get(state.params), float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves(results[1][0]), jax.tree.leaves(results[4][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(results[1][1], results[4][1], rtol=1e-6)

    bad = _toy_batch(5)
    bad["target"][3, 2] = np.nan
    before = jax.device_get(state.params)
    with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
        state, metrics = step(state, train_step.global_batch(bad, mesh, sharding.DEFAULT_RULES))
    assert int(metrics["skipped"]) == 1 and int(state.step) == 4
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.params)), strict=True):
        np.testing.assert_array_equal(a, b)
