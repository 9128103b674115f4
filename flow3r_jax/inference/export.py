"""Writing predictions to files people can open: point clouds, cameras, depth/confidence/flow PNGs.

All writers go through a temporary file in the destination folder and rename it into place, so an
interrupted export never leaves a half-written file under the final name.

Point filtering (as in the Flow3r/pi3 demo): a pixel is kept when sigmoid(conf) > conf_threshold
and it is not on a depth edge, where a depth edge is a pixel whose 3x3 neighbourhood spans a depth
range (max - min) larger than rtol times its own depth (rtol = 0.03).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image

from flow3r_jax.files import atomic_path, atomic_write
from flow3r_jax.geometry.maps import depth_edge
from flow3r_jax.inference.visualize import colorize_confidence, colorize_depth, flow_to_color

DEPTH_EDGE_RTOL = 0.03
DEFAULT_CONF_THRESHOLD = 0.1
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1",
              "uint8": "u1", "char": "i1", "int8": "i1", "ushort": "<u2", "uint16": "<u2", "short": "<i2",
              "int16": "<i2", "uint": "<u4", "uint32": "<u4", "int": "<i4", "int32": "<i4"}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def keep_mask(conf_logits: np.ndarray, local_depth: np.ndarray,
              conf_threshold: float = DEFAULT_CONF_THRESHOLD, rtol: float = DEPTH_EDGE_RTOL) -> np.ndarray:
    """(N, H, W) bool: confident (sigmoid(conf) > threshold), positive-depth, non-edge pixels."""
    return (sigmoid(conf_logits) > conf_threshold) & (local_depth > 0) & ~np.asarray(depth_edge(local_depth, rtol=rtol))


def write_ply(path: str | pathlib.Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY with float x, y, z and uchar red, green, blue per vertex.

    points (P, 3) float; colors (P, 3) uint8 or float in [0, 1].
    """
    points = np.asarray(points, np.float32).reshape(-1, 3)
    colors = np.asarray(colors)
    if colors.dtype != np.uint8:
        colors = np.round(np.clip(colors, 0.0, 1.0) * 255).astype(np.uint8)
    colors = colors.reshape(-1, 3)
    if len(colors) != len(points):
        raise ValueError(f"write_ply {path}: {len(points)} points but {len(colors)} colors")
    vertices = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k, axis in enumerate("xyz"):
        vertices[axis] = points[:, k]
    for k, channel in enumerate(("red", "green", "blue")):
        vertices[channel] = colors[:, k]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertices.tobytes())


def read_ply(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a binary little-endian PLY with a single vertex element -> {property: (P,) array}."""
    data = pathlib.Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary_little_endian PLY is supported")
    count, fields = None, []
    for line in lines:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[:1] == ["element"]:
            raise ValueError(f"{path}: unexpected element {parts[1]!r}; only 'vertex' is supported")
        elif parts[:1] == ["property"]:
            if parts[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unsupported property type {parts[1]!r}")
            fields.append((parts[2], _PLY_TYPES[parts[1]]))
    if count is None:
        raise ValueError(f"{path}: no vertex element")
    dtype = np.dtype(fields)
    body = data[end + len(b"end_header\n"):]
    if len(body) != count * dtype.itemsize:
        raise ValueError(f"{path}: expected {count * dtype.itemsize} bytes of vertex data, found {len(body)}")
    vertices = np.frombuffer(body, dtype=dtype, count=count)
    return {name: vertices[name].copy() for name in dtype.names}


def frustum_mesh(camera_to_world: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                 size: float) -> tuple[np.ndarray, np.ndarray]:
    """A camera drawn as a pyramid: (5, 3) vertices (apex + image corners at depth `size`), (6, 3) faces."""
    corners_px = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    rays = np.concatenate([corners_px, np.ones((4, 1))], axis=1) @ np.linalg.inv(intrinsics).T
    local = np.concatenate([np.zeros((1, 3)), rays * size], axis=0)
    world = local @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 2, 3], [1, 3, 4]])
    return world, faces


def write_glb(path: str | pathlib.Path, points: np.ndarray, colors: np.ndarray, camera_poses: np.ndarray,
              intrinsics: np.ndarray, width: int, height: int) -> None:
    """GLB scene: the coloured point cloud plus one small frustum per camera (needs trimesh).

    Frustum depth is 2 % of the point cloud's bounding-box diagonal.
    """
    try:
        import trimesh
    except ImportError as error:
        raise RuntimeError("GLB export needs the 'trimesh' package (pip install trimesh); "
                           "the PLY point cloud and the other outputs do not") from error
    points = np.asarray(points, np.float32).reshape(-1, 3)
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    scene = trimesh.Scene()
    rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    if len(points):
        scene.add_geometry(trimesh.PointCloud(points, colors=rgba), geom_name="points")
    extent = float(np.linalg.norm(points.max(0) - points.min(0))) if len(points) else 1.0
    for n, (pose, k) in enumerate(zip(camera_poses, intrinsics)):
        vertices, faces = frustum_mesh(np.asarray(pose, np.float64), np.asarray(k, np.float64), width, height,
                                       0.02 * max(extent, 1e-6))
        frustum = trimesh.Trimesh(vertices, faces, process=False)
        frustum.visual.face_colors = np.tile([230, 60, 60, 255], (len(faces), 1))
        scene.add_geometry(frustum, geom_name=f"camera_{n:04d}")
    atomic_write(path, scene.export(file_type="glb"))


def write_json(path: str | pathlib.Path, payload) -> None:
    atomic_write(path, json.dumps(payload, indent=2))


def write_png(path: str | pathlib.Path, array: np.ndarray) -> None:
    """uint8 (H, W) / (H, W, 3) or uint16 (H, W) array -> PNG."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_cameras_json(path: str | pathlib.Path, camera_poses: np.ndarray, intrinsics: np.ndarray,
                       width: int, height: int) -> None:
    """Cameras as JSON: image size, and per frame a camera-to-world 4x4 (OpenCV axes) and 3x3 K."""
    write_json(path, {
        "convention": "camera_to_world 4x4, OpenCV axes (x right, y down, z forward); "
                      "intrinsics 3x3 pixels, (0,0) = centre of the top-left pixel",
        "width": int(width), "height": int(height),
        "frames": [{"index": n, "camera_to_world": np.asarray(p, float).tolist(),
                    "intrinsics": np.asarray(k, float).tolist()}
                   for n, (p, k) in enumerate(zip(camera_poses, intrinsics))],
    })


