"""Analytic FLOP count of the Flow3r forward pass and train step, from the model config and the input shape.

Convention: 2 FLOPs per multiply-add of every matrix product and convolution: linear layers, the fused
qkv projection, attention scores (q k^T) and weighted sums (p v), patch embedding and DPT convolutions,
the DPT's patch-upsampling (transposed) convolutions, and resizes computed as products with
interpolation matrices (bilinear DPT resizes, the encoder's bicubic position-embedding resize, the
tracking head's final resize). Ignored: elementwise work (norms, activations, softmax, RoPE, biases,
residual adds, LayerScale), reductions (means), gathers, the camera head's 3x3 SVDs. By XLA's count
(where one exact-GELU element is ~64 FLOPs) the ignored work is about 256 / (24 * width) of a
transformer block's, ~1% at the released width of 1024. Convolutions count the multiply-adds whose
input tap lies inside the image (zero padding excluded), as XLA does.

Train step (`train_step_flops`): the backward pass of a product costs one forward-equivalent for each
operand that needs a gradient: the activation input when anything it depends on is trainable, the
weight when its module is trainable. A linear layer inside a trainable stack costs 3x its forward
FLOPs, the patch embedding 2x (images take no gradient), a resize by a constant matrix 2x, and
modules that are frozen with nothing trainable upstream (a frozen encoder) cost their forward only:
XLA drops the unused gradients. The recompute of rematerialised blocks is counted separately:
`remat_policy="full"` recomputes the forward products of every scanned block whose outputs the
backward pass reads (all but those feeding only a residual sum), `"dots"` recomputes the products with
batch dimensions (attention scores and weighted sums; the projections and MLP outputs are
saved). `StepFlops.model` (forward + backward) is the figure for MFU (the PaLM convention: work the
model needs, not work the memory policy adds); `StepFlops.total` adds the recompute (what the
hardware executes).

Shapes: batch B, frames N, image H x W (multiples of the patch size), S flow pairs per sample (flow
head FLOPs only when S > 0 and the model has a flow head with parameters).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection

import jax

# The top-level modules of Flow3r in data-flow order, each with the modules its input depends on.
_UPSTREAM = {
    "encoder": (),
    "decoder": ("encoder", "register_token"),
    "point_decoder": ("encoder", "register_token", "decoder"),
    "conf_decoder": ("encoder", "register_token", "decoder"),
    "camera_decoder": ("encoder", "register_token", "decoder"),
    "point_head": ("encoder", "register_token", "decoder", "point_decoder"),
    "conf_head": ("encoder", "register_token", "decoder", "conf_decoder"),
    "camera_head": ("encoder", "register_token", "decoder", "camera_decoder"),
    "world_points": ("encoder", "register_token", "decoder", "point_decoder", "point_head", "camera_decoder",
                     "camera_head"),
    "flow_head": ("encoder", "register_token", "decoder", "point_decoder", "camera_decoder"),
}


@dataclasses.dataclass(frozen=True)
class _Product:
    """One matrix product or convolution (or a stack of identical ones) of the forward pass."""

    module: str        # top-level module owning the weight (key of _UPSTREAM)
    part: str          # breakdown label
    flops: float       # forward FLOPs
    weight: bool       # one operand is a parameter of `module`
    activations: int   # operands that are activations (get a gradient when anything upstream trains)
    scanned: str       # "" outside scanned blocks, else "dot" (no batch dims), "batched" (with batch dims)
                       # or "dot_residual" (no batch dims, output only added to the residual stream)


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """FLOPs of one train step: forward, backward and rematerialisation recompute."""

    forward: float
    backward: float
    recompute: float

    @property
    def model(self) -> float:
        """Forward + backward: the FLOPs of MFU."""
        return self.forward + self.backward

    @property
    def total(self) -> float:
        """Forward + backward + recompute: the FLOPs the hardware executes."""
        return self.model + self.recompute


class _Products(list):
    def add(self, module, part, flops, *, weight=True, activations=1, scanned=""):
        self.append(_Product(module, part, float(flops), weight, activations, scanned))

    def blocks(self, module, part, depth, sequences, tokens, dim, mlp_ratio, layerscale):
        """`depth` pre-norm transformer blocks over `sequences` sequences of `tokens` tokens. Without
        LayerScale the outputs of the attention projection and of the second MLP layer only enter a
        residual sum, so a rematerialised backward pass does not recompute them."""
        rows, residual = sequences * tokens, "dot" if layerscale else "dot_residual"
        self.add(module, f"{part}/attention_proj", depth * 2 * rows * dim * 3 * dim, scanned="dot")
        self.add(module, f"{part}/attention_proj", depth * 2 * rows * dim * dim, scanned=residual)
        self.add(module, f"{part}/attention", depth * 2 * 2 * sequences * tokens * tokens * dim, weight=False,
                 activations=2, scanned="batched")
        self.add(module, f"{part}/mlp", depth * 2 * rows * dim * mlp_ratio * dim, scanned="dot")
        self.add(module, f"{part}/mlp", depth * 2 * rows * dim * mlp_ratio * dim, scanned=residual)

    def conv(self, module, part, maps, height, width, kernel, c_in, c_out, stride=1):
        """Convolution with padding kernel // 2 on (maps, height, width, c_in) inputs."""
        taps = _valid_taps(height, kernel, stride) * _valid_taps(width, kernel, stride)
        self.add(module, part, 2 * maps * taps * c_in * c_out)


