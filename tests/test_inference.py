"""Inference: preprocessing rule and streaming video decode, visualisations, chunked prediction with Sim(3)
alignment, robust file export (PLY, y-up GLB, COLMAP) and the checks predict runs before any heavy work."""

import json
import os
import subprocess
import sys
import textwrap

import av
import numpy as np
import pycolmap
import pytest
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation
from support import ROOT, run_tool

from flow3r_jax.geometry.camera import depth_to_local_points, intrinsics_from_local_points
from flow3r_jax.geometry.ndc import pixel_flow_to_ndc_coords
from flow3r_jax.geometry.transforms import transform_points
from flow3r_jax.inference import export, gltf, preprocess, visualize
from flow3r_jax.inference.model_source import ModelSource
from flow3r_jax.inference.pipeline import PredictOptions, check_inputs
from flow3r_jax.inference.predictor import chunk_frames, overlap_similarity, predict_sequence


def write_video(path, frames, rate):
    """Encodes (H, W, 3) uint8 frames (any iterable) as an MPEG-4 video at `rate` frames per second."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        for k, frame in enumerate(frames):
            if k == 0:
                stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


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

    video = tmp_path / "clip.mp4"
    write_video(video, frames, rate=10)
    assert preprocess.load_images(video, pixel_limit=28 * 42).shape == (1, 4, 28, 42, 3)
    # 4 frames at 10 fps sampled at 5 fps: frames 0 and 2.
    opened = preprocess.open_frames(video, fps=5)
    assert opened.num_frames == 2 and (opened.width, opened.height) == (64, 48)
    np.testing.assert_allclose(preprocess.load_images(opened, pixel_limit=28 * 42)[0],
                               preprocess.load_images(video, pixel_limit=28 * 42)[0, [0, 2]])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        preprocess.load_images(tmp_path / "missing")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4: not a readable video"):
        preprocess.open_frames(broken)


@pytest.mark.parametrize("rate,fps,interval,expected", [(30, 2, 1, [0, 15, 30, 45]), (25, 10, 1, [0, 3, 5, 8, 10]),
                                                         (25, None, 3, [0, 3, 6, 9]), (10, 20, 1, list(range(12)))])
def test_video_keep_rule_samples_by_time(rate, fps, interval, expected):
    keep = preprocess.video_keep_rule(rate, fps, interval)
    assert [i for i in range(expected[-1] + 1) if keep(i)] == expected


def test_streaming_decode_holds_only_the_kept_frames(tmp_path):
    # 300 frames of 640x480 (276 MB as RGB if all were held), sampled at 2 of 25 fps and shrunk to 42x28:
    # the decoding process's peak memory may grow by the decoder's working set, not by the video.
    video = tmp_path / "long.mp4"
    ramp = np.linspace(0, 255, 640, dtype=np.float32)
    write_video(video, (np.broadcast_to(((ramp + 3 * k) % 256).astype(np.uint8)[None, :, None], (480, 640, 3))
                        for k in range(300)), rate=25)
    script = textwrap.dedent(f"""
        import json, resource
        from flow3r_jax.inference import preprocess
        source = preprocess.open_frames({str(video)!r}, fps=2)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        images = preprocess.load_images(source, pixel_limit=28 * 42)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"shape": list(images.shape), "growth_kib": after - before}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [1, 24, 28, 42, 3]                      # 12 s at 2 fps
    assert report["growth_kib"] < 64 * 1024, report                   # far below the 270 MB of all frames


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


def _random_similarity(seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0), Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3)


def _chunk_world_predictor(depth, intrinsics, poses):
    """Predicts the scene's geometry exactly, but call k in its own similarity frame `_random_similarity(k)`."""
    local = depth_to_local_points(depth, intrinsics)
    calls = []

    def predict(images, pairs):
        frames = [int(round(v)) for v in images[0, :, 0, 0, 0] * 100]   # frame index encoded in the pixels
        scale, rotation, translation = _random_similarity(len(calls))
        calls.append(frames)
        p = poses[frames].copy()
        p[:, :3, :3] = rotation @ p[:, :3, :3]
        p[:, :3, 3] = scale * p[:, :3, 3] @ rotation.T + translation
        out = {"local_points": local[frames][None] * scale, "camera_poses": p[None],
               "points": transform_points(p, local[frames] * scale)[None],
               "conf": np.zeros(local[frames].shape[:-1] + (1,))[None]}
        if pairs is not None:
            out["flow"] = np.stack([np.full(local.shape[1:3] + (2,), 10.0 * frames[i] + frames[j])
                                    for i, j in pairs[0]])[None]
        return out

    return predict, calls


