"""Optical-flow metrics on co-visible pixels.

EPE = mean Euclidean distance in pixels between predicted and ground-truth target coordinates (the
same as between flows); px<t = fraction of co-visible pixels with error < t pixels, t in (1, 3, 5).
A pixel is co-visible where mask > 0.5.
"""

import numpy as np

from flow3r_jax.geometry import ndc

THRESHOLDS_PX = (1, 3, 5)


def flow_metrics(pred, gt, mask, thresholds=THRESHOLDS_PX) -> dict:
    """pred, gt (..., H, W, 2) pixel flows or pixel target coordinates; mask (..., H, W).

    Returns {"epe": float, "px1": ..., "px3": ..., "px5": ...} (keys follow `thresholds`).
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    covisible = np.asarray(mask, np.float64) > 0.5
    if pred.shape != gt.shape or pred.shape[:-1] != covisible.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape}, gt {gt.shape}, mask {covisible.shape}")
    if not np.any(covisible):
        raise ValueError("flow_metrics needs at least one co-visible pixel (mask > 0.5)")
    error = np.linalg.norm(pred - gt, axis=-1)[covisible]
    return {"epe": float(np.mean(error)), **{f"px{t}": float(np.mean(error < t)) for t in thresholds}}


def flow_metrics_from_ndc(pred_coords_ndc, gt_coords_ndc, mask, thresholds=THRESHOLDS_PX) -> dict:
    """Same as `flow_metrics` for (..., H, W, 2) NDC target coordinates (the model's flow output)."""
    height, width = np.shape(gt_coords_ndc)[-3:-1]
    pred_px = ndc.ndc_to_pixel(np.asarray(pred_coords_ndc, np.float64), height, width)
    gt_px = ndc.ndc_to_pixel(np.asarray(gt_coords_ndc, np.float64), height, width)
    return flow_metrics(pred_px, gt_px, mask, thresholds)