def _valid_taps(size: int, kernel: int, stride: int) -> int:
    """Kernel taps that land inside the input, summed over the output positions of one axis (padding
    kernel // 2 on both sides): the multiply-adds with a zero-padding operand are not counted."""
    pad = kernel // 2
    outputs = (size + 2 * pad - kernel) // stride + 1
    return sum(sum(0 <= o * stride - pad + k < size for k in range(kernel)) for o in range(outputs))


def separable_resize_flops(lead: int, in_hw: tuple[int, int], out_hw: tuple[int, int], channels: int) -> float:
    """FLOPs of resizing (lead, h, w, channels) maps to out_hw by one interpolation matrix per changed
    axis, contracted in the cheaper order (as jnp.einsum's path optimiser picks it)."""
    (h, w), (oh, ow) = in_hw, out_hw
    if h == oh and w == ow:
        return 0.0
    if w == ow:
        return 2.0 * lead * h * oh * w * channels
    if h == oh:
        return 2.0 * lead * h * w * ow * channels
    rows_first = 2.0 * lead * channels * (h * oh * w + oh * w * ow)
    cols_first = 2.0 * lead * channels * (h * w * ow + h * oh * ow)
    return min(rows_first, cols_first)


def _dpt(products: _Products, module: str, maps: int, grid_hw, in_dim: int, features: int, out_channels,
         head_features: int, output_dim: int, patch_size: int) -> None:
    """DPTDecoder (flow3r_jax/models/dpt.py) on `maps` sets of four (gh, gw, in_dim) grids."""
    gh, gw = grid_hw
    oc = tuple(out_channels)
    for c in oc:
        products.add(module, f"{module}/dpt_projections", 2 * maps * gh * gw * in_dim * c)
    products.add(module, f"{module}/dpt_upsample", 2 * maps * gh * gw * oc[0] * 16 * oc[0])
    products.add(module, f"{module}/dpt_upsample", 2 * maps * gh * gw * oc[1] * 4 * oc[1])
    half = (math.ceil(gh / 2), math.ceil(gw / 2))
    products.conv(module, f"{module}/dpt_convolutions", maps, gh, gw, 3, oc[3], oc[3], stride=2)
    sizes = [(4 * gh, 4 * gw), (2 * gh, 2 * gw), (gh, gw), half]
    for (h, w), c in zip(sizes, oc, strict=True):
        products.conv(module, f"{module}/dpt_convolutions", maps, h, w, 3, c, features)
    # RefineNet fusion from the coarsest level: residual conv units (2 convs each; one unit on the
    # coarsest level, two elsewhere), resize to the next level's size (x2 after the finest), 1x1 conv.
    fusion = [(sizes[3], sizes[2], 1), (sizes[2], sizes[1], 2), (sizes[1], sizes[0], 2),
              (sizes[0], (8 * gh, 8 * gw), 2)]
    for (h, w), out_hw, units in fusion:
        for _ in range(2 * units):
            products.conv(module, f"{module}/dpt_convolutions", maps, h, w, 3, features, features)
        products.add(module, f"{module}/dpt_resize", separable_resize_flops(maps, (h, w), out_hw, features),
                     weight=False)
        products.conv(module, f"{module}/dpt_convolutions", maps, *out_hw, 1, features, features)
    h, w = 8 * gh, 8 * gw
    full = (gh * patch_size, gw * patch_size)
    products.conv(module, f"{module}/dpt_convolutions", maps, h, w, 3, features, features // 2)
    products.add(module, f"{module}/dpt_resize", separable_resize_flops(maps, (h, w), full, features // 2),
                 weight=False)
    products.conv(module, f"{module}/dpt_convolutions", maps, *full, 3, features // 2, head_features)
    products.conv(module, f"{module}/dpt_convolutions", maps, *full, 1, head_features, output_dim)


def _products(cfg, batch: int, frames: int, height: int, width: int, pairs: int) -> _Products:
    p = cfg.patch_size
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
    gh, gw = height // p, width // p
    patches, bn = gh * gw, batch * frames
    out = _Products()

    enc = cfg.encoder
    out.add("encoder", "encoder/patch_embed", 2 * bn * patches * 3 * p * p * enc.embed_dim, activations=0)
    side = enc.pos_embed_grid
    out.add("encoder", "encoder/pos_embed_resize", separable_resize_flops(1, (side, side), (gh, gw), enc.embed_dim),
            activations=0)
    out.blocks("encoder", "encoder", enc.depth, bn, 1 + enc.num_register_tokens + patches, enc.embed_dim,
               enc.mlp_ratio, layerscale=True)

    dec = cfg.decoder
    tokens = dec.num_register_tokens + patches
    out.blocks("decoder", "decoder/frame", dec.depth // 2, bn, tokens, dec.embed_dim, dec.mlp_ratio, layerscale=True)
    out.blocks("decoder", "decoder/global", dec.depth // 2, batch, frames * tokens, dec.embed_dim, dec.mlp_ratio,
               layerscale=True)

    heads = cfg.heads
    for name, out_dim in (("point_decoder", heads.point_out_dim), ("conf_decoder", heads.point_out_dim),
                          ("camera_decoder", heads.camera_out_dim)):
        out.add(name, f"{name}/linear_in_out", 2 * bn * tokens * (2 * dec.embed_dim + out_dim) * heads.embed_dim)
        out.blocks(name, name, heads.depth, bn, tokens, heads.embed_dim, heads.mlp_ratio, layerscale=False)
    out.add("point_head", "point_head", 2 * bn * patches * heads.point_out_dim * 3 * p * p)
    out.add("conf_head", "conf_head", 2 * bn * patches * heads.point_out_dim * p * p)
    cam = heads.camera_out_dim
    out.add("camera_head", "camera_head", 2 * bn * (patches * 6 * cam * cam + 2 * cam * cam + 12 * cam))
    out.add("world_points", "world_points", 2 * bn * height * width * 9, weight=False, activations=2)

    flow = cfg.flow_head
    if pairs and flow.type == "factored":
        c = heads.embed_dim
        out.add("flow_head", "flow_head/fusion_mlp", 4 * 2 * batch * pairs * patches * 12 * c * c)
        _dpt(out, "flow_head", batch * pairs, (gh, gw), c, flow.features, flow.out_channels, flow.head_features,
             2, p)
    elif pairs and flow.type == "tracking":
        _dpt(out, "flow_head", bn, (gh, gw), heads.embed_dim, flow.features, flow.out_channels, flow.head_features,
             flow.tracking.descriptor_dim, p)
        stride = flow.tracking.corr_stride
        hp, wp = height // stride, width // stride
        out.add("flow_head", "flow_head/correlation",
                2 * batch * pairs * (hp * wp) ** 2 * flow.tracking.descriptor_dim, weight=False, activations=2)
        out.add("flow_head", "flow_head/soft_argmax", 2 * batch * pairs * (hp * wp) ** 2 * 2, weight=False)
        out.add("flow_head", "flow_head/resize", separable_resize_flops(batch * pairs, (hp, wp), (height, width), 2),
                weight=False)
    return out


def forward_flops(cfg, batch: int, frames: int, height: int, width: int, pairs: int = 0) -> dict[str, float]:
    """Forward FLOPs per part ("encoder/mlp", "decoder/global/attention", "flow_head/dpt_convolutions", ...)
    of the model config `cfg` (flow3r_jax/models/sizes.py) on images (batch, frames, height, width, 3)
    with `pairs` flow pairs per sample. sum(values) is the whole forward pass."""
    parts: dict[str, float] = {}
    for prod in _products(cfg, batch, frames, height, width, pairs):
        parts[prod.part] = parts.get(prod.part, 0.0) + prod.flops
    return parts


def train_step_flops(cfg, batch: int, frames: int, height: int, width: int, pairs: int = 0,
                     frozen: Collection[str] = ()) -> StepFlops:
    """FLOPs of one gradient step (forward, backward, recompute by cfg.remat_policy) of `cfg` on a batch
    of that shape. `frozen`: top-level modules whose parameters all take no update ("encoder", ...;
    see `frozen_modules`). Optimizer and loss work are not counted."""
    unknown = set(frozen) - set(_UPSTREAM) - {"register_token"}
    if unknown:
        raise ValueError(f"unknown frozen modules {sorted(unknown)}; known: {sorted(_UPSTREAM)}")
    trainable = {m for m in set(_UPSTREAM) | {"register_token"} if m not in frozen}
    forward = backward = recompute = 0.0
    for prod in _products(cfg, batch, frames, height, width, pairs):
        forward += prod.flops
        input_grad = bool(trainable & set(_UPSTREAM[prod.module] + (prod.module,)))
        weight_grad = prod.weight and prod.module in trainable
        backward += prod.flops * (prod.activations * input_grad + weight_grad)
        if prod.scanned and (input_grad or weight_grad) and (
                (cfg.remat_policy == "full" and prod.scanned != "dot_residual")
                or (cfg.remat_policy == "dots" and prod.scanned == "batched")):
            recompute += prod.flops
    return StepFlops(forward, backward, recompute)


def frozen_modules(frozen_mask) -> tuple[str, ...]:
    """Top-level module names whose parameters are all frozen, from a pytree of bools over the model's
    parameters (train/optimizer.py `frozen_mask`)."""
    modules: dict[str, bool] = {}
    for path, is_frozen in jax.tree_util.tree_leaves_with_path(frozen_mask):
        key = path[0]
        name = str(getattr(key, "key", getattr(key, "name", key)))
        modules[name] = modules.get(name, True) and bool(is_frozen)
    return tuple(sorted(name for name, all_frozen in modules.items() if all_frozen))
