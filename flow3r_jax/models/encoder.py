"""DINOv2 ViT encoder with register tokens (ViT-L/14-reg in the released model), no mask token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flow3r_jax.models.layers import Block, layer_norm, scan_layers, stacked
from flow3r_jax.sharding import constrain, partitioned


def resize_pos_embed(pos_embed, grid_h: int, grid_w: int):
    """Resizes a (1, 1 + G*G, C) position embedding to a grid_h x grid_w patch grid.

    The class-token entry is kept; the G x G grid is resized bicubically with antialiasing (Keys
    cubic a = -0.5, kernel widened when downsampling), as torch's
    interpolate(mode="bicubic", antialias=True) computes it. Returns (1, 1 + grid_h*grid_w, C) float32.
    """
    cls_pos, grid = pos_embed[:, :1], pos_embed[0, 1:]
    side = int(round(grid.shape[0] ** 0.5))
    grid = grid.reshape(side, side, -1).astype(jnp.float32)
    if (grid_h, grid_w) != (side, side):
        grid = jax.image.resize(grid, (grid_h, grid_w, grid.shape[-1]), method="bicubic", antialias=True)
    return jnp.concatenate([cls_pos.astype(jnp.float32), grid.reshape(1, grid_h * grid_w, -1)], axis=1)


class Encoder(nnx.Module):
    """images (BN, H, W, 3), already ImageNet-normalised -> patch tokens (BN, h*w, C) after the final
    LayerNorm (DINOv2's `x_norm_patchtokens`)."""

    def __init__(self, cfg, patch_size: int, *, attention_impl, remat_policy: str, scan_unroll: bool, dtype,
                 rngs: nnx.Rngs):
        dim = cfg.embed_dim
        self.patch_size, self.remat_policy, self.scan_unroll = patch_size, remat_policy, scan_unroll
        self.num_register_tokens = cfg.num_register_tokens
        self.patch_embed = nnx.Conv(
            3, dim, kernel_size=(patch_size, patch_size), strides=(patch_size, patch_size), padding="VALID",
            dtype=dtype, param_dtype=jnp.float32,
            kernel_init=partitioned(nnx.initializers.lecun_normal(), (None, None, None, "embed")),
            bias_init=partitioned(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)
        init = nnx.initializers.truncated_normal(stddev=0.02)
        num_pos = cfg.pos_embed_grid ** 2 + 1
        self.cls_token = nnx.Param(init(rngs.params(), (1, 1, dim)), out_sharding=(None, None, "embed"))
        self.pos_embed = nnx.Param(init(rngs.params(), (1, num_pos, dim)), out_sharding=(None, None, "embed"))
        self.register_tokens = nnx.Param(
            init(rngs.params(), (1, cfg.num_register_tokens, dim)), out_sharding=(None, None, "embed"))
        self.blocks = stacked(
            lambda r: Block(dim, cfg.num_heads, cfg.mlp_ratio, layerscale_init=cfg.layerscale_init, qk_norm=False,
                            attention_impl=attention_impl, dtype=dtype, rngs=r),
            cfg.depth, rngs)
        self.norm = layer_norm(dim, 1e-6, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def tokens_in(self, images):
        """Tokens entering block 0: [cls, registers, patches row-major]; (BN, 1 + R + h*w, C)."""
        bn, height, width, _ = images.shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        patches = self.patch_embed(images.astype(self.dtype)).reshape(bn, grid_h * grid_w, -1)
        pos = resize_pos_embed(self.pos_embed[...], grid_h, grid_w).astype(self.dtype)
        cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (bn, 1, patches.shape[-1])) + pos[:, :1]
        regs = jnp.broadcast_to(self.register_tokens[...].astype(self.dtype), (bn,) + self.register_tokens.shape[1:])
        x = jnp.concatenate([cls, regs, patches + pos[:, 1:]], axis=1)
        return constrain(x, ("batch", "tokens", "act_embed"))

    def __call__(self, images):
        x = self.tokens_in(images)
        x, _ = scan_layers(self.blocks, x, lambda blk, h: (blk(h), None), self.remat_policy, self.scan_unroll)
        x = self.norm(x)
        return x[:, 1 + self.num_register_tokens:]
