"""Procedural multi-view clips with exact ground truth, rendered by vectorised numpy ray casting.

Scene (world frame: y points down, the floor is the plane y = +FLOOR_Y): a closed, textured room box
(object 0) holding 2-4 static textured boxes and spheres resting on the floor; the dynamic variant adds
1-2 objects that translate along a straight line (0.3-0.8 m over the clip) and spin about the vertical
axis. Every surface carries a solid (3D) texture, a random sum of plane waves in the object's own frame,
so a point keeps its colour while its object moves; a fixed directional light shades faces.

Camera: constant random pinhole intrinsics (focal 0.7-1.1 x W, principal point within 3% of the centre),
moving smoothly on an arc around the scene centre (0.15-0.5 rad over the clip, with height and radius
wobble) while looking at a target that drifts near the centre. Poses are camera-to-world, OpenCV axes.

Ground truth per frame: RGB image, z-depth, world points, object id (all from the same ray cast: the
ray of pixel (x, y) is K^-1 [x, y, 1] with (0, 0) the centre of the top-left pixel). Flow for any pair
(i, j) is exact: the surface point of each pixel of frame i is moved with its object's rigid motion from
frame i to frame j and projected into camera j. It is co-visible when it lands inside the image
(0 <= x <= W-1, 0 <= y <= H-1), in front of camera j, and the ray of camera j through it first hits the
same object at the same distance (relative tolerance VISIBILITY_RTOL), i.e. it is not occluded.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flow3r_jax.data.flow_grid import coarsen_flow
from flow3r_jax.data.pairs import sample_pairs
from flow3r_jax.data.records import FLOW_NDC_LIMIT, Clip, encode_frame
from flow3r_jax.geometry.ndc import pixel_to_ndc

FLOOR_Y = 1.2
VISIBILITY_RTOL = 1e-3
FPS = 10.0
_NUM_WAVES = 8
_LIGHT = np.array([0.4, -0.8, 0.45], np.float32) / np.linalg.norm([0.4, -0.8, 0.45])
_EPS = 1e-4


@dataclasses.dataclass
class _Scene:
    """Primitives and their per-frame rigid poses. Object 0 is the room (axis-aligned box seen from inside)."""

    room_lo: np.ndarray              # (3,)
    room_hi: np.ndarray              # (3,)
    kinds: list                      # per object >= 1: "box" or "sphere"
    sizes: list                      # box half extents (3,) or sphere radius ()
    object_to_world: np.ndarray      # (T, K + 1, 4, 4); entry 0 is the identity (room)
    wave_freqs: np.ndarray           # (K + 1, NUM_WAVES, 3)
    wave_phases: np.ndarray          # (K + 1, NUM_WAVES)
    wave_mix: np.ndarray             # (K + 1, 3, NUM_WAVES)
    base_colour: np.ndarray          # (K + 1, 3)


@dataclasses.dataclass
class SyntheticClip:
    """T rendered frames of H x W with exact labels; `flow(i, j)` gives exact flow for any pair."""

    images: np.ndarray               # (T, H, W, 3) uint8
    depth: np.ndarray                # (T, H, W) float32 z-depth
    points: np.ndarray               # (T, H, W, 3) float32 world
    object_ids: np.ndarray           # (T, H, W) int32, 0 = room
    intrinsics: np.ndarray           # (T, 3, 3) float32
    camera_poses: np.ndarray         # (T, 4, 4) float32 camera-to-world
    timestamps: np.ndarray           # (T,) float64 seconds
    scene: _Scene

    def flow(self, i: int, j: int):
        """Exact flow of frame i into frame j -> (coords (H, W, 2) float32 pixel (x, y) in frame j,
        covisible (H, W) bool). Where the point is behind camera j, coords hold the source pixel."""
        height, width = self.depth.shape[1:]
        ids = self.object_ids[i]
        motion = self.scene.object_to_world[j] @ np.linalg.inv(self.scene.object_to_world[i])
        moved = np.einsum("hwab,hwb->hwa", motion[ids][..., :3, :3], self.points[i]) + motion[ids][..., :3, 3]
        rotation, centre = self.camera_poses[j, :3, :3], self.camera_poses[j, :3, 3]
        cam = (moved - centre) @ rotation
        z = cam[..., 2]
        in_front = z > _EPS
        safe_z = np.where(in_front, z, 1.0)
        k = self.intrinsics[j]
        x = k[0, 0] * cam[..., 0] / safe_z + k[0, 1] * cam[..., 1] / safe_z + k[0, 2]
        y = k[1, 1] * cam[..., 1] / safe_z + k[1, 2]
        grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
        coords = np.stack([np.where(in_front, x, grid_x), np.where(in_front, y, grid_y)], -1).astype(np.float32)
        candidate = in_front & (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
        covisible = np.zeros((height, width), bool)
        targets = moved[candidate]
        hit_t, hit_id = _cast(self.scene, j, centre.astype(np.float32), (targets - centre).astype(np.float32))[:2]
        covisible[candidate] = (hit_t >= 1.0 - VISIBILITY_RTOL) & (hit_id == ids[candidate])
        return coords, covisible

    def to_record(self, pairs: np.ndarray, source_id: str, image_format: str = "jpeg", flow_stride: int = 1,
                  flow_cell_error_px: float | None = None) -> Clip:
        """Record Clip with all labels and exact flow (NDC, clipped to +-FLOW_NDC_LIMIT) for `pairs` (P, 2),
        stored per pixel or, with `flow_stride` > 1, per cell with cells whose pixels move more than
        `flow_cell_error_px` apart masked (flow3r_jax/data/flow_grid.py `coarsen_flow`)."""
        if flow_stride > 1 and flow_cell_error_px is None:
            raise ValueError(f"flow_stride={flow_stride} needs flow_cell_error_px, the bound of a kept cell")
        num_frames, height, width = self.depth.shape
        flows = [self.flow(int(i), int(j)) for i, j in pairs]
        coords = np.stack([pixel_to_ndc(c, height, width) for c, _ in flows]) if flows else \
            np.zeros((0, height, width, 2), np.float32)
        masks = (np.stack([m for _, m in flows]).astype(np.float32) if flows
                 else np.zeros((0, height, width), np.float32))
        coords, masks = coarsen_flow(np.clip(coords, -FLOW_NDC_LIMIT, FLOW_NDC_LIMIT), masks, flow_stride,
                                     flow_cell_error_px)
        return Clip(source_id=source_id, timestamps=self.timestamps,
                    frames=[encode_frame(im, image_format) for im in self.images], height=height, width=width,
                    depth=self.depth, intrinsics=self.intrinsics, camera_poses=self.camera_poses,
                    valid_mask=self.depth > 0, normal_ok=True, flow_pairs=np.asarray(pairs, np.int32).reshape(-1, 2),
                    flow_coords=coords, flow_mask=masks, flow_stride=flow_stride)


def generate_clip(seed: int, height: int, width: int, num_frames: int, dynamic: bool) -> SyntheticClip:
    """Render a random scene (static or with moving objects) seen by a moving camera; see module doc."""
    rng = np.random.default_rng(seed)
    scene = _random_scene(rng, num_frames, dynamic)
    intrinsics = _random_intrinsics(rng, height, width)
    poses = _camera_trajectory(rng, num_frames)
    pixel_rays = np.stack([*np.meshgrid(np.arange(width), np.arange(height)), np.ones((height, width))], -1)
    pixel_rays = (pixel_rays.reshape(-1, 3) @ np.linalg.inv(intrinsics).T).astype(np.float32)
    images = np.empty((num_frames, height, width, 3), np.uint8)
    depth = np.empty((num_frames, height, width), np.float32)
    points = np.empty((num_frames, height, width, 3), np.float32)
    ids = np.empty((num_frames, height, width), np.int32)
    for t in range(num_frames):
        origin = poses[t, :3, 3]
        dirs = pixel_rays @ poses[t, :3, :3].T
        hit_t, hit_id, normal = _cast(scene, t, origin, dirs)
        world = origin + hit_t[:, None] * dirs
        images[t] = _shade(scene, t, world, hit_id, normal).reshape(height, width, 3)
        depth[t] = hit_t.reshape(height, width)
        points[t] = world.reshape(height, width, 3)
        ids[t] = hit_id.reshape(height, width)
    return SyntheticClip(images=images, depth=depth, points=points, object_ids=ids,
                         intrinsics=np.repeat(intrinsics[None], num_frames, 0).astype(np.float32),
                         camera_poses=poses.astype(np.float32), timestamps=np.arange(num_frames) / FPS,
                         scene=scene)


def synthetic_record(seed: int, height: int, width: int, num_frames: int, num_pairs: int, dynamic: bool,
                     image_format: str = "jpeg", max_gap: int | None = None, flow_stride: int = 1,
                     flow_cell_error_px: float | None = None) -> Clip:
    """One synthetic clip as a record Clip with `num_pairs` pairs drawn by `pairs.sample_pairs`, flow stored
    per pixel or per `flow_stride` cell (`SyntheticClip.to_record`)."""
    clip = generate_clip(seed, height, width, num_frames, dynamic)
    pairs = sample_pairs(num_frames, num_pairs, seed=(seed, 1), max_gap=max_gap)
    kind = "dynamic" if dynamic else "static"
    return clip.to_record(pairs, f"synthetic:{kind}:seed={seed}:{height}x{width}x{num_frames}", image_format,
                          flow_stride, flow_cell_error_px)


def _random_scene(rng, num_frames: int, dynamic: bool) -> _Scene:
    half_x, half_z = rng.uniform(3.5, 5.0, 2)
    ceiling = rng.uniform(1.0, 1.8)
    kinds, sizes, poses = [], [], [np.broadcast_to(np.eye(4), (num_frames, 4, 4))]
    num_static = rng.integers(2, 5)
    num_moving = rng.integers(1, 3) if dynamic else 0
    for index in range(num_static + num_moving):
        kind = "box" if rng.random() < 0.6 else "sphere"
        size = rng.uniform(0.2, 0.55, 3) if kind == "box" else rng.uniform(0.25, 0.55)
        lift = size[1] if kind == "box" else size
        moving = index >= num_static
        radius = rng.uniform(0.0, 1.2 if moving else 1.6)
        angle = rng.uniform(0, 2 * np.pi)
        start = np.array([radius * np.cos(angle), FLOOR_Y - lift - (rng.uniform(0, 0.5) if moving else 0.0),
                          radius * np.sin(angle)])
        s = np.linspace(0.0, 1.0, num_frames)[:, None]
        if moving:
            heading = rng.uniform(0, 2 * np.pi)
            travel = rng.uniform(0.3, 0.8) * np.array([np.cos(heading), 0.0, np.sin(heading)])
            yaw = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(0.3, 0.9) * s[:, 0]
            centres = start + s * travel
        else:
            yaw = np.full(num_frames, rng.uniform(0, 2 * np.pi))
            centres = np.broadcast_to(start, (num_frames, 3))
        pose = np.tile(np.eye(4), (num_frames, 1, 1))
        pose[:, :3, :3] = _yaw_rotation(yaw)
        pose[:, :3, 3] = centres
        kinds.append(kind)
        sizes.append(np.float32(size) if kind == "sphere" else size.astype(np.float32))
        poses.append(pose)
    num_objects = len(kinds) + 1
    directions = rng.normal(size=(num_objects, _NUM_WAVES, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    magnitudes = rng.uniform(4.0, 24.0, (num_objects, _NUM_WAVES, 1))
    return _Scene(
        room_lo=np.array([-half_x, -ceiling, -half_z], np.float32),
        room_hi=np.array([half_x, FLOOR_Y, half_z], np.float32),
        kinds=kinds, sizes=sizes, object_to_world=np.stack(poses, 1).astype(np.float32),
        wave_freqs=(directions * magnitudes).astype(np.float32),
        wave_phases=rng.uniform(0, 2 * np.pi, (num_objects, _NUM_WAVES)).astype(np.float32),
        wave_mix=(rng.normal(size=(num_objects, 3, _NUM_WAVES)) * 0.09).astype(np.float32),
        base_colour=rng.uniform(0.3, 0.7, (num_objects, 3)).astype(np.float32))


def _random_intrinsics(rng, height: int, width: int) -> np.ndarray:
    focal = width * rng.uniform(0.7, 1.1)
    return np.array([[focal, 0.0, (width - 1) / 2 + rng.uniform(-0.03, 0.03) * width],
                     [0.0, focal * rng.uniform(0.97, 1.03), (height - 1) / 2 + rng.uniform(-0.03, 0.03) * height],
                     [0.0, 0.0, 1.0]])


def _camera_trajectory(rng, num_frames: int) -> np.ndarray:
    """(T, 4, 4) camera-to-world poses on a smooth arc around the scene centre, looking inwards."""
    s = np.linspace(0.0, 1.0, num_frames)
    angle = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(0.15, 0.5) * s
    radius = rng.uniform(2.6, 3.1) + 0.1 * np.sin(np.pi * s * rng.uniform(0.5, 1.5))
    height = rng.uniform(-0.4, 0.5) + 0.1 * np.sin(np.pi * s * rng.uniform(0.5, 1.5) + rng.uniform(0, np.pi))
    centres = np.stack([radius * np.cos(angle), height, radius * np.sin(angle)], -1)
    target_start, target_end = rng.uniform([-0.6, 0.3, -0.6], [0.6, 0.9, 0.6], (2, 3))
    targets = target_start + s[:, None] * (target_end - target_start)
    forward = targets - centres
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    poses[:, :3, :3] = np.stack([right, down, forward], -1)
    poses[:, :3, 3] = centres
    return poses


def _yaw_rotation(yaw: np.ndarray) -> np.ndarray:
    """(T,) angles -> (T, 3, 3) rotations about the world vertical (y) axis."""
    c, s, zero, one = np.cos(yaw), np.sin(yaw), np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack([np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1), np.stack([-s, zero, c], -1)], -2)


def _cast(scene: _Scene, frame: int, origin: np.ndarray, dirs: np.ndarray):
    """Nearest hit of rays origin + t dirs (dirs (N, 3), not normalised) at `frame` ->
    (t (N,) float32, object id (N,) int32, world normal (N, 3) float32)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        near = (scene.room_lo - origin) / dirs
        far = (scene.room_hi - origin) / dirs
        exits = np.maximum(near, far)
        axis = np.argmin(exits, axis=1)
        best_t = np.take_along_axis(exits, axis[:, None], 1)[:, 0]
        best_id = np.zeros(len(dirs), np.int32)
        normal = np.zeros_like(dirs)
        rows = np.arange(len(dirs))
        normal[rows, axis] = -np.sign(dirs[rows, axis])
        for index, (kind, size) in enumerate(zip(scene.kinds, scene.sizes, strict=True), start=1):
            pose = scene.object_to_world[frame, index]
            local_origin = (origin - pose[:3, 3]) @ pose[:3, :3]
            local_dirs = dirs @ pose[:3, :3]
            t, local_normal = (_hit_box if kind == "box" else _hit_sphere)(local_origin, local_dirs, size)
            closer = t < best_t
            best_t = np.where(closer, t, best_t)
            best_id[closer] = index
            normal[closer] = local_normal[closer] @ pose[:3, :3].T
    return best_t.astype(np.float32), best_id, normal


