"""Declarative map between the official PyTorch state_dict keys and our NNX parameter paths.

Every rule names one PyTorch tensor, the NNX path it lives at, the layout transform between the two
and, for scanned blocks, its index on the stacked "layers" axis. The rules are generated from the
model config, so they cover exactly the tensors of that configuration (Flow3r or pi3, any size).
The two ImageNet normalisation buffers (`image_mean`, `image_std`) are not parameters: they come from
the model config and are checked on import.
"""

from __future__ import annotations

import dataclasses

BUFFER_KEYS = ("image_mean", "image_std")


@dataclasses.dataclass(frozen=True)
class KeyRule:
    torch_key: str
    jax_path: tuple
    transform: str
    layer: int | None = None


# Transforms: name -> (torch array -> our layout, our layout array -> torch layout). Both use only
# array methods (.T, .reshape, .transpose), so they work on numpy arrays, jax arrays and tracers.
def _qkv_kernel_to_jax(w, shape):
    return w.T.reshape(shape)


def _qkv_kernel_to_torch(w):
    return w.reshape(w.shape[0], -1).T


TRANSFORMS = {
    "copy": (lambda w, shape: w.reshape(shape), lambda w: w),
    "linear": (lambda w, shape: w.T, lambda w: w.T),
    "conv": (lambda w, shape: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1)),
    "conv1x1_linear": (lambda w, shape: w[:, :, 0, 0].T, lambda w: w.T[:, :, None, None]),
    "conv_transpose": (lambda w, shape: w.transpose(0, 2, 3, 1), lambda w: w.transpose(0, 3, 1, 2)),
    "qkv_kernel": (_qkv_kernel_to_jax, _qkv_kernel_to_torch),
    "qkv_bias": (lambda w, shape: w.reshape(shape), lambda w: w.reshape(-1)),
}


def _linear(torch_prefix, path, layer=None):
    return [KeyRule(f"{torch_prefix}.weight", path + ("kernel",), "linear", layer),
            KeyRule(f"{torch_prefix}.bias", path + ("bias",), "copy", layer)]


def _norm(torch_prefix, path, layer=None):
    return [KeyRule(f"{torch_prefix}.weight", path + ("scale",), "copy", layer),
            KeyRule(f"{torch_prefix}.bias", path + ("bias",), "copy", layer)]


def _conv(torch_prefix, path, bias=True, transform="conv"):
    rules = [KeyRule(f"{torch_prefix}.weight", path + ("kernel",), transform)]
    if bias:
        rules.append(KeyRule(f"{torch_prefix}.bias", path + ("bias",), "copy"))
    return rules


def _block(t, path, layer, *, qk_norm: bool, layerscale: bool):
    rules = _norm(f"{t}.norm1", path + ("norm1",), layer)
    rules += [KeyRule(f"{t}.attn.qkv.weight", path + ("attn", "qkv_kernel"), "qkv_kernel", layer),
              KeyRule(f"{t}.attn.qkv.bias", path + ("attn", "qkv_bias"), "qkv_bias", layer)]
    rules += _linear(f"{t}.attn.proj", path + ("attn", "proj"), layer)
    if qk_norm:
        rules += _norm(f"{t}.attn.q_norm", path + ("attn", "q_norm"), layer)
        rules += _norm(f"{t}.attn.k_norm", path + ("attn", "k_norm"), layer)
    if layerscale:
        rules += [KeyRule(f"{t}.ls1.gamma", path + ("ls1", "gamma"), "copy", layer),
                  KeyRule(f"{t}.ls2.gamma", path + ("ls2", "gamma"), "copy", layer)]
    rules += _norm(f"{t}.norm2", path + ("norm2",), layer)
    rules += _linear(f"{t}.mlp.fc1", path + ("mlp", "fc1"), layer)
    rules += _linear(f"{t}.mlp.fc2", path + ("mlp", "fc2"), layer)
    return rules


