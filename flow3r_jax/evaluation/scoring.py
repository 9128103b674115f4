"""Which metric, with which alignment and threshold, each benchmark column reports.

Camera (poses camera-to-world, GT and prediction over the same frames):
  dynamic benchmarks: ATE, RPE-t, RPE-r after Sim(3) Umeyama alignment of the predicted camera
    centres to the GT ones (RPE between consecutive frames, translation in GT units, rotation in
    degrees); see flow3r_jax.evaluation.metrics.camera;
  static benchmarks: RRA@30 / RTA@30 / AUC@30 over all frame pairs (translation direction
    sign-ambiguous, the Co3D protocol of VGGT), reported in percent.
Points (when the benchmark has depth): GT points are divided by the GT scene scale (mean distance
  of the valid GT points to their centroid) so thresholds are relative to scene size; predicted
  world points are Sim(3)-aligned (Umeyama, no ICP) to them on all valid pixels; then
  (flow3r_jax.evaluation.metrics.points.point_map_metrics) MSE = mean over valid pixels of the
  squared distance between corresponding points, F@5 = F-score at 0.05 scene-scale units
  (precision: predicted points with a GT point within 0.05; recall: the converse), plus accuracy,
  completion, Chamfer and normal consistency. Pixels are taken at a spatial stride so that at most
  about `max_points` valid points enter (stride recorded as pixel_stride).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flow3r_jax.evaluation.metrics import camera as camera_metrics_lib
from flow3r_jax.evaluation.metrics import points as points_metrics_lib

METRIC_NOTES = (
    "RPE-t / ATE: GT units after Sim(3) alignment; RPE-r: degrees (consecutive frames). "
    "RRA@30 / RTA@30 / AUC@30: percent over all frame pairs. MSE and F@5: after Sim(3) alignment of "
    "points, in units of the GT scene scale (mean distance of GT points to their centroid); F@5 "
    "threshold 0.05. n/a: the benchmark has no depth for point metrics.\n")


@dataclasses.dataclass(frozen=True)
class ScoringSettings:
    angle_threshold_deg: int = 30
    fscore_threshold: float = 0.05
    max_points: int = 100_000


def camera_metrics(kind: str, pred_poses: np.ndarray, gt_poses: np.ndarray, settings: ScoringSettings) -> dict:
    """(N, 4, 4) predicted and GT camera-to-world -> the kind's camera metrics (see module docstring).

    A single-frame sequence has no frame pairs: it gets no camera metrics (empty dict).
    """
    if len(gt_poses) < 2:
        return {}
    if kind == "dynamic":
        errors = camera_metrics_lib.trajectory_metrics(pred_poses, gt_poses)
        return {"ATE": float(errors["ate"]), "RPE-t": float(errors["rpe_trans"]), "RPE-r": float(errors["rpe_rot"])}
    if kind == "static":
        threshold = settings.angle_threshold_deg
        accuracy = camera_metrics_lib.relative_pose_accuracy(pred_poses, gt_poses, threshold)
        return {f"{name.upper()}@{threshold:g}": 100.0 * float(accuracy[name]) for name in ("rra", "rta", "auc")}
    raise ValueError(f"unknown benchmark kind {kind!r}; expected 'dynamic' or 'static'")


def point_metrics(pred_points: np.ndarray, gt_points: np.ndarray, valid: np.ndarray,
                  settings: ScoringSettings) -> dict:
    """(N, H, W, 3) predicted / GT world points and (N, H, W) validity -> {"MSE", "F@5", ...}.

    Also returns accuracy, completion, Chamfer and normal consistency (same units) from
    flow3r_jax.evaluation.metrics.points.point_map_metrics.
    """
    if valid.sum() < 3:
        return {}
    stride = max(1, int(np.ceil(np.sqrt(valid.sum() / settings.max_points))))
    pred, gt, valid = pred_points[:, ::stride, ::stride], gt_points[:, ::stride, ::stride], valid[:, ::stride, ::stride]
    scene_scale = float(np.mean(np.linalg.norm(gt[valid] - gt[valid].mean(0), axis=-1)))
    metrics = points_metrics_lib.point_map_metrics(pred, gt / scene_scale, valid, alignment="sim3",
                                                   threshold=settings.fscore_threshold)
    renamed = {"MSE": metrics.pop("mse"), f"F@{settings.fscore_threshold * 100:g}": metrics.pop("fscore")}
    return {**renamed, **metrics, "scene_scale": scene_scale, "pixel_stride": stride}
