"""Periodic evaluation during training on a held-out split (synthetic by default).

Uses the benchmark metrics of `flow3r_jax.evaluation.metrics`, per sample, then averages:
  flow_epe_px, flow_px3     per flow pair with co-visible pixels (flow_metrics_from_ndc)
  depth_abs_rel, depth_delta_1_25   labeled samples, z of the local points, median scale over the
                            sample's frames (depth_metrics)
  rotation_error_deg, translation_angle_deg, rra_30, rta_30, auc_30   labeled samples, all frame
                            pairs (pairwise_pose_errors, relative_pose_accuracy)
"""

from __future__ import annotations

import numpy as np
from jax.experimental import multihost_utils

from flow3r_jax.evaluation import metrics

FLOW_MASK_THRESHOLD = 0.5


def sample_metrics(batch: dict, outputs: dict, b: int) -> dict[str, float]:
    """Metrics of sample b of a host-side numpy batch and its model outputs."""
    out = {}
    epe, px3 = [], []
    for s in range(batch["pair_indices"].shape[1]):
        if np.any(batch["flow_mask"][b, s] > FLOW_MASK_THRESHOLD):
            m = metrics.flow_metrics_from_ndc(outputs["flow"][b, s], batch["flow_coords"][b, s], batch["flow_mask"][b, s])
            epe.append(m["epe"])
            px3.append(m["px3"])
    if epe:
        out.update(flow_epe_px=float(np.mean(epe)), flow_px3=float(np.mean(px3)))
    if batch["is_labeled"][b] and np.any(batch["valid_mask"][b] & (batch["depth"][b] > 0)):
        depth = metrics.depth_metrics(outputs["local_points"][b, ..., 2], batch["depth"][b], batch["valid_mask"][b])
        out.update(depth_abs_rel=depth["abs_rel"], depth_delta_1_25=depth["delta_1_25"])
    if batch["is_labeled"][b]:
        pred, gt = outputs["camera_poses"][b].astype(np.float64), batch["camera_poses"][b].astype(np.float64)
        rotation, translation = metrics.pairwise_pose_errors(pred, gt)
        accuracy = metrics.relative_pose_accuracy(pred, gt, threshold_deg=30)
        out.update(rotation_error_deg=float(rotation.mean()), translation_angle_deg=float(translation.mean()),
                   rra_30=accuracy["rra"], rta_30=accuracy["rta"], auc_30=accuracy["auc"])
    return out


def evaluate(predict, batches, to_global) -> dict[str, float]:
    """Runs `predict(global_batch) -> outputs` over `batches` (host-local numpy dicts) and averages
    `sample_metrics` over the samples that have each metric. to_global: host batch -> global jax
    arrays. Inputs and outputs are gathered to every host, so all processes return the same means."""
    values: dict[str, list[float]] = {}
    for local in batches:
        batch = to_global(local)
        outputs = predict(batch)
        host_batch = multihost_utils.process_allgather(batch, tiled=True)
        host_outputs = multihost_utils.process_allgather(outputs, tiled=True)
        for b in range(host_batch["images"].shape[0]):
            for name, v in sample_metrics(host_batch, host_outputs, b).items():
                values.setdefault(name, []).append(v)
    return {name: float(np.mean(v)) for name, v in values.items()}
