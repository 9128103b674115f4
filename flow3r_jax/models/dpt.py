"""DPT dense decoder: four token grids -> a full-resolution map. Used by every dense DPT-style head.

Channel-last throughout: inputs are (B, h, w, C) patch grids, the output is (B, H, W, output_dim) with
H = h * patch_size, W = w * patch_size. Every bilinear resize uses align_corners=True. The residual
conv units add relu(x) (not x) as their skip, as the reference implementation's in-place ReLU does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flow3r_jax.models.layers import linear
from flow3r_jax.sharding import partitioned

_CONV_NAMES = (None, None, "conv_in", "conv_out")


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, use_bias: bool = True, rngs: nnx.Rngs) -> nnx.Conv:
    """float32 2D convolution with torch-style symmetric padding kernel // 2."""
    pad = kernel // 2
    return nnx.Conv(in_ch, out_ch, kernel_size=(kernel, kernel), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=jnp.float32, param_dtype=jnp.float32,
                    kernel_init=partitioned(nnx.initializers.lecun_normal(), _CONV_NAMES),
                    bias_init=partitioned(nnx.initializers.zeros_init(), ("conv_out",)), rngs=rngs)


class PatchUpsample(nnx.Module):
    """Transposed convolution with kernel == stride == `factor` (non-overlapping): every input pixel
    becomes a factor x factor block. kernel (in, factor, factor, out)."""

    def __init__(self, channels: int, factor: int, *, rngs: nnx.Rngs):
        self.factor = factor
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (channels, factor, factor, channels), jnp.float32),
                                out_sharding=("conv_in", None, None, "conv_out"))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32), out_sharding=("conv_out",))

    def __call__(self, x):
        b, h, w, _ = x.shape
        f = self.factor
        y = jnp.einsum("bhwc,cijo->bhiwjo", x, self.kernel[...]).reshape(b, h * f, w * f, -1)
        return y + self.bias[...]


def _interp_matrix(n_in: int, n_out: int):
    """(n_out, n_in) linear-interpolation weights with align_corners=True."""
    if n_out == 1:
        src = jnp.zeros((1,), jnp.float32)
    else:
        src = jnp.arange(n_out, dtype=jnp.float32) * ((n_in - 1) / (n_out - 1))
    lo = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n_in - 1)
    hi = jnp.minimum(lo + 1, n_in - 1)
    frac = src - lo.astype(jnp.float32)
    return jax.nn.one_hot(lo, n_in) * (1.0 - frac)[:, None] + jax.nn.one_hot(hi, n_in) * frac[:, None]


def resize_bilinear_align_corners(x, size: tuple[int, int]):
    """(B, h, w, C) -> (B, size[0], size[1], C), bilinear with align_corners=True."""
    mh = _interp_matrix(x.shape[1], size[0])
    mw = _interp_matrix(x.shape[2], size[1])
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


def uv_pos_embed(grid_h: int, grid_w: int, channels: int, aspect_ratio: float, omega_0: float = 100.0):
    """(grid_h, grid_w, channels) sin/cos embedding of a UV grid normalised so the image diagonal
    spans [-1, 1]: x-coordinate half first, then y; each half [sin, cos] with frequencies
    1 / omega_0 ** (arange(C/4) / (C/4))."""
    diag = (aspect_ratio ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = jnp.linspace(-span_x * (grid_w - 1) / grid_w, span_x * (grid_w - 1) / grid_w, grid_w, dtype=jnp.float32)
    ys = jnp.linspace(-span_y * (grid_h - 1) / grid_h, span_y * (grid_h - 1) / grid_h, grid_h, dtype=jnp.float32)
    quarter = channels // 4
    omega = 1.0 / omega_0 ** (jnp.arange(quarter, dtype=jnp.float32) / quarter)

    def sincos(pos):
        angles = pos[:, None] * omega
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)

    emb_x = jnp.broadcast_to(sincos(xs)[None], (grid_h, grid_w, 2 * quarter))
    emb_y = jnp.broadcast_to(sincos(ys)[:, None], (grid_h, grid_w, 2 * quarter))
    return jnp.concatenate([emb_x, emb_y], axis=-1)


