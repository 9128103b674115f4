"""Metrics of one held-out sample (training batch contract) against the model's outputs.

Per sample b (host numpy arrays), each group only where the sample has what it needs:
  flow_epe_px, flow_px3          flow pairs with co-visible pixels: end-point error in pixels and the
                                 fraction under 3 px, averaged over the pairs (metrics.flow_metrics_from_ndc)
  depth_abs_rel, depth_delta_1_25   labeled samples with valid depth: z of the local points, median
                                 scale over the sample's frames (metrics.depth_metrics)
  rotation_error_deg, translation_angle_deg   labeled samples: mean pairwise relative-pose errors
  RRA@t, RTA@t, AUC@t            labeled samples, for each threshold t: percent over all frame pairs,
                                 translation direction sign-ambiguous (scoring.camera_metrics, "static")
  points_mse, points_chamfer, points_fscore   labeled samples, with point metrics on: world points
                                 Sim(3)-aligned to the ground truth in units of the GT scene scale
                                 (scoring.point_metrics)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flow3r_jax.evaluation import metrics, scoring


def sample_metrics(batch: dict, outputs: dict, b: int, *, angle_thresholds: Sequence[int] = (30,),
                   point_metrics: bool = False, flow_mask_threshold: float = 0.5) -> dict[str, float]:
    """Metrics (module docstring) of sample b of a host batch and the model outputs for that batch."""
    out = {}
    epe, px3 = [], []
    if "flow" in outputs:
        for s in range(batch["pair_indices"].shape[1]):
            if np.any(batch["flow_mask"][b, s] > flow_mask_threshold):
                m = metrics.flow_metrics_from_ndc(outputs["flow"][b, s], batch["flow_coords"][b, s],
                                                  batch["flow_mask"][b, s])
                epe.append(m["epe"])
                px3.append(m["px3"])
    if epe:
        out.update(flow_epe_px=float(np.mean(epe)), flow_px3=float(np.mean(px3)))
    if not batch["is_labeled"][b]:
        return out
    valid = batch["valid_mask"][b] & (batch["depth"][b] > 0)
    if np.any(valid):
        depth = metrics.depth_metrics(outputs["local_points"][b, ..., 2], batch["depth"][b], valid)
        out.update(depth_abs_rel=depth["abs_rel"], depth_delta_1_25=depth["delta_1_25"])
    pred, gt = outputs["camera_poses"][b].astype(np.float64), batch["camera_poses"][b].astype(np.float64)
    rotation, translation = metrics.pairwise_pose_errors(pred, gt)
    out.update(rotation_error_deg=float(rotation.mean()), translation_angle_deg=float(translation.mean()))
    for threshold in angle_thresholds:
        out.update(scoring.camera_metrics("static", pred, gt, scoring.ScoringSettings(angle_threshold_deg=threshold)))
    if point_metrics:
        points = scoring.point_metrics(outputs["points"][b].astype(np.float64), batch["points"][b].astype(np.float64),
                                       batch["valid_mask"][b], scoring.ScoringSettings())
        if points:
            out.update(points_mse=points["MSE"], points_chamfer=points["chamfer"], points_fscore=points["F@5"])
    return out
