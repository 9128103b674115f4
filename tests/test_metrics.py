"""Known-answer tests of flow3r_jax.evaluation.metrics (float64 numpy; tolerances per assert)."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flow3r_jax.evaluation import metrics
from flow3r_jax.geometry import ndc


def trajectory(count=8, seed=0):
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (count, 1, 1))
    poses[:, :3, :3] = Rotation.from_rotvec(np.cumsum(rng.normal(scale=0.1, size=(count, 3)), axis=0)).as_matrix()
    poses[:, :3, 3] = np.cumsum(rng.normal(scale=0.5, size=(count, 3)), axis=0)
    return poses


def similarity(poses, scale=3.0):
    change = np.eye(4)
    change[:3, :3] = Rotation.from_rotvec([0.4, -0.3, 1.0]).as_matrix()
    change[:3, 3] = [5.0, -1.0, 2.0]
    moved = np.einsum("ij,njk->nik", change, poses)
    moved[:, :3, 3] = scale * moved[:, :3, 3] + (1 - scale) * change[:3, 3]
    return moved


def rotate_camera(poses, index, angle_deg, axis=(0.0, 0.0, 1.0)):
    perturbed = poses.copy()
    rotvec = np.radians(angle_deg) * np.asarray(axis) / np.linalg.norm(axis)
    perturbed[index, :3, :3] = perturbed[index, :3, :3] @ Rotation.from_rotvec(rotvec).as_matrix()
    return perturbed


@pytest.mark.parametrize("transform", [lambda p: p, similarity], ids=["identity", "sim3"])
def test_trajectory_metrics_are_zero_up_to_similarity(transform):
    gt = trajectory()
    result = metrics.trajectory_metrics(transform(gt), gt)
    assert result["ate"] < 1e-9 and result["rpe_trans"] < 1e-9
    assert result["rpe_rot"] < 1e-5  # degrees; acos near 1 limits the resolution


def test_rpe_rotation_of_a_known_orientation_error():
    gt = trajectory()
    pred = rotate_camera(gt, 3, 5.0)  # camera centres unchanged -> alignment is the identity
    result = metrics.trajectory_metrics(pred, gt)
    assert result["ate"] < 1e-9
    steps = len(gt) - 1
    assert result["rpe_rot"] == pytest.approx(math.sqrt(2 * 5.0**2 / steps), abs=1e-6)  # 2 of the steps off by 5 deg


def test_ate_is_invariant_to_a_similarity_of_the_prediction():
    gt = trajectory()
    noisy = gt.copy()
    noisy[:, :3, 3] += np.random.default_rng(1).normal(scale=0.1, size=(len(gt), 3))
    ate = metrics.absolute_trajectory_error(noisy, gt)
    assert ate > 0.01
    assert metrics.absolute_trajectory_error(similarity(noisy, 0.2), gt) == pytest.approx(ate, rel=1e-9)


@pytest.mark.parametrize("transform", [lambda p: p, similarity], ids=["identity", "sim3"])
def test_relative_pose_accuracy_perfect(transform):
    gt = trajectory()
    assert metrics.relative_pose_accuracy(transform(gt), gt) == pytest.approx({"rra": 1.0, "rta": 1.0, "auc": 1.0})


def test_relative_pose_accuracy_with_one_bad_camera():
    gt = trajectory(count=6)
    result = metrics.relative_pose_accuracy(rotate_camera(gt, 2, 40.0), gt)
    expected = 1.0 - 2.0 / 6  # the 5 of 15 pairs with camera 2 have a 40 deg rotation error
    assert result["rra"] == pytest.approx(expected, abs=1e-12)
    assert result["auc"] == pytest.approx(expected, abs=1e-12)


def test_pairwise_errors_known_angles_and_sign_ambiguity():
    gt = np.tile(np.eye(4), (2, 1, 1))
    gt[1, :3, 3] = [1.0, 0.0, 0.0]
    rotation, translation = metrics.pairwise_pose_errors(rotate_camera(gt, 1, 10.5), gt)
    assert rotation[0] == pytest.approx(10.5, abs=1e-6) and translation[0] == pytest.approx(0.0, abs=1e-6)
    assert metrics.relative_pose_accuracy(rotate_camera(gt, 1, 10.5), gt)["auc"] == pytest.approx(20 / 30)

    flipped = gt.copy()
    flipped[1, :3, 3] = [-2.0, 0.0, 0.0]  # opposite direction: no error under the sign ambiguity
    assert metrics.pairwise_pose_errors(flipped, gt)[1][0] == pytest.approx(0.0, abs=1e-6)
    turned = gt.copy()
    turned[1, :3, 3] = [math.cos(math.radians(20)), math.sin(math.radians(20)), 0.0]
    assert metrics.pairwise_pose_errors(turned, gt)[1][0] == pytest.approx(20.0, abs=1e-6)
    turned[1, :3, 3] *= -1  # 160 deg apart reads as 20 deg
    assert metrics.pairwise_pose_errors(turned, gt)[1][0] == pytest.approx(20.0, abs=1e-6)


def point_maps(frames=2, height=6, width=7):
    ys, xs = np.meshgrid(np.arange(height, dtype=float), np.arange(width, dtype=float), indexing="ij")
    maps = [np.stack([xs, ys, 3.0 + 0.3 * np.sin(xs + f) + 0.2 * ys], axis=-1) * 0.1 for f in range(frames)]
    maps = np.stack(maps)
    maps[1] += [0.0, 0.0, 1.0]  # second frame further away
    return maps


@pytest.mark.parametrize("alignment", ["sim3", "median_scale", "none"])
def test_point_map_metrics_perfect(alignment):
    gt = point_maps()
    valid = np.ones(gt.shape[:-1], bool)
    if alignment == "sim3":
        change = Rotation.from_rotvec([0.2, 0.5, -0.1]).as_matrix()
        pred = 2.5 * gt @ change.T + [1.0, 2.0, 3.0]
    elif alignment == "median_scale":
        pred = 0.4 * gt
    else:
        pred = gt.copy()
    result = metrics.point_map_metrics(pred, gt, valid, alignment=alignment)
    for name in ("accuracy", "completion", "chamfer", "mse"):
        assert result[name] < 1e-9, name
    assert result["fscore"] == 1.0 and result["normal_consistency"] == pytest.approx(1.0, abs=1e-9)


def test_point_cloud_metrics_known_offset():
    ys, xs = np.meshgrid(np.arange(10.0), np.arange(10.0), indexing="ij")
    gt = np.stack([xs, ys, np.zeros_like(xs)], axis=-1)[None]  # unit grid on z = 0
    pred = gt + [0.0, 0.0, 0.02]
    valid = np.ones(gt.shape[:-1], bool)
    result = metrics.point_map_metrics(pred, gt, valid, alignment="none", threshold=0.05)
    assert result["accuracy"] == pytest.approx(0.02) and result["completion"] == pytest.approx(0.02)
    assert result["chamfer"] == pytest.approx(0.02) and result["mse"] == pytest.approx(0.0004)
    assert result["fscore"] == 1.0 and result["normal_consistency"] == pytest.approx(1.0)
    strict = metrics.point_cloud_metrics(pred[0].reshape(-1, 3), gt[0].reshape(-1, 3), threshold=0.01)
    assert strict["fscore"] == 0.0 and "normal_consistency" not in strict


def test_depth_metrics_alignments():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 10.0, size=(3, 8, 9))
    valid = rng.uniform(size=gt.shape) > 0.2
    assert metrics.depth_metrics(gt, gt, valid, alignment="none") == {"abs_rel": 0.0, "delta_1_25": 1.0}
    assert metrics.depth_metrics(3.0 * gt, gt, valid, alignment="median")["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    shifted = metrics.depth_metrics(2.0 * gt + 1.0, gt, valid, alignment="scale_shift")
    assert shifted["abs_rel"] == pytest.approx(0.0, abs=1e-9) and shifted["delta_1_25"] == 1.0


def test_depth_metrics_known_errors():
    gt = np.full((4, 10), 2.0)
    pred = gt.copy()
    pred[:2] *= 1.1  # half the pixels 10 % too far
    pred[0] = gt[0] * 1.3  # a quarter 30 % too far (outside delta 1.25)
    result = metrics.depth_metrics(pred, gt, np.ones_like(gt, bool), alignment="none")
    assert result["abs_rel"] == pytest.approx((0.3 + 0.1) / 4)
    assert result["delta_1_25"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown depth alignment"):
        metrics.depth_metrics(pred, gt, np.ones_like(gt, bool), alignment="affine")


def test_flow_metrics_known_errors_on_covisible_pixels():
    height, width = 6, 8
    gt = ndc.pixel_grid(height, width, np) + [1.5, -2.0]
    pred = gt.copy()
    pred[: height // 2] += [3.0, 4.0]  # half the pixels 5 px off
    mask = np.ones((height, width))
    mask[:, 0] = 0.0
    pred[:, 0] += 100.0  # hidden pixels do not count
    expected = {"epe": 2.5, "px1": 0.5, "px3": 0.5, "px5": 0.5}
    assert metrics.flow_metrics(pred, gt, mask) == pytest.approx(expected)
    from_ndc = metrics.flow_metrics_from_ndc(ndc.pixel_to_ndc(pred, height, width), ndc.pixel_to_ndc(gt, height, width),
                                             mask)
    assert from_ndc == pytest.approx(expected)
    assert metrics.flow_metrics(gt, gt, mask) == {"epe": 0.0, "px1": 1.0, "px3": 1.0, "px5": 1.0}
