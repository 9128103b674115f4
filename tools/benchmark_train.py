"""Train-step benchmark: AOT compile time, per-device memory, step time and MFU.

For a config, a clip shape (frames x height x width) and a mesh, the train step is lowered and
compiled ahead of time from abstract inputs (ShapeDtypeStructs carrying their shardings), so
flow3r_large can be analysed on a CPU host with simulated devices without allocating its state.
Each remat policy given is compiled separately. With --run (default where the backend is not CPU),
the state is created for real and the step is timed; MFU = analytic model FLOPs of the step
(flow3r_jax/models/flops.py: forward + backward, frozen modules' gradients left out) / step time /
peak FLOP/s of the devices (flow3r_jax/perf.py).

  python tools/benchmark_train.py --config configs/flow3r_large.py --frames 24 --height 518 \\
      --width 518 --mesh 1,8,1 --batch 8 --remat none,dots,full
  (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8 for an 8-device mesh)

With --buckets, every shape bucket of the config (flow3r_jax/data/buckets.py; batch sizes from its
per-device budget on the mesh) is compiled ahead of time instead, one row per bucket: compile time and
per-device memory (the --frames/--height/--width/--batch/--remat/--run flags are not used):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tools/benchmark_train.py \\
      --config configs/flow3r_large.py --buckets --mesh 1,8,1
"""

import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_FRAMES = flags.DEFINE_integer("frames", None, "Frames per clip (default: config.data.num_frames).")
_HEIGHT = flags.DEFINE_integer("height", None, "Image height (default: config.data.height).")
_WIDTH = flags.DEFINE_integer("width", None, "Image width (default: config.data.width).")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch size (default: config.global_batch_size).")
_MESH = flags.DEFINE_string("mesh", None, "data,fsdp,tensor sizes (default: the config's mesh).")
_REMAT = flags.DEFINE_list("remat", None, "Remat policies to compare (default: the config's).")
_RUN = flags.DEFINE_bool("run", None, "Allocate and time the step (default: on non-CPU backends).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after two warm-up steps.")
_BUCKETS = flags.DEFINE_bool("buckets", False, "Compile every shape bucket of the config and print compile "
                              "time and per-device memory per bucket (see the module docstring).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device for MFU "
                                  "(default: flow3r_jax.perf's table, bf16 dense; measured on CPU).")
flags.mark_flags_as_required(["config"])

GIB = 1024 ** 3