class ResidualConvUnit(nnx.Module):
    """relu(x) + conv2(relu(conv1(relu(x))))."""

    def __init__(self, features: int, *, rngs: nnx.Rngs):
        self.conv1 = conv(features, features, 3, rngs=rngs)
        self.conv2 = conv(features, features, 3, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(x)
        return x + self.conv2(jax.nn.relu(self.conv1(x)))


class FusionBlock(nnx.Module):
    """RefineNet fusion: (x + rcu1(skip)) -> rcu2 -> bilinear resize -> 1x1 conv."""

    def __init__(self, features: int, has_skip: bool, *, rngs: nnx.Rngs):
        self.resConfUnit1 = ResidualConvUnit(features, rngs=rngs) if has_skip else None
        self.resConfUnit2 = ResidualConvUnit(features, rngs=rngs)
        self.out_conv = conv(features, features, 1, rngs=rngs)

    def __call__(self, x, skip=None, size=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
        return self.out_conv(resize_bilinear_align_corners(x, size))


class DPTDecoder(nnx.Module):
    """Four (B, h, w, in_dim) grids -> (B, h*p, w*p, output_dim).

    Level l: 1x1 projection to out_channels[l], optional UV position embedding, resize by
    x4 / x2 / x1 / x0.5, 3x3 conv to `features`; RefineNet fusion from the coarsest level; 3x3 conv to
    features/2; bilinear resize to full resolution (+ position embedding); 3x3 conv, ReLU, 1x1 conv.
    """

    def __init__(self, in_dim: int, features: int, out_channels, output_dim: int, head_features: int,
                 patch_size: int, pos_embed_ratio: float | None, *, rngs: nnx.Rngs):
        self.patch_size, self.pos_embed_ratio = patch_size, pos_embed_ratio
        oc = tuple(out_channels)
        self.projects = nnx.List([linear(in_dim, c, ("embed", "conv_out"), dtype=jnp.float32, rngs=rngs) for c in oc])
        self.resize0 = PatchUpsample(oc[0], 4, rngs=rngs)
        self.resize1 = PatchUpsample(oc[1], 2, rngs=rngs)
        self.resize3 = conv(oc[3], oc[3], 3, stride=2, rngs=rngs)
        self.layer_rn = nnx.List([conv(c, features, 3, use_bias=False, rngs=rngs) for c in oc])
        self.refinenet1 = FusionBlock(features, True, rngs=rngs)
        self.refinenet2 = FusionBlock(features, True, rngs=rngs)
        self.refinenet3 = FusionBlock(features, True, rngs=rngs)
        self.refinenet4 = FusionBlock(features, False, rngs=rngs)
        self.output_conv1 = conv(features, features // 2, 3, rngs=rngs)
        self.output_conv2a = conv(features // 2, head_features, 3, rngs=rngs)
        self.output_conv2b = conv(head_features, output_dim, 1, rngs=rngs)

    def _add_pos_embed(self, x, aspect_ratio: float):
        if self.pos_embed_ratio is None:
            return x
        return x + self.pos_embed_ratio * uv_pos_embed(x.shape[1], x.shape[2], x.shape[3], aspect_ratio)

    def __call__(self, grids, image_hw: tuple[int, int]):
        """grids: 4 arrays (B, h, w, in_dim); image_hw: (H, W) of the input images."""
        aspect = image_hw[1] / image_hw[0]
        resizes = (self.resize0, self.resize1, lambda x: x, self.resize3)
        levels = []
        for grid, project, resize, layer_rn in zip(grids, self.projects, resizes, self.layer_rn, strict=True):
            x = self._add_pos_embed(project(grid.astype(jnp.float32)), aspect)
            levels.append(layer_rn(resize(x)))
        l1, l2, l3, l4 = levels
        out = self.refinenet4(l4, size=l3.shape[1:3])
        out = self.refinenet3(out, l3, size=l2.shape[1:3])
        out = self.refinenet2(out, l2, size=l1.shape[1:3])
        out = self.refinenet1(out, l1)
        out = self.output_conv1(out)
        h, w = grids[0].shape[1] * self.patch_size, grids[0].shape[2] * self.patch_size
        out = self._add_pos_embed(resize_bilinear_align_corners(out, (h, w)), aspect)
        return self.output_conv2b(jax.nn.relu(self.output_conv2a(out)))