def _output_decoder(name, depth):
    rules = _linear(f"{name}.projects", (name, "projects"))
    for i in range(depth):
        rules += _block(f"{name}.blocks.{i}", (name, "blocks"), i, qk_norm=False, layerscale=False)
    return rules + _linear(f"{name}.linear_out", (name, "linear_out"))


def _flow_head():
    rules = []
    for torch_idx, idx in ((0, 0), (2, 1), (4, 2)):
        rules += _linear(f"flow_head.mlp.{torch_idx}", ("flow_head", "mlp", idx))
    rules += _norm("flow_head.norm", ("flow_head", "norm"))
    dpt = ("flow_head", "dpt")
    for level in range(4):
        rules += _conv(f"flow_head.projects.{level}", dpt + ("projects", level), transform="conv1x1_linear")
        rules += _conv(f"flow_head.scratch.layer{level + 1}_rn", dpt + ("layer_rn", level), bias=False)
    rules += _conv("flow_head.resize_layers.0", dpt + ("resize0",), transform="conv_transpose")
    rules += _conv("flow_head.resize_layers.1", dpt + ("resize1",), transform="conv_transpose")
    rules += _conv("flow_head.resize_layers.3", dpt + ("resize3",))
    for k in (1, 2, 3, 4):
        t, path = f"flow_head.scratch.refinenet{k}", dpt + (f"refinenet{k}",)
        rules += _conv(f"{t}.out_conv", path + ("out_conv",))
        for unit in ((1, 2) if k != 4 else (2,)):
            for c in (1, 2):
                rules += _conv(f"{t}.resConfUnit{unit}.conv{c}", path + (f"resConfUnit{unit}", f"conv{c}"))
    rules += _conv("flow_head.scratch.output_conv1", dpt + ("output_conv1",))
    rules += _conv("flow_head.scratch.output_conv2.0", dpt + ("output_conv2a",))
    rules += _conv("flow_head.scratch.output_conv2.2", dpt + ("output_conv2b",))
    return rules


def key_rules(cfg) -> list[KeyRule]:
    """All parameter rules for a model config (flow3r_jax/models/sizes.py), in PyTorch state_dict order."""
    if cfg.flow_head.type == "tracking":
        raise ValueError("model.flow_head.type 'tracking' has no PyTorch key layout (the released model has "
                         "the factored head); only 'factored', 'projective' and 'none' models convert")
    rules = [KeyRule("register_token", ("register_token",), "copy")]
    rules += [KeyRule(f"encoder.{n}", ("encoder", n), "copy") for n in ("cls_token", "pos_embed", "register_tokens")]
    rules += _conv("encoder.patch_embed.proj", ("encoder", "patch_embed"))
    for i in range(cfg.encoder.depth):
        rules += _block(f"encoder.blocks.{i}", ("encoder", "blocks"), i, qk_norm=False, layerscale=True)
    rules += _norm("encoder.norm", ("encoder", "norm"))
    for i in range(cfg.decoder.depth):
        stack = "frame_blocks" if i % 2 == 0 else "global_blocks"
        rules += _block(f"decoder.{i}", ("decoder", stack), i // 2, qk_norm=True, layerscale=True)
    depth = cfg.heads.depth
    rules += _output_decoder("point_decoder", depth) + _linear("point_head.proj", ("point_head", "proj"))
    rules += _output_decoder("camera_decoder", depth)
    for k in range(2):
        for c in (1, 2, 3):
            rules += _linear(f"camera_head.res_conv.{k}.res_conv{c}", ("camera_head", "res_conv", k, f"res_conv{c}"))
    rules += _linear("camera_head.more_mlps.0", ("camera_head", "more_mlps", 0))
    rules += _linear("camera_head.more_mlps.2", ("camera_head", "more_mlps", 1))
    rules += _linear("camera_head.fc_t", ("camera_head", "fc_t"))
    rules += _linear("camera_head.fc_rot", ("camera_head", "fc_rot"))
    if cfg.flow_head.type == "factored":
        rules += _flow_head()
    rules += _output_decoder("conf_decoder", depth) + _linear("conf_head.proj", ("conf_head", "proj"))
    return rules
