"""A prediction as a COLMAP model (binary format, written with pycolmap): for Gaussian splatting, NeRF
and other tools that start from a COLMAP reconstruction.

Layout under the output folder: `images/frame_NNNN.png` (the frames at the model resolution) and
`sparse/0/{cameras,images,points3D,rigs,frames}.bin`. Each frame with a finite pose is one image with
its own PINHOLE camera (fx, fy, cx, cy from the estimated intrinsics). COLMAP puts the origin of image
coordinates at the top-left corner of the top-left pixel, the predictions at its centre, so
cx_colmap = cx + 0.5 and cy_colmap = cy + 0.5. Poses are stored as COLMAP wants them, world-to-camera
(cam_from_world: rotation quaternion and translation, OpenCV camera axes, which COLMAP uses too).
points3D are the kept (confident) world points, at most `max_points` (a random subset); each has a
track of one observation: the pixel it was predicted at, which is a 2D point of its frame's image.

pycolmap is imported on first use (`_pycolmap`), never at module import: importing it installs glog's
failure-signal handler for SIGTERM, SIGINT and the crash signals, which would replace the process's
own handlers (JAX's preemption notice on SIGTERM in training jobs, Python's Ctrl-C); the handlers in
place before the import are put back.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import pathlib
import signal
import tempfile

import numpy as np

from flow3r_jax.inference.gltf import budget_indices

# The signals glog's failure-signal handler takes over.
_GLOG_SIGNALS = (signal.SIGSEGV, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGBUS, signal.SIGTERM,
                 signal.SIGINT)
_SIGACTION_BYTES = 512     # larger than `struct sigaction` on every platform; only passed back to the C library


@functools.cache
def _pycolmap():
    """The pycolmap module, imported once with this process's signal handlers kept (module docstring)."""
    libc = ctypes.CDLL(None, use_errno=True)
    saved = {}
    for sig in _GLOG_SIGNALS:
        saved[sig] = ctypes.create_string_buffer(_SIGACTION_BYTES)
        if libc.sigaction(int(sig), None, saved[sig]) != 0:
            raise OSError(ctypes.get_errno(), f"sigaction({sig.name}) failed")
    module = importlib.import_module("pycolmap")
    for sig, action in saved.items():
        if libc.sigaction(int(sig), action, None) != 0:
            raise OSError(ctypes.get_errno(), f"restoring the {sig.name} handler after importing pycolmap failed")
    return module


def pinhole_camera(camera_id: int, intrinsics: np.ndarray, width: int, height: int):
    """A PINHOLE pycolmap.Camera from a 3x3 K with the principal point in pixel-centre coordinates."""
    pycolmap = _pycolmap()
    camera = pycolmap.Camera.create_from_model_name(camera_id, "PINHOLE", float(intrinsics[0, 0]), width, height)
    camera.params = [intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2] + 0.5, intrinsics[1, 2] + 0.5]
    return camera


def write_colmap(folder: str | pathlib.Path, colors: np.ndarray, camera_poses: np.ndarray, intrinsics: np.ndarray,
                 points: np.ndarray, keep: np.ndarray, posed: np.ndarray, max_points: int, seed: int = 0) -> int:
    """Writes the COLMAP model described in the module docstring; returns the number of 3D points.

    colors (N, H, W, 3) uint8 frames; camera_poses (N, 4, 4) camera-to-world; intrinsics (N, 3, 3);
    points (N, H, W, 3) world points; keep (N, H, W) pixels that become 3D points (only in posed frames);
    posed (N,) frames that become images. Image id = camera id = frame index + 1.
    """
    from flow3r_jax.inference.export import write_png

    pycolmap = _pycolmap()
    folder = pathlib.Path(folder)
    num_frames, height, width, _ = colors.shape
    for n in range(num_frames):
        write_png(folder / "images" / f"frame_{n:04d}.png", colors[n])
    frame_of, rows, cols = np.nonzero(keep & np.asarray(posed)[:, None, None])
    chosen = budget_indices(len(frame_of), max_points, seed)
    frame_of, rows, cols = frame_of[chosen], rows[chosen], cols[chosen]
    reconstruction = pycolmap.Reconstruction()
    observation = np.zeros(len(frame_of), np.int64)         # index of each point's 2D point in its image
    for n in np.flatnonzero(posed):
        in_frame = np.flatnonzero(frame_of == n)
        observation[in_frame] = np.arange(len(in_frame))
        reconstruction.add_camera_with_trivial_rig(pinhole_camera(int(n) + 1, intrinsics[n], width, height))
        keypoints = np.stack([cols[in_frame] + 0.5, rows[in_frame] + 0.5], axis=-1).astype(np.float64)
        image = pycolmap.Image(name=f"frame_{n:04d}.png", keypoints=keypoints.reshape(-1, 2), camera_id=int(n) + 1,
                               image_id=int(n) + 1)
        world_to_camera = np.linalg.inv(np.asarray(camera_poses[n], np.float64))
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(world_to_camera[:3]))
    for k in range(len(frame_of)):
        track = pycolmap.Track()
        track.add_element(int(frame_of[k]) + 1, int(observation[k]))
        reconstruction.add_point3D(points[frame_of[k], rows[k], cols[k]].astype(np.float64), track,
                                   colors[frame_of[k], rows[k], cols[k]])
    sparse = folder / "sparse" / "0"
    sparse.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=sparse.parent, prefix=".sparse.") as staging:
        reconstruction.write_binary(staging)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), sparse / name)
    return len(frame_of)
