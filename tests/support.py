"""Config builders shared by the tests: real configs (configs/common.py defaults) with overrides."""

from __future__ import annotations

import importlib.util
import pathlib

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


# flow3r_tiny with one fixed training shape (2 frames at 28 x 42, global_batch_size 8 clips) instead of
# its shape buckets, for the tests that exercise other things (tests/test_buckets.py covers the buckets).
FIXED_SHAPE = {"data.frame_counts": (), "data.resolutions": (), "data.images_per_device": 0}


def tiny_config(cache_dir, **overrides) -> ml_collections.ConfigDict:
    """configs/flow3r_tiny.py at FIXED_SHAPE with its synthetic data under `cache_dir` and `overrides`
    (dotted keys allowed)."""
    config = flow3r_tiny.get_config()
    config.data.cache_dir = str(cache_dir)
    return set_values(config, FIXED_SHAPE | overrides)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """tools/<name>.py as a module (tools are scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
