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
import numpy as np

from configs import common, flow3r_tiny
from flow3r_jax.geometry.camera import project_points, reprojection_flow
from flow3r_jax.geometry.ndc import ndc_to_pixel
from flow3r_jax.geometry.transforms import se3_inverse, transform_points


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


def run_tool(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python tools/<name>.py args...` from the repository root (the real flag parsing and exit code);
    stdout and stderr captured as text. The test session's XLA flags and compilation cache are inherited."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def reprojection_errors(batches) -> tuple[np.ndarray, np.ndarray]:
    """Pixel errors, on the co-visible valid pixels of every flow pair of static-scene training batches,
    between the batch's flow targets (NDC -> pixels of the target frame) and (a) the reprojection of the
    source frame's depth with the batch's intrinsics and camera-to-world poses, (b) the projection of its
    world points into the target camera. Also checks that co-visible targets lie inside the target image."""
    depth_errors, point_errors = [], []
    for batch in batches:
        height, width = batch["images"].shape[2:4]
        for b in range(batch["images"].shape[0]):
            pose, intr = batch["camera_poses"][b].astype(np.float64), batch["intrinsics"][b].astype(np.float64)
            for k, (i, j) in enumerate(batch["pair_indices"][b]):
                target = ndc_to_pixel(batch["flow_coords"][b, k].astype(np.float64), height, width)
                covisible = batch["flow_mask"][b, k] > 0.5
                assert np.all(np.abs(target[covisible] - [[(width - 1) / 2, (height - 1) / 2]])
                              <= [[width / 2, height / 2]])
                covisible &= batch["valid_mask"][b, i]
                reprojected = reprojection_flow(batch["depth"][b, i].astype(np.float64), pose[i], pose[j],
                                                intr[i], intr[j])
                depth_errors.append(np.linalg.norm(reprojected.coords_px - target, axis=-1)[covisible])
                local = transform_points(se3_inverse(pose[j]), batch["points"][b, i].astype(np.float64))
                projected, _ = project_points(local, intr[j])
                point_errors.append(np.linalg.norm(projected - target, axis=-1)[covisible])
    return np.concatenate(depth_errors), np.concatenate(point_errors)


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