def test_overlap_similarity_recovers_a_known_sim3():
    rng = np.random.default_rng(4)
    points = rng.normal(size=(2, 5, 6, 3))
    scale, rotation, translation = _random_similarity(5)
    reference = scale * points @ rotation.T + translation
    reference[0, 0, 0] = np.nan                                  # non-finite pixels are left out of the fit
    conf = np.full(points.shape[:-1], 3.0)
    found = overlap_similarity(points, conf, reference, conf)
    np.testing.assert_allclose(found[0], scale, rtol=1e-10)
    np.testing.assert_allclose(found[1], rotation, atol=1e-10)
    np.testing.assert_allclose(found[2], translation, atol=1e-10)
    assert overlap_similarity(points, np.full(conf.shape, -np.inf), reference, conf) is None


def test_chunked_prediction_merges_into_one_frame():
    depth, intrinsics, poses = _scene(7)
    images = np.zeros((7, 14, 28, 3), np.float32) + (np.arange(7) / 100.0)[:, None, None, None]
    predict, calls = _chunk_world_predictor(depth, intrinsics, poses)
    assert [c.tolist() for c in chunk_frames(7, 3, 1)] == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    assert [c.tolist() for c in chunk_frames(7, 4, 2)] == [[0, 1, 2, 3], [2, 3, 4, 5], [3, 4, 5, 6]]
    pairs = np.array([[1, 2], [3, 4], [2, 5]])
    out = predict_sequence(predict, images, pairs, chunk_size=3, overlap=1, show_progress=False)
    assert calls == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [2, 5]]            # the cross-chunk pair runs alone
    # Every chunk predicted in its own random Sim(3) frame; merged, all frames are in the first chunk's:
    # world points and camera centres are the GT ones under that chunk's Sim(3) (float64 round-off).
    scale, rotation, translation = _random_similarity(0)
    gt_points = transform_points(poses, depth_to_local_points(depth, intrinsics))
    np.testing.assert_allclose(out["points"], scale * gt_points @ rotation.T + translation, atol=1e-9)
    np.testing.assert_allclose(out["camera_poses"][:, :3, 3], scale * poses[:, :3, 3] @ rotation.T + translation,
                               atol=1e-9)
    np.testing.assert_allclose(out["camera_poses"][:, :3, :3], rotation @ poses[:, :3, :3], atol=1e-9)
    np.testing.assert_allclose(out["local_points"][..., 2], scale * depth, atol=1e-9)
    np.testing.assert_allclose(out["flow"][:, 0, 0, 0], [12.0, 34.0, 25.0])


def test_estimate_intrinsics_recovers_pinhole():
    depth, intrinsics, _ = _scene(2)
    local = depth_to_local_points(depth, intrinsics)
    np.testing.assert_allclose(intrinsics_from_local_points(local), intrinsics, atol=1e-9)


def _scene_outputs(num_frames=3):
    depth, intrinsics, poses = _scene(num_frames)
    local = depth_to_local_points(depth, intrinsics)
    conf = np.full(depth.shape + (1,), 5.0)
    conf[0, :, :4] = -5.0                                             # low confidence: filtered out
    flow_px = np.zeros((1,) + depth.shape[1:] + (2,)) + [1.5, -0.5]
    outputs = {"points": transform_points(poses, local), "local_points": local, "conf": conf,
               "camera_poses": poses, "flow": pixel_flow_to_ndc_coords(flow_px, np)}
    images = np.random.default_rng(2).uniform(size=depth.shape + (3,)).astype(np.float32)
    return images, outputs, intrinsics, flow_px


def test_export_prediction_writes_files_that_load_back(tmp_path):
    images, outputs, intrinsics, flow_px = _scene_outputs()
    depth, poses = outputs["local_points"][..., 2], outputs["camera_poses"]
    meta = export.export_prediction(tmp_path, images, outputs, np.array([[0, 1]]))
    assert meta["warnings"] == []
    ply = export.read_ply(tmp_path / "points.ply")
    assert len(ply["x"]) == meta["num_points"] == 3 * 14 * 28 - 14 * 4
    assert len(trimesh.load(tmp_path / "points.ply").vertices) == meta["num_points"]
    cameras = json.loads((tmp_path / "cameras.json").read_text())
    np.testing.assert_allclose(cameras["frames"][2]["camera_to_world"], poses[2])
    np.testing.assert_allclose(cameras["frames"][1]["intrinsics"], intrinsics[1], atol=1e-9)
    depth_png = np.asarray(Image.open(tmp_path / "maps" / "depth_0001.png"))
    assert depth_png.dtype == np.uint16
    np.testing.assert_allclose(depth_png / meta["depth_png_scale"], depth[1], atol=2 / meta["depth_png_scale"])
    assert np.asarray(Image.open(tmp_path / "maps" / "conf_0000.png")).shape == (14, 28)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "maps" / "image_0002.png")),
                                  np.round(images[2] * 255).astype(np.uint8))
    flow_png = np.asarray(Image.open(tmp_path / "flow" / "flow_0000_0001.png"))
    np.testing.assert_array_equal(flow_png, visualize.flow_to_color(flow_px[0].astype(np.float32)))


