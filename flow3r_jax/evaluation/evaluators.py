"""Evaluators declared in the config and built from a registry.

A training config lists its evaluators under `config.evals`, one entry each:

    config.evals.held_out = dict(type="held_out", every_steps=1000, batch_size=8, num_batches=4)
    config.evals.benchmarks = dict(type="benchmarks", every_steps=0, benchmarks=("sintel",), data_root=...)

`type` names a registered evaluator class; `every_steps` is when the training loop runs it (every N
steps and after the last step; 0 = never during training, only on request, e.g. tools/evaluate.py);
every other key is passed to the class. An evaluator runs on a predict function
(`flow3r_jax.inference.predictor.PredictFn`: numpy images (B, N, H, W, 3) and pairs (B, S, 2) or None in,
the model's outputs out, the same on every host) and returns a flat {metric name: float} dict.

Registered types:
  held_out    the held-out split of the data config (`data.eval_sources`), flow3r_jax/evaluation/held_out.py
  benchmarks  the paper's eight benchmarks, flow3r_jax/evaluation/runner.py
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from flow3r_jax.data import pipeline
from flow3r_jax.evaluation import held_out, runner
from flow3r_jax.inference.predictor import PredictFn

_REGISTRY: dict[str, Callable] = {}
CONTROL_KEYS = ("type", "every_steps")


def register(name: str):
    """Class decorator adding an evaluator type under `name`."""
    def add(cls):
        _REGISTRY[name] = cls
        return cls
    return add


def registered() -> list[str]:
    return sorted(_REGISTRY)


def build_evaluator(name: str, entry, config, workdir: str | None = None):
    """The evaluator of config entry `config.evals.<name>` (see module docstring).

    config: the whole training config (evaluators read the data config from it); workdir: where
    evaluators that write files put them (under <workdir>/evaluations/<name>/).
    """
    entry = dict(entry)
    kind = entry.get("type")
    if kind not in _REGISTRY:
        raise ValueError(f"evals.{name}.type={kind!r}; registered evaluator types: {registered()}")
    options = {k: v for k, v in entry.items() if k not in CONTROL_KEYS}
    out_dir = None if workdir is None else os.path.join(workdir, "evaluations", name)
    try:
        return _REGISTRY[kind](config=config, out_dir=out_dir, **options)
    except TypeError as err:
        raise ValueError(f"evals.{name}: options {sorted(options)} do not fit evaluator type {kind!r}: {err}") from err


def build_evaluators(config, workdir: str | None = None) -> dict[str, tuple[int, object]]:
    """{name: (every_steps, evaluator)} for every entry of config.evals."""
    return {name: (int(entry["every_steps"]), build_evaluator(name, entry, config, workdir))
            for name, entry in config.evals.items()}


@register("held_out")
class HeldOutEvaluator:
    """Mean per-sample metrics (flow3r_jax/evaluation/held_out.py) over the held-out split.

    batch_size: samples per forward pass; num_batches: batches evaluated (0 = the whole split, last
    batch possibly smaller); angle_thresholds: RRA/RTA/AUC thresholds in degrees; point_metrics:
    also Sim(3)-aligned point MSE / Chamfer / F-score. Every host reads the whole split.
    """

    def __init__(self, *, config, out_dir, batch_size: int, num_batches: int = 0,
                 angle_thresholds=(30,), point_metrics: bool = False):
        del out_dir
        self._dataset = pipeline.make_eval_dataset(config.data, batch_size=batch_size)
        if num_batches > len(self._dataset):
            raise ValueError(f"held_out: num_batches={num_batches} but the evaluation split has only "
                             f"{len(self._dataset)} batches of {batch_size}")
        self._num_batches = num_batches or len(self._dataset)
        self._options = dict(angle_thresholds=tuple(angle_thresholds), point_metrics=point_metrics,
                             flow_mask_threshold=config.loss.flow_mask_threshold)

    def run(self, predict: PredictFn) -> dict[str, float]:
        values: dict[str, list[float]] = {}
        for index in range(self._num_batches):
            batch = self._dataset[index]
            outputs = predict(batch["images"], batch["pair_indices"])
            for b in range(batch["images"].shape[0]):
                for name, value in held_out.sample_metrics(batch, outputs, b, **self._options).items():
                    values.setdefault(name, []).append(value)
        return {name: float(np.mean(v)) for name, v in values.items()}


@register("benchmarks")
class BenchmarksEvaluator:
    """The paper's benchmarks (runner.evaluate_benchmarks): per-sequence JSON, summary.json and results.md
    in `out_dir`; returns "<benchmark>/<metric>" means over sequences.

    benchmarks: names (flow3r_jax/evaluation/benchmarks); data_root: folder of one sub-folder per
    benchmark; pixel_limit: frames resized to at most this many pixels; seed: Co3Dv2 frame sampling.
    """

    def __init__(self, *, config, out_dir, benchmarks, data_root: str, pixel_limit: int, seed: int = 0):
        del config
        if out_dir is None:
            raise ValueError("the benchmarks evaluator writes files: it needs an output folder")
        self._names = list(benchmarks)
        self._data_root = data_root
        self._out_dir = out_dir
        self._settings = runner.EvalSettings(pixel_limit=pixel_limit)
        self._loader_options = {"co3dv2": {"seed": seed}}

    def run(self, predict: PredictFn) -> dict[str, float]:
        summary = runner.evaluate_benchmarks(self._names, self._data_root, lambda seq: predict, self._out_dir,
                                             self._settings, loader_options=self._loader_options)
        results = {f"{name}/{metric}": value for name, s in summary.items() for metric, value in s["metrics"].items()}
        results.update({f"{name}/num_sequences": float(s["num_sequences"]) for name, s in summary.items()})
        return results
