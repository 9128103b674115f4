"""Interactive browser viewer of a prediction folder (what tools/predict.py writes).

    server = serve("outputs/demo")          # http://127.0.0.1:8080; server.stop() ends it
    view("outputs/demo")                    # the same, blocking until Ctrl-C (tools/view.py)

Shows the point cloud with one camera frustum per frame (its image as thumbnail), the selected frame's
image, depth and confidence maps, a confidence-threshold slider, a frame-range filter and the point size.

Library: viser (pinned in requirements.txt). Viser was chosen over Gradio because the viewer is a 3D
scene first: viser streams point clouds and OpenCV-convention camera frustums with image textures to a
three.js client and updates them live from Python callbacks (slider -> new point set), from one
dependency-light package whose client ships built in the wheel (no network at run time). Gradio's 3D
component displays a mesh/GLB file: every threshold or frame change would mean writing and re-sending a
new file, and frustums, thumbnails and panels would have to be baked into it.

What is read (flow3r_jax/inference/export.py writes it): prediction.json (sizes, depth PNG scale,
export threshold), cameras.json (camera-to-world 4x4, OpenCV axes, and 3x3 intrinsics per frame),
maps/depth_NNNN.png (16-bit depth), maps/conf_NNNN.png (sigmoid(conf) x 255), their _color previews,
and maps/image_NNNN.png (the input frames at the model's resolution). Every pixel with a depth is
unprojected with its camera (so points below the export threshold can be shown too, and every point
knows its frame, colour and confidence); depth-edge pixels are dropped as in the export.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np
from PIL import Image

from flow3r_jax.geometry.maps import depth_edge

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_POINTS = 1_500_000
THUMBNAIL_WIDTH = 320
SELECTED_CAMERA, OTHER_CAMERA = (255, 60, 60), (40, 40, 40)


@dataclasses.dataclass(frozen=True)
class Scene:
    """A prediction folder as the viewer shows it. Points are per frame (lists of length N)."""

    points: list[np.ndarray]             # (P_n, 3) float32 world points, camera-to-world of cameras.json
    colors: list[np.ndarray]             # (P_n, 3) uint8
    confidence: list[np.ndarray]         # (P_n,) float32 sigmoid(conf) in [0, 1]
    camera_to_world: np.ndarray          # (N, 4, 4) OpenCV axes
    intrinsics: np.ndarray               # (N, 3, 3) pixels
    width: int
    height: int
    thumbnails: np.ndarray               # (N, h, w, 3) uint8 input frames, at most THUMBNAIL_WIDTH wide
    images: list[np.ndarray]             # (H, W, 3) uint8 input frames
    depth_previews: list[np.ndarray]     # (H, W, 3) uint8 colourised depth
    confidence_previews: list[np.ndarray]
    export_threshold: float              # the threshold points.ply was written with
    stride: int                          # pixel subsampling of the points (1: every pixel)

    @property
    def num_frames(self) -> int:
        return len(self.points)


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a folder written by tools/predict.py")
    return json.loads(path.read_text())


def _read_png(path: pathlib.Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a folder written by tools/predict.py")
    return np.asarray(Image.open(path))


def _unproject(depth: np.ndarray, intrinsics: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    """(H, W) z-depth -> (H, W, 3) world points (pixel centres at integer coordinates)."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(intrinsics).T
    local = rays * depth[..., None]
    return (local @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]).astype(np.float32)