def random_batch(spec: dict, seed: int = 0) -> dict:
    """A labeled wire batch (flow3r_jax/data/wire.py) of the given shapes, laid out as resampled on the host
    (identity offsets, every buffer's slots used): random images, depth in [1, 3] seen by identity-pose
    cameras with a nominal pinhole, pairs (i, i + 1), identity flow (quantized), full masks."""
    import numpy as np

    from flow3r_jax.data.records import FLOW_NDC_SCALE
    from flow3r_jax.geometry import ndc

    rng = np.random.default_rng(seed)
    b, n, p, _ = spec["images"].shape
    h, w = spec["source_rows"].shape[1], spec["source_cols"].shape[1]
    s = spec["pair_indices"].shape[1]
    intrinsics = np.array([[w, 0, (w - 1) / 2], [0, w, (h - 1) / 2], [0, 0, 1]], np.float32)
    pairs = np.stack([np.arange(s) % n, (np.arange(s) + 1) % n], axis=-1).astype(np.int32)
    identity = np.round(ndc.pixel_to_ndc(ndc.pixel_grid(h, w, np), h, w) * FLOW_NDC_SCALE).astype(np.int16)
    flow = np.zeros((b, s, p, 2), np.int16)
    flow[:, :, :h * w] = identity.reshape(h * w, 2)

    def per_sample(values, dtype=np.int32):
        return np.broadcast_to(np.asarray(values, dtype), (b,) + np.shape(values)).copy()
    rows, cols = np.arange(h) * w, np.arange(w)
    return {
        "images": rng.integers(0, 256, (b, n, p, 3)).astype(np.uint8),
        "image_rows": per_sample(np.stack([rows, rows], -1)),
        "image_row_weights": per_sample(np.zeros(h), np.float32),
        "image_cols": per_sample(np.stack([cols, cols], -1)),
        "image_col_weights": per_sample(np.zeros(w), np.float32),
        "color_transform": per_sample(np.eye(3, 4), np.float32),
        "depth": rng.uniform(1.0, 3.0, (b, n, p)).astype(np.float16),
        "valid_mask": np.ones((b, n, p), np.uint8),
        "label_rows": per_sample(rows),
        "label_cols": per_sample(cols),
        "source_rows": per_sample(np.arange(h)),
        "source_cols": per_sample(cols),
        "pixel_to_world": np.broadcast_to(np.linalg.inv(intrinsics), (b, n, 3, 3)).copy(),
        "camera_poses": np.broadcast_to(np.eye(4, dtype=np.float32), (b, n, 4, 4)).copy(),
        "intrinsics": np.broadcast_to(intrinsics, (b, n, 3, 3)).copy(),
        "is_labeled": np.ones((b,), bool),
        "normal_ok": np.ones((b,), bool),
        "pair_indices": np.broadcast_to(pairs, (b, s, 2)).copy(),
        "flow_quantized": flow,
        "flow_mask": np.full((b, s, p), 255, np.uint8),
        "flow_rows": per_sample(rows),
        "flow_cols": per_sample(cols),
        "flow_row_shift": per_sample(np.zeros(h)),
        "flow_col_shift": per_sample(np.zeros(w)),
        "pair_stored": np.ones((b, s), bool),
        "flow_to_ndc": np.broadcast_to(np.array([[1.0, 0.0], [1.0, 0.0]], np.float32) / [[FLOW_NDC_SCALE, 1.0]],
                                       (b, 2, 2)).astype(np.float32),
        "flow_bounds": np.broadcast_to(np.array([[-32768, 32767]] * 2, np.int32), (b, 2, 2)).copy(),
    }


def benchmark_one(config, remat: str, frames: int, height: int, width: int, batch: int, mesh_sizes, run: bool):
    """One row of the table for one remat policy."""
    import jax

    from flow3r_jax import perf, sharding
    from flow3r_jax.data.buckets import Bucket, wire_source_pixels
    from flow3r_jax.models import flops
    from flow3r_jax.train import setup

    config.model.remat_policy = remat
    config.global_batch_size = batch
    program = setup.build_program(config, sharding.make_mesh(*mesh_sizes))
    spec = program.bucket_spec(Bucket(frames, height, width, config.data.pairs_per_sample, batch,
                                      wire_source_pixels(config.data, height, width)))
    start = time.perf_counter()
    compiled = program.compile(spec)
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    step_flops = flops.train_step_flops(config.model, batch, frames, height, width, config.data.pairs_per_sample,
                                        frozen=flops.frozen_modules(program.frozen))
    row = {"remat": remat, "compile_s": compile_s, "flops_per_device": step_flops.model / program.mesh.size,
           "args_gib": memory.argument_size_in_bytes / GIB, "temp_gib": memory.temp_size_in_bytes / GIB,
           "output_gib": memory.output_size_in_bytes / GIB, "alias_gib": memory.alias_size_in_bytes / GIB}
    row["peak_gib"] = row["args_gib"] + row["temp_gib"] + row["output_gib"] - row["alias_gib"]
    if run:
        state = program.init_state()
        data = program.global_batch(random_batch(spec))
        with sharding.use_rules(program.mesh, program.rules):
            for _ in range(2):
                state, metrics = compiled(state, data)
            jax.block_until_ready(metrics)
            start = time.perf_counter()
            for _ in range(_STEPS.value):
                state, metrics = compiled(state, data)
            jax.block_until_ready(metrics)
        row["step_s"] = (time.perf_counter() - start) / _STEPS.value
        peak = perf.peak_flops(list(program.mesh.devices.flat), _PEAK_TFLOPS.value)
        if peak:
            row["mfu"] = perf.mfu(step_flops.model, row["step_s"], peak)
    return row


