"""Multi-head attention kernels behind one entry point, chosen by name (`model.attention_impl`).

Every attention of the model calls `dot_product_attention(q, k, v, implementation=...)` on channel-last
tensors (batch, tokens, heads, head_dim) with the softmax scale head_dim**-0.5 and no mask. The
decoder's frame blocks attend within each frame (batch = clips x frames, tokens = 1,374 at 518x518),
its global blocks across all frames of a clip (batch = clips, tokens = frames x 1,374), so the
global score matrix is quadratic in the clip's token count: only the implementations below that
never materialise it scale to long clips.

Implementations (`IMPLEMENTATIONS`):
  "xla"      jax.nn.dot_product_attention(implementation="xla"): the reference; materialises the full
             (batch, heads, tokens, tokens) score matrix in the forward and backward passes.
  "chunked"  flash-style attention in plain XLA (`chunked_attention`): queries and keys in chunks,
             an online softmax, and a custom VJP that saves only the output and the per-query
             logsumexp and recomputes each score chunk in the backward pass. Memory is linear in
             the token count; runs on every platform (the CPU choice and the fallback).
  "cudnn"    cuDNN's fused flash attention through jax.nn.dot_product_attention(implementation=
             "cudnn"); NVIDIA GPUs, bfloat16/float16 inputs.
  "splash"   the Pallas/Mosaic TPU splash-attention kernel (jax.experimental.pallas.ops.tpu.
             splash_attention) with its fused forward and backward kernels; TPUs (and Pallas
             interpret mode on any platform, for tests).
  "auto"     by platform: TPU -> "splash"; GPU -> "cudnn" for 16-bit inputs, else "chunked";
             CPU -> "chunked".
A kernel that cannot run on the current platform raises an error naming it and the platform; nothing
falls back silently.

Choices pinned here:
- The chunked kernel is written here (about a hundred lines of jnp) rather than taken from tokamax
  (`xla_chunked`): tokamax releases that support jax 0.10 require Python >= 3.12, and this project
  runs on Python 3.11.
- The TPU kernel is splash attention rather than the older Pallas `flash_attention` of the same
  package: splash has fused forward/backward kernels, handles padding through segment ids, and runs
  in Pallas interpret mode, so its exact code path (padding included) is tested on CPU.
- Token counts that are not multiples of a kernel's block are padded; padded keys are masked
  (chunked: -inf scores; splash: a separate segment id), padded queries are dropped from the output.
- Under a mesh (flow3r_jax.sharding.use_rules) every implementation runs inside shard_map with
  batch and heads sharded as the logical rules map "batch" and "act_heads" (tokens whole on each
  device, as attention needs them); an axis whose size the mesh axes do not divide stays whole.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "splash")
# Platforms (jax.default_backend()) each hardware kernel runs on.
KERNEL_PLATFORMS = {"cudnn": ("gpu", "cuda"), "splash": ("tpu",)}
# Query / key chunk of the chunked kernel: a (batch, heads, 512, 512) float32 score block per step.
DEFAULT_CHUNK = 512
# Query / key block of the splash kernel (multiples of 128, the TPU lane width).
DEFAULT_SPLASH_BLOCK = 512
_LANES = 128


def check_implementation(name) -> str:
    """Returns `name` if it is a known implementation; ValueError listing the valid names otherwise."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention_impl {name!r} is not an attention implementation; "
                         f"expected one of {IMPLEMENTATIONS}")
    return name


def resolve_implementation(name: str, dtype, platform: str | None = None) -> str:
    """The concrete implementation `name` stands for on `platform` (default: jax.default_backend())
    for inputs of `dtype`; "auto" is resolved, the others are returned after a platform check."""
    platform = platform or jax.default_backend()
    check_implementation(name)
    if name == "auto":
        if platform == "tpu":
            return "splash"
        if platform in KERNEL_PLATFORMS["cudnn"] and jnp.dtype(dtype).itemsize == 2:
            return "cudnn"
        return "chunked"
    if name in KERNEL_PLATFORMS and platform not in KERNEL_PLATFORMS[name]:
        raise ValueError(f"attention implementation {name!r} runs on {KERNEL_PLATFORMS[name][0]} only, "
                         f"but this process runs on {platform}; use 'auto' or 'chunked' here")
    return name


