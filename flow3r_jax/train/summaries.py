"""Training metrics: CLU writers, windowed scalar summaries, throughput and image summaries.

Only process 0 writes TensorBoard event files (under `<workdir>/tensorboard`); the other processes
only log. Scalars per logging window: the mean of every per-step metric returned by the train step
(total loss, each loss term, grad / param norms, learning rate), the number of skipped (non-finite)
steps in the window and since the start, and under `perf/`: step time, frames per second, achieved
TFLOP/s and MFU (analytic model FLOPs of each step's batch shape, flow3r_jax/models/flops.py, over the
peak of the devices, flow3r_jax/perf.py).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from clu import metric_writers

from flow3r_jax.geometry import ndc
from flow3r_jax.inference import visualize
from flow3r_jax.models import flops


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard + logging on process 0, logging only elsewhere."""
    return metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0, asynchronous=True)


def train_flops_counter(model_cfg, frozen_mask) -> Callable[[dict], float]:
    """wire batch (flow3r_jax/data/wire.py) -> model FLOPs (forward + backward) of one train step on it,
    from the shapes of its images (B, N, P, 3), source_rows (B, H), source_cols (B, W) and pair_indices
    (B, S, 2); frozen_mask: pytree of bools over the params (modules frozen as a whole take no backward
    pass)."""
    frozen = flops.frozen_modules(frozen_mask)

    @functools.cache
    def of_shape(b, n, h, w, pairs):
        return flops.train_step_flops(model_cfg, b, n, h, w, pairs, frozen=frozen).model

    return lambda batch: of_shape(*batch["images"].shape[:2], batch["source_rows"].shape[1],
                                  batch["source_cols"].shape[1], batch["pair_indices"].shape[1])


class ScalarWindow:
    """Collects per-step metric dicts (device arrays, fetched lazily) between two log points.

    `peak_flops`: FLOP/s of all devices (perf.peak_flops) for perf/mfu; None leaves MFU out.
    """

    def __init__(self, peak_flops: float | None = None):
        self.peak_flops = peak_flops
        self.skipped_total = 0
        self._steps: list[dict] = []
        self._frames = 0
        self._flops = 0.0
        self._start = time.perf_counter()

    def add(self, metrics: dict, frames: int, flops_per_step: float = 0.0) -> None:
        """One step's metrics, the number of frames (clips x frames) it trained on and its model FLOPs."""
        self._steps.append(metrics)
        self._frames += frames
        self._flops += flops_per_step

    def summary(self) -> dict[str, float]:
        """Window means, skipped-step counts and throughput; resets the window."""
        elapsed = time.perf_counter() - self._start
        steps = jax.device_get(self._steps)
        count = len(steps)
        out = {k: float(np.mean([s[k] for s in steps], dtype=np.float64)) for k in steps[0] if k != "skipped"}
        skipped = int(sum(int(s["skipped"]) for s in steps))
        self.skipped_total += skipped
        out.update({"skipped_steps": skipped, "skipped_steps_total": self.skipped_total,
                    "perf/step_time_s": elapsed / count,
                    "perf/frames_per_second": self._frames / elapsed})
        if self._flops:
            out["perf/tflops"] = self._flops / elapsed / 1e12
            if self.peak_flops:
                out["perf/mfu"] = self._flops / elapsed / self.peak_flops
        self._steps = []
        self._frames = 0
        self._flops = 0.0
        self._start = time.perf_counter()
        return out


def _pixel_flow(coords_ndc: np.ndarray) -> np.ndarray:
    return ndc.ndc_coords_to_pixel_flow(np.asarray(coords_ndc, np.float32), np)


def prediction_images(batch: dict, outputs: dict) -> dict[str, np.ndarray]:
    """Side-by-side images of the first sample, as (1, H, 3W, 3) uint8 arrays.

    "depth": input frame 0 | target depth | predicted depth (z of local_points).
    "flow":  input frame i of pair 0 | target flow | predicted flow (same colour scale, pixels;
             target pixels outside the flow mask drawn black).
    """
    image = np.round(np.asarray(batch["images"][0, 0]) * 255).astype(np.uint8)
    target_depth = visualize.colorize_depth(batch["depth"][0, 0], batch["valid_mask"][0, 0])
    pred_depth = visualize.colorize_depth(np.asarray(outputs["local_points"][0, 0, ..., 2]))
    images = {"depth": np.concatenate([image, target_depth, pred_depth], axis=1)[None]}
    if "flow" in outputs:
        i = int(batch["pair_indices"][0, 0, 0])
        source = np.round(np.asarray(batch["images"][0, i]) * 255).astype(np.uint8)
        target = _pixel_flow(batch["flow_coords"][0, 0])
        target = np.where(np.asarray(batch["flow_mask"][0, 0])[..., None] > 0.5, target, np.nan)
        pred = _pixel_flow(outputs["flow"][0, 0])
        scale = float(np.nanmax(np.linalg.norm(target, axis=-1), initial=1.0))
        images["flow"] = np.concatenate([source, visualize.flow_to_color(target, scale),
                                         visualize.flow_to_color(pred, scale)], axis=1)[None]
    return images