def benchmark_buckets(config, mesh_sizes) -> None:
    """Prints one row per shape bucket of `config` on a (data, fsdp, tensor) mesh: the bucket's global and
    per-device batch, patch tokens per device, AOT compile seconds, per-device argument / temporary /
    output / peak memory (XLA memory analysis; peak = arguments + temporaries + outputs - aliased)."""
    import jax

    from flow3r_jax import sharding
    from flow3r_jax.train import setup

    program = setup.build_program(config, sharding.make_mesh(*mesh_sizes))
    devices = setup.batch_devices(program.mesh, program.rules)
    patch = config.data.patch_size
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, mesh (data, fsdp, tensor)={mesh_sizes}, "
          f"{len(program.buckets)} buckets, dtype {config.model.dtype}, remat {config.model.remat_policy}")
    print(f"{'frames':>6} {'H x W':>9} {'pairs':>5} {'batch':>6} {'/device':>7} {'tokens/dev':>10} {'compile s':>9} "
          f"{'args GiB':>8} {'temp GiB':>8} {'out GiB':>7} {'peak GiB':>8}")
    total = time.perf_counter()
    for bucket in program.buckets:
        start = time.perf_counter()
        compiled = program.compile(program.bucket_spec(bucket))
        compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        args, temp, out, alias = (getattr(memory, f"{k}_size_in_bytes") / GIB
                                  for k in ("argument", "temp", "output", "alias"))
        del compiled
        jax.clear_caches()   # one program at a time: with all of them alive, LLVM ran out of memory at the 16th
        per_device = bucket.batch_size // devices
        print(f"{bucket.num_frames:>6} {f'{bucket.height}x{bucket.width}':>9} {bucket.num_pairs:>5} "
              f"{bucket.batch_size:>6} {per_device:>7} {per_device * bucket.tokens(patch):>10} {compile_s:>9.1f} "
              f"{args:>8.2f} {temp:>8.2f} {out:>7.2f} {args + temp + out - alias:>8.2f}", flush=True)
    print(f"{len(program.buckets)} programs compiled in {time.perf_counter() - total:.0f} s")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from flow3r_jax.models.attention import resolve_implementation
    from flow3r_jax.models.flow3r import DTYPES

    config = _CONFIG.value
    config.init.kind = "scratch"    # the step's cost does not depend on the initial weights
    if _BUCKETS.value:
        mesh_sizes = (tuple(int(v) for v in _MESH.value.split(",")) if _MESH.value
                      else (config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
        benchmark_buckets(config, mesh_sizes)
        return
    frames = _FRAMES.value or config.data.num_frames
    height, width = _HEIGHT.value or config.data.height, _WIDTH.value or config.data.width
    batch = _BATCH.value or config.global_batch_size
    mesh_sizes = (tuple(int(v) for v in _MESH.value.split(",")) if _MESH.value
                  else (config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
    run = jax.default_backend() != "cpu" if _RUN.value is None else _RUN.value
    policies = _REMAT.value or [config.model.remat_policy]
    attention = resolve_implementation(config.model.attention_impl, DTYPES[config.model.dtype])
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, mesh (data, fsdp, tensor)={mesh_sizes}, "
          f"batch {batch} x {frames} frames x {height}x{width}, dtype {config.model.dtype}, "
          f"attention {config.model.attention_impl!r} -> {attention!r}")
    header = (f"{'remat':>6} {'compile s':>10} {'args GiB':>9} {'temp GiB':>9} {'out GiB':>8} {'peak GiB':>9} "
              f"{'GFLOP/dev':>10} {'step s':>8} {'MFU':>6}")
    print(header)
    for policy in policies:
        r = benchmark_one(config, policy, frames, height, width, batch, mesh_sizes, run)
        step = f"{r['step_s']:8.3f}" if "step_s" in r else f"{'-':>8}"
        mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else f"{'-':>6}"
        print(f"{policy:>6} {r['compile_s']:10.1f} {r['args_gib']:9.3f} {r['temp_gib']:9.3f} {r['output_gib']:8.3f} "
              f"{r['peak_gib']:9.3f} {r['flops_per_device'] / 1e9:10.1f} {step} {mfu}", flush=True)


if __name__ == "__main__":
    app.run(main)
