"""Periodic evaluation during training on a held-out split (synthetic by default).

Metrics, averaged over the evaluated samples that have the needed labels:
  flow_epe_px       end-point error in pixels of the predicted flow over co-visible pixels
                    (flow_mask > 0.5), averaged per pair, over pairs with any co-visible pixel.
  depth_abs_rel     |s z_pred - z_gt| / z_gt over valid pixels, s = median(z_gt / z_pred) per sample
                    (predictions are defined up to scale); labeled samples only.
  rotation_error_deg   geodesic angle between predicted and GT relative rotations, all ordered pairs
                       i != j; labeled samples only.
  translation_angle_deg angle between predicted and GT relative translation directions, same pairs.
"""

from __future__ import annotations

import numpy as np
from jax.experimental import multihost_utils

from flow3r_jax.geometry import ndc, transforms

FLOW_MASK_THRESHOLD = 0.5


def _angle_deg(a, b):
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    cosine = np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-12)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def flow_epe(pred_coords, target_coords, mask) -> np.ndarray:
    """(B, S, H, W, 2) NDC coordinates, (B, S, H, W) mask -> EPE in pixels of each pair with any
    co-visible pixel (1-D array; pairs without such pixels are left out)."""
    error = np.linalg.norm(ndc.ndc_coords_to_pixel_flow(pred_coords, np)
                           - ndc.ndc_coords_to_pixel_flow(target_coords, np), axis=-1)
    visible = mask > FLOW_MASK_THRESHOLD
    count = visible.sum(axis=(-2, -1))
    per_pair = np.where(visible, error, 0.0).sum(axis=(-2, -1)) / np.maximum(count, 1)
    return per_pair[count > 0]


def depth_abs_rel(pred_depth, gt_depth, valid) -> np.ndarray:
    """(B, N, H, W) depths and validity -> per-sample abs-rel after median scaling (samples with
    valid pixels only)."""
    out = []
    for pred, gt, ok in zip(pred_depth, gt_depth, valid):
        ok = ok & (gt > 0) & (pred > 0)
        if ok.any():
            scale = np.median(gt[ok] / pred[ok])
            out.append(np.mean(np.abs(scale * pred[ok] - gt[ok]) / gt[ok]))
    return np.asarray(out)


def relative_pose_errors(pred_poses, gt_poses) -> tuple[np.ndarray, np.ndarray]:
    """(B, N, 4, 4) camera-to-world -> (rotation, translation-direction) errors in degrees of every
    ordered pair i != j, flattened."""
    pred_rel, gt_rel = transforms.relative_poses(pred_poses), transforms.relative_poses(gt_poses)
    n = pred_poses.shape[-3]
    off_diagonal = ~np.eye(n, dtype=bool)
    rotation = np.degrees(transforms.rotation_angle(pred_rel[..., :3, :3], gt_rel[..., :3, :3]))
    translation = _angle_deg(pred_rel[..., :3, 3], gt_rel[..., :3, 3])
    return rotation[..., off_diagonal].ravel(), translation[..., off_diagonal].ravel()


def batch_metrics(batch: dict, outputs: dict) -> dict[str, np.ndarray]:
    """Per-item metric values of one (global, host-side numpy) batch; see the module docstring."""
    labeled = np.asarray(batch["is_labeled"], bool)
    out = {"flow_epe_px": flow_epe(outputs["flow"], batch["flow_coords"], batch["flow_mask"])}
    out["depth_abs_rel"] = depth_abs_rel(outputs["local_points"][labeled, ..., 2], batch["depth"][labeled],
                                         batch["valid_mask"][labeled])
    rot, trans = relative_pose_errors(outputs["camera_poses"][labeled].astype(np.float64),
                                      batch["camera_poses"][labeled].astype(np.float64))
    out["rotation_error_deg"], out["translation_angle_deg"] = rot, trans
    return out


def evaluate(predict, batches, to_global) -> dict[str, float]:
    """Runs `predict(global_batch) -> outputs` over `batches` (host-local numpy dicts) and averages
    `batch_metrics`. to_global: host batch -> global jax arrays. Every process returns the same
    means (inputs and outputs are gathered to all hosts); a metric without items is left out."""
    values: dict[str, list[np.ndarray]] = {}
    for local in batches:
        batch = to_global(local)
        outputs = predict(batch)
        host_batch = multihost_utils.process_allgather(batch, tiled=True)
        host_outputs = multihost_utils.process_allgather(outputs, tiled=True)
        for name, v in batch_metrics(host_batch, host_outputs).items():
            values.setdefault(name, []).append(np.asarray(v, np.float64))
    means = {}
    for name, parts in values.items():
        items = np.concatenate(parts)
        if items.size:
            means[name] = float(items.mean())
    return means
