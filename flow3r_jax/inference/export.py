"""Writing predictions to files people can open: point clouds, cameras, depth/confidence/flow PNGs.

All writers go through a temporary file in the destination folder and rename it into place, so an
interrupted export never leaves a half-written file under the final name.

Point filtering (as in the Flow3r/pi3 demo): a pixel is kept when sigmoid(conf) > conf_threshold,
its values are finite and it is not on a depth edge, where a depth edge is a pixel whose 3x3
neighbourhood spans a depth range (max - min) larger than rtol times its own depth (rtol = 0.03).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import numpy as np
from PIL import Image

from flow3r_jax.files import atomic_path, atomic_write
from flow3r_jax.geometry.camera import intrinsics_from_local_points
from flow3r_jax.geometry.maps import depth_edge
from flow3r_jax.geometry.ndc import ndc_coords_to_pixel_flow
from flow3r_jax.inference import colmap, gltf
from flow3r_jax.inference.visualize import colorize_confidence, colorize_depth, flow_to_color

log = logging.getLogger(__name__)
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


def write_json(path: str | pathlib.Path, payload) -> None:
    atomic_write(path, json.dumps(payload, indent=2))


def write_png(path: str | pathlib.Path, array: np.ndarray) -> None:
    """uint8 (H, W) / (H, W, 3) or uint16 (H, W) array -> PNG."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _finite_or_none(matrix: np.ndarray) -> list | None:
    matrix = np.asarray(matrix, float)
    return matrix.tolist() if np.all(np.isfinite(matrix)) else None


def write_cameras_json(path: str | pathlib.Path, camera_poses: np.ndarray, intrinsics: np.ndarray,
                       width: int, height: int) -> None:
    """Cameras as JSON: image size, and per frame a camera-to-world 4x4 (OpenCV axes) and 3x3 K (null
    where not finite)."""
    write_json(path, {
        "convention": "camera_to_world 4x4, OpenCV axes (x right, y down, z forward); "
                      "intrinsics 3x3 pixels, (0,0) = centre of the top-left pixel",
        "width": int(width), "height": int(height),
        "frames": [{"index": n, "camera_to_world": _finite_or_none(p), "intrinsics": _finite_or_none(k)}
                   for n, (p, k) in enumerate(zip(camera_poses, intrinsics, strict=True))],
    })


def write_frame_images(folder: str | pathlib.Path, colors: np.ndarray) -> None:
    """Per frame: image_NNNN.png, the (H, W, 3) uint8 RGB input frame at the model's resolution (the
    pixel grid of every other map)."""
    for n, frame in enumerate(colors):
        write_png(pathlib.Path(folder) / f"image_{n:04d}.png", frame)


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
        confidence_n = np.nan_to_num(confidence[n], nan=0.0)
        write_png(folder / f"conf_{n:04d}.png", np.round(np.clip(confidence_n, 0, 1) * 255).astype(np.uint8))
        write_png(folder / f"conf_{n:04d}_color.png", colorize_confidence(confidence_n))
    return {"depth_png_scale": scale, "depth_png_meaning": "depth = value / depth_png_scale"}


def write_flow_maps(folder: str | pathlib.Path, flow_px: np.ndarray, pairs: np.ndarray) -> None:
    """Per requested pair (i, j): flow_i_j.png, the colour-wheel image of pixel flow (H, W, 2)."""
    folder = pathlib.Path(folder)
    for (i, j), flow in zip(np.asarray(pairs), flow_px, strict=True):
        write_png(folder / f"flow_{int(i):04d}_{int(j):04d}.png", flow_to_color(flow))


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """conf_threshold: sigmoid(conf) above which a pixel becomes a point; glb / colmap: write scene.glb /
    the COLMAP model; glb_max_points / colmap_max_points: point budgets of those (a random subset with
    `seed`; the PLY keeps every point)."""

    conf_threshold: float = DEFAULT_CONF_THRESHOLD
    glb: bool = True
    glb_max_points: int = 1_000_000
    colmap: bool = True
    colmap_max_points: int = 200_000
    seed: int = 0


def default_focal(width: int, height: int) -> float:
    """Focal length in pixels of a 60-degree field of view across the longer side (the fallback intrinsics)."""
    return max(width, height) / 2.0 / np.tan(np.radians(30.0))


def _plausible(k: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0)