def _hit_box(origin, dirs, half_extent):
    near = (-half_extent - origin) / dirs
    far = (half_extent - origin) / dirs
    lower = np.minimum(near, far)
    t_in = lower.max(axis=1)
    t_out = np.maximum(near, far).min(axis=1)
    hit = (t_in <= t_out) & (t_in > _EPS)
    axis = lower.argmax(axis=1)
    normal = np.zeros_like(dirs)
    rows = np.arange(len(dirs))
    normal[rows, axis] = -np.sign(dirs[rows, axis])
    return np.where(hit, t_in, np.inf), normal


def _hit_sphere(origin, dirs, radius):
    a = np.einsum("nc,nc->n", dirs, dirs)
    b = dirs @ origin
    disc = b * b - a * (origin @ origin - radius * radius)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    hit = (disc >= 0) & (t > _EPS)
    normal = (origin + t[:, None] * dirs) / radius
    return np.where(hit, t, np.inf), normal


def _shade(scene: _Scene, frame: int, world: np.ndarray, ids: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Solid-texture colour of world points on objects `ids`, times a directional light -> (N, 3) uint8."""
    colour = np.empty_like(world)
    for index in np.unique(ids):
        sel = ids == index
        pose = scene.object_to_world[frame, index]
        local = (world[sel] - pose[:3, 3]) @ pose[:3, :3]
        waves = np.sin(local @ scene.wave_freqs[index].T + scene.wave_phases[index])
        colour[sel] = scene.base_colour[index] + waves @ scene.wave_mix[index].T
    light = 0.65 + 0.35 * np.abs(normal @ _LIGHT)
    return (np.clip(colour * light[:, None], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