def read_scene(out_dir: str | pathlib.Path, max_points: int = DEFAULT_MAX_POINTS) -> Scene:
    """Reads a prediction folder; frames are subsampled on a regular pixel grid so that at most
    `max_points` points are kept in all. Raises FileNotFoundError naming a missing file."""
    out_dir = pathlib.Path(out_dir)
    meta = _read_json(out_dir / "prediction.json")
    cameras = _read_json(out_dir / "cameras.json")
    n, height, width = int(meta["num_frames"]), int(meta["height"]), int(meta["width"])
    if len(cameras["frames"]) != n:
        raise ValueError(f"{out_dir / 'cameras.json'}: {len(cameras['frames'])} cameras, prediction.json says {n}")
    poses = np.array([f["camera_to_world"] for f in cameras["frames"]], np.float64)
    intrinsics = np.array([f["intrinsics"] for f in cameras["frames"]], np.float64)
    stride = max(1, int(np.ceil(np.sqrt(n * height * width / max_points))))
    thumb_stride = max(1, int(np.ceil(width / THUMBNAIL_WIDTH)))
    maps = out_dir / "maps"
    points, colors, confidence, images, depth_previews, confidence_previews = [], [], [], [], [], []
    for k in range(n):
        depth = _read_png(maps / f"depth_{k:04d}.png").astype(np.float64) / float(meta["depth_png_scale"])
        conf = _read_png(maps / f"conf_{k:04d}.png").astype(np.float32) / 255.0
        image = _read_png(maps / f"image_{k:04d}.png")[..., :3]
        if depth.shape != (height, width) or conf.shape != (height, width) or image.shape[:2] != (height, width):
            raise ValueError(f"{maps}: frame {k} maps are {depth.shape} / {conf.shape} / {image.shape[:2]}, "
                             f"expected {(height, width)}")
        world = _unproject(depth, intrinsics[k], poses[k])
        valid = (depth > 0) & ~np.asarray(depth_edge(depth, rtol=float(meta.get("depth_edge_rtol", 0.03))))
        grid = valid[::stride, ::stride]
        points.append(world[::stride, ::stride][grid])
        confidence.append(conf[::stride, ::stride][grid])
        colors.append(image[::stride, ::stride][grid])
        images.append(image)
        depth_previews.append(_read_png(maps / f"depth_{k:04d}_color.png")[..., :3])
        confidence_previews.append(_read_png(maps / f"conf_{k:04d}_color.png")[..., :3])
    thumbnails = np.stack(images)[:, ::thumb_stride, ::thumb_stride]
    return Scene(points=points, colors=colors, confidence=confidence, camera_to_world=poses, intrinsics=intrinsics,
                 width=width, height=height, thumbnails=thumbnails, images=images, depth_previews=depth_previews,
                 confidence_previews=confidence_previews, export_threshold=float(meta.get("conf_threshold", 0.1)),
                 stride=stride)


