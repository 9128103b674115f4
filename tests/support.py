"""Shared by the tests: real configs (configs/common.py defaults) with overrides, launcher processes and
the TensorBoard scalars they log."""

from __future__ import annotations

import glob
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


def child_env(overrides=None) -> dict:
    """os.environ updated by `overrides` (a None value removes the variable), for a child process."""
    env = dict(os.environ)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start_launcher(workdir, args, log_path, env=None):
    """Starts `tools/launch.py --workdir <workdir> <args>` as a process with the environment
    `child_env(env)`; stdout and stderr are appended to `log_path`."""
    cmd = [sys.executable, str(ROOT / "tools" / "launch.py"), "--workdir", str(workdir), *args]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=child_env(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def logged_scalars(workdir, tag) -> dict:
    """{step: value} of a scalar tag over all TensorBoard event files of a run, later files overriding."""
    import tensorflow as tf
    from tensorboard.util import tensor_util

    files = sorted(glob.glob(str(pathlib.Path(workdir) / "tensorboard" / "events.out.tfevents.*")),
                   key=lambda f: int(os.path.basename(f).split(".")[3]))
    values = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == tag:
                    values[event.step] = tensor_util.make_ndarray(v.tensor)
    return values
