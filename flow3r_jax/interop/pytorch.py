"""Import and export of official PyTorch Flow3r / pi3 state_dicts.

Files: `.safetensors` is read and written without torch; `.bin` / `.pt` need torch. Every key of the
file is matched against the declarative key map (key_map.py): a mismatch raises CheckpointMismatchError
listing the missing, unexpected and misshapen keys all at once. Import followed by export reproduces
every tensor bit-exactly (the transforms are transposes and reshapes).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from flow3r_jax.files import atomic_path
from flow3r_jax.interop.key_map import BUFFER_KEYS, TRANSFORMS, key_rules


class CheckpointMismatchError(ValueError):
    """A state_dict does not match the model configuration."""


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state_dict file into float32/int numpy arrays, keyed as in the file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        return dict(load_file(str(path)))
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {path} needs torch (pip install torch); or convert it to .safetensors") from e
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
            raw = raw["model"]
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in raw.items()}
    raise ValueError(f"{path}: unsupported checkpoint extension {path.suffix!r}; expected .safetensors, .bin, .pt or .pth")


def save_state_dict(state_dict: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes a state_dict as `.safetensors` (no torch needed) or `.bin`/`.pt` (torch.save), atomically."""
    path = pathlib.Path(path)
    if path.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}; expected .safetensors, .bin, .pt or .pth")
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file(arrays, str(tmp))
        else:
            import torch
            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp)


def _flat_params(state) -> dict[tuple, object]:
    return {tuple(path): var for path, var in nnx.to_flat_state(state)}


def _target_shape(var, layer):
    shape = tuple(var.shape) if hasattr(var, "shape") else tuple(var[...].shape)
    return shape[1:] if layer is not None else shape


def state_dict_to_params(state_dict: dict[str, np.ndarray], cfg, param_state, *, missing_ok: Sequence[str] = (),
                         source: str = "state_dict") -> dict[tuple, np.ndarray]:
    """Converts a PyTorch state_dict to {nnx path: numpy array} for the parameters of `param_state`.

    `missing_ok`: key prefixes that may be absent (their parameters are not returned). Raises
    CheckpointMismatchError naming `source` and every missing / unexpected / misshapen key.
    """
    rules = key_rules(cfg)
    params = _flat_params(param_state)
    expected = {r.torch_key for r in rules}
    present = set(state_dict)
    missing = sorted(k for k in expected - present if not k.startswith(tuple(missing_ok)))
    unexpected = sorted(present - expected - set(BUFFER_KEYS))
    misshapen, converted = [], {}
    for rule in rules:
        if rule.torch_key not in state_dict:
            continue
        if rule.jax_path not in params:
            raise KeyError(f"key map names {rule.jax_path} for {rule.torch_key}, absent from the model")
        target = _target_shape(params[rule.jax_path], rule.layer)
        w = np.asarray(state_dict[rule.torch_key])
        try:
            value = TRANSFORMS[rule.transform][0](w, target)
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != target:
            misshapen.append(f"{rule.torch_key}: file {tuple(w.shape)}, model expects {_torch_shape(rule, target)}")
            continue
        converted.setdefault(rule.jax_path, {})[rule.layer] = value
    for name, default in zip(BUFFER_KEYS, (cfg.image_mean, cfg.image_std)):
        if name in state_dict and not np.allclose(np.asarray(state_dict[name]).reshape(-1), default, atol=1e-6):
            misshapen.append(f"{name}: file {np.asarray(state_dict[name]).reshape(-1).tolist()}, config {list(default)}")
    if missing or unexpected or misshapen:
        lines = [f"{source} does not match the model configuration:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys[:50]) + (" ..." if len(keys) > 50 else ""))
        raise CheckpointMismatchError("\n".join(lines))
    out = {}
    for path, by_layer in converted.items():
        if None in by_layer:
            out[path] = by_layer[None]
        else:
            out[path] = np.stack([by_layer[i] for i in range(len(by_layer))], axis=0)
    return out


def _torch_shape(rule, target_shape):
    return tuple(jax.eval_shape(TRANSFORMS[rule.transform][1], jax.ShapeDtypeStruct(target_shape, np.float32)).shape)


def import_pytorch_checkpoint(path: str | os.PathLike, model: nnx.Module, cfg, *, missing_ok: Sequence[str] = ()) -> None:
    """Loads a Flow3r or pi3 PyTorch checkpoint into `model` (in place).

    For a pi3 file into a Flow3r model pass missing_ok=("flow_head.",): the flow head keeps its init.
    """
    state = nnx.state(model, nnx.Param)
    values = state_dict_to_params(load_state_dict(path), cfg, state, missing_ok=missing_ok, source=str(path))
    flat = _flat_params(state)
    for p, value in values.items():
        var = flat[p]
        var.set_value(jax.numpy.asarray(value, dtype=var[...].dtype))
    nnx.update(model, state)


def params_to_state_dict(param_state, cfg) -> dict[str, object]:
    """{PyTorch key: array} in the official layout (plus the normalisation buffers), from an nnx
    parameter State (arrays, or ShapeDtypeStructs under jax.eval_shape)."""
    params = _flat_params(param_state)
    out = {}
    for rule in key_rules(cfg):
        var = params[rule.jax_path]
        value = var[...] if hasattr(var, "__getitem__") else var
        if rule.layer is not None:
            value = value[rule.layer]
        out[rule.torch_key] = TRANSFORMS[rule.transform][1](value)
    out["image_mean"] = np.asarray(cfg.image_mean, np.float32).reshape(1, 3, 1, 1)
    out["image_std"] = np.asarray(cfg.image_std, np.float32).reshape(1, 3, 1, 1)
    return out


def export_pytorch_checkpoint(param_state, cfg, path: str | os.PathLike) -> None:
    """Writes the parameters as an official-layout state_dict file (.safetensors, or .bin via torch)."""
    sd = params_to_state_dict(param_state, cfg)
    save_state_dict({k: np.asarray(jax.device_get(v), np.float32) for k, v in sd.items()}, path)
