"""The multi-view decoder (alternating frame / global attention) and the per-output decoders."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from flow3r_jax.models.layers import Block, linear, scan_layers, stacked
from flow3r_jax.sharding import constrain


class AlternatingDecoder(nnx.Module):
    """`depth` RoPE blocks with qk-norm and LayerScale; even blocks attend within each frame, odd
    blocks across all frames of a sample. Scanned over (frame, global) block pairs.

    Parameters live in `frame_blocks` (PyTorch decoder.0, .2, ...) and `global_blocks`
    (decoder.1, .3, ...), each stacked over depth/2 layers.
    """

    def __init__(self, cfg, *, attention_impl, remat_policy: str, scan_unroll: bool, dtype, rngs: nnx.Rngs):
        if cfg.depth % 2:
            raise ValueError(f"decoder depth must be even (frame/global pairs), got {cfg.depth}")
        self.rope_base, self.remat_policy, self.scan_unroll = cfg.rope_base, remat_policy, scan_unroll

        def make(r):
            return Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, layerscale_init=cfg.layerscale_init,
                         qk_norm=True, attention_impl=attention_impl, dtype=dtype, rngs=r)

        self.frame_blocks = stacked(make, cfg.depth // 2, rngs)
        self.global_blocks = stacked(make, cfg.depth // 2, rngs)

    def __call__(self, tokens, positions, num_frames: int):
        """tokens (B*N, T, C), positions (B*N, T, 2) -> (B*N, T, 2C): concatenated outputs of the last
        two blocks (the last frame block first)."""
        bn, t, c = tokens.shape
        b = bn // num_frames
        global_positions = positions.reshape(b, num_frames * t, 2)

        def pair_step(pair, carry):
            x, _ = carry
            frame_out = pair.frame(x, positions, self.rope_base)
            g = constrain(frame_out.reshape(b, num_frames * t, c), ("batch", "tokens", "act_embed"))
            global_out = pair.global_(g, global_positions, self.rope_base).reshape(bn, t, c)
            return (global_out, frame_out), None

        (last, before_last), _ = scan_layers(
            _Pair(self.frame_blocks, self.global_blocks), (tokens, tokens), pair_step, self.remat_policy,
            self.scan_unroll)
        return constrain(jnp.concatenate([before_last, last], axis=-1), ("batch", "tokens", "act_embed"))


class _Pair(nnx.Module):
    """View of one (frame, global) block pair, so the pair scans as one stacked module."""

    def __init__(self, frame, global_):
        self.frame, self.global_ = frame, global_


class OutputDecoder(nnx.Module):
    """pi3's TransformerDecoder: Linear in_dim -> width, `depth` frame-local RoPE blocks (no LayerScale,
    no qk-norm), Linear width -> out_dim. Returns (output, per-block outputs (depth, BN, T, width))."""

    def __init__(self, in_dim: int, cfg, out_dim: int, rope_base: float, *, attention_impl, remat_policy: str,
                 scan_unroll: bool, dtype, rngs: nnx.Rngs):
        self.rope_base, self.remat_policy, self.scan_unroll = rope_base, remat_policy, scan_unroll
        self.projects = linear(in_dim, cfg.embed_dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.blocks = stacked(
            lambda r: Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, layerscale_init=None, qk_norm=False,
                            attention_impl=attention_impl, dtype=dtype, rngs=r),
            cfg.depth, rngs)
        self.linear_out = linear(cfg.embed_dim, out_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)

    def __call__(self, hidden, positions):
        x = constrain(self.projects(hidden), ("batch", "tokens", "act_embed"))

        def step(blk, h):
            h = blk(h, positions, self.rope_base)
            return h, h

        x, per_block = scan_layers(self.blocks, x, step, self.remat_policy, self.scan_unroll)
        return self.linear_out(x), per_block
