"""Import and export of official PyTorch Flow3r / pi3 state_dicts.

Files: `.safetensors` is read and written without torch; `.bin` / `.pt` need torch (convert them once
with tools/convert_checkpoint.py). Paths go through `etils.epath`, so gs:// and other URLs work: local
files are memory-mapped and each tensor is read when its parameter is placed; a URL is read into memory
first. Every key of the file is matched against the declarative key map (key_map.py) before any tensor
is read: a mismatch raises CheckpointMismatchError listing the missing, unexpected and misshapen keys
all at once. Import followed by export reproduces every tensor bit-exactly (the transforms are
transposes and reshapes).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from etils import epath
from flax import nnx

from flow3r_jax.files import atomic_path, is_url
from flow3r_jax.interop.key_map import BUFFER_KEYS, TRANSFORMS, key_rules

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
SUFFIXES = (SAFETENSORS_SUFFIX,) + TORCH_SUFFIXES


class CheckpointMismatchError(ValueError):
    """A state_dict does not match the model configuration."""


class TensorFile:
    """Read-only view of a state_dict file: keys and shapes without reading data, tensors on demand.

    `tensor(key)` returns a numpy array (floating torch tensors as float32).
    """

    def __init__(self, shapes: dict[str, tuple], read: Callable[[str], np.ndarray]):
        self.shapes = shapes
        self._read = read

    def keys(self):
        return self.shapes.keys()

    def tensor(self, key: str) -> np.ndarray:
        return self._read(key)


def _torch_numpy(tensor) -> np.ndarray:
    return tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.numpy()


def _torch_state_dict(source) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading a PyTorch .bin/.pt file needs torch (pip install torch); or convert it once "
                          "with tools/convert_checkpoint.py") from e
    mmap = isinstance(source, str)
    raw = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        raw = raw["model"]
    return raw


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jax.numpy.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


def _memory_mapped_safetensors(path: str) -> TensorFile:
    """Zero-copy numpy views into a memory-mapped `.safetensors` file (the safetensors package copies
    every tensor it returns). Layout: u64 little-endian header size, JSON header {key: {dtype, shape,
    data_offsets}}, then the data; offsets count from the end of the header."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    header_size = int(data[:8].view("<u8")[0])
    try:
        header = json.loads(bytes(data[8:8 + header_size]))
    except ValueError as e:
        raise ValueError(f"{path}: not a safetensors file (unreadable header)") from e
    header.pop("__metadata__", None)
    start = 8 + header_size

    def read(key: str) -> np.ndarray:
        entry = header[key]
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        return data[start + begin:start + end].view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])

    return TensorFile({k: tuple(v["shape"]) for k, v in header.items()}, read)


@contextlib.contextmanager
def open_state_dict(path: str | os.PathLike) -> Iterator[TensorFile]:
    """Opens a `.safetensors` / `.bin` / `.pt` / `.pth` state_dict (local path or URL) for reading."""
    suffix = epath.Path(path).suffix
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported checkpoint extension {suffix!r}; expected {', '.join(SUFFIXES)}")
    if not epath.Path(path).exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    local = not is_url(path)
    if suffix == SAFETENSORS_SUFFIX and local:
        yield _memory_mapped_safetensors(os.fspath(path))
        return
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.numpy import load

        arrays = load(epath.Path(path).read_bytes())
        yield TensorFile({k: v.shape for k, v in arrays.items()}, arrays.__getitem__)
        return
    raw = _torch_state_dict(os.fspath(path) if local else io.BytesIO(epath.Path(path).read_bytes()))
    yield TensorFile({k: tuple(v.shape) for k, v in raw.items()}, lambda k: _torch_numpy(raw[k]))


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a whole PyTorch state_dict file into numpy arrays it owns (floating torch tensors as
    float32), keyed as in the file."""
    with open_state_dict(path) as f:
        return {k: np.array(f.tensor(k)) for k in f.keys()}


def save_state_dict(state_dict: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes a state_dict as `.safetensors` (no torch needed) or `.bin`/`.pt` (torch.save), atomically."""
    suffix = epath.Path(path).suffix
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported extension {suffix!r}; expected {', '.join(SUFFIXES)}")
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if suffix == SAFETENSORS_SUFFIX:
            from safetensors.numpy import save_file
            save_file(arrays, str(tmp))
        else:
            import torch
            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp)


def convert_to_safetensors(source: str | os.PathLike, destination: str | os.PathLike) -> int:
    """Rewrites a PyTorch `.bin`/`.pt`/`.pth` state_dict as `.safetensors` (floating tensors as float32),
    atomically; afterwards loading needs no torch. Returns the number of tensors."""
    if epath.Path(destination).suffix != SAFETENSORS_SUFFIX:
        raise ValueError(f"{destination}: the converted file must end in {SAFETENSORS_SUFFIX}")
    state_dict = load_state_dict(source)
    save_state_dict(state_dict, destination)
    return len(state_dict)


def _flat_params(state) -> dict[tuple, object]:
    return {tuple(path): var for path, var in nnx.to_flat_state(state)}


