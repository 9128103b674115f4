"""Model benchmark: compile time, XLA FLOPs, compiled memory, forward time and peak device memory.

  python tools/benchmark_model.py --model flow3r_tiny --frames 4 --height 140 --width 196
  python tools/benchmark_model.py --model flow3r_large --frames 24 --height 294 --width 518 \
      --dtype bfloat16 --remat full --compile-only

Rows: `forward` (inference, flow for --pairs pairs) and `train fwd+bwd` (gradient of a scalar of all
outputs w.r.t. the parameters: the memory shape of a training step without the optimizer). With
--compile-only nothing is allocated: parameters are abstract, so flow3r_large fits any host.
Timings are medians over --iters runs after one warm-up; peak memory is read from the device's
allocator where it reports one (GPU/TPU), else "n/a".
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flow3r_jax.models.sizes import SIZES, get_model_config
from flow3r_jax.models import build_model


def _gib(n):
    return f"{n / 2**30:.2f}" if n is not None else "n/a"


def _pairs(batch, frames, num_pairs):
    pairs = [(i % frames, (i + 1) % frames) for i in range(num_pairs)]
    return jnp.asarray(np.tile(np.asarray(pairs, np.int32)[None], (batch, 1, 1)))


def _memory(compiled):
    mem = compiled.memory_analysis()
    if mem is None:
        return None, None
    return mem.temp_size_in_bytes, mem.argument_size_in_bytes + mem.output_size_in_bytes


def _flops(compiled):
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return (cost or {}).get("flops")


def _peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def benchmark(args):
    cfg = get_model_config(args.model)
    cfg.dtype, cfg.remat_policy = args.dtype, args.remat
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((args.batch, args.frames, args.height, args.width, 3), jnp.float32)
    pairs = _pairs(args.batch, args.frames, args.pairs) if args.pairs else None

    def forward(state, x):
        return nnx.merge(graphdef, state)(x, pairs)

    def train_shaped(state, x):
        params, rest = state.split(nnx.Param, ...)

        def scalar(p):
            out = nnx.merge(graphdef, p, rest)(x, pairs)
            return sum(jnp.mean(v.astype(jnp.float32)) for v in out.values())

        return jax.grad(scalar)(params)

    rows = []
    state = None
    if not args.compile_only:
        state = jax.jit(lambda: nnx.state(build_model(cfg, rngs=nnx.Rngs(0))))()
    for name, fn in (("forward", forward), ("train fwd+bwd", train_shaped)):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(abstract_state, images).compile()
        compile_s = time.perf_counter() - start
        temp, io = _memory(compiled)
        row = dict(name=name, compile_s=compile_s, flops=_flops(compiled), temp=temp, io=io, step_s=None, peak=None)
        if state is not None:
            x = jnp.asarray(np.random.default_rng(0).uniform(size=images.shape), jnp.float32)
            jax.block_until_ready(compiled(state, x))
            times = []
            for _ in range(args.iters):
                t = time.perf_counter()
                jax.block_until_ready(compiled(state, x))
                times.append(time.perf_counter() - t)
            row["step_s"] = statistics.median(times)
            row["peak"] = _peak_bytes()
        rows.append(row)
    return cfg, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="flow3r_tiny", choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=140)
    parser.add_argument("--width", type=int, default=196)
    parser.add_argument("--pairs", type=int, default=4, help="flow pairs per sample (0: no flow head call)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--compile-only", action="store_true", help="abstract parameters; no execution")
    args = parser.parse_args(argv)
    if args.height % 14 or args.width % 14:
        parser.error(f"--height/--width must be multiples of 14, got {args.height}x{args.width}")
    cfg, rows = benchmark(args)
    frames = args.batch * args.frames
    print(f"model={args.model} dtype={args.dtype} remat={args.remat} batch={args.batch} frames={args.frames} "
          f"size={args.height}x{args.width} pairs={args.pairs} device={jax.devices()[0].device_kind} "
          f"x{jax.device_count()}")
    header = ("what", "compile s", "GFLOP", "temp GiB", "args+out GiB", "time s", "frames/s", "GFLOP/s", "peak GiB")
    print(" | ".join(f"{h:>13}" for h in header))
    for r in rows:
        gflop = r["flops"] / 1e9 if r["flops"] else None
        fps = frames / r["step_s"] if r["step_s"] else None
        gflops = gflop / r["step_s"] if gflop and r["step_s"] else None
        cells = (r["name"], f"{r['compile_s']:.1f}", f"{gflop:.4g}" if gflop else "n/a", _gib(r["temp"]), _gib(r["io"]),
                 f"{r['step_s']:.4f}" if r["step_s"] else "n/a", f"{fps:.2f}" if fps else "n/a",
                 f"{gflops:.4g}" if gflops else "n/a", _gib(r["peak"]))
        print(" | ".join(f"{c:>13}" for c in cells))
    if len(rows) == 2 and rows[0]["flops"] and rows[1]["flops"]:
        print(f"ratio train/forward: FLOPs {rows[1]['flops'] / rows[0]['flops']:.2f}"
              + (f", time {rows[1]['step_s'] / rows[0]['step_s']:.2f}" if rows[0]["step_s"] else ""))


if __name__ == "__main__":
    main()
