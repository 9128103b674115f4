"""Transformer building blocks shared by the encoder, the decoder and the per-output decoders.

All activations are channel-last: tokens (batch, tokens, channels). Parameters are created in float32
and carry logical axis names (see flow3r_jax/sharding.py); matmuls run in the module's compute dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from flow3r_jax.models.attention import check_implementation, dot_product_attention
from flow3r_jax.models.rope import apply_rope2d
from flow3r_jax.sharding import constrain, partitioned

_trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def gelu(x):
    """Exact (erf) GELU, as torch.nn.GELU() computes it."""
    return jax.nn.gelu(x, approximate=False)


def linear(in_dim: int, out_dim: int, names: tuple, *, dtype, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    """nnx.Linear with logical axis names `names` = (in_name, out_name) on its kernel."""
    return nnx.Linear(
        in_dim, out_dim, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=partitioned(_trunc_normal, names), bias_init=partitioned(_zeros, names[1:]), rngs=rngs)


def layer_norm(dim: int, eps: float, *, dtype, rngs: nnx.Rngs, name: str = "norm") -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
        scale_init=partitioned(_ones, (name,)), bias_init=partitioned(_zeros, (name,)), rngs=rngs)


class LayerScale(nnx.Module):
    """Per-channel learnable scale `gamma` (C,)."""

    def __init__(self, dim: int, init_value: float):
        self.gamma = nnx.Param(jnp.full((dim,), init_value, jnp.float32), out_sharding=("norm",))

    def __call__(self, x):
        return x * self.gamma[...].astype(x.dtype)


class Mlp(nnx.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = linear(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = constrain(gelu(self.fc1(x)), ("batch", "tokens", "act_mlp"))
        return self.fc2(h)


class Attention(nnx.Module):
    """Multi-head self-attention with optional per-head LayerNorm on q/k and optional 2D RoPE.

    Parameters: `qkv_kernel` (C, 3, heads, head_dim) with the q, k, v order of the fused PyTorch
    `qkv` Linear, `qkv_bias` (3, heads, head_dim), `proj` Linear (C -> C). Softmax scale head_dim**-0.5.
    `attention_impl` names the kernel (flow3r_jax/models/attention.py: "auto", "xla", "chunked",
    "cudnn", "splash").
    """

    def __init__(self, dim: int, num_heads: int, *, qk_norm: bool, qk_norm_eps: float = 1e-5,
                 attention_impl: str, dtype, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        head_dim = dim // num_heads
        self.num_heads, self.head_dim, self.dtype = num_heads, head_dim, dtype
        self.attention_impl = check_implementation(attention_impl)
        key = rngs.params()
        self.qkv_kernel = nnx.Param(
            _trunc_normal(key, (dim, 3, num_heads, head_dim), jnp.float32),
            out_sharding=("embed", None, "heads", None))
        self.qkv_bias = nnx.Param(jnp.zeros((3, num_heads, head_dim), jnp.float32), out_sharding=(None, "heads", None))
        self.proj = linear(dim, dim, ("heads", "embed"), dtype=dtype, rngs=rngs)
        if qk_norm:
            self.q_norm = layer_norm(head_dim, qk_norm_eps, dtype=dtype, rngs=rngs)
            self.k_norm = layer_norm(head_dim, qk_norm_eps, dtype=dtype, rngs=rngs)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x, positions=None, rope_base: float = 100.0):
        """x (B, T, C); positions (B, T, 2) integer (row, col) or None for no RoPE."""
        qkv = jnp.einsum("bsc,ckhd->bskhd", x, self.qkv_kernel[...].astype(self.dtype))
        qkv = qkv + self.qkv_bias[...].astype(self.dtype)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if positions is not None:
            q = apply_rope2d(q, positions, rope_base)
            k = apply_rope2d(k, positions, rope_base)
        q, k, v = (constrain(t, ("batch", "tokens", "act_heads", None)) for t in (q, k, v))
        out = dot_product_attention(q, k, v, implementation=self.attention_impl)
        out = out.reshape(out.shape[0], out.shape[1], self.num_heads * self.head_dim)
        return self.proj(out)


class Block(nnx.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))); x + ls2(mlp(norm2(x))).

    `layerscale_init=None` drops LayerScale (the per-output decoders); `qk_norm` and RoPE are used by
    the decoder blocks, not by the DINOv2 encoder.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, *, layerscale_init: float | None,
                 qk_norm: bool, attention_impl: str, dtype, rngs: nnx.Rngs, norm_eps: float = 1e-6):
        self.norm1 = layer_norm(dim, norm_eps, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, attention_impl=attention_impl, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(dim, norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(dim, dim * mlp_ratio, dtype=dtype, rngs=rngs)
        if layerscale_init is None:
            self.ls1 = self.ls2 = None
        else:
            self.ls1 = LayerScale(dim, layerscale_init)
            self.ls2 = LayerScale(dim, layerscale_init)

    def __call__(self, x, positions=None, rope_base: float = 100.0):
        h = self.attn(self.norm1(x), positions, rope_base)
        x = x + (h if self.ls1 is None else self.ls1(h))
        h = self.mlp(self.norm2(x))
        x = x + (h if self.ls2 is None else self.ls2(h))
        return constrain(x, ("batch", "tokens", "act_embed"))


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stacked(make: Callable[[nnx.Rngs], nnx.Module], count: int, rngs: nnx.Rngs) -> nnx.Module:
    """Creates `count` independently initialised copies of a module, parameters stacked on axis 0
    (logical name "layers"), for use with `scan_layers`."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=count, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(layer_rngs):
        return make(layer_rngs)

    return create(rngs)


def scan_layers(layers: nnx.Module, carry, body: Callable, remat_policy: str = "none", unroll: bool = False):
    """Runs `body(layer, carry) -> (carry, y)` over the stacked layers with lax.scan.

    Each step is rematerialised with the named policy ("none", "full" or "dots"). `unroll=True`
    unrolls the scan fully (one copy of the body per layer: slower to compile, and XLA's cost
    analysis then counts every layer, where it counts a scanned body once); the rematerialised
    recompute is kept out of common-subexpression elimination there.
    Returns (final carry, stacked ys).
    """
    graphdef, state = nnx.split(layers)

    def step(c, layer_state):
        return body(nnx.merge(graphdef, layer_state), c)

    if remat_policy != "none":
        if remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {remat_policy!r}; expected 'none' or one of {sorted(REMAT_POLICIES)}")
        step = jax.checkpoint(step, policy=REMAT_POLICIES[remat_policy], prevent_cse=unroll)
    return jax.lax.scan(step, carry, state, unroll=unroll)