@functools.cache
def _torch_shape(transform: str, target_shape: tuple) -> tuple:
    """Shape of the PyTorch tensor that `transform` turns into an array of `target_shape`."""
    inverse = TRANSFORMS[transform][1]
    return tuple(jax.eval_shape(inverse, jax.ShapeDtypeStruct(target_shape, np.float32)).shape)


def _check_keys(tensors: TensorFile, cfg, targets: dict[tuple, jax.ShapeDtypeStruct], missing_ok: Sequence[str],
                source: str) -> list:
    """The key rules of `cfg` present in the file; raises CheckpointMismatchError naming every missing,
    unexpected and misshapen key. Reads only the shapes (and the two small normalisation buffers)."""
    rules = key_rules(cfg)
    expected = {r.torch_key for r in rules}
    present = set(tensors.keys())
    missing = sorted(k for k in expected - present if not k.startswith(tuple(missing_ok)))
    unexpected = sorted(present - expected - set(BUFFER_KEYS))
    misshapen, used = [], []
    for rule in rules:
        if rule.torch_key not in present:
            continue
        if rule.jax_path not in targets:
            raise KeyError(f"key map names {rule.jax_path} for {rule.torch_key}, absent from the model")
        shape = tuple(targets[rule.jax_path].shape)
        want = _torch_shape(rule.transform, shape[1:] if rule.layer is not None else shape)
        if tensors.shapes[rule.torch_key] != want:
            misshapen.append(f"{rule.torch_key}: file {tensors.shapes[rule.torch_key]}, model expects {want}")
        else:
            used.append(rule)
    for name, default in zip(BUFFER_KEYS, (cfg.image_mean, cfg.image_std), strict=True):
        if name in present:
            value = np.asarray(tensors.tensor(name)).reshape(-1)
            if not np.allclose(value, default, atol=1e-6):
                misshapen.append(f"{name}: file {value.tolist()}, config {list(default)}")
    if missing or unexpected or misshapen:
        lines = [f"{source} does not match the model configuration:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys[:50]) + (" ..." if len(keys) > 50 else ""))
        raise CheckpointMismatchError("\n".join(lines))
    return used


def _place(value: np.ndarray, target: jax.ShapeDtypeStruct) -> jax.Array:
    """A host array as a jax.Array of the target's dtype on its sharding (every process holds `value`)."""
    value = value.astype(target.dtype, copy=False)
    if target.sharding is None:
        return jax.device_put(value)
    return jax.make_array_from_callback(value.shape, target.sharding, lambda index: value[index])


def read_params(path: str | os.PathLike, cfg, targets: dict[tuple, jax.ShapeDtypeStruct], *,
                missing_ok: Sequence[str] = ()) -> dict[tuple, jax.Array]:
    """Reads the parameters of a PyTorch state_dict file straight onto their target shardings.

    targets: {nnx parameter path: ShapeDtypeStruct} (sharding None: the default device). `missing_ok`:
    key prefixes that may be absent (their parameters are not returned). The keys are checked before
    any tensor is read; tensors are then read, transformed to our layout and placed one parameter at a
    time (one per core at once), so the host holds a few parameters' copies at most besides the
    (memory-mapped) file.
    """
    with open_state_dict(path) as tensors:
        rules = _check_keys(tensors, cfg, targets, missing_ok, str(path))
        by_path: dict[tuple, dict] = {}
        for rule in rules:
            by_path.setdefault(rule.jax_path, {})[rule.layer] = rule

        def load(jax_path):
            by_layer, target = by_path[jax_path], targets[jax_path]
            shape = tuple(target.shape[1:]) if None not in by_layer else tuple(target.shape)
            values = [TRANSFORMS[r.transform][0](tensors.tensor(r.torch_key), shape)
                      for _, r in sorted(by_layer.items(), key=lambda item: -1 if item[0] is None else item[0])]
            return _place(values[0] if None in by_layer else np.stack(values, axis=0), target)

        # numpy copies and transfers release the GIL: one thread per core overlaps them.
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
            return dict(zip(by_path, pool.map(load, by_path), strict=True))


def pytorch_weight_loader(path: str | os.PathLike, cfg, *, missing_ok: Sequence[str] = ()) -> Callable:
    """`read_params` of `path` as a weight loader (flow3r_jax/train/state.py `WeightLoader`). For a pi3
    file into a Flow3r model pass missing_ok=("flow_head.",): the flow head keeps its fresh initialisation."""
    return functools.partial(read_params, path, cfg, missing_ok=missing_ok)


def _targets_of(param_state) -> dict[tuple, jax.ShapeDtypeStruct]:
    targets = {}
    for path, var in _flat_params(param_state).items():
        value = var[...]
        targets[path] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=getattr(value, "sharding", None))
    return targets


def import_pytorch_checkpoint(path: str | os.PathLike, model: nnx.Module, cfg, *,
                              missing_ok: Sequence[str] = ()) -> None:
    """Loads a Flow3r or pi3 PyTorch checkpoint into an existing `model` (in place, keeping the placement
    of its parameters). To build a model from a file without initialising it first, use
    flow3r_jax.inference.checkpoint.load_model."""
    state = nnx.state(model, nnx.Param)
    values = read_params(path, cfg, _targets_of(state), missing_ok=missing_ok)
    flat = _flat_params(state)
    for p, value in values.items():
        flat[p].set_value(value)
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
