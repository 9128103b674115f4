"""Inference: preprocessing rule, visualisations, chunked prediction, file export and tools/predict.py."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from flow3r_jax.geometry.camera import depth_to_local_points, intrinsics_from_local_points
from flow3r_jax.geometry.ndc import pixel_flow_to_ndc_coords
from flow3r_jax.geometry.transforms import transform_points
from flow3r_jax.inference import export, preprocess, visualize
from flow3r_jax.inference.predictor import chunk_frames, predict_sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size", [(640, 480), (1920, 1080), (480, 640), (100, 100), (518, 392)])
def test_target_size_is_patch_multiple_within_budget(size):
    w, h = preprocess.target_size(*size)
    assert w % 14 == 0 and h % 14 == 0 and w * h <= 255_000
    assert abs(w / h - size[0] / size[1]) < 0.1 * size[0] / size[1]
    # pi3's rule gives 574x434 for 640x480 (k=41, m=31 after one decrement of m).
    assert preprocess.target_size(640, 480) == (574, 434)


def test_load_images_from_folder_and_video(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    images = preprocess.load_images(folder, pixel_limit=28 * 42)
    assert images.shape == (1, 4, 28, 42, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert preprocess.load_images(folder, pixel_limit=28 * 42, interval=2).shape[1] == 2

    import av
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert preprocess.load_images(video, pixel_limit=28 * 42).shape == (1, 4, 28, 42, 3)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        preprocess.load_images(tmp_path / "missing")


def test_flow_color_wheel_directions():
    wheel = visualize.color_wheel()
    assert wheel.shape == (55, 3)
    flow = np.array([[[5.0, 0.0], [-5.0, 0.0], [0.0, 0.0]]], np.float32)
    rgb = visualize.flow_to_color(flow).astype(int)
    assert rgb[0, 0, 0] > 200 and rgb[0, 0, 1] < 60 and rgb[0, 0, 2] < 60      # rightward = red
    assert rgb[0, 1, 0] < 60 and rgb[0, 1, 1] > 200 and rgb[0, 1, 2] > 200     # leftward = cyan
    np.testing.assert_array_equal(rgb[0, 2], [255, 255, 255])                  # zero flow = white


def test_ply_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    export.write_ply(tmp_path / "p.ply", points, colors)
    data = export.read_ply(tmp_path / "p.ply")
    np.testing.assert_array_equal(np.stack([data["x"], data["y"], data["z"]], -1), points)
    np.testing.assert_array_equal(np.stack([data["red"], data["green"], data["blue"]], -1), colors)
    assert [p.name for p in tmp_path.iterdir()] == ["p.ply"]                   # no temp file left


def _scene(num_frames, height=14, width=28, seed=0):
    rng = np.random.default_rng(seed)
    smooth = 2.0 + 0.002 * np.arange(width)[None, None, :] + 0.002 * np.arange(height)[None, :, None]
    depth = smooth + rng.uniform(0.0, 0.5, (num_frames, 1, 1))
    k = np.array([[30.0, 0, (width - 1) / 2], [0, 30.0, (height - 1) / 2], [0, 0, 1]])
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    poses[:, :3, :3] = Rotation.from_euler("y", np.linspace(0, 20, num_frames)[:, None], degrees=True).as_matrix()
    poses[:, :3, 3] = np.stack([np.linspace(0, 1, num_frames), np.zeros(num_frames), np.zeros(num_frames)], -1)
    return depth, np.tile(k, (num_frames, 1, 1)), poses


def _chunk_world_predictor(depth, intrinsics, poses):
    """Predicts the scene's geometry exactly, but each call in its own random similarity frame."""
    local = depth_to_local_points(depth, intrinsics)
    calls = []

    def predict(images, pairs):
        frames = [int(round(v)) for v in images[0, :, 0, 0, 0] * 100]   # frame index encoded in the pixels
        rng = np.random.default_rng(len(calls))
        calls.append(frames)
        scale = rng.uniform(0.5, 2.0)
        frame_change = np.eye(4)
        frame_change[:3, :3] = Rotation.random(random_state=len(calls)).as_matrix()
        frame_change[:3, 3] = rng.normal(size=3)
        p = frame_change @ poses[frames]
        p[:, :3, 3] *= scale
        out = {"local_points": local[frames][None] * scale, "camera_poses": p[None],
               "points": transform_points(p, local[frames] * scale)[None],
               "conf": np.zeros(local[frames].shape[:-1] + (1,))[None]}
        if pairs is not None:
            out["flow"] = np.stack([np.full(local.shape[1:3] + (2,), 10.0 * frames[i] + frames[j])
                                    for i, j in pairs[0]])[None]
        return out

    return predict, calls


