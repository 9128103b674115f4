"""Known-answer tests of flow3r_jax.geometry (numpy in float64, jax in float32; tolerances per assert)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flow3r_jax.geometry import alignment, camera, maps, ndc, transforms


def random_poses(count, seed=0):
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (count, 1, 1))
    poses[:, :3, :3] = Rotation.random(count, random_state=seed).as_matrix()
    poses[:, :3, 3] = rng.normal(size=(count, 3))
    return poses


def test_se3_inverse_numpy_and_jax():
    poses = random_poses(5)
    np.testing.assert_allclose(transforms.se3_inverse(poses) @ poses, np.broadcast_to(np.eye(4), poses.shape),
                               atol=1e-12)
    inverse = transforms.se3_inverse(jnp.asarray(poses, jnp.float32))
    assert isinstance(inverse, jax.Array)
    np.testing.assert_allclose(np.asarray(inverse), np.linalg.inv(poses), atol=1e-5)


def test_transform_points_broadcasts_over_spatial_dims():
    poses = random_poses(6).reshape(2, 3, 4, 4)
    points = np.random.default_rng(1).normal(size=(2, 3, 4, 5, 3))
    expected = np.einsum("bnij,bnhwj->bnhwi", poses, transforms.homogenize_points(points))[..., :3]
    np.testing.assert_allclose(transforms.transform_points(poses, points), expected, atol=1e-12)


def test_relative_poses_do_not_depend_on_the_world_frame():
    poses = random_poses(4)
    world_change = random_poses(1, seed=7)[0]
    moved = np.einsum("ij,njk->nik", world_change, poses)
    np.testing.assert_allclose(transforms.relative_poses(moved), transforms.relative_poses(poses), atol=1e-12)
    np.testing.assert_allclose(transforms.relative_poses(poses)[1, 2], np.linalg.inv(poses[1]) @ poses[2], atol=1e-12)


def test_rotation_angle_of_known_rotation():
    base = Rotation.random(random_state=3).as_matrix()
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    perturbed = base @ Rotation.from_rotvec(axis * 0.7).as_matrix()
    assert transforms.rotation_angle(base, perturbed) == pytest.approx(0.7, abs=1e-12)
    assert float(transforms.rotation_angle(jnp.asarray(base), jnp.asarray(perturbed))) == pytest.approx(0.7, abs=1e-5)


def test_depth_to_points_and_projection_round_trip():
    height, width = 6, 8
    intrinsics = np.array([[30.0, 0.5, 4.0], [0, 25.0, 2.5], [0, 0, 1]])
    depth = np.random.default_rng(0).uniform(1.0, 5.0, size=(2, height, width))
    points = camera.depth_to_local_points(depth, np.broadcast_to(intrinsics, (2, 3, 3)))
    np.testing.assert_allclose(points[..., 2], depth, atol=1e-12)
    pixels, z = camera.project_points(points, np.broadcast_to(intrinsics, (2, 3, 3)))
    np.testing.assert_allclose(pixels, np.broadcast_to(ndc.pixel_grid(height, width, np), pixels.shape), atol=1e-9)
    np.testing.assert_allclose(z, depth, atol=1e-12)


def test_reprojection_flow_of_a_sideways_camera_move():
    height, width, focal, plane_depth, step = 8, 10, 20.0, 4.0, 0.4
    intrinsics = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    depth = np.full((height, width), plane_depth)
    depth[0, 0] = 0.0  # unknown depth
    target = np.eye(4)
    target[0, 3] = step  # camera moves right -> the scene moves left by focal * step / depth pixels
    result = camera.reprojection_flow(depth, np.eye(4), target, intrinsics, intrinsics)
    grid = ndc.pixel_grid(height, width, np)
    shift = focal * step / plane_depth
    np.testing.assert_allclose(result.coords_px[1:], grid[1:] - [shift, 0.0], atol=1e-9)
    np.testing.assert_allclose(result.coords_ndc, ndc.pixel_to_ndc(result.coords_px, height, width), atol=1e-12)
    assert not result.in_front[0, 0] and result.in_front[1:].all()
    np.testing.assert_array_equal(result.in_bounds[1:], grid[1:, :, 0] >= shift)
    behind = np.eye(4)
    behind[2, 3] = 2 * plane_depth  # target camera beyond the plane
    assert not camera.reprojection_flow(depth, np.eye(4), behind, intrinsics, intrinsics).in_front.any()


def test_reprojection_flow_under_jit_matches_numpy():
    poses = random_poses(2, seed=4)
    poses[:, :3, :3] = Rotation.from_rotvec([[0.05, 0, 0], [0, 0.05, 0]]).as_matrix()
    intrinsics = np.array([[15.0, 0, 4.5], [0, 15.0, 3.5], [0, 0, 1]])
    depth = np.random.default_rng(2).uniform(2.0, 3.0, size=(8, 10))
    expected = camera.reprojection_flow(depth, poses[0], poses[1], intrinsics, intrinsics)
    fn = jax.jit(camera.reprojection_flow)
    result = fn(*(jnp.asarray(a, jnp.float32) for a in (depth, poses[0], poses[1], intrinsics, intrinsics)))
    np.testing.assert_allclose(np.asarray(result.coords_px), expected.coords_px, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(result.in_front), expected.in_front)


def test_depth_edge_marks_neighbours_of_a_step():
    depth = np.ones((5, 6))
    depth[:, 3:] = 1.02  # 2 % step: below rtol 0.03
    assert not np.asarray(maps.depth_edge(depth, rtol=0.03)).any()
    depth[:, 3:] = 1.5
    edge = np.asarray(jax.jit(lambda d: maps.depth_edge(d, rtol=0.03))(depth))
    np.testing.assert_array_equal(edge, np.broadcast_to([False, False, True, True, False, False], (5, 6)))
    assert np.asarray(maps.depth_edge(depth, atol=0.4)).sum() == 10
    masked = np.asarray(maps.depth_edge(depth, rtol=0.03, mask=depth < 1.2))
    assert not masked.any()  # the far side is masked out, so no neighbourhood spans the step


def test_point_map_normals_of_a_tilted_plane():
    ys, xs = np.meshgrid(np.arange(5.0), np.arange(6.0), indexing="ij")
    points = np.stack([xs, ys, 2.0 + 0.5 * xs], axis=-1)  # plane z = 2 + 0.5 x
    normals, valid = maps.point_map_normals(points)
    expected = np.array([-0.5, 0.0, 1.0]) / math.sqrt(1.25)
    np.testing.assert_allclose(normals, np.broadcast_to(expected, normals.shape), atol=1e-12)
    assert valid.all()
    mask = np.ones((5, 6), bool)
    mask[2, 2] = False
    _, valid = maps.point_map_normals(points, mask)
    assert valid.sum() == 30 - 5  # the pixel and its 4 neighbours


@pytest.mark.parametrize("with_scale", [True, False])
def test_umeyama_recovers_a_known_similarity(with_scale):
    rng = np.random.default_rng(0)
    source = rng.normal(size=(40, 3))
    rotation = Rotation.random(random_state=5).as_matrix()
    scale = 2.7 if with_scale else 1.0
    target = scale * source @ rotation.T + np.array([0.3, -1.0, 2.0])
    s, r, t = alignment.umeyama_alignment(source, target, with_scale=with_scale)
    assert s == pytest.approx(scale, abs=1e-10)
    np.testing.assert_allclose(r, rotation, atol=1e-10)
    np.testing.assert_allclose(alignment.apply_similarity(s, r, t, source), target, atol=1e-10)
    s32, r32, _ = alignment.umeyama_alignment(jnp.asarray(source, jnp.float32), jnp.asarray(target, jnp.float32),
                                              with_scale=with_scale)
    assert float(s32) == pytest.approx(scale, abs=1e-4)
    np.testing.assert_allclose(np.asarray(r32), rotation, atol=1e-4)


def test_umeyama_returns_a_proper_rotation_for_mirrored_data():
    source = np.random.default_rng(1).normal(size=(30, 3))
    target = source * np.array([1.0, 1.0, -1.0])  # a reflection: best proper rotation has det +1
    _, rotation, _ = alignment.umeyama_alignment(source, target)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-10)


def test_weighted_median_known_values():
    assert alignment.weighted_median(np.array([3.0, 1.0, 4.0, 2.0]), np.array([1.0, 1.0, 5.0, 1.0])) == 4.0
    assert alignment.weighted_median(np.array([3.0, 1.0, 4.0, 2.0]), np.ones(4)) == 2.0  # lower median
    batched = alignment.weighted_median(jnp.asarray([[1.0, 5.0, 9.0], [7.0, 8.0, 0.0]]), jnp.ones((2, 3)))
    np.testing.assert_array_equal(np.asarray(batched), [5.0, 7.0])


def test_weighted_l1_scale_is_the_exact_minimiser():
    rng = np.random.default_rng(2)
    source = rng.normal(size=200)
    target = 1.7 * source + rng.standard_cauchy(200) * 0.1
    weights = rng.uniform(0.1, 2.0, size=200)
    scale = alignment.weighted_l1_scale(source, target, weights)
    objective = lambda s: np.sum(weights * np.abs(s * source - target))  # noqa: E731
    candidates = target / source  # the objective's kinks; its minimum lies on one of them
    assert objective(scale) <= min(objective(c) for c in candidates) + 1e-12
    assert scale == pytest.approx(1.7, abs=0.05)
    points = jnp.asarray(source[:198].reshape(1, 66, 3), jnp.float32)
    points_scale = alignment.align_points_scale(points, 3.0 * points, jnp.ones((1, 66)))
    assert float(points_scale[0]) == pytest.approx(3.0, rel=1e-6)
