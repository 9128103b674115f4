"""Model benchmark: compile time, FLOPs, compiled memory, step time, achieved FLOP/s and MFU on one device.

  python tools/benchmark_model.py --model flow3r_tiny --frames 4 --height 140 --width 196
  python tools/benchmark_model.py --model flow3r_large --frames 100 --height 392 --width 518 \\
      --dtype bfloat16 --pairs 0 --notrain --compile_only

Rows: `forward` (inference, flow for --pairs pairs) and `train fwd+bwd` (gradient of a scalar of all
outputs w.r.t. every parameter: a training step without loss and optimizer). FLOPs are analytic
(flow3r_jax/models/flops.py; the train row counts forward + backward, plus the recompute of --remat in
its own column); XLA's cost-analysis figure is printed beside them for reference: it counts the body
of each scan over layers once, so it is far below the real work unless --scan_unroll. With
--compile_only nothing is allocated (abstract parameters, so flow3r_large compiles on any host) and
the compiled memory tells what fits a device. Timings are medians over --iters runs after one warm-up;
MFU = analytic FLOPs / time / peak FLOP/s of the device (flow3r_jax/perf.py: table for accelerators,
measured by a matmul benchmark on CPU); peak memory is read from the allocator where it reports one.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

from flow3r_jax.models.sizes import SIZES

_MODEL = flags.DEFINE_enum("model", "flow3r_tiny", sorted(SIZES), "Model size (flow3r_jax/models/sizes.py).")
_BATCH = flags.DEFINE_integer("batch", 1, "Samples.")
_FRAMES = flags.DEFINE_integer("frames", 4, "Frames per sample.")
_HEIGHT = flags.DEFINE_integer("height", 140, "Image height (multiple of 14).")
_WIDTH = flags.DEFINE_integer("width", 196, "Image width (multiple of 14).")
_PAIRS = flags.DEFINE_integer("pairs", 4, "Flow pairs per sample (0: no flow head call).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Trunk compute dtype.")
_REMAT = flags.DEFINE_enum("remat", "none", ["none", "full", "dots"], "Remat policy of the scanned blocks.")
_SCAN_UNROLL = flags.DEFINE_bool("scan_unroll", False, "Unroll the scans over layers (model.scan_unroll).")
_TRAIN = flags.DEFINE_bool("train", True, "Also compile (and time) the train-shaped fwd+bwd step.")
_ITERS = flags.DEFINE_integer("iters", 5, "Timed runs per row.")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Abstract parameters; compile and report memory only.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s of the device for MFU (default: "
                                  "flow3r_jax.perf's table; measured on CPU).")


def _gib(n):
    return f"{n / 2**30:.2f}" if n is not None else "n/a"


def _memory(compiled):
    mem = compiled.memory_analysis()
    if mem is None:
        return None, None
    return mem.temp_size_in_bytes, mem.argument_size_in_bytes + mem.output_size_in_bytes


def _xla_flops(compiled):
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return (cost or {}).get("flops")


def benchmark(cfg, batch: int, frames: int, height: int, width: int, pairs: int, *, train: bool, iters: int,
              compile_only: bool) -> list[dict]:
    """One row per compiled function: compile_s, flops (analytic), recompute, xla_flops, temp/io bytes,
    step_s and peak bytes (None when not run)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from flow3r_jax.models import build_model, flops

    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((batch, frames, height, width, 3), jnp.float32)
    pair_indices = None
    if pairs:
        pair_list = np.asarray([(i % frames, (i + 1) % frames) for i in range(pairs)], np.int32)
        pair_indices = jnp.asarray(np.tile(pair_list[None], (batch, 1, 1)))

    def forward(state, x):
        return nnx.merge(graphdef, state)(x, pair_indices)

    def train_shaped(state, x):
        params, rest = state.split(nnx.Param, ...)

        def scalar(p):
            out = nnx.merge(graphdef, p, rest)(x, pair_indices)
            return sum(jnp.mean(v.astype(jnp.float32)) for v in out.values())

        return jax.grad(scalar)(params)

    step = flops.train_step_flops(cfg, batch, frames, height, width, pairs)
    fns = [("forward", forward, sum(flops.forward_flops(cfg, batch, frames, height, width, pairs).values()), 0.0)]
    if train:
        fns.append(("train fwd+bwd", train_shaped, step.model, step.recompute))
    state = None if compile_only else jax.jit(lambda: nnx.state(build_model(cfg, rngs=nnx.Rngs(0))))()
    rows = []
    for name, fn, analytic, recompute in fns:
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(abstract_state, images).compile()
        compile_s = time.perf_counter() - start
        temp, io = _memory(compiled)
        row = dict(name=name, compile_s=compile_s, flops=analytic, recompute=recompute, xla_flops=_xla_flops(compiled),
                   temp=temp, io=io, step_s=None, peak=None)
        if state is not None:
            x = jnp.asarray(np.random.default_rng(0).uniform(size=images.shape), jnp.float32)
            jax.block_until_ready(compiled(state, x))
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                jax.block_until_ready(compiled(state, x))
                times.append(time.perf_counter() - t)
            row["step_s"] = statistics.median(times)
            row["peak"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
        rows.append(row)
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _HEIGHT.value % 14 or _WIDTH.value % 14:
        raise app.UsageError(f"--height/--width must be multiples of 14, got {_HEIGHT.value}x{_WIDTH.value}")
    import jax

    from flow3r_jax import perf
    from flow3r_jax.models.sizes import get_model_config

    cfg = get_model_config(_MODEL.value)
    cfg.dtype, cfg.remat_policy, cfg.scan_unroll = _DTYPE.value, _REMAT.value, _SCAN_UNROLL.value
    rows = benchmark(cfg, _BATCH.value, _FRAMES.value, _HEIGHT.value, _WIDTH.value, _PAIRS.value, train=_TRAIN.value,
                     iters=_ITERS.value, compile_only=_COMPILE_ONLY.value)
    device = jax.devices()[0]
    peak = None if _COMPILE_ONLY.value else perf.peak_flops([device], _PEAK_TFLOPS.value)
    print(f"model={_MODEL.value} dtype={_DTYPE.value} remat={_REMAT.value} batch={_BATCH.value} "
          f"frames={_FRAMES.value} size={_HEIGHT.value}x{_WIDTH.value} pairs={_PAIRS.value} "
          f"device={device.device_kind}" + (f" peak={peak / 1e12:.3g} TFLOP/s" if peak else ""))
    header = ("what", "compile s", "GFLOP", "remat GFLOP", "XLA GFLOP", "temp GiB", "args+out GiB", "time s",
              "frames/s", "TFLOP/s", "MFU", "peak GiB")
    print(" | ".join(f"{h:>12}" for h in header))
    frames = _BATCH.value * _FRAMES.value
    for r in rows:
        timed = r["step_s"] is not None
        achieved = r["flops"] / r["step_s"] if timed else None
        cells = (r["name"], f"{r['compile_s']:.1f}", f"{r['flops'] / 1e9:.5g}", f"{r['recompute'] / 1e9:.4g}",
                 f"{r['xla_flops'] / 1e9:.5g}" if r["xla_flops"] else "n/a", _gib(r["temp"]), _gib(r["io"]),
                 f"{r['step_s']:.4f}" if timed else "n/a", f"{frames / r['step_s']:.2f}" if timed else "n/a",
                 f"{achieved / 1e12:.4g}" if timed else "n/a",
                 f"{100 * perf.mfu(r['flops'], r['step_s'], peak):.1f}%" if timed and peak else "n/a",
                 _gib(r["peak"]))
        print(" | ".join(f"{c:>12}" for c in cells))
    print("GFLOP: analytic (flow3r_jax/models/flops.py; train: forward + backward, remat recompute apart); "
          "XLA GFLOP: XLA's cost analysis, counting each scanned layer body once unless --scan_unroll")


if __name__ == "__main__":
    app.run(main)
