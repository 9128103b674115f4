"""Config builders shared by the tests: real configs (configs/common.py defaults) with overrides."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import ml_collections

from configs import common, flow3r_tiny


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The base config's data section with `overrides` (unlocked)."""
    return with_values(common.get_base_config().data, **overrides)


def with_values(cfg: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
    """A resolved copy of `cfg` with `overrides` set."""
    out = cfg.copy_and_resolve_references()
    out.update(overrides)
    return out


def set_values(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """Sets {"a.b.c": value} overrides in place (on a locked config too: only existing keys); returns it."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def tiny_config(cache_dir, **overrides) -> ml_collections.ConfigDict:
    """configs/flow3r_tiny.py with its synthetic data under `cache_dir` and `overrides` (dotted keys allowed)."""
    config = flow3r_tiny.get_config()
    config.data.cache_dir = str(cache_dir)
    return set_values(config, overrides)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """tools/<name>.py as a module (tools are scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python tools/<name>.py args...` from the repository root (the real flag parsing and exit code);
    stdout and stderr captured as text. The test session's XLA flags and compilation cache are inherited."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
