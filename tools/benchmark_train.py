"""Train-step benchmark: AOT compile time, per-device memory, step time and MFU.

For a config, a clip shape (frames x height x width) and a mesh, the train step is lowered and
compiled ahead of time from abstract inputs (ShapeDtypeStructs carrying their shardings), so
flow3r_large can be analysed on a CPU host with simulated devices without allocating its state.
Each remat policy given is compiled separately. With --run (default where the backend is not CPU),
the state is created for real and the step is timed; MFU = XLA cost-analysis FLOPs per device /
step time / peak FLOP/s per device.

  python tools/benchmark_train.py --config configs/flow3r_large.py --frames 24 --height 518 \\
      --width 518 --mesh 1,8,1 --batch 8 --remat none,dots,full
  (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8 for an 8-device mesh)
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
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device for MFU "
                                  "(default: looked up from the device kind, bf16 dense).")
flags.mark_flags_as_required(["config"])

# Dense bf16 peak TFLOP/s per device (vendor figures), keyed by a substring of device_kind.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
               "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6": 918.0}
GIB = 1024 ** 3


def random_batch(spec: dict, seed: int = 0) -> dict:
    """A labeled batch of the given shapes: random images, depth in [1, 3] seen by identity-pose
    cameras with a nominal pinhole, pairs (i, i + 1), identity flow, full masks."""
    import numpy as np

    from flow3r_jax.geometry import camera, ndc

    rng = np.random.default_rng(seed)
    b, n, h, w, _ = spec["images"].shape
    s = spec["pair_indices"].shape[1]
    intrinsics = np.array([[w, 0, (w - 1) / 2], [0, w, (h - 1) / 2], [0, 0, 1]], np.float32)
    depth = rng.uniform(1.0, 3.0, (b, n, h, w)).astype(np.float32)
    intrinsics_b = np.broadcast_to(intrinsics, (b, n, 3, 3)).copy()
    pairs = np.stack([np.arange(s) % n, (np.arange(s) + 1) % n], axis=-1).astype(np.int32)
    return {
        "images": rng.uniform(0, 1, (b, n, h, w, 3)).astype(np.float32),
        "depth": depth,
        "valid_mask": np.ones((b, n, h, w), bool),
        "points": np.asarray(camera.depth_to_local_points(depth, intrinsics_b), np.float32),
        "camera_poses": np.broadcast_to(np.eye(4, dtype=np.float32), (b, n, 4, 4)).copy(),
        "intrinsics": intrinsics_b,
        "is_labeled": np.ones((b,), bool),
        "normal_ok": np.ones((b,), bool),
        "pair_indices": np.broadcast_to(pairs, (b, s, 2)).copy(),
        "flow_coords": np.broadcast_to(ndc.pixel_to_ndc(ndc.pixel_grid(h, w, np), h, w), (b, s, h, w, 2)).copy(),
        "flow_mask": np.ones((b, s, h, w), np.float32),
    }


def _peak_tflops(device) -> float | None:
    if _PEAK_TFLOPS.value:
        return _PEAK_TFLOPS.value
    return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in device.device_kind.lower()), None)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def benchmark_one(config, remat: str, frames: int, height: int, width: int, batch: int, mesh_sizes, run: bool):
    """One row of the table for one remat policy."""
    import jax

    from flow3r_jax import sharding
    from flow3r_jax.train import setup

    config.model.remat_policy = remat
    config.global_batch_size = batch
    config.init.kind = "scratch"    # the step's cost does not depend on the initial weights
    program = setup.build_program(config, sharding.make_mesh(*mesh_sizes))
    spec = program.batch_spec(batch, frames, config.data.pairs_per_sample, height, width)
    start = time.perf_counter()
    compiled = program.compile(spec)
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    row = {"remat": remat, "compile_s": compile_s, "flops_per_device": _flops(compiled),
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
        peak = _peak_tflops(jax.devices()[0])
        if peak:
            row["mfu"] = row["flops_per_device"] / row["step_s"] / (peak * 1e12)
    return row


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from flow3r_jax.models.attention import resolve_implementation
    from flow3r_jax.models.flow3r import DTYPES

    config = _CONFIG.value
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
