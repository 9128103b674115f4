"""Attention implementations (flow3r_jax/models/attention.py) against the XLA reference, and the
choice reaching the model from the command line.

Tolerance: float32 inputs ~N(0, 1), outputs and the gradients of q, k, v (of sum(out * cotangent))
within 2e-5 absolute + 2e-5 relative of jax.nn.dot_product_attention(implementation="xla")
(measured differences are below 3e-6). Token counts are odd so every kernel pads and masks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from flow3r_jax import sharding
from flow3r_jax.models import build_model
from flow3r_jax.models.attention import (
    IMPLEMENTATIONS,
    check_implementation,
    dot_product_attention,
    resolve_implementation,
)
from flow3r_jax.models.layers import Attention

TOL = dict(atol=2e-5, rtol=2e-5)
# Two clips of three frames of 7 tokens, 2 heads of 8 channels.
CLIPS, FRAMES, TOKENS, HEADS, DIM = 2, 3, 7, 2, 8


def _inputs(shape, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=shape), dtype) for _ in range(4)]


def _layout(layout, tokens=TOKENS):
    """Frame layout: (clips * frames, tokens) sequences; global layout: (clips, frames * tokens)."""
    if layout == "frame":
        return (CLIPS * FRAMES, tokens, HEADS, DIM)
    return (CLIPS, FRAMES * tokens, HEADS, DIM)


def _value_and_grads(implementation, q, k, v, cotangent, **kwargs):
    """(output, (dq, dk, dv)) of the attention, gradients of sum(output * cotangent)."""
    def run(q, k, v, cotangent):
        out, vjp = jax.vjp(lambda *qkv: dot_product_attention(*qkv, implementation=implementation, **kwargs),
                           q, k, v)
        return out, vjp(cotangent)

    return jax.jit(run)(q, k, v, cotangent)


def _assert_matches_reference(implementation, q, k, v, cotangent, **kwargs):
    out, grads = _value_and_grads(implementation, q, k, v, cotangent, **kwargs)
    ref_out, ref_grads = _value_and_grads("xla", q, k, v, cotangent)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), **TOL)
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), err_msg=f"d{name}", **TOL)


@pytest.mark.parametrize("layout", ["frame", "global"])
@pytest.mark.parametrize("chunk_size", [4, 512])
def test_chunked_matches_reference(layout, chunk_size):
    # chunk 4: 7 tokens -> 2 chunks of 4 (1 padded key), 21 tokens -> 6 chunks of 4 (3 padded);
    # chunk 512: one chunk, no padding.
    _assert_matches_reference("chunked", *_inputs(_layout(layout)), chunk_size=chunk_size)


@pytest.mark.parametrize("layout", ["frame", "global"])
def test_splash_kernel_in_interpret_mode_matches_reference(layout):
    # 67 tokens per frame: frame layout pads 67 -> 128 (one block), global layout 134 -> 256 (2 x 2
    # blocks of 128 in the forward, dq and dkv kernels).
    _assert_matches_reference("splash", *_inputs(_layout(layout, tokens=67)), splash_block=128, interpret=True)


def test_chunked_bfloat16_stays_close_to_float32_reference():
    q, k, v, ct = _inputs(_layout("global"), seed=1)
    out = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), implementation="chunked", chunk_size=4)
    assert out.dtype == jnp.bfloat16
    ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=3e-2)


@pytest.mark.parametrize("implementation, kwargs", [
    ("chunked", dict(chunk_size=4)), ("xla", {}), ("splash", dict(splash_block=128, interpret=True))])
@pytest.mark.parametrize("clips", [4, 1])
def test_sharded_over_the_mesh_matches_unsharded(implementation, kwargs, clips):
    # Batch over (data, fsdp) = 4 devices, heads over tensor = 2; with 1 clip the batch axis cannot be
    # split and stays whole on every device.
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    q, k, v, ct = _inputs((clips, FRAMES * TOKENS, HEADS, DIM), seed=2)
    ref_out, ref_grads = _value_and_grads("xla", q, k, v, ct)
    with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
        spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, "tensor", None))
        q, k, v, ct = (jax.device_put(x, spec) for x in (q, k, v, ct))
        out, grads = _value_and_grads(implementation, q, k, v, ct, **kwargs)
    per_device_batch = clips // 4 if clips % 4 == 0 else clips
    assert out.sharding.shard_shape(out.shape) == (per_device_batch, FRAMES * TOKENS, HEADS // 2, DIM)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), **TOL)
    for g, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), **TOL)


def test_chunked_memory_is_linear_in_tokens():
    # 4,096 tokens, 2 heads: the score matrix alone is 128 MiB in float32; the chunked forward and
    # backward need a few 512 x 512 blocks and buffers the size of q.
    shape = (1, 4096, 2, 8)
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)

    def loss(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, implementation="chunked"))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec).compile()
    scores_bytes = shape[0] * shape[2] * shape[1] ** 2 * 4
    assert compiled.memory_analysis().temp_size_in_bytes < scores_bytes / 8


@pytest.mark.parametrize("implementation", ["cudnn", "splash"])
def test_hardware_kernels_fail_on_cpu_naming_kernel_and_platform(implementation):
    q, k, v, _ = _inputs(_layout("frame"))
    with pytest.raises(ValueError, match=rf"'{implementation}' runs on (gpu|tpu) only.*runs on cpu"):
        dot_product_attention(q, k, v, implementation=implementation)


def test_auto_chooses_by_platform_and_dtype():
    assert resolve_implementation("auto", jnp.bfloat16, "tpu") == "splash"
    assert resolve_implementation("auto", jnp.float32, "tpu") == "splash"
    assert resolve_implementation("auto", jnp.bfloat16, "gpu") == "cudnn"
    assert resolve_implementation("auto", jnp.float32, "gpu") == "chunked"
    assert resolve_implementation("auto", jnp.bfloat16, "cpu") == "chunked"


def test_unknown_implementation_fails_with_the_valid_names():
    with pytest.raises(ValueError, match="'flash'.*" + ".*".join(IMPLEMENTATIONS)):
        check_implementation("flash")


def _parse_like_launch(*overrides):
    """Parses `overrides` with the config flag exactly as tools/launch.py defines it."""
    argv = ["launch.py", "--config=configs/flow3r_tiny.py", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Training config file (ml_collections).",
                                    flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def _attention_modules(model):
    return [node for _, node in nnx.iter_graph(model) if isinstance(node, Attention)]


@pytest.mark.parametrize("choice", ["chunked", "xla"])
def test_command_line_choice_reaches_every_attention(choice):
    config = _parse_like_launch(f"--config.model.attention_impl={choice}")
    model = build_model(config.model, rngs=nnx.Rngs(0))
    impls = [m.attention_impl for m in _attention_modules(model)]
    # encoder, decoder frame + global, point / conf / camera decoders
    assert len(impls) == 6 and set(impls) == {choice}


def test_default_is_auto_and_unknown_choice_stops_the_model_build():
    assert _parse_like_launch().model.attention_impl == "auto"
    config = _parse_like_launch("--config.model.attention_impl=flash")
    with pytest.raises(ValueError, match="model.attention_impl 'flash'.*'chunked'"):
        build_model(config.model, rngs=nnx.Rngs(0))
