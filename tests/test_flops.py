"""The analytic FLOP count (flow3r_jax/models/flops.py) against XLA's cost analysis of the compiled,
fully unrolled model (a scanned body is counted once by XLA, so the scans are unrolled here).

The model has flow3r_tiny's depths with wider layers: nothing is allocated (abstract parameters,
compile only), so width costs nothing, and it keeps the work the analytic count ignores (elementwise
ops; XLA counts ~64 FLOPs per exact-GELU element) under 5% of XLA's total. Tolerance: the analytic
count is within [95%, 100.5%] of XLA's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from flow3r_jax import perf
from flow3r_jax.models import build_model, flops
from flow3r_jax.models.sizes import get_model_config
from flow3r_jax.train import optimizer as optimizer_lib

SHAPE = dict(batch=1, frames=2, height=28, width=42, pairs=2)


def _wide_tiny(remat_policy: str):
    cfg = get_model_config("flow3r_tiny")
    cfg.encoder.embed_dim = cfg.decoder.embed_dim = cfg.heads.embed_dim = 512
    cfg.encoder.num_heads = cfg.decoder.num_heads = cfg.heads.num_heads = 8
    cfg.heads.point_out_dim = cfg.heads.camera_out_dim = 512
    cfg.flow_head.features, cfg.flow_head.out_channels = 64, (64, 128, 256, 256)
    cfg.remat_policy, cfg.scan_unroll = remat_policy, True
    return cfg


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def _model_fns(cfg):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))
    b, n, s = SHAPE["batch"], SHAPE["frames"], SHAPE["pairs"]
    images = jax.ShapeDtypeStruct((b, n, SHAPE["height"], SHAPE["width"], 3), jnp.float32)
    pairs = jnp.asarray(np.tile([[(i % n, (i + 1) % n) for i in range(s)]], (b, 1, 1)), jnp.int32)

    def forward(st, x):
        return nnx.merge(graphdef, st)(x, pairs)

    def gradients(st, x):
        params, rest = st.split(nnx.Param, ...)

        def scalar(p):
            return sum(jnp.mean(v) for v in nnx.merge(graphdef, p, rest)(x, pairs).values())

        return jax.grad(scalar)(params)

    return forward, gradients, state, images


def _within(analytic: float, xla: float) -> None:
    assert 0.95 * xla <= analytic <= 1.005 * xla, f"analytic {analytic / 1e9:.4f} GFLOP vs XLA {xla / 1e9:.4f}"


def test_forward_matches_xla_cost_analysis():
    cfg = _wide_tiny("none")
    forward, _, state, images = _model_fns(cfg)
    _within(sum(flops.forward_flops(cfg, **SHAPE).values()), _xla_flops(forward, state, images))


def test_train_step_with_full_remat_matches_xla_cost_analysis():
    cfg = _wide_tiny("full")
    _, gradients, state, images = _model_fns(cfg)
    step = flops.train_step_flops(cfg, **SHAPE)
    assert step.recompute > 0
    _within(step.total, _xla_flops(gradients, state, images))


def test_train_step_convention():
    cfg = get_model_config("flow3r_large")
    shape = dict(batch=1, frames=2, height=224, width=224, pairs=2)
    fwd = sum(flops.forward_flops(cfg, **shape).values())
    # ~2 FLOPs per parameter and token dominate: 1.0e9 parameters, 2 x 261 tokens.
    assert 0.8e12 < fwd < 2e12
    step = flops.train_step_flops(cfg, **shape)
    assert step.forward == fwd and step.recompute == 0 and 2.9 < step.model / fwd < 3.0
    frozen = flops.train_step_flops(cfg, **shape, frozen=("encoder",))
    # Without the encoder's gradients: its weight gradients (1x every product) and its activation
    # gradients (1x every block product, 2x the attention products; images take none).
    enc = {k: v for k, v in flops.forward_flops(cfg, **shape).items() if k.startswith("encoder/")}
    saved = sum(enc.values()) + enc["encoder/attention_proj"] + enc["encoder/mlp"] + enc["encoder/attention"]
    assert frozen.backward == pytest.approx(step.backward - saved, rel=1e-9)
    cfg.remat_policy = "dots"
    dots = flops.train_step_flops(cfg, **shape)
    attention = sum(v for k, v in flops.forward_flops(cfg, **shape).items() if k.endswith("/attention"))
    assert dots.recompute == attention and dots.total == dots.model + attention


def test_frozen_modules_from_the_optimizer_mask():
    config = common.get_base_config()
    config.optimizer.param_groups = (("^encoder/", 0.0, False, True),)
    params = nnx.state(nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0))), nnx.Param)
    assert flops.frozen_modules(optimizer_lib.frozen_mask(params, config.optimizer)) == ("encoder",)


def test_peak_and_mfu():
    cpu_peak = perf.measured_cpu_flops()
    assert cpu_peak > 1e8
    assert perf.peak_flops(jax.devices()[:1]) == cpu_peak
    assert perf.peak_flops(jax.devices()[:2], peak_tflops=100.0) == 200e12
    assert perf.mfu(1e12, 2.0, 1e12) == 0.5