def estimate_intrinsics(local_points: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(N, H, W, 3) camera-frame points and (N, H, W) kept pixels -> ((N, 3, 3) K, warnings).

    Each frame's K is fitted on its kept pixels (`intrinsics_from_local_points`); a frame without a
    usable fit falls back, in order, to all its finite positive-depth pixels, the median focal lengths
    of the frames that fitted, and `default_focal`. Every fallback is reported in the warnings, naming
    the frame and the reason.
    """
    height, width = local_points.shape[1:3]
    finite = np.all(np.isfinite(local_points), axis=-1)
    points = np.where(finite[..., None], local_points, 0.0)
    fitted = intrinsics_from_local_points(points, keep & finite)
    warnings, fallback = [], []
    for n in range(len(points)):
        if _plausible(fitted[n]):
            continue
        reason = "no confident pixel" if not keep[n].any() else "degenerate intrinsics fit on its confident pixels"
        loose = intrinsics_from_local_points(points[n], finite[n])
        if _plausible(loose):
            fitted[n] = loose
            warnings.append(f"frame {n}: {reason}; intrinsics fitted on all its pixels with positive depth")
        else:
            fallback.append((n, reason))
    good = [n for n in range(len(points)) if _plausible(fitted[n])]
    for n, reason in fallback:
        if good:
            focal = np.median(fitted[good][:, [0, 1], [0, 1]], axis=0)
            source = "the median focal length of the other frames"
        else:
            focal = np.full(2, default_focal(width, height))
            source = "a 60-degree field of view"
        fitted[n] = [[focal[0], 0, (width - 1) / 2], [0, focal[1], (height - 1) / 2], [0, 0, 1]]
        warnings.append(f"frame {n}: {reason} and no usable depth; intrinsics from {source}")
    return fitted, warnings


def export_prediction(out_dir: str | pathlib.Path, images: np.ndarray, outputs: dict, pairs: np.ndarray | None = None,
                      options: ExportOptions = ExportOptions()) -> dict:
    """Writes everything predict produces for one sequence into out_dir; returns the metadata.

    images (N, H, W, 3) in [0, 1]; outputs without batch axis (points, local_points, conf,
    camera_poses, and flow (S, H, W, 2) NDC when pairs (S, 2) is given). Files: points.ply,
    scene.glb (y-up glTF), colmap/ (COLMAP binary model and images), cameras.json (with the estimated
    intrinsics), maps/image_*.png (the input frames), maps/depth_*.png, maps/conf_*.png,
    flow/flow_i_j.png, prediction.json (metadata, incl. the depth PNG scale and every warning).
    Degenerate predictions (a frame without a confident pixel, non-finite values) still produce every
    file: the affected frame is reported in the warnings (also logged) and left out only where it cannot
    be drawn (its frustum, its COLMAP image).
    """
    out_dir = pathlib.Path(out_dir)
    n, height, width, _ = images.shape
    local_points = np.asarray(outputs["local_points"], np.float64)
    depth = np.where(np.isfinite(local_points[..., 2]), local_points[..., 2], np.nan)
    conf = np.nan_to_num(np.asarray(outputs["conf"][..., 0], np.float64), nan=-np.inf)
    points = np.asarray(outputs["points"], np.float64)
    keep = (keep_mask(conf, np.nan_to_num(depth, nan=0.0), options.conf_threshold)
            & np.all(np.isfinite(points), axis=-1) & np.all(np.isfinite(local_points), axis=-1))
    intrinsics, warnings = estimate_intrinsics(local_points, keep)
    poses = np.asarray(outputs["camera_poses"], np.float64)
    posed = np.all(np.isfinite(poses), axis=(1, 2))
    warnings += [f"frame {f}: non-finite camera pose; no frustum or COLMAP image for it"
                 for f in np.flatnonzero(~posed)]
    warnings += [f"frame {f}: no confident pixel; it adds no points" for f in range(n) if not keep[f].any()]
    for warning in warnings:
        log.warning("%s", warning)
    colors = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    write_ply(out_dir / "points.ply", points[keep], colors[keep])
    if options.glb:
        gltf.write_glb(out_dir / "scene.glb", points[keep], colors[keep], poses, intrinsics, width, height,
                       options.glb_max_points, options.seed)
    if options.colmap:
        colmap.write_colmap(out_dir / "colmap", colors, poses, intrinsics, points, keep, posed,
                            options.colmap_max_points, options.seed)
    write_cameras_json(out_dir / "cameras.json", poses, intrinsics, width, height)
    write_frame_images(out_dir / "maps", colors)
    metadata = {"num_frames": n, "height": height, "width": width, "num_points": int(keep.sum()),
                "conf_threshold": options.conf_threshold, "depth_edge_rtol": DEPTH_EDGE_RTOL,
                **write_depth_maps(out_dir / "maps", depth, sigmoid(conf))}
    if pairs is not None and len(pairs):
        write_flow_maps(out_dir / "flow", ndc_coords_to_pixel_flow(np.asarray(outputs["flow"]), np), pairs)
        metadata["pairs"] = np.asarray(pairs).tolist()
    metadata["warnings"] = warnings
    write_json(out_dir / "prediction.json", metadata)
    return metadata
