"""Point-map metrics after alignment (the pi3 / Spann3R / CUT3R reconstruction protocol).

The prediction is first aligned to the ground truth on corresponding valid pixels: "sim3" = Umeyama
Sim(3) (least squares, scale corrected; no ICP refinement), "median_scale" = one scale,
median(|g|) / median(|p|) of point norms about the origin (frame 0's camera for first-frame maps),
"none" = as is. Then, with nearest neighbours (scipy cKDTree, Euclidean):
accuracy = mean distance from each predicted point to the ground truth (also its median),
completion = mean distance from each ground-truth point to the prediction (also its median),
chamfer = (accuracy + completion) / 2,
normal consistency = mean |n_p . n_g| over nearest-neighbour pairs, averaged over both directions
(normals from the point maps' image-grid cross products; pairs with an invalid normal are skipped),
precision / recall = fraction of predicted / ground-truth points within `threshold` of the other
cloud, fscore = 2 P R / (P + R); and point MSE = mean over valid pixels of the squared Euclidean
distance between aligned predicted and ground-truth points. Distances are in ground-truth units; the
default F-score threshold 0.05 reads "F@5" as 5 cm on metric scenes.
"""

import numpy as np
from scipy.spatial import cKDTree

from flow3r_jax.geometry.alignment import apply_similarity, umeyama_alignment
from flow3r_jax.geometry.maps import point_map_normals

ALIGNMENTS = ("sim3", "median_scale", "none")


def align_points(pred_points, gt_points, alignment: str = "sim3"):
    """Align (M, 3) predicted points to corresponding (M, 3) ground truth -> (aligned (M, 3), transform fn).

    The returned function applies the same transform to any (..., 3) array of predicted points.
    """
    pred_points, gt_points = np.asarray(pred_points, np.float64), np.asarray(gt_points, np.float64)
    if alignment == "sim3":
        scale, rotation, translation = umeyama_alignment(pred_points, gt_points)
        transform = lambda p: apply_similarity(scale, rotation, translation, np.asarray(p, np.float64))  # noqa: E731
    elif alignment == "median_scale":
        scale = np.median(np.linalg.norm(gt_points, axis=-1)) / np.median(np.linalg.norm(pred_points, axis=-1))
        transform = lambda p: scale * np.asarray(p, np.float64)  # noqa: E731
    elif alignment == "none":
        transform = lambda p: np.asarray(p, np.float64)  # noqa: E731
    else:
        raise ValueError(f"unknown point alignment {alignment!r}; expected one of {ALIGNMENTS}")
    return transform(pred_points), transform


def point_cloud_metrics(pred_points, gt_points, pred_normals=None, gt_normals=None, threshold: float = 0.05) -> dict:
    """Accuracy, completion, Chamfer, F-score (and normal consistency when normals are given).

    pred_points (M, 3), gt_points (K, 3), already aligned; normals (M, 3) / (K, 3) unit or zero (invalid).
    """
    pred_points, gt_points = np.asarray(pred_points, np.float64), np.asarray(gt_points, np.float64)
    if len(pred_points) == 0 or len(gt_points) == 0:
        raise ValueError(f"point clouds must be non-empty, got {len(pred_points)} and {len(gt_points)} points")
    to_gt, nearest_gt = cKDTree(gt_points).query(pred_points)
    to_pred, nearest_pred = cKDTree(pred_points).query(gt_points)
    precision = float(np.mean(to_gt < threshold))
    recall = float(np.mean(to_pred < threshold))
    result = {
        "accuracy": float(np.mean(to_gt)),
        "accuracy_median": float(np.median(to_gt)),
        "completion": float(np.mean(to_pred)),
        "completion_median": float(np.median(to_pred)),
        "chamfer": float((np.mean(to_gt) + np.mean(to_pred)) / 2),
        "precision": precision,
        "recall": recall,
        "fscore": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
    }
    if pred_normals is not None and gt_normals is not None:
        forward = _normal_agreement(np.asarray(pred_normals), np.asarray(gt_normals)[nearest_gt])
        backward = _normal_agreement(np.asarray(gt_normals), np.asarray(pred_normals)[nearest_pred])
        result["normal_consistency"] = float((forward + backward) / 2)
    return result


def _normal_agreement(normals, matched):
    usable = (np.linalg.norm(normals, axis=-1) > 0) & (np.linalg.norm(matched, axis=-1) > 0)
    if not np.any(usable):
        return np.nan
    return np.mean(np.abs(np.sum(normals[usable] * matched[usable], axis=-1)))


def point_map_metrics(pred_maps, gt_maps, valid, alignment: str = "sim3", threshold: float = 0.05) -> dict:
    """All point metrics of one sequence: pred_maps, gt_maps (N, H, W, 3) in one frame; valid (N, H, W)."""
    pred_maps, gt_maps = np.asarray(pred_maps, np.float64), np.asarray(gt_maps, np.float64)
    valid = np.asarray(valid, bool)
    if pred_maps.shape != gt_maps.shape or pred_maps.shape[:-1] != valid.shape:
        raise ValueError(f"shape mismatch: pred {pred_maps.shape}, gt {gt_maps.shape}, valid {valid.shape}")
    if not np.any(valid):
        raise ValueError("point_map_metrics needs at least one valid pixel")
    _, transform = align_points(pred_maps[valid], gt_maps[valid], alignment)
    aligned = transform(pred_maps)
    pred_normals, pred_normal_ok = point_map_normals(aligned, valid)
    gt_normals, gt_normal_ok = point_map_normals(gt_maps, valid)
    pred_normals = np.where(pred_normal_ok[..., None], pred_normals, 0.0)
    gt_normals = np.where(gt_normal_ok[..., None], gt_normals, 0.0)
    result = point_cloud_metrics(aligned[valid], gt_maps[valid], pred_normals[valid], gt_normals[valid], threshold)
    result["mse"] = float(np.mean(np.sum((aligned[valid] - gt_maps[valid]) ** 2, axis=-1)))
    return result