def test_glb_scene_is_y_up_with_one_frustum_per_camera_and_a_point_budget(tmp_path):
    images, outputs, intrinsics, _ = _scene_outputs()
    poses = outputs["camera_poses"]
    export.export_prediction(tmp_path, images, outputs, options=export.ExportOptions(glb_max_points=100))
    scene = trimesh.load(tmp_path / "scene.glb")
    frustums = sorted(name for name in scene.geometry if name.startswith("camera_"))
    assert frustums == ["camera_0000", "camera_0001", "camera_0002"]
    cloud = scene.geometry["points"].vertices
    assert len(cloud) == 100
    # Every point is a kept world point with y and z flipped (OpenCV -> glTF axes).
    kept = outputs["points"][export.keep_mask(outputs["conf"][..., 0], outputs["local_points"][..., 2])]
    distance = np.linalg.norm(cloud[:, None] - (kept * [1, -1, -1])[None], axis=-1).min(axis=1)
    assert distance.max() < 1e-5                                       # float32 vertices
    for n, name in enumerate(frustums):
        apex, top_left, top_right, bottom_right, bottom_left = scene.geometry[name].vertices
        pose = gltf.opencv_to_gltf_pose(poses[n])
        np.testing.assert_allclose(apex, pose[:3, 3], atol=1e-5)
        # Upright: the image's top edge is above its bottom edge along the camera's up (+y) axis, and the
        # camera looks along its -z axis, as glTF cameras do.
        up, back = pose[:3, 1], pose[:3, 2]
        assert (top_left - bottom_left) @ up > 0 and (top_right - bottom_right) @ up > 0
        assert (top_left - apex) @ back < 0
    assert gltf.opencv_to_gltf_pose(np.eye(4))[1, 1] == 1.0           # identity camera: y up, as glTF's own


_SIGTERM_AFTER_COLMAP = """
import os, signal, sys
import numpy as np
from flow3r_jax.inference import colmap
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))   # the process's own handler, set before the export
colmap.write_colmap(sys.argv[1], np.zeros((1, 2, 2, 3), np.uint8), np.eye(4)[None], np.eye(3)[None],
                    np.ones((1, 2, 2, 3)), np.ones((1, 2, 2), bool), np.ones(1, bool), max_points=4)
os.kill(os.getpid(), signal.SIGTERM)
signal.pause()
"""


