"""A prediction as a glTF 2.0 binary scene (GLB): coloured points and one frustum per camera, y up.

glTF is right-handed with +y up and cameras looking along -z; the predictions use OpenCV axes (x
right, y down, z forward). Every world coordinate is converted by flipping y and z (`OPENCV_TO_GLTF`),
so a camera-to-world pose C becomes OPENCV_TO_GLTF @ C @ OPENCV_TO_GLTF: the same camera, in glTF
world axes and glTF camera axes. Written with trimesh.
"""

from __future__ import annotations

import pathlib

import numpy as np
import trimesh

from flow3r_jax.files import atomic_write

OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0, 1.0])
FRUSTUM_COLOR = (230, 60, 60, 255)


def opencv_to_gltf_pose(camera_to_world: np.ndarray) -> np.ndarray:
    """(..., 4, 4) OpenCV camera-to-world -> glTF camera-to-world (y up, camera looking along -z)."""
    return OPENCV_TO_GLTF @ camera_to_world @ OPENCV_TO_GLTF


def frustum_mesh(camera_to_world: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                 size: float) -> tuple[np.ndarray, np.ndarray]:
    """A camera drawn as a pyramid in OpenCV world axes: (5, 3) vertices (apex, then the image corners at
    depth `size`, clockwise from the top-left), (6, 3) faces."""
    corners_px = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    rays = np.concatenate([corners_px, np.ones((4, 1))], axis=1) @ np.linalg.inv(intrinsics).T
    local = np.concatenate([np.zeros((1, 3)), rays * size], axis=0)
    world = local @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 2, 3], [1, 3, 4]])
    return world, faces


def budget_indices(count: int, budget: int, seed: int) -> np.ndarray:
    """Sorted indices of a random subset of `budget` out of `count` items (all of them when count <= budget)."""
    if count <= budget:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, budget, replace=False))


def write_glb(path: str | pathlib.Path, points: np.ndarray, colors: np.ndarray, camera_poses: np.ndarray,
              intrinsics: np.ndarray, width: int, height: int, max_points: int, seed: int = 0) -> int:
    """Writes the y-up GLB scene; returns the number of points written.

    points (P, 3) world points and colors (P, 3) uint8, OpenCV world axes; at most `max_points` of them
    (a random subset with `seed`). camera_poses (N, 4, 4) camera-to-world and intrinsics (N, 3, 3): one
    frustum per frame whose pose and intrinsics are finite (geometry "camera_NNNN", NNNN the frame index),
    2 % of the point cloud's bounding-box diagonal deep.
    """
    chosen = budget_indices(len(points), max_points, seed)
    points = np.asarray(points, np.float64).reshape(-1, 3)[chosen]
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)[chosen]
    flip = OPENCV_TO_GLTF[:3, :3]
    scene = trimesh.Scene()
    if len(points):
        rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
        scene.add_geometry(trimesh.PointCloud(points @ flip, colors=rgba), geom_name="points")
    extent = float(np.linalg.norm(points.max(0) - points.min(0))) if len(points) else 1.0
    for n, (pose, k) in enumerate(zip(camera_poses, intrinsics, strict=True)):
        if not (np.all(np.isfinite(pose)) and np.all(np.isfinite(k))):
            continue
        vertices, faces = frustum_mesh(np.asarray(pose, np.float64), np.asarray(k, np.float64), width, height,
                                       0.02 * max(extent, 1e-6))
        frustum = trimesh.Trimesh(vertices @ flip, faces, process=False)
        frustum.visual.face_colors = np.tile(FRUSTUM_COLOR, (len(faces), 1))
        scene.add_geometry(frustum, geom_name=f"camera_{n:04d}")
    atomic_write(path, scene.export(file_type="glb"))
    return len(points)
