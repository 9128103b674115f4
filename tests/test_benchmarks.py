"""Benchmark loaders on tiny fixtures written in each dataset's on-disk layout."""

import gzip
import json

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from flow3r_jax.evaluation.benchmarks import BENCHMARKS, BenchmarkDataMissing, get_benchmark, io
from flow3r_jax.evaluation.benchmarks.co3d import pytorch3d_to_opencv

H, W = 12, 16


def random_pose(rng):
    pose = np.eye(4)
    pose[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    pose[:3, 3] = rng.normal(size=3)
    return pose


def write_rgb(path, rng, size=(W, H), suffix=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


def write_depth_png(path, depth_m, units):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(depth_m * units).astype(np.uint16)).save(path)


def test_sintel_loader_reads_dpt_and_cam(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "sintel"
    poses, depths, k = [], [], np.array([[100.0, 0, 7.5], [0, 100.0, 5.5], [0, 0, 1]])
    for f in (1, 2, 3):
        write_rgb(root / "training/final/alley_2" / f"frame_{f:04d}.png", rng)
        depth = rng.uniform(1, 5, (H, W)).astype(np.float32)
        (root / "training/depth/alley_2").mkdir(parents=True, exist_ok=True)
        (root / "training/depth/alley_2" / f"frame_{f:04d}.dpt").write_bytes(
            np.float32(io.SINTEL_TAG).tobytes() + np.array([W, H], "<i4").tobytes() + depth.astype("<f4").tobytes())
        pose = random_pose(rng)
        (root / "training/camdata_left/alley_2").mkdir(parents=True, exist_ok=True)
        (root / "training/camdata_left/alley_2" / f"frame_{f:04d}.cam").write_bytes(
            np.float32(io.SINTEL_TAG).tobytes() + k.astype("<f8").tobytes()
            + np.linalg.inv(pose)[:3].astype("<f8").tobytes())
        poses.append(pose), depths.append(depth)
    (seq,) = list(get_benchmark("sintel").sequences(tmp_path, sequences=("alley_2",)))
    assert seq.name == "sintel/alley_2" and seq.images.shape == (3, H, W, 3)
    np.testing.assert_allclose(seq.camera_poses, np.stack(poses), atol=1e-12)
    np.testing.assert_array_equal(seq.depth, np.stack(depths))
    np.testing.assert_array_equal(seq.intrinsics, np.tile(k, (3, 1, 1)))
    assert seq.valid_mask.all()


def test_sintel_rejects_corrupt_depth_file(tmp_path):
    path = tmp_path / "bad.dpt"
    path.write_bytes(np.float32(1.0).tobytes() + b"\0" * 8)
    with pytest.raises(ValueError, match="Sintel tag"):
        io.read_sintel_depth(path)


def test_bonn_loader_associates_tum_poses_and_scales_depth(tmp_path):
    rng = np.random.default_rng(1)
    seq_dir = tmp_path / "bonn" / "rgbd_bonn_balloon2"
    times = 1548266469.0 + 0.033 * np.arange(5)
    gt_times = 1548266469.0 + 0.01 * np.arange(-2, 20)
    quats = Rotation.random(len(gt_times), random_state=3).as_quat()      # x, y, z, w
    trans = rng.normal(size=(len(gt_times), 3))
    lines = ["# timestamp tx ty tz qx qy qz qw"] + [
        " ".join(f"{v:.9f}" for v in [t, *p, *q]) for t, p, q in zip(gt_times, trans, quats, strict=True)]
    seq_dir.mkdir(parents=True)
    (seq_dir / "groundtruth.txt").write_text("\n".join(lines))
    depth = rng.uniform(0.5, 3, (5, H, W))
    for n, t in enumerate(times):
        write_rgb(seq_dir / "rgb" / f"{t:.6f}.png", rng)
        write_depth_png(seq_dir / "depth" / f"{t:.6f}.png", depth[n], 5000.0)
    (seq,) = list(get_benchmark("bonn").sequences(tmp_path, sequences=("balloon2",), first_frame=1, num_frames=3))
    nearest = [int(np.argmin(np.abs(gt_times - t))) for t in times[1:4]]
    np.testing.assert_allclose(seq.camera_poses[:, :3, :3], Rotation.from_quat(quats[nearest]).as_matrix(), atol=1e-6)
    np.testing.assert_allclose(seq.camera_poses[:, :3, 3], trans[nearest], atol=1e-8)
    np.testing.assert_allclose(seq.depth, depth[1:4], atol=1e-4)        # 5000 units per metre quantisation
    with pytest.raises(ValueError, match="needs frames 30..139"):
        list(get_benchmark("bonn").sequences(tmp_path, sequences=("balloon2",)))


def test_scannet_loader_skips_invalid_pose_and_uses_depth_intrinsics(tmp_path, caplog):
    rng = np.random.default_rng(2)
    scene = tmp_path / "scannet" / "scene0707_00"
    k = np.array([[20.0, 0, 7.5, 0], [0, 20.0, 5.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    (scene / "intrinsic").mkdir(parents=True)
    np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", k)
    (scene / "pose").mkdir()
    poses = []
    for i in range(6):
        write_rgb(scene / "color" / f"{i}.jpg", rng, size=(2 * W, 2 * H))
        write_depth_png(scene / "depth" / f"{i}.png", np.full((H, W), 1.5), 1000.0)
        pose = random_pose(rng) if i != 2 else np.full((4, 4), -np.inf)
        np.savetxt(scene / "pose" / f"{i}.txt", pose)
        poses.append(pose)
    (seq,) = list(get_benchmark("scannet").sequences(tmp_path, stride=1, num_frames=4))
    assert seq.frame_ids == ["0", "1", "3"] and "frame 2 has no valid ground-truth pose" in caplog.text
    assert seq.images.shape == (3, H, W, 3)                # colour resized to depth resolution
    np.testing.assert_allclose(seq.camera_poses, np.stack([poses[0], poses[1], poses[3]]), atol=1e-12)
    np.testing.assert_allclose(seq.depth, 1.5)
    np.testing.assert_array_equal(seq.intrinsics[0], k[:3, :3])


def test_nrgbd_loader_converts_opengl_poses(tmp_path):
    rng = np.random.default_rng(3)
    scene = tmp_path / "nrgbd" / "kitchen"
    gl_poses = np.stack([random_pose(rng) for _ in range(4)])
    scene.mkdir(parents=True)
    (scene / "poses.txt").write_text("\n".join(" ".join(map(str, row)) for p in gl_poses for row in p))
    for i in range(4):
        write_rgb(scene / "images" / f"img{i}.png", rng)
        write_depth_png(scene / "depth" / f"depth{i}.png", np.where(np.arange(W) < 4, 0, 2.0)[None].repeat(H, 0), 1000)
    (seq,) = list(get_benchmark("nrgbd").sequences(tmp_path, kf_every=2))
    assert seq.frame_ids == [0, 2]
    expected = gl_poses[[0, 2]].copy()
    expected[:, :3, 1:3] *= -1
    np.testing.assert_allclose(seq.camera_poses, expected, atol=1e-12)
    assert not seq.valid_mask[..., :4].any() and seq.valid_mask[..., 4:].all()


def test_seven_scenes_loader_reads_test_split(tmp_path):
    rng = np.random.default_rng(4)
    scene = tmp_path / "7scenes" / "chess"
    scene.mkdir(parents=True)
    (scene / "TestSplit.txt").write_text("sequence3\n")
    poses = []
    for i in range(3):
        seq_dir = scene / "seq-03"
        write_rgb(seq_dir / f"frame-{i:06d}.color.png", rng)
        depth = np.full((H, W), 0.8)
        depth[0, 0] = 65.535                                  # the 65535 invalid marker
        write_depth_png(seq_dir / f"frame-{i:06d}.depth.png", depth, 1000)
        pose = random_pose(rng)
        np.savetxt(seq_dir / f"frame-{i:06d}.pose.txt", pose)
        poses.append(pose)
    (seq,) = list(get_benchmark("7scenes").sequences(tmp_path, kf_every=1))
    assert seq.name == "7scenes/chess/seq-03"
    np.testing.assert_allclose(seq.camera_poses, np.stack(poses), atol=1e-12)
    assert not seq.valid_mask[:, 0, 0].any() and seq.valid_mask.sum() == 3 * (H * W - 1)


def test_co3d_camera_conversion_matches_pytorch3d_projection():
    rng = np.random.default_rng(5)
    rotation, translation = Rotation.random(random_state=6).as_matrix(), rng.normal(size=3) + [0, 0, 5]
    focal, principal, height, width = np.array([2.0, 2.1]), np.array([0.1, -0.05]), 40, 60
    camera_to_world, k = pytorch3d_to_opencv(rotation, translation, focal, principal, height, width)
    world = rng.normal(size=3)
    # PyTorch3D: view = X R + T (row vector), NDC = focal * view_xy / z + p0 with +x left, +y up,
    # screen = (half_min * (-ndc) + size / 2) measured from the top-left corner.
    view = world @ rotation + translation
    ndc = focal * view[:2] / view[2] + principal
    screen = -ndc * min(height, width) / 2 + np.array([width, height]) / 2 - 0.5
    cam = np.linalg.inv(camera_to_world) @ np.append(world, 1)
    projected = (k @ cam[:3])[:2] / cam[2]
    np.testing.assert_allclose(projected, screen, atol=1e-9)


def test_co3d_loader_samples_frames_per_protocol(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "co3dv2"
    annotations = {}
    for seq, count in (("seqA", 6), ("short", 2)):
        frames = []
        for i in range(count):
            rel = f"hotdog/{seq}/images/frame{i:06d}.jpg"
            write_rgb(root / rel, rng)
            frames.append({"filepath": rel, "R": Rotation.random(random_state=i).as_matrix().tolist(),
                           "T": [0.1, 0.2, 3.0], "focal_length": [2.0, 2.0], "principal_point": [0.0, 0.0]})
        annotations[seq] = frames
    (root / "annotations").mkdir()
    with gzip.open(root / "annotations" / "hotdog_test.jgz", "wt") as f:
        json.dump(annotations, f)
    first = list(get_benchmark("co3dv2").sequences(tmp_path, seed=0, frames_per_sequence=3, min_frames=3))
    again = list(get_benchmark("co3dv2").sequences(tmp_path, seed=0, frames_per_sequence=3, min_frames=3))
    assert [s.name for s in first] == ["co3dv2/hotdog/seqA"]           # the 2-frame sequence is skipped
    assert first[0].frame_ids == again[0].frame_ids and len(set(first[0].frame_ids)) == 3
    assert first[0].depth is None and first[0].images.shape == (3, H, W, 3)


@pytest.mark.parametrize("benchmark", ["kinetics700", "epic_kitchens"])
def test_video_clip_loader_reads_pseudo_gt(tmp_path, benchmark):
    rng = np.random.default_rng(8)
    clip = tmp_path / benchmark / "clip_000"
    quats = Rotation.random(3, random_state=9).as_quat()
    for i in range(3):
        write_rgb(clip / "images" / f"{i:05d}.jpg", rng)
    (clip / "poses.txt").write_text("\n".join(f"{i} 0 0 {i} {q[0]} {q[1]} {q[2]} {q[3]}" for i, q in enumerate(quats)))
    (seq,) = list(get_benchmark(benchmark).sequences(tmp_path))
    assert seq.name == f"{benchmark}/clip_000" and seq.depth is None and seq.intrinsics is None
    np.testing.assert_allclose(seq.camera_poses[:, :3, :3], Rotation.from_quat(quats).as_matrix(), atol=1e-6)
    np.testing.assert_allclose(seq.camera_poses[:, 2, 3], [0, 1, 2])


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_missing_data_names_benchmark_and_path(tmp_path, name):
    with pytest.raises(BenchmarkDataMissing) as info:
        list(get_benchmark(name).sequences(tmp_path / "nowhere"))
    message = str(info.value)
    assert f"[{name}]" in message and str(tmp_path / "nowhere") in message and "layout" in message
