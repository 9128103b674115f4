"""Benchmark metrics on host numpy arrays, each documented with its alignment and thresholds.

camera: trajectory ATE / RPE (dynamic benchmarks) and pairwise RRA / RTA / AUC (static benchmarks).
points: point-cloud accuracy, completion, normal consistency, Chamfer, F-score and point MSE.
depth: AbsRel and delta < 1.25 after median or scale-and-shift alignment.
flow: end-point error and < 1 / 3 / 5 px rates on co-visible pixels.
"""

from flow3r_jax.evaluation.metrics.camera import (
    absolute_trajectory_error,
    pairwise_pose_errors,
    relative_pose_accuracy,
    relative_pose_error,
    trajectory_metrics,
)
from flow3r_jax.evaluation.metrics.depth import align_depth, depth_metrics
from flow3r_jax.evaluation.metrics.flow import flow_metrics, flow_metrics_from_ndc
from flow3r_jax.evaluation.metrics.points import align_points, point_cloud_metrics, point_map_metrics

__all__ = [
    "absolute_trajectory_error",
    "align_depth",
    "align_points",
    "depth_metrics",
    "flow_metrics",
    "flow_metrics_from_ndc",
    "pairwise_pose_errors",
    "point_cloud_metrics",
    "point_map_metrics",
    "relative_pose_accuracy",
    "relative_pose_error",
    "trajectory_metrics",
]
