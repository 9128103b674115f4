"""Tracking flow head: flow from image i to image j from appearance features alone (VGGT-style).

Every frame gets a dense descriptor map from its own point-decoder tokens (4 levels, registers
dropped) through the DPT decoder; no pose latent enters. For a pair (i, j) the descriptors are
average-pooled by `corr_stride`, L2-normalised and correlated (every pooled position of i against
every pooled position of j); a softmax over j's positions (temperature `temperature`) gives the
soft-argmax expected position in j, in NDC, which is resized (linear, pixel-centre aligned) to the full
pixel grid of i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flow3r_jax.geometry.ndc import pixel_grid, pixel_to_ndc
from flow3r_jax.models.dpt import DPTDecoder
from flow3r_jax.models.flow_head import gather_frames


def pooled_ndc_grid(height: int, width: int, stride: int):
    """(height // stride, width // stride, 2) NDC coordinates (of the full H x W image) of the centres of
    the stride x stride pooling blocks."""
    centres = pixel_grid(height // stride, width // stride, jnp) * stride + (stride - 1) / 2.0
    return pixel_to_ndc(centres, height, width)


class TrackingFlowHead(nnx.Module):
    """Per-frame descriptors (DPT, `tracking.descriptor_dim` channels) -> correlation -> soft-argmax.

    Output (B, S, H, W, 2): for each pixel of image i, its expected coordinates in image j in NDC.
    """

    def __init__(self, in_dim: int, cfg, patch_size: int, *, rngs: nnx.Rngs):
        if patch_size % cfg.tracking.corr_stride:
            raise ValueError(f"model.flow_head.tracking.corr_stride={cfg.tracking.corr_stride} must divide "
                             f"the patch size {patch_size}")
        self.patch_size = patch_size
        self.stride = cfg.tracking.corr_stride
        self.temperature = cfg.tracking.temperature
        self.dpt = DPTDecoder(in_dim, cfg.features, cfg.out_channels, cfg.tracking.descriptor_dim,
                              cfg.head_features, patch_size, cfg.pos_embed_ratio, rngs=rngs)

    def descriptors(self, point_levels, image_hw):
        """4 point-decoder levels (B, N, h*w, C) -> (B, N, H/stride, W/stride, D) unit descriptors."""
        b, n = point_levels[0].shape[:2]
        grid_hw = (image_hw[0] // self.patch_size, image_hw[1] // self.patch_size)
        grids = [p.reshape((b * n,) + grid_hw + (p.shape[-1],)) for p in point_levels]
        dense = self.dpt(grids, image_hw)
        s = self.stride
        pooled = dense.reshape(b * n, image_hw[0] // s, s, image_hw[1] // s, s, -1).mean(axis=(2, 4))
        pooled = pooled / jnp.sqrt(jnp.sum(pooled * pooled, axis=-1, keepdims=True) + 1e-12)
        return pooled.reshape((b, n) + pooled.shape[1:])

    def __call__(self, point_levels, pair_indices, image_hw):
        desc = self.descriptors(point_levels, image_hw)
        b, s = pair_indices.shape[:2]
        hp, wp, dim = desc.shape[2:]
        src = gather_frames(desc, pair_indices[..., 0]).reshape(b, s, hp * wp, dim)
        tgt = gather_frames(desc, pair_indices[..., 1]).reshape(b, s, hp * wp, dim)
        logits = jnp.einsum("bspd,bsqd->bspq", src, tgt) / self.temperature
        weights = jax.nn.softmax(logits, axis=-1)
        targets = pooled_ndc_grid(image_hw[0], image_hw[1], self.stride).reshape(hp * wp, 2)
        expected = jnp.einsum("bspq,qc->bspc", weights, targets).reshape(b, s, hp, wp, 2)
        return jax.image.resize(expected, (b, s) + tuple(image_hw) + (2,), method="linear")
