"""Peak FLOP/s of the devices and model FLOPs utilisation (MFU).

MFU = model FLOPs of a step (flow3r_jax/models/flops.py, forward + backward) / step time / peak FLOP/s
of all devices running it. Accelerator peaks are the vendors' dense bfloat16 figures per device; a CPU
has no such figure, so its peak is measured once per process by a float32 matmul benchmark on the host
(the simulated CPU devices of one process share it).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

# Dense bfloat16 peak TFLOP/s per device (vendor figures), keyed by a substring of device_kind; the
# first matching key wins, so more specific names come first.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
               "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6": 918.0}


def device_peak_tflops(device) -> float | None:
    """Table peak of an accelerator (None for CPUs and unknown kinds)."""
    kind = device.device_kind.lower()
    return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in kind), None)


@functools.cache
def measured_cpu_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of this host's CPU on a float32 (size x size) @ (size x size) matmul at the highest
    precision (best of `repeats` after a warm-up)."""
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32), cpu)
    matmul = jax.jit(lambda x: jnp.matmul(x, x, precision=jax.lax.Precision.HIGHEST))
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def peak_flops(devices: Sequence | None = None, peak_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of `devices` together (default: all devices). `peak_tflops` overrides the per-device
    table figure. CPU devices count the measured host figure once per process. None when a device kind
    is unknown and no override is given."""
    devices = jax.devices() if devices is None else devices
    total = 0.0
    cpu_processes = set()
    for device in devices:
        if device.platform == "cpu" and peak_tflops is None:
            cpu_processes.add(device.process_index)
            continue
        per_device = peak_tflops or device_peak_tflops(device)
        if per_device is None:
            return None
        total += per_device * 1e12
    return total + len(cpu_processes) * measured_cpu_flops()


def mfu(flops_per_step: float, step_time_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (a fraction, not a percentage)."""
    return flops_per_step / step_time_s / peak_flops_per_s
