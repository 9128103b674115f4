"""Factored flow head: flow from image i to image j from geometry latents of i and the pose latent of j."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flow3r_jax.models.dpt import DPTDecoder
from flow3r_jax.models.layers import layer_norm, linear


def gather_frames(x, frame_index):
    """x (B, N, ...) , frame_index (B, S) int -> (B, S, ...)."""
    idx = frame_index.reshape(frame_index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx.astype(jnp.int32), axis=1)


class FactoredFlowHead(nnx.Module):
    """For each pair (i, j) and each of 4 levels: concat[camera tokens of i per patch, camera tokens of j
    averaged over patches, point tokens of i] (3C) -> MLP 3C->2C->2C->C (ReLU) -> LayerNorm (eps 1e-5),
    shared across levels; the 4 fused grids go through a DPT decoder with 2 output channels.

    Output (B, S, H, W, 2): for each pixel of image i, its coordinates in image j in NDC
    (see flow3r_jax/geometry/ndc.py); no activation.
    """

    def __init__(self, in_dim: int, cfg, patch_size: int, *, rngs: nnx.Rngs):
        self.patch_size = patch_size
        self.mlp = nnx.List([linear(3 * in_dim, 2 * in_dim, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs),
                             linear(2 * in_dim, 2 * in_dim, ("mlp", "embed"), dtype=jnp.float32, rngs=rngs),
                             linear(2 * in_dim, in_dim, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs)])
        self.norm = layer_norm(in_dim, 1e-5, dtype=jnp.float32, rngs=rngs)
        self.dpt = DPTDecoder(in_dim, cfg.features, cfg.out_channels, 2, cfg.head_features, patch_size,
                              cfg.pos_embed_ratio, rngs=rngs)

    def fuse(self, point_tokens, camera_tokens, pair_indices):
        """point/camera tokens (B, N, h*w, C) of one level, pairs (B, S, 2) -> (B*S, h*w, C)."""
        cam_i = gather_frames(camera_tokens, pair_indices[..., 0])
        cam_j = gather_frames(camera_tokens, pair_indices[..., 1]).mean(axis=2, keepdims=True)
        pts_i = gather_frames(point_tokens, pair_indices[..., 0])
        x = jnp.concatenate([cam_i, jnp.broadcast_to(cam_j, cam_i.shape), pts_i], axis=-1).astype(jnp.float32)
        x = jax.nn.relu(self.mlp[0](x))
        x = jax.nn.relu(self.mlp[1](x))
        x = self.norm(self.mlp[2](x))
        return x.reshape((-1,) + x.shape[2:])

    def fused_levels(self, point_levels, camera_levels, pair_indices, grid_hw):
        """Lists of 4 (B, N, h*w, C) -> 4 fused grids (B*S, h, w, C)."""
        return [self.fuse(p, c, pair_indices).reshape((-1,) + tuple(grid_hw) + (p.shape[-1],))
                for p, c in zip(point_levels, camera_levels, strict=True)]

    def __call__(self, point_levels, camera_levels, pair_indices, image_hw):
        b, s = pair_indices.shape[:2]
        grid_hw = (image_hw[0] // self.patch_size, image_hw[1] // self.patch_size)
        grids = self.fused_levels(point_levels, camera_levels, pair_indices, grid_hw)
        flow = self.dpt(grids, image_hw)
        return flow.reshape((b, s) + flow.shape[1:])
