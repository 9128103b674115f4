"""Readers for the file formats the benchmarks use (images, depth PNGs, Sintel binaries, TUM text)."""

from __future__ import annotations

import pathlib
import re

import numpy as np
from PIL import Image

from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError

SINTEL_TAG = 202021.25


def read_rgb(path: pathlib.Path) -> np.ndarray:
    """An image file -> (H, W, 3) float32 RGB in [0, 1]."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.float32) / 255.0
    except OSError as error:
        raise BenchmarkDataError(f"{path}: not a readable image ({error})") from error


def read_depth_png(path: pathlib.Path, units_per_metre: float) -> np.ndarray:
    """A 16-bit depth PNG -> (H, W) float32 metres (value / units_per_metre; 0 stays 0 = unknown)."""
    try:
        with Image.open(path) as image:
            raw = np.asarray(image)
    except OSError as error:
        raise BenchmarkDataError(f"{path}: not a readable depth PNG ({error})") from error
    if raw.ndim != 2:
        raise BenchmarkDataError(f"{path}: depth PNG must be single-channel, got shape {raw.shape}")
    return raw.astype(np.float32) / units_per_metre


def _check_sintel_tag(data: bytes, path: pathlib.Path) -> None:
    if len(data) < 4 or np.frombuffer(data[:4], "<f4")[0] != SINTEL_TAG:
        raise BenchmarkDataError(f"{path}: missing the Sintel tag {SINTEL_TAG} (wrong file or endianness)")


def read_sintel_depth(path: pathlib.Path) -> np.ndarray:
    """MPI-Sintel .dpt: float32 tag 202021.25, int32 width, int32 height, float32 depth[H*W]."""
    data = path.read_bytes()
    _check_sintel_tag(data, path)
    width, height = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    expected = 12 + 4 * width * height
    if len(data) != expected:
        raise BenchmarkDataError(f"{path}: {width}x{height} depth needs {expected} bytes, file has {len(data)}")
    return np.frombuffer(data[12:], "<f4").reshape(height, width).copy()


def read_sintel_camera(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """MPI-Sintel .cam: float32 tag, float64 K[3x3], float64 world-to-camera [R|t] (3x4), row-major.

    Returns (K (3, 3), camera_to_world (4, 4)).
    """
    data = path.read_bytes()
    _check_sintel_tag(data, path)
    if len(data) != 4 + 8 * 9 + 8 * 12:
        raise BenchmarkDataError(f"{path}: a Sintel .cam file has {4 + 8 * 21} bytes, this one {len(data)}")
    k = np.frombuffer(data[4:76], "<f8").reshape(3, 3).copy()
    world_to_camera = np.eye(4)
    world_to_camera[:3] = np.frombuffer(data[76:], "<f8").reshape(3, 4)
    return k, np.linalg.inv(world_to_camera)


def quaternion_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions (x, y, z, w) -> (..., 3, 3) rotation matrices (normalised first)."""
    q = np.asarray(q_xyzw, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def read_tum_trajectory(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """TUM trajectory text ('timestamp tx ty tz qx qy qz qw' per line, '#' comments).

    Returns (timestamps (T,), camera_to_world (T, 4, 4)).
    """
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        values = line.replace(",", " ").split()
        if len(values) != 8:
            raise BenchmarkDataError(f"{path}:{number}: expected 8 values "
                                     f"(timestamp tx ty tz qx qy qz qw), got {len(values)}")
        rows.append([float(v) for v in values])
    if not rows:
        raise BenchmarkDataError(f"{path}: no poses")
    table = np.array(rows)
    poses = np.tile(np.eye(4), (len(table), 1, 1))
    poses[:, :3, :3] = quaternion_to_matrix(table[:, 4:8])
    poses[:, :3, 3] = table[:, 1:4]
    return table[:, 0], poses


def associate_timestamps(query: np.ndarray, reference: np.ndarray, max_difference: float) -> np.ndarray:
    """Index into `reference` of the nearest timestamp for each query (TUM association rule).

    Raises BenchmarkDataError if a query has no reference within max_difference seconds.
    """
    gaps = np.abs(reference[None, :] - query[:, None])
    best = gaps.argmin(axis=1)
    gap = gaps[np.arange(len(query)), best]
    if np.any(gap > max_difference):
        bad = int(np.argmax(gap))
        raise BenchmarkDataError(f"timestamp {query[bad]:.6f} has no ground-truth pose within "
                                 f"{max_difference}s (nearest {gap[bad]:.4f}s away)")
    return best


def read_matrix(path: pathlib.Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated text matrix of the given shape (float64)."""
    try:
        matrix = np.loadtxt(path, dtype=np.float64)
    except ValueError as error:
        raise BenchmarkDataError(f"{path}: not a numeric text matrix ({error})") from error
    if matrix.shape != shape:
        raise BenchmarkDataError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got shape {matrix.shape}")
    return matrix


def sorted_numerically(paths) -> list[pathlib.Path]:
    """Sorts paths by the last integer in their name (e.g. frame-000012.color, img12, 12.jpg)."""

    def number(path):
        digits = re.findall(r"\d+", path.name.split(".")[0])
        if not digits:
            raise BenchmarkDataError(f"{path}: file name carries no frame number")
        return int(digits[-1])

    return sorted(paths, key=number)
