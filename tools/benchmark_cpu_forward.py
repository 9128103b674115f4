"""CPU forward time of flow3r_large: this implementation against the official PyTorch code, same weights.

  git --git-dir=<mirror of github.com/Kidrauh/flow3r> archive HEAD flow3r | tar -x -C /tmp/flow3r_official
  python tools/benchmark_cpu_forward.py --official_repo /tmp/flow3r_official

Random weights (seed --seed) are created here, written in the official layout to a temporary
safetensors file (flow3r_jax.interop.pytorch.export_pytorch_checkpoint) and loaded into the official
`Flow3r` with strict=True. The two run one after the other (one model in memory at a time, ~8 GiB
peak) on the same random images and pairs in float32 (matmul precision highest here, torch's default
float32 there) with all host threads. Prints the median forward time of each over --iters runs after
one warm-up, the ratio (this / official) and the largest output difference relative to the output's
scale. On a shared host run it when the load is steady. The official code is imported, never copied.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import pathlib
import statistics
import sys
import time

from absl import app, flags

_OFFICIAL_REPO = flags.DEFINE_string("official_repo", None, "Checkout of github.com/Kidrauh/flow3r (the folder "
                                     "holding the `flow3r` package).")
_FRAMES = flags.DEFINE_integer("frames", 2, "Frames.")
_HEIGHT = flags.DEFINE_integer("height", 224, "Image height (multiple of 14).")
_WIDTH = flags.DEFINE_integer("width", 224, "Image width (multiple of 14).")
_PAIRS = flags.DEFINE_integer("pairs", 2, "Flow pairs.")
_ITERS = flags.DEFINE_integer("iters", 3, "Timed runs of each implementation.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and inputs.")
flags.mark_flags_as_required(["official_repo"])


def _median_seconds(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _official_package(repo: str):
    """The official `flow3r.models.flow3r` module of the checkout `repo` (its `flow3r` folder is a
    namespace package: registered here with that folder as its search path)."""
    package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("flow3r", None, is_package=True))
    package.__path__ = [str(pathlib.Path(repo) / "flow3r")]
    sys.modules["flow3r"] = package
    return importlib.import_module("flow3r.models.flow3r")


def _time_ours(checkpoint, images, pairs, iters):
    """Builds flow3r_large with seed --seed, writes its official-layout checkpoint, times its forward;
    returns (median seconds, outputs as numpy). Everything JAX holds is released on return."""
    import jax
    import numpy as np
    from flax import nnx

    from flow3r_jax.interop.pytorch import export_pytorch_checkpoint
    from flow3r_jax.models import build_model
    from flow3r_jax.models.sizes import get_model_config

    jax.config.update("jax_default_matmul_precision", "highest")
    cfg = get_model_config("flow3r_large")
    model = build_model(cfg, rngs=nnx.Rngs(_SEED.value))
    export_pytorch_checkpoint(nnx.state(model, nnx.Param), cfg, checkpoint)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda st, x, p: nnx.merge(graphdef, st)(x, p))
    x, p = jax.numpy.asarray(images), jax.numpy.asarray(pairs)
    seconds = _median_seconds(lambda: jax.block_until_ready(forward(state, x, p)), iters)
    return seconds, {k: np.asarray(v) for k, v in forward(state, x, p).items()}


def _time_official(checkpoint, images, pairs, iters):
    """Builds the official Flow3r, loads the checkpoint into it (strict) and times its
    forward; returns (median seconds, outputs as numpy)."""
    import torch
    from safetensors.torch import load_file

    OfficialFlow3r = _official_package(_OFFICIAL_REPO.value).Flow3r

    official = OfficialFlow3r()
    official.load_state_dict(load_file(checkpoint), strict=True, assign=True)
    official.eval()
    torch_images = torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()
    torch_pairs = torch.from_numpy(pairs.astype("int64"))

    def run():
        with torch.inference_mode():
            return official(torch_images, torch_pairs)

    seconds = _median_seconds(run, iters)
    return seconds, {k: v.numpy() for k, v in run().items() if v is not None}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import gc
    import tempfile

    import jax
    import numpy as np
    import torch

    rng = np.random.default_rng(_SEED.value)
    n, h, w = _FRAMES.value, _HEIGHT.value, _WIDTH.value
    images = rng.uniform(size=(1, n, h, w, 3)).astype(np.float32)
    pairs = np.asarray([[(i % n, (i + 1) % n) for i in range(_PAIRS.value)]], np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = f"{tmp}/flow3r_large.safetensors"
        ours_s, ours_out = _time_ours(checkpoint, images, pairs, _ITERS.value)
        gc.collect()
        theirs_s, theirs_out = _time_official(checkpoint, images, pairs, _ITERS.value)
    print(f"flow3r_large forward, {n} frames {h}x{w}, {_PAIRS.value} flow pairs, float32, "
          f"{jax.devices()[0].device_kind}, torch {torch.__version__} with {torch.get_num_threads()} threads")
    for key in ("points", "local_points", "conf", "camera_poses", "flow"):
        err = np.abs(ours_out[key] - theirs_out[key]).max() / max(np.abs(theirs_out[key]).max(), 1e-12)
        print(f"  {key:>13}: max |difference| / max |official| = {err:.2e}")
    print(f"flow3r_jax {ours_s:.3f} s, official {theirs_s:.3f} s (median of {_ITERS.value}); "
          f"ratio flow3r_jax / official = {ours_s / theirs_s:.2f}")


if __name__ == "__main__":
    app.run(main)
