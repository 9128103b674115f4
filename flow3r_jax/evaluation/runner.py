"""Benchmark evaluation: load sequences, predict, score, write per-sequence JSON and a Markdown table.

Predictions come from any `predict_fn(images (1, N, H, W, 3), pair_indices or None) -> outputs` with
the model output contract (numpy or jax arrays): `flow3r_jax.inference.predictor.model_predict_fn`
for a model, or `oracle_predict_fn` (ground truth, for checking the pipeline end to end).

Every sequence is resized to the model resolution first: the pixel-budget rule of
`flow3r_jax.inference.preprocess.target_size` (255k pixels, sides multiples of 14; the
Flow3r/pi3 inference rule), images with Lanczos, depth and validity with nearest neighbour,
intrinsics rescaled. Scoring is in `flow3r_jax.evaluation.scoring`.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq

import cv2
import numpy as np
from PIL import Image

from flow3r_jax.evaluation import plots, scoring
from flow3r_jax.evaluation.benchmarks import Sequence, get_benchmark
from flow3r_jax.files import as_path, atomic_write
from flow3r_jax.geometry.camera import depth_to_local_points
from flow3r_jax.geometry.transforms import transform_points
from flow3r_jax.inference.export import write_json
from flow3r_jax.inference.model_source import ModelSource
from flow3r_jax.inference.predictor import predict_sequence
from flow3r_jax.inference.preprocess import DEFAULT_PIXEL_LIMIT, target_size

log = logging.getLogger(__name__)
PredictFn = Callable[[np.ndarray, np.ndarray | None], dict]

# Columns of the paper's tables, per benchmark kind (see scoring for definitions).
TABLE_COLUMNS = {
    "dynamic": ("RPE-t", "RPE-r", "ATE", "MSE", "F@5"),
    "static": ("RRA@30", "RTA@30", "AUC@30", "MSE", "F@5"),
}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """pixel_limit: the resize budget; chunk_size / overlap: frames per forward pass and frames shared by
    consecutive chunks of a long sequence (flow3r_jax.inference.predictor); plots: write the pictures."""

    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    settings: scoring.ScoringSettings = scoring.ScoringSettings()
    chunk_size: int = 64
    overlap: int = 8
    plots: bool = True


def resize_sequence(seq: Sequence, pixel_limit: int) -> Sequence:
    """Resizes a sequence to the model resolution for its aspect ratio (see module docstring)."""
    n, height, width, _ = seq.images.shape
    new_w, new_h = target_size(width, height, pixel_limit)
    if (new_w, new_h) == (width, height):
        return seq
    images = np.stack([
        np.asarray(Image.fromarray(np.round(im * 255).astype(np.uint8)).resize((new_w, new_h),
                                                                              Image.Resampling.LANCZOS),
                   np.float32) / 255.0 for im in seq.images])
    depth = valid = intrinsics = None
    if seq.depth is not None:
        depth = np.stack([cv2.resize(d, (new_w, new_h), interpolation=cv2.INTER_NEAREST) for d in seq.depth])
        valid = np.stack([cv2.resize(v.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
                          for v in seq.valid_mask]).astype(bool)
    if seq.intrinsics is not None:
        sx, sy = new_w / width, new_h / height
        intrinsics = seq.intrinsics.copy()
        intrinsics[:, 0, 0] *= sx
        intrinsics[:, 1, 1] *= sy
        intrinsics[:, 0, 2] = (intrinsics[:, 0, 2] + 0.5) * sx - 0.5    # pixel-centre convention
        intrinsics[:, 1, 2] = (intrinsics[:, 1, 2] + 0.5) * sy - 0.5
    return dataclasses.replace(seq, images=images, depth=depth, valid_mask=valid, intrinsics=intrinsics)


def ground_truth_points(seq: Sequence) -> np.ndarray | None:
    """(N, H, W, 3) world-frame GT points from depth, intrinsics and poses (None without depth)."""
    if seq.depth is None or seq.intrinsics is None:
        return None
    return transform_points(seq.camera_poses, depth_to_local_points(seq.depth.astype(np.float64), seq.intrinsics))


def oracle_predict_fn(seq: Sequence) -> PredictFn:
    """A predict function that returns `seq`'s ground truth in the model output contract.

    points/local_points from GT depth (zeros where depth is unknown), conf = +10 logit where valid
    and -10 elsewhere, camera_poses the GT poses. Flow is not produced (the benchmarks score no flow).
    """
    local = depth_to_local_points(seq.depth.astype(np.float64), seq.intrinsics) if seq.depth is not None else \
        np.zeros(seq.images.shape, np.float64)
    world = transform_points(seq.camera_poses, local)
    valid = seq.valid_mask if seq.valid_mask is not None else np.zeros(seq.images.shape[:3], bool)

    def predict(images, pair_indices):
        if images.shape[1:] != seq.images.shape:
            raise ValueError(f"oracle for {seq.name}: images {images.shape[1:]} != sequence {seq.images.shape}")
        return {"points": world[None].astype(np.float32), "local_points": local[None].astype(np.float32),
                "conf": np.where(valid, 10.0, -10.0)[None, ..., None].astype(np.float32),
                "camera_poses": seq.camera_poses[None].astype(np.float32)}

    return predict


def predict_and_score(seq: Sequence, kind: str, predict_fn: PredictFn,
                      settings: EvalSettings) -> tuple[dict, dict[str, np.ndarray]]:
    """Predicts (chunked like predict) and scores one (already resized) sequence -> (a JSON-ready dict of
    metrics and metadata, the merged outputs)."""
    start = time.perf_counter()
    out = predict_sequence(predict_fn, seq.images, chunk_size=settings.chunk_size, overlap=settings.overlap,
                           show_progress=False)
    seconds = time.perf_counter() - start
    metrics = scoring.camera_metrics(kind, out["camera_poses"].astype(np.float64), seq.camera_poses,
                                     settings.settings)
    gt_points = ground_truth_points(seq)
    if gt_points is not None:
        metrics.update(scoring.point_metrics(out["points"].astype(np.float64), gt_points, seq.valid_mask,
                                             settings.settings))
    return {"sequence": seq.name, "kind": kind, "num_frames": seq.num_frames,
            "resolution": list(seq.images.shape[1:3]), "frame_ids": [str(f) for f in seq.frame_ids],
            "predict_seconds": seconds, "metrics": metrics}, out


def _file_stem(name: str) -> str:
    return name.replace("/", "__")


def evaluate_benchmarks(benchmarks: Seq[str], data_root: str | pathlib.Path,
                        predict_fn_for: Callable[[Sequence], PredictFn], out_dir: str | pathlib.Path,
                        settings: EvalSettings = EvalSettings(), loader_options: dict | None = None) -> dict:
    """Evaluates each benchmark; writes into out_dir sequences/<name>.json, summary.json, results.md and,
    with settings.plots, plots/<name>_trajectory.png per sequence and plots/<benchmark>_summary.png.

    predict_fn_for(sequence) returns the predict function to use for that (resized) sequence: the
    same model function for every sequence, or a per-sequence oracle. Returns the summary: per benchmark the
    mean of each metric over its sequences and the sequence count.
    """
    out_dir = as_path(out_dir)  # a local folder or a URL (gs://...)
    loader_options = loader_options or {}
    summary = {}
    for name in benchmarks:
        benchmark = get_benchmark(name)
        results = []
        for seq in benchmark.sequences(data_root, **loader_options.get(name, {})):
            seq = resize_sequence(seq, settings.pixel_limit)
            result, out = predict_and_score(seq, benchmark.kind, predict_fn_for(seq), settings)
            write_json(out_dir / "sequences" / f"{_file_stem(seq.name)}.json", result)
            if settings.plots:
                plots.plot_trajectory(out_dir / "plots" / f"{_file_stem(seq.name)}_trajectory.png",
                                      out["camera_poses"], seq.camera_poses, seq.name)
            log.info("%s: %s", seq.name, result["metrics"])
            results.append(result)
        summary[name] = {"kind": benchmark.kind, "num_sequences": len(results),
                         "metrics": mean_metrics([r["metrics"] for r in results])}
        if settings.plots and results:
            plots.plot_benchmark_summary(out_dir / "plots" / f"{name}_summary.png", name,
                                         TABLE_COLUMNS[benchmark.kind], results)
    write_json(out_dir / "summary.json", {"settings": dataclasses.asdict(settings), "benchmarks": summary})
    atomic_write(out_dir / "results.md", markdown_tables(summary))
    return summary


def check_benchmarks(benchmarks: Seq[str], data_root: str | pathlib.Path) -> None:
    """ValueError / FileNotFoundError naming the benchmark or folder when one is unknown or absent."""
    for name in benchmarks:
        folder = pathlib.Path(data_root) / get_benchmark(name).folder
        if not folder.is_dir():
            raise FileNotFoundError(f"benchmark {name}: no folder {folder} (see the layout in "
                                    "flow3r_jax/evaluation/benchmarks/)")


def evaluate_model(source: ModelSource, benchmarks: Seq[str], data_root: str | pathlib.Path,
                   out_dir: str | pathlib.Path, settings: EvalSettings = EvalSettings(), seed: int = 0) -> dict:
    """Checks the benchmarks and the model source, loads the model and evaluates it (see
    `evaluate_benchmarks`; `seed` drives the frame sampling of Co3Dv2). Returns the summary."""
    from flow3r_jax.inference.predictor import model_predict_fn

    check_benchmarks(benchmarks, data_root)
    source.validate()
    model, _ = source.load()
    predict_fn = model_predict_fn(model)
    return evaluate_benchmarks(benchmarks, data_root, lambda seq: predict_fn, out_dir, settings,
                               loader_options={"co3dv2": {"seed": seed}})


def mean_metrics(per_sequence: list[dict]) -> dict:
    """Mean over sequences of each metric (sequences lacking a metric are not counted for it)."""
    keys = sorted({k for m in per_sequence for k in m})
    return {k: float(np.mean([m[k] for m in per_sequence if k in m])) for k in keys}


def markdown_tables(summary: dict) -> str:
    """One Markdown table per benchmark kind, rows = benchmarks, columns = the paper's metrics."""
    sections = []
    for kind, title in (("dynamic", "Dynamic benchmarks"), ("static", "Static benchmarks")):
        rows = {n: s for n, s in summary.items() if s["kind"] == kind}
        if not rows:
            continue
        columns = TABLE_COLUMNS[kind]
        lines = [f"### {title}", "", "| Benchmark | " + " | ".join(columns) + " | Sequences |",
                 "|---|" + "---:|" * (len(columns) + 1)]
        for name, s in rows.items():
            cells = [f"{s['metrics'][c]:.4f}" if c in s["metrics"] else "n/a" for c in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['num_sequences']} |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n\n" + scoring.METRIC_NOTES
