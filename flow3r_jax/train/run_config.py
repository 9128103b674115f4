"""The resolved config of a training run, kept in its work directory.

The launch writes `<workdir>/config.json` (every key, after command-line overrides; human-readable JSON,
sequences as lists). Tools that take a work directory (predict, evaluate, export) rebuild the model from
its `model` section. A relaunch of a work directory that already holds checkpoints must describe the
same model: any differing `model.*` key stops it (keys that only change how the model is computed,
`EXECUTION_KEYS`, may change between launches).
"""

from __future__ import annotations

import json
import os

import ml_collections
from etils import epath

from flow3r_jax.files import as_path, atomic_write

CONFIG_FILE = "config.json"
# model.* keys that change how the same parameters are computed (precision, memory, kernels), not the model.
EXECUTION_KEYS = ("dtype", "remat_policy", "scan_unroll", "attention_impl")


def config_path(workdir: str | os.PathLike) -> epath.Path:
    """`<workdir>/config.json` of a work directory given as a local path or a URL."""
    return as_path(workdir) / CONFIG_FILE


def write_run_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
    """Writes the resolved config as `<workdir>/config.json`."""
    atomic_write(config_path(workdir), config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def _as_tuples(value):
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def read_run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run recorded in `workdir` (sequences as tuples); FileNotFoundError naming the file."""
    path = config_path(workdir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no recorded config; is {workdir} a training work directory?")
    return ml_collections.ConfigDict(_as_tuples(json.loads(path.read_text())))


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def model_differences(recorded_model: ml_collections.ConfigDict,
                      model: ml_collections.ConfigDict) -> dict[str, tuple]:
    """{"model.<key>": (recorded value, new value)} for every differing key (EXECUTION_KEYS ignored)."""
    def items(cfg):
        flat = _flatten(json.loads(cfg.to_json_best_effort()))
        return {k: v for k, v in flat.items() if k.split(".")[0] not in EXECUTION_KEYS}

    old, new = items(recorded_model), items(model)
    return {f"model.{k}": (old.get(k, "<absent>"), new.get(k, "<absent>"))
            for k in sorted(old.keys() | new.keys()) if old.get(k, "<absent>") != new.get(k, "<absent>")}


def check_same_model(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming every differing model key when `workdir` recorded another model."""
    differing = model_differences(read_run_config(workdir).model, config.model)
    if differing:
        details = ", ".join(f"{k} (recorded {old!r}, now {new!r})" for k, (old, new) in differing.items())
        raise ValueError(f"{workdir} holds checkpoints of another model; differing keys: {details}. "
                         "Use a new work directory, or launch with the recorded model config.")