def dot_product_attention(q, k, v, *, implementation: str = "auto", chunk_size: int = DEFAULT_CHUNK,
                          splash_block: int = DEFAULT_SPLASH_BLOCK, interpret: bool = False):
    """Softmax(q k^T / sqrt(head_dim)) v for q, k, v (batch, tokens, heads, head_dim) -> like q.

    `implementation` is one of IMPLEMENTATIONS; `chunk_size` bounds the query/key chunks of "chunked",
    `splash_block` the blocks of "splash"; `interpret=True` runs "splash" in Pallas interpret mode
    (any platform; slow, for tests).
    """
    if not (q.shape == k.shape == v.shape and q.ndim == 4):
        raise ValueError(f"q, k, v must share one (batch, tokens, heads, head_dim) shape, got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    # Interpret mode emulates the TPU kernel anywhere, so it skips the platform check.
    name = "splash" if interpret and implementation == "splash" else resolve_implementation(implementation, q.dtype)
    if name in ("xla", "cudnn"):
        fn = functools.partial(jax.nn.dot_product_attention, implementation=name)
    elif name == "splash":
        fn = functools.partial(splash_attention, block=splash_block, interpret=interpret)
    else:
        fn = functools.partial(chunked_attention, chunk_size=chunk_size)
    return _over_mesh(fn, q, k, v)


def _over_mesh(fn, q, k, v):
    """Runs fn(q, k, v) per device under shard_map when a mesh and logical rules are active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not nn.get_logical_axis_rules():
        return fn(q, k, v)
    logical = nn.logical_to_mesh_axes(("batch", None, "act_heads", None))
    spec = PartitionSpec(*(_dividing_axes(axes, size, mesh) for axes, size in zip(logical, q.shape, strict=True)))
    return jax.shard_map(fn, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def _dividing_axes(axes, size: int, mesh):
    """`axes` (a mesh axis name, a tuple of them or None) if their total size divides `size`, else None."""
    if axes is None:
        return None
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    return axes if size % math.prod(mesh.shape[a] for a in names) == 0 else None


def _chunking(length: int, max_chunk: int) -> tuple[int, int]:
    """(number of chunks, chunk size) covering `length` with chunks of at most `max_chunk`, balanced so
    the padding (number x size - length) is smaller than the number of chunks."""
    count = -(-length // max_chunk)
    return count, -(-length // count)


def _pad_tokens(x, length: int):
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _split_chunks(x, count: int):
    """(B, count * c, ...) -> (count, B, c, ...)."""
    return jnp.moveaxis(x.reshape(x.shape[0], count, x.shape[1] // count, *x.shape[2:]), 1, 0)


def _merge_chunks(x):
    """(count, B, c, ...) -> (B, count * c, ...)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def chunked_attention(q, k, v, *, chunk_size: int = DEFAULT_CHUNK):
    """Memory-linear attention in XLA; q, k, v (B, T, heads, head_dim) -> (B, T, heads, head_dim).

    Queries and keys are cut into balanced chunks of at most `chunk_size` tokens (T padded by fewer
    tokens than there are chunks; padded keys masked). Scores, softmax statistics and accumulators
    are float32; the two matmuls per chunk take the input dtype. Peak temporary memory is one
    (B, heads, chunk, chunk) score block plus buffers the size of q.
    """
    length = q.shape[1]
    num_chunks, chunk = _chunking(length, chunk_size)
    padded = num_chunks * chunk
    out = _flash(*(_pad_tokens(x, padded) for x in (q, k, v)), length, chunk)
    return out[:, :length]


def _scores(q_chunk, k_chunk, key_valid, scale):
    """float32 scores (B, heads, cq, ck) of one query chunk against one key chunk, padded keys at -inf."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q_chunk, k_chunk, preferred_element_type=jnp.float32) * scale
    return jnp.where(key_valid, s, -jnp.inf)


def _chunks_of_keys(k, v, length: int, chunk: int):
    count = k.shape[1] // chunk
    key_valid = (jnp.arange(count * chunk) < length).reshape(count, 1, 1, 1, chunk)
    return _split_chunks(k, count), _split_chunks(v, count), key_valid


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _flash(q, k, v, length: int, chunk: int):
    return _flash_forward(q, k, v, length, chunk)[0]


def _flash_forward(q, k, v, length: int, chunk: int):
    """Padded q, k, v (B, n * chunk, H, D) -> (output like q, logsumexp (n, B, H, chunk) float32)."""
    batch, _, heads, dim = q.shape
    scale = dim ** -0.5
    k_chunks, v_chunks, key_valid = _chunks_of_keys(k, v, length, chunk)

    def one_query_chunk(q_chunk):
        def step(carry, keys):
            running_max, denominator, acc = carry
            k_chunk, v_chunk, valid = keys
            s = _scores(q_chunk, k_chunk, valid, scale)
            new_max = jnp.maximum(running_max, s.max(axis=-1))
            p = jnp.exp(s - new_max[..., None])
            correction = jnp.exp(running_max - new_max)
            denominator = denominator * correction + p.sum(axis=-1)
            acc = acc * correction[..., None] + jnp.einsum(
                "bhqk,bkhd->bhqd", p.astype(v.dtype), v_chunk, preferred_element_type=jnp.float32)
            return (new_max, denominator, acc), None

        stats = (batch, heads, q_chunk.shape[1])
        init = (jnp.full(stats, -jnp.inf, jnp.float32), jnp.zeros(stats, jnp.float32),
                jnp.zeros(stats + (dim,), jnp.float32))
        (running_max, denominator, acc), _ = jax.lax.scan(step, init, (k_chunks, v_chunks, key_valid))
        out = jnp.einsum("bhqd->bqhd", acc / denominator[..., None]).astype(q.dtype)
        return out, running_max + jnp.log(denominator)

    out, logsumexp = jax.lax.map(one_query_chunk, _split_chunks(q, q.shape[1] // chunk))
    return _merge_chunks(out), logsumexp


def _flash_fwd(q, k, v, length, chunk):
    out, logsumexp = _flash_forward(q, k, v, length, chunk)
    return out, (q, k, v, out, logsumexp)


def _flash_bwd(length, chunk, residuals, grad_out):
    """Gradients of q, k, v: one pass over key chunks, each against every query chunk, recomputing the
    probabilities from the saved logsumexp; dq accumulates in float32 across key chunks."""
    q, k, v, out, logsumexp = residuals
    scale = q.shape[-1] ** -0.5
    num_q = q.shape[1] // chunk
    k_chunks, v_chunks, key_valid = _chunks_of_keys(k, v, length, chunk)
    # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij, per query and head.
    delta = jnp.einsum("bqhd,bqhd->bhq", grad_out.astype(jnp.float32), out.astype(jnp.float32))
    delta = jnp.moveaxis(delta.reshape(delta.shape[0], delta.shape[1], num_q, chunk), 2, 0)
    queries = (_split_chunks(q, num_q), _split_chunks(grad_out, num_q), logsumexp, delta)

    def one_key_chunk(dq, keys):
        k_chunk, v_chunk, valid = keys

        def step(carry, query):
            dk, dv = carry
            q_chunk, g_chunk, lse, delta_chunk = query
            p = jnp.exp(_scores(q_chunk, k_chunk, valid, scale) - lse[..., None])
            dv = dv + jnp.einsum("bhqk,bqhd->bkhd", p.astype(grad_out.dtype), g_chunk,
                                 preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqhd,bkhd->bhqk", g_chunk, v_chunk, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_chunk[..., None]) * scale
            dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds.astype(q.dtype), q_chunk, preferred_element_type=jnp.float32)
            dq_chunk = jnp.einsum("bhqk,bkhd->bqhd", ds.astype(k.dtype), k_chunk, preferred_element_type=jnp.float32)
            return (dk, dv), dq_chunk

        zeros = jnp.zeros(k_chunk.shape, jnp.float32)
        (dk, dv), dq_parts = jax.lax.scan(step, (zeros, zeros), queries)
        return dq + dq_parts, (dk, dv)

    dq = jnp.zeros((num_q, q.shape[0], chunk) + q.shape[2:], jnp.float32)
    dq, (dk, dv) = jax.lax.scan(one_key_chunk, dq, (k_chunks, v_chunks, key_valid))
    return (_merge_chunks(dq).astype(q.dtype), _merge_chunks(dk).astype(k.dtype),
            _merge_chunks(dv).astype(v.dtype))


_flash.defvjp(_flash_fwd, _flash_bwd)


def splash_attention(q, k, v, *, block: int = DEFAULT_SPLASH_BLOCK, interpret: bool = False):
    """The Pallas TPU splash-attention kernel on q, k, v (B, T, heads, head_dim) -> (B, T, heads, head_dim).

    T is padded to a multiple of the block (`block`, or T rounded up to 128 lanes when shorter);
    padded tokens get segment id 1, real ones 0, so no real query sees a padded key. q is scaled by
    head_dim**-0.5 before the kernel (splash applies no scale).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    batch, length, heads, dim = q.shape
    block = min(block, -(-length // _LANES) * _LANES)
    padded = -(-length // block) * block
    q = q * jnp.asarray(dim ** -0.5, q.dtype)
    q, k, v = (jnp.einsum("bthd->bhtd", _pad_tokens(x, padded)) for x in (q, k, v))
    ids = (jnp.arange(padded) >= length).astype(jnp.int32)
    kernel = _splash_kernel(heads, padded, block, interpret)
    out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(q, k, v, SegmentIds(q=ids, kv=ids))
    return jnp.einsum("bhtd->bthd", out)[:, :length]


def _splash_kernel(heads: int, length: int, block: int, interpret: bool):
    """A splash kernel for `heads` heads attending over `length` tokens (full mask), blocks of `block`.

    Built afresh in each trace: the kernel holds its block-mask arrays, which are traced values
    inside shard_map and must not outlive the trace."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    mask = splash.MultiHeadMask([splash.FullMask((length, length)) for _ in range(heads)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                              block_kv_dq=block)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)