def test_colmap_export_keeps_the_process_signal_handlers(tmp_path):
    # Importing pycolmap installs glog's failure-signal handler; after a COLMAP export a SIGTERM must
    # still reach the handler the process set (in training: JAX's preemption notice), not kill it.
    result = subprocess.run([sys.executable, "-c", _SIGTERM_AFTER_COLMAP, str(tmp_path / "colmap")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 7, result.stderr[-2000:]
    assert (tmp_path / "colmap" / "sparse" / "0" / "images.bin").is_file()


def test_colmap_model_round_trips_through_pycolmap(tmp_path):
    images, outputs, intrinsics, _ = _scene_outputs()
    poses = outputs["camera_poses"]
    meta = export.export_prediction(tmp_path, images, outputs, options=export.ExportOptions(colmap_max_points=500))
    model = pycolmap.Reconstruction(str(tmp_path / "colmap" / "sparse" / "0"))
    assert model.num_images() == 3 and model.num_cameras() == 3 and model.num_points3D() == 500 < meta["num_points"]
    for n in range(3):
        image = model.images[n + 1]
        assert image.name == f"frame_{n:04d}.png" and (tmp_path / "colmap" / "images" / image.name).is_file()
        # Tolerances: the binary model stores float64; estimated intrinsics fit exact geometry.
        np.testing.assert_allclose(image.cam_from_world().matrix(), np.linalg.inv(poses[n])[:3], atol=1e-9)
        camera = model.cameras[image.camera_id]
        assert camera.model_name == "PINHOLE" and (camera.width, camera.height) == (28, 14)
        k = intrinsics[n]
        np.testing.assert_allclose(camera.params, [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5], atol=1e-6)
    for point_id, point in model.points3D.items():
        (element,) = point.track.elements
        image = model.images[element.image_id]
        keypoint = image.points2D[element.point2D_idx]
        assert keypoint.point3D_id == point_id
        # The point projects onto the pixel it was predicted at (COLMAP pixel-corner coordinates).
        projected = model.cameras[image.camera_id].img_from_cam(image.cam_from_world() * point.xyz)
        np.testing.assert_allclose(projected, keypoint.xy, atol=1e-6)


def test_degenerate_prediction_still_writes_every_output(tmp_path):
    images, outputs, _, _ = _scene_outputs(4)
    outputs["conf"][1] = -20.0                                        # no confident pixel in frame 1
    outputs["camera_poses"][2, 0, 3] = np.nan                         # non-finite pose of frame 2
    outputs["points"][3, :2] = np.inf                                 # non-finite points in frame 3
    outputs["local_points"][3, 2:4] = np.nan
    meta = export.export_prediction(tmp_path, images, outputs, np.array([[1, 2]]))
    for name in ("points.ply", "scene.glb", "cameras.json", "prediction.json", "maps/depth_0001.png",
                 "maps/conf_0003.png", "maps/image_0003.png", "flow/flow_0001_0002.png", "colmap/sparse/0/images.bin"):
        assert (tmp_path / name).is_file(), name
    warnings = " | ".join(meta["warnings"])
    assert "frame 1: no confident pixel; intrinsics fitted on all its pixels" in warnings
    assert "frame 1: no confident pixel; it adds no points" in warnings
    assert "frame 2: non-finite camera pose" in warnings
    cameras = json.loads((tmp_path / "cameras.json").read_text())
    assert cameras["frames"][2]["camera_to_world"] is None and np.isfinite(cameras["frames"][1]["intrinsics"]).all()
    assert sorted(trimesh.load(tmp_path / "scene.glb").geometry) == ["camera_0000", "camera_0001", "camera_0003",
                                                                     "points"]   # no frustum for frame 2
    assert pycolmap.Reconstruction(str(tmp_path / "colmap" / "sparse" / "0")).num_images() == 3
    ply = export.read_ply(tmp_path / "points.ply")
    assert np.isfinite(np.stack([ply["x"], ply["y"], ply["z"]])).all() and len(ply["x"]) == meta["num_points"]


def test_no_usable_pixel_anywhere_falls_back_to_a_default_camera(tmp_path):
    images, outputs, _, _ = _scene_outputs(2)
    outputs["local_points"][:] = np.nan
    outputs["points"][:] = np.nan
    meta = export.export_prediction(tmp_path, images, outputs, options=export.ExportOptions(colmap=False))
    assert meta["num_points"] == 0 and "frame 0: no confident pixel and no usable depth" in meta["warnings"][0]
    focal = export.default_focal(28, 14)
    cameras = json.loads((tmp_path / "cameras.json").read_text())
    np.testing.assert_allclose(np.array(cameras["frames"][1]["intrinsics"])[[0, 1], [0, 1]], [focal, focal])


def _image_folder(folder, count):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


def test_bad_input_is_reported_before_any_heavy_work(tmp_path):
    folder = _image_folder(tmp_path / "in", 3)
    tiny = ModelSource(model="flow3r_tiny", random_init=True)
    assert check_inputs(tiny, PredictOptions(input=str(folder), out=str(tmp_path / "out"))).num_frames == 3
    cases = [
        (ModelSource(checkpoint=str(tmp_path / "missing.bin")), {}, r"checkpoint .*missing\.bin: no such file"),
        (ModelSource(model="flow3r_huge", random_init=True), {}, "unknown model 'flow3r_huge'"),
        (ModelSource(workdir=str(tmp_path)), {}, "config.json: no recorded config"),
        (tiny, {"pairs": np.array([[0, 3]])}, r"out of range: .*in gives 3 frames"),
        (tiny, {"input": str(tmp_path / "nothing.mp4")}, "nothing.mp4: no such folder or video file"),
        (tiny, {"chunk_size": 2, "overlap": 2}, "needs 0 < overlap < chunk_size"),
    ]
    for source, changes, message in cases:
        options = PredictOptions(**{"input": str(folder), "out": str(tmp_path / "out"), **changes})
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            check_inputs(source, options)
    # A video's frame count comes from its header: pairs are checked without decoding it.
    video = tmp_path / "clip.mp4"
    write_video(video, np.zeros((6, 48, 64, 3), np.uint8), rate=10)
    with pytest.raises(ValueError, match=r"clip\.mp4 gives 3 frames"):
        check_inputs(tiny, PredictOptions(input=str(video), out=str(tmp_path / "out"), fps=5,
                                          pairs=np.array([[0, 3]])))


def test_predict_tool_stops_on_a_missing_checkpoint(tmp_path):
    folder = _image_folder(tmp_path / "in", 2)
    result = run_tool("predict", f"--input={folder}", f"--checkpoint={tmp_path / 'flow3r.bin'}",
                      f"--out={tmp_path / 'out'}", timeout=120)
    assert result.returncode == 1
    assert f"checkpoint {tmp_path / 'flow3r.bin'}: no such file or directory" in result.stderr
    assert not (tmp_path / "out").exists()