def write_depth_maps(folder: str | pathlib.Path, depth: np.ndarray, confidence: np.ndarray) -> dict:
    """Per frame: depth_NNNN.png (uint16), depth_NNNN_color.png, conf_NNNN.png (uint8 sigmoid*255).

    depth (N, H, W) z-depth; confidence (N, H, W) in [0, 1]. One scale for all frames:
    depth = png_value / depth_png_scale (returned, and written by the caller into its metadata).
    """
    folder = pathlib.Path(folder)
    finite = np.isfinite(depth) & (depth > 0)
    max_depth = float(depth[finite].max()) if finite.any() else 1.0
    scale = 65535.0 / max_depth
    for n in range(depth.shape[0]):
        quantized = np.where(finite[n], np.round(depth[n] * scale), 0).astype(np.uint16)
        write_png(folder / f"depth_{n:04d}.png", quantized)
        write_png(folder / f"depth_{n:04d}_color.png", colorize_depth(depth[n], finite[n]))
        write_png(folder / f"conf_{n:04d}.png", np.round(np.clip(confidence[n], 0, 1) * 255).astype(np.uint8))
        write_png(folder / f"conf_{n:04d}_color.png", colorize_confidence(confidence[n]))
    return {"depth_png_scale": scale, "depth_png_meaning": "depth = value / depth_png_scale"}


def write_flow_maps(folder: str | pathlib.Path, flow_px: np.ndarray, pairs: np.ndarray) -> None:
    """Per requested pair (i, j): flow_i_j.png, the colour-wheel image of pixel flow (H, W, 2)."""
    folder = pathlib.Path(folder)
    for (i, j), flow in zip(np.asarray(pairs), flow_px):
        write_png(folder / f"flow_{int(i):04d}_{int(j):04d}.png", flow_to_color(flow))


def export_prediction(out_dir: str | pathlib.Path, images: np.ndarray, outputs: dict, intrinsics: np.ndarray,
                      pairs: np.ndarray | None = None, conf_threshold: float = DEFAULT_CONF_THRESHOLD,
                      write_glb_file: bool = True) -> dict:
    """Writes everything predict.py produces for one sequence into out_dir; returns the metadata.

    images (N, H, W, 3) in [0, 1]; outputs without batch axis (points, local_points, conf,
    camera_poses, and flow (S, H, W, 2) NDC when pairs (S, 2) is given); intrinsics (N, 3, 3).
    Files: points.ply, scene.glb (if write_glb_file), cameras.json, maps/depth_*.png, maps/conf_*.png,
    flow/flow_i_j.png, prediction.json (metadata, incl. the depth PNG scale).
    """
    from flow3r_jax.geometry.ndc import ndc_coords_to_pixel_flow

    out_dir = pathlib.Path(out_dir)
    n, height, width, _ = images.shape
    depth = outputs["local_points"][..., 2]
    conf = outputs["conf"][..., 0]
    keep = keep_mask(conf, depth, conf_threshold)
    points, colors = outputs["points"][keep], images[keep]
    write_ply(out_dir / "points.ply", points, colors)
    if write_glb_file:
        write_glb(out_dir / "scene.glb", points, np.round(colors * 255).astype(np.uint8), outputs["camera_poses"],
                  intrinsics, width, height)
    write_cameras_json(out_dir / "cameras.json", outputs["camera_poses"], intrinsics, width, height)
    metadata = {"num_frames": n, "height": height, "width": width, "num_points": int(keep.sum()),
                "conf_threshold": conf_threshold, "depth_edge_rtol": DEPTH_EDGE_RTOL,
                **write_depth_maps(out_dir / "maps", depth, sigmoid(conf))}
    if pairs is not None and len(pairs):
        write_flow_maps(out_dir / "flow", ndc_coords_to_pixel_flow(np.asarray(outputs["flow"]), np), pairs)
        metadata["pairs"] = np.asarray(pairs).tolist()
    write_json(out_dir / "prediction.json", metadata)
    return metadata
