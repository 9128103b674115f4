"""The prediction viewer: a real export (exact synthetic geometry) read back point for point, then served
on loopback and rendered by headless Chromium (software WebGL), whose screenshot must show the scene."""

import dataclasses
import shutil
import socket
import subprocess

import numpy as np
import pytest
from PIL import Image

from flow3r_jax.data.synthetic import generate_clip
from flow3r_jax.geometry.maps import depth_edge
from flow3r_jax.geometry.transforms import transform_points
from flow3r_jax.inference import viewer
from flow3r_jax.inference.export import DEPTH_EDGE_RTOL, ExportOptions, export_prediction, sigmoid

FRAMES, HEIGHT, WIDTH = 4, 56, 84
LOW_CONF_COLUMNS = WIDTH // 4   # the left quarter of every frame has sigmoid(conf) ~ 0.38, the rest ~ 0.95


@pytest.fixture(scope="module")
def prediction(tmp_path_factory):
    """A predict-style folder written by export_prediction from an exact synthetic clip, seen by a camera
    with a centred principal point (the intrinsics export estimates), so its points are exact."""
    clip = generate_clip(seed=4, height=HEIGHT, width=WIDTH, num_frames=FRAMES, dynamic=False)
    intrinsics = clip.intrinsics[0].astype(np.float64)
    intrinsics[:2, 2] = (WIDTH - 1) / 2, (HEIGHT - 1) / 2
    u, v = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(intrinsics).T
    local_points = rays * clip.depth[..., None]
    points = transform_points(clip.camera_poses.astype(np.float64), local_points)
    clip = dataclasses.replace(clip, points=points.astype(np.float32))
    conf = np.full((FRAMES, HEIGHT, WIDTH, 1), 3.0, np.float32)
    conf[:, :, :LOW_CONF_COLUMNS] = -0.5
    outputs = {"points": clip.points, "local_points": local_points.astype(np.float32),
               "conf": conf, "camera_poses": clip.camera_poses}
    out = tmp_path_factory.mktemp("prediction")
    export_prediction(out, clip.images.astype(np.float32) / 255, outputs,
                      options=ExportOptions(glb=False, colmap=False))
    return clip, out


def test_scene_unprojects_every_frame_with_its_colours_and_confidence(prediction):
    clip, out = prediction
    scene = viewer.read_scene(out)
    assert scene.num_frames == FRAMES and (scene.height, scene.width) == (HEIGHT, WIDTH)
    for k in range(FRAMES):
        # No subsampling at this size: every pixel off a depth edge is a point (the 16-bit depth PNG may
        # move a few pixels across the edge rule's rtol). Depth PNGs hold 16 bits of the largest depth,
        # so positions agree to 1e-4 of the scene size.
        off_edges = int((~np.asarray(depth_edge(clip.depth[k], rtol=DEPTH_EDGE_RTOL))).sum())
        assert abs(len(scene.points[k]) - off_edges) <= 0.01 * HEIGHT * WIDTH
        distance, index = _nearest(clip.points[k].reshape(-1, 3), scene.points[k])
        assert distance.max() < 1e-4 * np.ptp(clip.points[k].reshape(-1, 3), axis=0).max()
        np.testing.assert_array_equal(scene.images[k], clip.images[k])
        pixel_colors = clip.images[k].reshape(-1, 3)[index]
        assert np.median(np.abs(scene.colors[k].astype(int) - pixel_colors)) == 0
        expected_conf = sigmoid(np.where(np.arange(WIDTH) < LOW_CONF_COLUMNS, -0.5, 3.0))
        np.testing.assert_allclose(scene.confidence[k], np.tile(expected_conf, HEIGHT)[index], atol=1 / 255)
    assert scene.thumbnails.shape == (FRAMES, HEIGHT, WIDTH, 3)


def _nearest(reference, query):
    from scipy.spatial import cKDTree

    return cKDTree(reference).query(query)


def test_threshold_and_frame_range_select_points(prediction):
    _, out = prediction
    scene = viewer.read_scene(out)
    everything, _ = viewer.select_points(scene, 0.0, 0, FRAMES - 1)
    confident, colors = viewer.select_points(scene, 0.5, 0, FRAMES - 1)
    one_frame, _ = viewer.select_points(scene, 0.0, 2, 2)
    assert len(everything) == sum(len(p) for p in scene.points) and len(colors) == len(confident)
    assert 0.6 * len(everything) < len(confident) < 0.85 * len(everything)   # the left quarter drops out
    assert len(one_frame) == len(scene.points[2])
    assert len(viewer.select_points(scene, 1.01, 0, FRAMES - 1)[0]) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_browser_renders_the_scene(prediction, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    _, out = prediction
    port = _free_port()
    server = viewer.serve(out, port=port)
    try:
        shot = tmp_path / "viewer.png"
        # Software WebGL (SwiftShader through ANGLE); the virtual-time budget lets the page connect to
        # the server's websocket and draw before the screenshot is taken.
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--window-size=1280,800", "--virtual-time-budget=8000", f"--screenshot={shot}",
             f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=90)
        assert shot.exists(), result.stderr[-2000:]
    finally:
        server.stop()
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    # The 3D canvas fills the window; the control panel sits at the top right and a notice about
    # software WebGL at the top left. The centre of the canvas must show the coloured scene.
    canvas = pixels[200:700, 150:850]
    not_background = (np.abs(canvas - canvas.reshape(-1, 3).max(axis=0)).sum(-1) > 60).mean()
    assert not_background > 0.2, f"only {not_background:.1%} of the canvas differs from the background"
    assert canvas.std(axis=(0, 1)).mean() > 20
