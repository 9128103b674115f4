"""Camera-pose metrics. Poses are (N, 4, 4) camera-to-world (OpenCV axes), frames in temporal order.

Dynamic benchmarks (as in the CUT3R / MonST3R evaluation with evo): the predicted trajectory is
aligned to the ground truth by a Umeyama Sim(3) fit of the camera centres (scale corrected), then
ATE = RMSE of the camera-centre residuals, RPE = RMSE over consecutive frames (delta = 1 frame) of
the translation norm and rotation angle (degrees) of inv(Q_i^-1 Q_i+1) @ (P_i^-1 P_i+1).

Static benchmarks (the Co3D protocol of PoseDiffusion / VGGT): for every unordered pair i < j the
relative pose inv(P_i) @ P_j is compared: rotation error = geodesic angle; translation error = angle
between translation directions, sign-ambiguous, i.e. min(err, 180 - err) (90 deg when a translation
is zero). RRA@t / RTA@t = fraction of pairs with error < t; AUC@t = mean over thresholds 1..t deg of
the fraction of pairs whose max(rotation error, translation error) is below the threshold (a
histogram with unit bins on [0, t], the last bin closed).
"""

import numpy as np

from flow3r_jax.geometry.alignment import umeyama_alignment
from flow3r_jax.geometry.transforms import relative_poses, rotation_angle, se3_inverse


def _check_poses(pred_poses, gt_poses):
    pred_poses, gt_poses = np.asarray(pred_poses, np.float64), np.asarray(gt_poses, np.float64)
    if pred_poses.shape != gt_poses.shape or pred_poses.shape[-2:] != (4, 4) or pred_poses.ndim != 3:
        raise ValueError(f"expected two (N, 4, 4) pose arrays, got {pred_poses.shape} and {gt_poses.shape}")
    return pred_poses, gt_poses


def align_trajectory(pred_poses, gt_poses, with_scale: bool = True):
    """Apply the Umeyama Sim(3) (or SE(3)) fit of predicted to ground-truth camera centres to the poses."""
    pred_poses, gt_poses = _check_poses(pred_poses, gt_poses)
    scale, rotation, translation = umeyama_alignment(pred_poses[:, :3, 3], gt_poses[:, :3, 3], with_scale=with_scale)
    aligned = pred_poses.copy()
    aligned[:, :3, :3] = rotation @ pred_poses[:, :3, :3]
    aligned[:, :3, 3] = scale * pred_poses[:, :3, 3] @ rotation.T + translation
    return aligned


def absolute_trajectory_error(pred_poses, gt_poses) -> float:
    """ATE: RMSE of camera centres after Sim(3) alignment (ground-truth units)."""
    aligned = align_trajectory(pred_poses, gt_poses)
    residual = aligned[:, :3, 3] - np.asarray(gt_poses, np.float64)[:, :3, 3]
    return float(np.sqrt(np.mean(np.sum(residual**2, axis=-1))))


def relative_pose_error(pred_poses, gt_poses) -> dict:
    """RPE over consecutive frames after Sim(3) alignment: {"rpe_trans": RMSE (GT units), "rpe_rot": RMSE deg}."""
    aligned = align_trajectory(pred_poses, gt_poses)
    gt_poses = np.asarray(gt_poses, np.float64)
    pred_steps = se3_inverse(aligned[:-1]) @ aligned[1:]
    gt_steps = se3_inverse(gt_poses[:-1]) @ gt_poses[1:]
    error = se3_inverse(gt_steps) @ pred_steps
    translation = np.linalg.norm(error[:, :3, 3], axis=-1)
    rotation = np.degrees(rotation_angle(np.eye(3), error[:, :3, :3]))
    return {
        "rpe_trans": float(np.sqrt(np.mean(translation**2))),
        "rpe_rot": float(np.sqrt(np.mean(rotation**2))),
    }


def trajectory_metrics(pred_poses, gt_poses) -> dict:
    """{"ate", "rpe_trans", "rpe_rot"} of one sequence (see the module docstring)."""
    return {"ate": absolute_trajectory_error(pred_poses, gt_poses), **relative_pose_error(pred_poses, gt_poses)}


def pairwise_pose_errors(pred_poses, gt_poses):
    """(rotation error deg, translation direction error deg), each (N (N - 1) / 2,) over pairs i < j."""
    pred_poses, gt_poses = _check_poses(pred_poses, gt_poses)
    first, second = np.triu_indices(pred_poses.shape[0], k=1)
    pred_rel = relative_poses(pred_poses)[first, second]
    gt_rel = relative_poses(gt_poses)[first, second]
    rotation = np.degrees(rotation_angle(pred_rel[:, :3, :3], gt_rel[:, :3, :3]))
    pred_dir = _unit(pred_rel[:, :3, 3])
    gt_dir = _unit(gt_rel[:, :3, 3])
    cosine = np.clip(np.abs(np.sum(pred_dir * gt_dir, axis=-1)), 0.0, 1.0)
    return rotation, np.degrees(np.arccos(cosine))


def _unit(vectors):
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def relative_pose_accuracy(pred_poses, gt_poses, threshold_deg: int = 30) -> dict:
    """{"rra", "rta", "auc"} at `threshold_deg` over all frame pairs, as fractions in [0, 1]."""
    rotation, translation = pairwise_pose_errors(pred_poses, gt_poses)
    worst = np.maximum(rotation, translation)
    histogram, _ = np.histogram(worst, bins=np.arange(threshold_deg + 1))
    return {
        "rra": float(np.mean(rotation < threshold_deg)),
        "rta": float(np.mean(translation < threshold_deg)),
        "auc": float(np.mean(np.cumsum(histogram / worst.size))),
    }
