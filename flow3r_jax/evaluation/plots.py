"""Pictures of an evaluation (matplotlib, no display needed): per-sequence trajectories and a per-benchmark
summary.

Trajectories are drawn after the Sim(3) alignment the camera metrics use (Umeyama on camera centres,
flow3r_jax.geometry.alignment), in the ground truth's world frame, seen from above (x-z plane) and from
the side (z-y plane; OpenCV world axes, so y is drawn pointing down).
"""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flow3r_jax.files import atomic_path
from flow3r_jax.geometry.alignment import apply_similarity, umeyama_alignment


def aligned_centres(pred_poses: np.ndarray, gt_poses: np.ndarray) -> np.ndarray:
    """(N, 3) predicted camera centres Sim(3)-aligned onto the GT centres (unaligned when N < 3 or the
    fit is not finite)."""
    pred, gt = np.asarray(pred_poses, np.float64)[:, :3, 3], np.asarray(gt_poses, np.float64)[:, :3, 3]
    if len(pred) < 3 or not np.all(np.isfinite(pred)):
        return pred
    similarity = umeyama_alignment(pred, gt)
    if not all(np.all(np.isfinite(v)) for v in similarity):
        return pred
    return apply_similarity(*similarity, pred)


def _save(fig: Figure, path: str | pathlib.Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_trajectory(path: str | pathlib.Path, pred_poses: np.ndarray, gt_poses: np.ndarray, title: str) -> None:
    """PNG of the aligned predicted trajectory against the GT one; pred/gt (N, 4, 4) camera-to-world."""
    pred, gt = aligned_centres(pred_poses, gt_poses), np.asarray(gt_poses, np.float64)[:, :3, 3]
    fig = Figure(figsize=(9, 4.5))
    for k, (a, b, name) in enumerate(((0, 2, "top (x-z)"), (2, 1, "side (z-y)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.plot(gt[:, a], gt[:, b], "-o", color="black", markersize=2.5, label="ground truth")
        ax.plot(pred[:, a], pred[:, b], "-o", color="tab:red", markersize=2.5, label="prediction (Sim(3)-aligned)")
        ax.plot(gt[:1, a], gt[:1, b], "s", color="tab:green", label="first frame")
        ax.set_xlabel("xyz"[a])
        ax.set_ylabel("xyz"[b])
        ax.set_title(name)
        ax.set_aspect("equal", adjustable="datalim")
        if b == 1:
            ax.invert_yaxis()
    fig.axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_benchmark_summary(path: str | pathlib.Path, benchmark: str, columns: tuple[str, ...],
                           results: list[dict]) -> None:
    """PNG with one bar chart per metric column: the value of every sequence, the mean as a dashed line.

    results: the per-sequence result dicts of `predict_and_score` ("sequence", "metrics")."""
    names = [r["sequence"].split("/")[-1] for r in results]
    fig = Figure(figsize=(3.2 * len(columns), 1.6 + 0.3 * max(len(names), 3)))
    for k, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), k + 1)
        values = np.array([r["metrics"].get(column, np.nan) for r in results], np.float64)
        ax.barh(np.arange(len(names)), np.nan_to_num(values), color="tab:blue")
        if np.isfinite(values).any():
            ax.axvline(float(np.nanmean(values)), color="black", linestyle="--", linewidth=1)
        ax.set_yticks(np.arange(len(names)), names if k == 0 else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(column)
    fig.suptitle(f"{benchmark}: per-sequence metrics (dashed: mean)")
    fig.tight_layout()
    _save(fig, path)