def select_points(scene: Scene, conf_threshold: float, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and colours of frames first..last (inclusive) with confidence >= conf_threshold."""
    frames = range(max(first, 0), min(last, scene.num_frames - 1) + 1)
    keep = [scene.confidence[k] >= conf_threshold for k in frames]
    points = [scene.points[k][m] for k, m in zip(frames, keep, strict=True)]
    colors = [scene.colors[k][m] for k, m in zip(frames, keep, strict=True)]
    if not points:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    return np.concatenate(points), np.concatenate(colors)


def _median_depth(scene: Scene, camera_to_world: np.ndarray) -> float:
    """Median depth of the first frame's points in the camera `camera_to_world` (1 when it has none)."""
    if not len(scene.points[0]):
        return 1.0
    depth = float(np.median((scene.points[0] - camera_to_world[:3, 3]) @ camera_to_world[:3, 2]))
    return depth if depth > 0 else 1.0


def serve(out_dir: str | pathlib.Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_points: int = DEFAULT_MAX_POINTS):
    """Starts the viewer of a prediction folder on http://host:port and returns the running
    `viser.ViserServer` (it serves from a background thread; `.stop()` ends it)."""
    import viser
    import viser.transforms as vtf

    scene = read_scene(out_dir, max_points)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    server.gui.configure_theme(control_width="large")
    start = scene.camera_to_world[0]
    forward, down = start[:3, 2], start[:3, 1]
    server.scene.set_up_direction(tuple(-down))  # the first camera's "up" (OpenCV y points down)
    depth = _median_depth(scene, start)
    # One pixel of the first camera at the median depth, times the subsampling stride: the point spacing.
    spacing = depth / scene.intrinsics[0, 0, 0] * scene.stride

    last = scene.num_frames - 1
    with server.gui.add_folder("Points"):
        threshold = server.gui.add_slider("Confidence >=", 0.0, 1.0, 0.01, round(scene.export_threshold, 2))
        frame_range = server.gui.add_multi_slider("Frames", 0, max(last, 1), 1, (0, last), min_range=0)
        point_size = server.gui.add_slider("Point size", 0.25, 5.0, 0.25, 1.5, hint="in point spacings")
        show_cameras = server.gui.add_checkbox("Cameras", True)
    with server.gui.add_folder("Frame"):
        frame = server.gui.add_slider("Frame", 0, max(last, 1), 1, 0)
        tabs = server.gui.add_tab_group()
        with tabs.add_tab("Image"):
            image_panel = server.gui.add_image(scene.images[0])
        with tabs.add_tab("Depth"):
            depth_panel = server.gui.add_image(scene.depth_previews[0])
        with tabs.add_tab("Confidence"):
            conf_panel = server.gui.add_image(scene.confidence_previews[0])

    points, colors = select_points(scene, threshold.value, 0, last)
    cloud = server.scene.add_point_cloud("/points", points, colors, point_size=point_size.value * spacing,
                                         point_shape="rounded")
    frustums = []
    for k in range(scene.num_frames):
        pose, fy = scene.camera_to_world[k], scene.intrinsics[k, 1, 1]
        frustums.append(server.scene.add_camera_frustum(
            f"/cameras/{k:04d}", fov=float(2 * np.arctan2(scene.height / 2, fy)), aspect=scene.width / scene.height,
            scale=0.08 * depth, thickness=0.003 * depth, color=SELECTED_CAMERA if k == 0 else OTHER_CAMERA,
            image=scene.thumbnails[k], jpeg_quality=80, wxyz=vtf.SO3.from_matrix(pose[:3, :3]).wxyz,
            position=pose[:3, 3]))

    def update_points(_=None):
        first, final = (int(v) for v in frame_range.value)
        cloud.points, cloud.colors = select_points(scene, float(threshold.value), first, final)

    def update_frame(_=None):
        k = min(int(frame.value), last)
        image_panel.image, depth_panel.image = scene.images[k], scene.depth_previews[k]
        conf_panel.image = scene.confidence_previews[k]
        for i, frustum in enumerate(frustums):
            frustum.color = SELECTED_CAMERA if i == k else OTHER_CAMERA

    def update_style(_=None):
        cloud.point_size = float(point_size.value) * spacing
        first, final = (int(v) for v in frame_range.value)
        for i, frustum in enumerate(frustums):
            frustum.visible = bool(show_cameras.value) and first <= i <= final

    threshold.on_update(update_points)
    frame_range.on_update(update_points)
    frame_range.on_update(update_style)
    point_size.on_update(update_style)
    show_cameras.on_update(update_style)
    frame.on_update(update_frame)

    # New clients start at the first camera's view, from behind it so that the first frustums show
    # ("Reset View" returns there).
    server.initial_camera.fov = float(2 * np.arctan2(scene.height / 2, scene.intrinsics[0, 1, 1]))
    server.initial_camera.position = tuple(start[:3, 3] - forward * 0.3 * depth)
    server.initial_camera.look_at = tuple(start[:3, 3] + forward * depth)
    server.initial_camera.up = tuple(-down)
    return server


def view(out_dir: str | pathlib.Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
         max_points: int = DEFAULT_MAX_POINTS) -> None:
    """Serves the viewer of `out_dir` (see `serve`) and blocks until Ctrl-C, then stops the server."""
    server = serve(out_dir, host, port, max_points)
    print(f"viewing {out_dir} at http://{host}:{port} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
