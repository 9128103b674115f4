"""Depth metrics after per-map alignment (monocular / video depth protocol).

Pixels count when `valid` and the ground truth is > 0. Alignment: "median" = scale
median(gt) / median(pred); "scale_shift" = least-squares scale and shift; "none". The aligned
prediction is clipped to >= 1e-6 so that negative depths count as errors. AbsRel = mean |p - g| / g;
delta_1_25 = fraction of pixels with max(p / g, g / p) < 1.25.
"""

import numpy as np

ALIGNMENTS = ("median", "scale_shift", "none")
_MIN_DEPTH = 1e-6


def align_depth(pred, gt, valid, alignment: str = "median"):
    """Align a predicted depth array to the ground truth over valid pixels -> aligned array (same shape)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    mask = np.asarray(valid, bool) & (gt > 0)
    if alignment == "median":
        aligned = pred * (np.median(gt[mask]) / np.median(pred[mask]))
    elif alignment == "scale_shift":
        design = np.stack([pred[mask], np.ones(mask.sum())], axis=-1)
        (scale, shift), *_ = np.linalg.lstsq(design, gt[mask], rcond=None)
        aligned = scale * pred + shift
    elif alignment == "none":
        aligned = pred
    else:
        raise ValueError(f"unknown depth alignment {alignment!r}; expected one of {ALIGNMENTS}")
    return np.maximum(aligned, _MIN_DEPTH)


def depth_metrics(pred, gt, valid, alignment: str = "median", delta_threshold: float = 1.25) -> dict:
    """{"abs_rel", "delta_1_25"} of predicted vs ground-truth depth (any matching shapes)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or np.shape(valid) != gt.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape}, gt {gt.shape}, valid {np.shape(valid)}")
    mask = np.asarray(valid, bool) & (gt > 0)
    if not np.any(mask):
        raise ValueError("depth_metrics needs at least one valid pixel with positive ground-truth depth")
    aligned = align_depth(pred, gt, mask, alignment)[mask]
    target = gt[mask]
    ratio = np.maximum(aligned / target, target / aligned)
    return {
        "abs_rel": float(np.mean(np.abs(aligned - target) / target)),
        "delta_1_25": float(np.mean(ratio < delta_threshold)),
    }
