"""Known-answer tests of flow3r_jax.losses on small synthetic scenes (tolerances stated per assert)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from configs import common
from flow3r_jax.geometry import camera, transforms
from flow3r_jax.losses import compute_losses
from flow3r_jax.losses.flow import generalized_charbonnier
from flow3r_jax.losses.point import nearest_resample_indices

BATCH, FRAMES, HEIGHT, WIDTH, PAIRS = 2, 3, 14, 28, 2
ACOS_FLOOR = float(np.arccos(np.float32(1.0 - 1e-6)))  # rotation term of a perfect pose (acos clamp)


def frozen(**overrides):
    cfg = common.get_base_config().loss
    cfg.update(overrides)
    return ml_collections.FrozenConfigDict(cfg)


CFG = frozen(conf_weight=0.05)  # one config for most tests, so each shape compiles once
losses = jax.jit(compute_losses, static_argnums=2)
loss_grad = jax.jit(jax.grad(lambda outputs, batch, cfg: compute_losses(outputs, batch, cfg)[0]), static_argnums=2)


def as_jax(tree):
    return {k: jnp.asarray(v) for k, v in tree.items()}


def make_scene(seed=0, depth_fn=None, similarity_scale=2.5):
    """GT batch with reprojection flow, and a prediction equal to the GT under a world similarity."""
    rng = np.random.default_rng(seed)
    intrinsics = np.array([[20.0, 0, (WIDTH - 1) / 2], [0, 20.0, (HEIGHT - 1) / 2], [0, 0, 1]])
    poses = np.tile(np.eye(4), (BATCH, FRAMES, 1, 1))
    rotvecs = rng.normal(scale=0.1, size=(BATCH * FRAMES, 3))
    poses[..., :3, :3] = Rotation.from_rotvec(rotvecs).as_matrix().reshape(BATCH, FRAMES, 3, 3)
    poses[..., :3, 3] = rng.normal(scale=0.3, size=(BATCH, FRAMES, 3))
    ys, xs = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
    if depth_fn is None:
        depth = 3.0 + 0.5 * np.sin(xs / 4.0) + 0.3 * np.cos(ys / 3.0) + rng.uniform(0, 0.5, (BATCH, FRAMES, 1, 1))
    else:
        depth = np.broadcast_to(depth_fn(xs, ys), (BATCH, FRAMES, HEIGHT, WIDTH))
    k = np.broadcast_to(intrinsics, (BATCH, FRAMES, 3, 3))
    local = camera.depth_to_local_points(depth, k)
    valid = np.ones((BATCH, FRAMES, HEIGHT, WIDTH), bool)
    valid[:, :, :2, :3] = False
    world = np.where(valid[..., None], transforms.transform_points(poses, local), 0.0)
    pair_indices = np.array([[[0, 1], [2, 0]], [[1, 2], [0, 2]]])
    coords = np.zeros((BATCH, PAIRS, HEIGHT, WIDTH, 2))
    mask = np.zeros((BATCH, PAIRS, HEIGHT, WIDTH))
    for b in range(BATCH):
        for s, (i, j) in enumerate(pair_indices[b]):
            reprojection = camera.reprojection_flow(depth[b, i], poses[b, i], poses[b, j], k[b, i], k[b, j])
            coords[b, s], mask[b, s] = reprojection.coords_ndc, reprojection.in_bounds
    batch = {
        "images": rng.uniform(size=(BATCH, FRAMES, HEIGHT, WIDTH, 3)).astype(np.float32),
        "depth": np.where(valid, depth, 0).astype(np.float32),
        "valid_mask": valid,
        "points": world.astype(np.float32),
        "camera_poses": poses.astype(np.float32),
        "intrinsics": np.array(k, np.float32),
        "is_labeled": np.ones(BATCH, bool),
        "normal_ok": np.ones(BATCH, bool),
        "pair_indices": pair_indices.astype(np.int32),
        "flow_coords": coords.astype(np.float32),
        "flow_mask": mask.astype(np.float32),
    }
    world_change = np.eye(4)
    world_change[:3, :3] = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    world_change[:3, 3] = [1.0, -2.0, 0.5]
    pred_poses = np.einsum("ij,bnjk->bnik", world_change, poses)
    pred_poses[..., :3, 3] = similarity_scale * pred_poses[..., :3, 3] + (1 - similarity_scale) * world_change[:3, 3]
    outputs = {
        "local_points": (similarity_scale * local).astype(np.float32),
        "camera_poses": pred_poses.astype(np.float32),
        "points": transforms.transform_points(pred_poses, similarity_scale * local).astype(np.float32),
        "conf": np.zeros((BATCH, FRAMES, HEIGHT, WIDTH, 1), np.float32),
        "flow": coords.astype(np.float32),
    }
    return outputs, batch


def test_perfect_prediction_up_to_similarity_gives_zero_losses():
    outputs, batch = make_scene()
    total, terms = losses(outputs, batch, CFG)
    assert float(terms["point"]) < 1e-6  # float32 round-off only
    assert float(terms["camera_translation"]) < 1e-9
    assert float(terms["camera_rotation"]) == pytest.approx(ACOS_FLOOR, abs=2e-4)  # clamp floor, not an error
    assert float(terms["flow"]) == 0.0
    assert int(terms["nonfinite_count"]) == 0
    assert np.isfinite(float(total))


def test_scale_is_solved_and_pose_translations_follow_it():
    outputs, batch = make_scene(similarity_scale=7.0)
    _, terms_far = losses(outputs, batch, CFG)
    outputs, batch = make_scene(similarity_scale=0.3)
    _, terms_near = losses(outputs, batch, CFG)
    for terms in (terms_far, terms_near):
        assert float(terms["point"]) < 1e-6
        assert float(terms["camera_translation"]) < 1e-9


def test_known_rotation_error_gives_that_angle():
    outputs, batch = make_scene()
    angle = math.radians(10.0)
    error = Rotation.from_rotvec([0.0, angle, 0.0]).as_matrix()
    poses = np.array(outputs["camera_poses"])
    poses[:, 1, :3, :3] = poses[:, 1, :3, :3] @ error  # rotate camera 1 about its own centre
    outputs["camera_poses"] = poses.astype(np.float32)
    _, terms = losses(outputs, batch, CFG)
    pairs, with_frame_1 = FRAMES * (FRAMES - 1), 2 * (FRAMES - 1)
    expected = (with_frame_1 * angle + (pairs - with_frame_1) * ACOS_FLOOR) / pairs
    assert float(terms["camera_rotation"]) == pytest.approx(expected, abs=2e-4)


def test_generalized_charbonnier_known_value():
    c = 0.24
    expected = 3.0 * ((1.0 / 1.5 + 1.0) ** 0.25 - 1.0)  # alpha 0.5, e = c
    assert float(generalized_charbonnier(jnp.float32(c**2), 0.5, c)) == pytest.approx(expected, rel=1e-6)
    outputs, batch = make_scene()
    outputs["flow"] = outputs["flow"] + np.array([c, 0.0], np.float32)  # every pixel off by c in NDC
    _, terms = losses(outputs, batch, CFG)
    assert float(terms["flow"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["flow_weighted"]) == pytest.approx(0.01 * expected, rel=1e-5)


def test_normal_loss_known_tilt():
    plane = lambda xs, ys: np.full(xs.shape, 4.0)  # fronto-parallel: no depth edges  # noqa: E731
    outputs, batch = make_scene(depth_fn=plane)
    batch["valid_mask"][:] = True
    batch["points"] = transforms.transform_points(
        batch["camera_poses"],
        camera.depth_to_local_points(np.full(batch["depth"].shape, 4.0, np.float32), batch["intrinsics"])
    )
    _, perfect = losses(outputs, batch, CFG)
    floor = 0.5 * math.radians(1.0) ** 2 / math.radians(3.0)  # angle clamped at 1 deg, smoothed below 3 deg
    assert float(perfect["normal"]) == pytest.approx(floor / max(HEIGHT, WIDTH), rel=1e-4)

    tilt = math.radians(20.0)
    rotation = Rotation.from_rotvec([tilt, 0.0, 0.0]).as_matrix()
    points = np.array(outputs["local_points"], np.float64)
    centre = points[:, :, HEIGHT // 2 : HEIGHT // 2 + 1, WIDTH // 2 : WIDTH // 2 + 1]
    outputs["local_points"] = (np.einsum("ij,bnhwj->bnhwi", rotation, points - centre) + centre).astype(np.float32)
    _, terms = losses(outputs, batch, CFG)
    expected = (tilt - 0.5 * math.radians(3.0)) / max(HEIGHT, WIDTH)  # every quad and config is off by the tilt
    assert float(terms["normal"]) == pytest.approx(expected, rel=1e-4)


def test_confidence_loss_known_value():
    outputs, batch = make_scene()
    _, terms = losses(outputs, batch, CFG)
    # logits 0 -> BCE log 2; rel 1e-4: a float32 mean over every pixel, summed in the backend's order
    assert float(terms["conf"]) == pytest.approx(math.log(2.0), rel=1e-4)
    assert float(terms["conf_weighted"]) == pytest.approx(0.05 * math.log(2.0), rel=1e-4)
    outputs["conf"] = np.full_like(outputs["conf"], 10.0)  # perfect points: every target is 1
    _, confident = losses(outputs, batch, CFG)
    assert float(confident["conf"]) == pytest.approx(math.log1p(math.exp(-10.0)), rel=1e-4)
    _, disabled = losses(outputs, batch, frozen())
    assert float(disabled["conf"]) == 0.0


def test_unlabeled_sample_gets_only_flow_loss():
    outputs, batch = make_scene()
    rng = np.random.default_rng(3)
    batch["is_labeled"] = np.array([True, False])
    batch["valid_mask"][1] = False
    outputs["local_points"][0] += rng.normal(scale=0.05, size=outputs["local_points"][0].shape).astype(np.float32)
    outputs["camera_poses"][0, :, :3, 3] += 0.05
    outputs["local_points"][1] = rng.normal(size=outputs["local_points"][1].shape)
    outputs["flow"][1] += 0.1
    _, terms = losses(outputs, batch, CFG)
    first = {k: v[:1] for k, v in outputs.items()}
    _, labeled_only = losses(first, {k: v[:1] for k, v in batch.items()}, CFG)
    for name in ("point", "normal", "camera", "conf"):
        assert float(terms[name]) == pytest.approx(float(labeled_only[name]), rel=1e-5)
    assert float(terms["flow"]) > 0.0

    grads = loss_grad(as_jax(outputs), as_jax(batch), CFG)
    for name in ("local_points", "camera_poses", "conf"):
        assert float(jnp.abs(grads[name][1]).max()) == 0.0, name
    assert float(jnp.abs(grads["flow"][1]).max()) > 0.0


def test_nan_in_one_sample_is_zeroed_counted_and_gradients_finite():
    outputs, batch = make_scene()
    noise = np.random.default_rng(4).normal(scale=0.05, size=outputs["local_points"][0].shape)
    outputs["local_points"][0] += noise.astype(np.float32)
    outputs["local_points"][1, 0, 5, 5, 2] = np.nan
    outputs["camera_poses"][1, 2, 0, 3] = np.inf
    total, terms = losses(outputs, batch, CFG)
    assert np.isfinite(float(total))
    assert int(terms["nonfinite_count"]) == 4  # point, normal, camera, conf of sample 1; its flow is finite
    _, first = losses({k: v[:1] for k, v in outputs.items()}, {k: v[:1] for k, v in batch.items()}, CFG)
    for name in ("point", "normal", "camera", "conf"):
        assert float(terms[name]) == pytest.approx(float(first[name]), rel=1e-5)

    grads = loss_grad(as_jax(outputs), as_jax(batch), CFG)
    for name, grad in grads.items():
        assert bool(jnp.all(jnp.isfinite(grad))), name
    assert float(jnp.abs(grads["local_points"][1]).max()) == 0.0


def test_jit_grad_without_flow_or_labels():
    outputs, batch = make_scene(seed=1)
    rng = np.random.default_rng(0)
    noisy = {k: (v + rng.normal(scale=0.05, size=v.shape)).astype(np.float32) for k, v in outputs.items()}
    grads = loss_grad(as_jax(noisy), as_jax(batch), CFG)
    assert float(jnp.abs(grads["local_points"]).max()) > 0.0
    assert float(jnp.abs(grads["camera_poses"]).max()) > 0.0
    assert float(jnp.abs(grads["flow"]).max()) > 0.0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values())

    no_flow = {k: v for k, v in noisy.items() if k != "flow"}
    _, terms = losses(no_flow, batch, CFG)
    assert float(terms["flow"]) == 0.0 and float(terms["point"]) > 0.0
    unlabeled = {**batch, "is_labeled": np.zeros(BATCH, bool), "valid_mask": np.zeros_like(batch["valid_mask"])}
    total, terms = losses(noisy, unlabeled, CFG)
    assert float(terms["point"]) == float(terms["camera"]) == float(terms["normal"]) == float(terms["conf"]) == 0.0
    assert float(total) == pytest.approx(float(terms["flow_weighted"]), rel=1e-6)


def test_scale_subset_matches_nearest_interpolation():
    rng = np.random.default_rng(0)
    valid = rng.uniform(size=(3, 500)) < np.array([[0.9], [0.05], [0.0]])
    count = 64
    indices = np.asarray(nearest_resample_indices(jnp.asarray(valid), count))
    for row in range(2):
        valid_positions = torch.from_numpy(np.flatnonzero(valid[row]).astype(np.float32))[None, None]
        expected = torch.nn.functional.interpolate(valid_positions, size=count, mode="nearest")[0, 0].numpy()
        np.testing.assert_array_equal(indices[row], expected.astype(np.int64))
