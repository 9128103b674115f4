"""Model loading benchmark: build a model and load a PyTorch state_dict file, timed end to end.

  python tools/benchmark_loading.py                           # flow3r_large, random weights (written once)
  python tools/benchmark_loading.py --checkpoint flow3r.safetensors --compare_init_then_load

Times `load_model` (flow3r_jax/inference/checkpoint.py: abstract model, memory-mapped tensors placed
straight onto their shardings) until every parameter is on its devices. Without --checkpoint a
random-weight state_dict of --model (official key layout) is written once to --cache_dir and reused.
--compare_init_then_load also times the way a model was loaded before: build it with random
initialisation, then import the file into it (about 8x slower for flow3r_large, and twice the memory).
The file is read from the page cache when it was written or read recently; the first read of a file
from disk adds the disk's read time to both paths.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from flow3r_jax.interop.pytorch import import_pytorch_checkpoint, params_to_state_dict, save_state_dict
from flow3r_jax.models import build_model
from flow3r_jax.models.sizes import get_model_config

_MODEL = flags.DEFINE_string("model", "flow3r_large", "Model size (flow3r_jax/models/sizes.py).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "State_dict file to load (default: random weights).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", os.path.join(tempfile.gettempdir(), "flow3r_jax_benchmark"),
                                 "Where the random-weight file is written once.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights.")
_COMPARE = flags.DEFINE_bool("compare_init_then_load", False,
                             "Also time random initialisation followed by the import (slow).")


def random_weights_file(model_name: str, cache_dir: str, seed: int) -> pathlib.Path:
    """A `.safetensors` state_dict of `model_name` in the official layout with N(0, 0.02) weights."""
    path = pathlib.Path(cache_dir) / f"{model_name}_random_seed{seed}.safetensors"
    if path.exists():
        return path
    cfg = get_model_config(model_name)
    abstract = nnx.state(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    shapes = jax.eval_shape(lambda p: params_to_state_dict(p, cfg), abstract)
    rng = np.random.default_rng(seed)
    state_dict = {k: (0.02 * rng.standard_normal(s.shape, np.float32)) for k, s in shapes.items()}
    state_dict["image_mean"] = np.asarray(cfg.image_mean, np.float32).reshape(1, 3, 1, 1)
    state_dict["image_std"] = np.asarray(cfg.image_std, np.float32).reshape(1, 3, 1, 1)
    print(f"writing {path} ({sum(v.nbytes for v in state_dict.values()) / 2**30:.2f} GiB) once")
    save_state_dict(state_dict, path)
    return path


def _timed(fn) -> tuple[float, float, nnx.Module]:
    """(wall seconds, CPU seconds of this process, result) of fn() until its arrays are ready."""
    start, start_cpu = time.perf_counter(), time.process_time()
    model = fn()
    jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
    return time.perf_counter() - start, time.process_time() - start_cpu, model


def main(argv):
    del argv
    from flow3r_jax.inference.checkpoint import load_model

    path = pathlib.Path(_CHECKPOINT.value) if _CHECKPOINT.value else random_weights_file(
        _MODEL.value, _CACHE_DIR.value, _SEED.value)
    print(f"{_MODEL.value} from {path} ({path.stat().st_size / 2**30:.2f} GiB), {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall time grows with it, CPU time not)")
    seconds, cpu, model = _timed(lambda: load_model(_MODEL.value, str(path)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"load_model (abstract build + memory-mapped load): {seconds:.1f} s wall, {cpu:.1f} s CPU, "
          f"{count:,} parameters")
    del model
    if _COMPARE.value:
        cfg = get_model_config(_MODEL.value)

        def init_then_load():
            model = build_model(cfg, rngs=nnx.Rngs(0))
            import_pytorch_checkpoint(path, model, cfg)
            return model

        before, before_cpu, _ = _timed(init_then_load)
        print(f"random init, then import: {before:.1f} s wall, {before_cpu:.1f} s CPU; load_model is "
              f"{before / seconds:.1f}x faster (wall), {before_cpu / cpu:.1f}x (CPU)")


if __name__ == "__main__":
    app.run(main)
