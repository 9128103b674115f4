"""Dense per-patch linear heads (points, confidence) and the camera head. Run in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flow3r_jax.models.layers import linear


class PatchLinearHead(nnx.Module):
    """Linear token -> out_dim * p * p values, pixel-shuffled to full resolution.

    tokens (BN, h*w, C) -> (BN, h*p, w*p, out_dim). The value for output channel c at sub-pixel
    (i, j) of a patch is projection channel c*p*p + i*p + j (torch.nn.functional.pixel_shuffle order).
    """

    def __init__(self, in_dim: int, out_dim: int, patch_size: int, *, rngs: nnx.Rngs):
        self.out_dim, self.patch_size = out_dim, patch_size
        self.proj = linear(in_dim, out_dim * patch_size ** 2, ("embed", None), dtype=jnp.float32, rngs=rngs)

    def __call__(self, tokens, grid_h: int, grid_w: int):
        p = self.patch_size
        x = self.proj(tokens.astype(jnp.float32))
        x = x.reshape(-1, grid_h, grid_w, self.out_dim, p, p)
        x = x.transpose(0, 1, 4, 2, 5, 3)
        return x.reshape(-1, grid_h * p, grid_w * p, self.out_dim)


class ResidualMlpBlock(nnx.Module):
    """res + relu(l3(relu(l2(relu(l1(res))))))  (pi3's ResConvBlock with 1x1 convs as Linears)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.res_conv1 = linear(dim, dim, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs)
        self.res_conv2 = linear(dim, dim, ("mlp", "embed"), dtype=jnp.float32, rngs=rngs)
        self.res_conv3 = linear(dim, dim, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs)

    def __call__(self, res):
        x = jax.nn.relu(self.res_conv1(res))
        x = jax.nn.relu(self.res_conv2(x))
        x = jax.nn.relu(self.res_conv3(x))
        return res + x


def svd_orthogonalize(raw):
    """(..., 9) -> (..., 3, 3) proper rotation: rows of the row-major 3x3 are L2-normalised, the
    transpose is decomposed as U S V^T, and R = V diag(1, 1, det(V U^T)) U^T."""
    m = raw.reshape(raw.shape[:-1] + (3, 3))
    m = m / jnp.maximum(jnp.linalg.norm(m, axis=-1, keepdims=True), 1e-12)
    u, _, vh = jnp.linalg.svd(jnp.swapaxes(m, -1, -2), full_matrices=False)
    v = jnp.swapaxes(vh, -1, -2)
    ut = jnp.swapaxes(u, -1, -2)
    det = jnp.linalg.det(v @ ut)
    v = jnp.concatenate([v[..., :2], v[..., 2:] * det[..., None, None]], axis=-1)
    return v @ ut


class CameraHead(nnx.Module):
    """Patch tokens (BN, h*w, C) -> camera-to-world (BN, 4, 4), OpenCV axes.

    Two residual MLP blocks per patch, mean over patches, two Linear+ReLU, then translation (3) and a
    9-value rotation projected onto SO(3) (`svd_orthogonalize`).
    """

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.res_conv = nnx.List([ResidualMlpBlock(dim, rngs=rngs) for _ in range(2)])
        self.more_mlps = nnx.List([linear(dim, dim, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs),
                                   linear(dim, dim, ("mlp", "embed"), dtype=jnp.float32, rngs=rngs)])
        self.fc_t = linear(dim, 3, ("embed", None), dtype=jnp.float32, rngs=rngs)
        self.fc_rot = linear(dim, 9, ("embed", None), dtype=jnp.float32, rngs=rngs)

    def raw_outputs(self, tokens):
        """(rotation 9-vector (BN, 9), translation (BN, 3)) before the SVD step."""
        x = tokens.astype(jnp.float32)
        for block in self.res_conv:
            x = block(x)
        x = x.mean(axis=1)
        for layer in self.more_mlps:
            x = jax.nn.relu(layer(x))
        return self.fc_rot(x), self.fc_t(x)

    def __call__(self, tokens):
        rot_raw, trans = self.raw_outputs(tokens)
        rot = svd_orthogonalize(rot_raw)
        top = jnp.concatenate([rot, trans[..., None]], axis=-1)
        bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], jnp.float32), top.shape[:-2] + (1, 4))
        return jnp.concatenate([top, bottom], axis=-2)