def test_chunked_prediction_merges_into_one_frame():
    depth, intrinsics, poses = _scene(7)
    images = np.zeros((7, 14, 28, 3), np.float32) + (np.arange(7) / 100.0)[:, None, None, None]
    predict, calls = _chunk_world_predictor(depth, intrinsics, poses)
    assert [c.tolist() for c in chunk_frames(7, 3)] == [[0, 1, 2], [0, 3, 4], [0, 5, 6]]
    pairs = np.array([[1, 2], [3, 4], [2, 5]])
    out = predict_sequence(predict, images, pairs, chunk_size=3, show_progress=False)
    assert calls == [[0, 1, 2], [0, 3, 4], [0, 5, 6], [2, 5]]            # the cross-chunk pair runs alone
    # One world frame for all chunks: relative poses match GT up to the first chunk's global scale.
    rel = np.linalg.inv(out["camera_poses"][0]) @ out["camera_poses"]
    rel_gt = np.linalg.inv(poses[0]) @ poses
    scale = out["local_points"][0, ..., 2].mean() / depth[0].mean()
    np.testing.assert_allclose(rel[:, :3, :3], rel_gt[:, :3, :3], atol=1e-9)
    np.testing.assert_allclose(rel[:, :3, 3], rel_gt[:, :3, 3] * scale, atol=1e-9)
    np.testing.assert_allclose(out["flow"][:, 0, 0, 0], [12.0, 34.0, 25.0])


def test_estimate_intrinsics_recovers_pinhole():
    depth, intrinsics, _ = _scene(2)
    np.testing.assert_allclose(intrinsics_from_local_points(depth_to_local_points(depth, intrinsics)), intrinsics, atol=1e-9)


def test_export_prediction_writes_files_that_load_back(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    depth, intrinsics, poses = _scene(3)
    local = depth_to_local_points(depth, intrinsics)
    conf = np.full(depth.shape + (1,), 5.0)
    conf[0, :, :4] = -5.0                                             # low confidence: filtered out
    flow_px = np.zeros((1,) + depth.shape[1:] + (2,)) + [1.5, -0.5]
    outputs = {"points": transform_points(poses, local), "local_points": local, "conf": conf,
               "camera_poses": poses, "flow": pixel_flow_to_ndc_coords(flow_px, np)}
    images = np.random.default_rng(2).uniform(size=depth.shape + (3,)).astype(np.float32)
    meta = export.export_prediction(tmp_path, images, outputs, intrinsics, np.array([[0, 1]]))
    ply = export.read_ply(tmp_path / "points.ply")
    assert len(ply["x"]) == meta["num_points"] == 3 * 14 * 28 - 14 * 4
    loaded = trimesh.load(tmp_path / "points.ply")
    assert len(loaded.vertices) == meta["num_points"]
    scene = trimesh.load(tmp_path / "scene.glb")
    assert len(scene.geometry) == 1 + 3                              # points + one frustum per camera
    cameras = json.loads((tmp_path / "cameras.json").read_text())
    np.testing.assert_allclose(cameras["frames"][2]["camera_to_world"], poses[2])
    depth_png = np.asarray(Image.open(tmp_path / "maps" / "depth_0001.png"))
    assert depth_png.dtype == np.uint16
    np.testing.assert_allclose(depth_png / meta["depth_png_scale"], depth[1], atol=2 / meta["depth_png_scale"])
    assert np.asarray(Image.open(tmp_path / "maps" / "conf_0000.png")).shape == (14, 28)
    flow_png = np.asarray(Image.open(tmp_path / "flow" / "flow_0000_0001.png"))
    np.testing.assert_array_equal(flow_png, visualize.flow_to_color(flow_px[0].astype(np.float32)))


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_tool_random_init_smoke(tmp_path):
    pytest.importorskip("trimesh")
    predict_tool = _load_tool("predict")

    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    out = tmp_path / "out"
    assert predict_tool.main(["--input", str(folder), "--random-init", "--model", "flow3r_tiny",
                               "--pixel-limit", str(28 * 42), "--pairs", "0-1,2-0", "--out", str(out),
                               "--conf-threshold", "0.0"]) == 0
    meta = json.loads((out / "prediction.json").read_text())
    assert meta["num_frames"] == 3 and (meta["height"], meta["width"]) == (28, 42)
    assert len(export.read_ply(out / "points.ply")["x"]) == meta["num_points"]
    import trimesh
    assert len(trimesh.load(out / "scene.glb").geometry) == 3 + (meta["num_points"] > 0)
    for name in ("maps/depth_0002.png", "maps/conf_0002_color.png", "flow/flow_0002_0000.png"):
        assert Image.open(out / name).size == (42, 28)
