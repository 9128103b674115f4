"""Co3Dv2 for static (object-centric) camera evaluation.

Layout (the Co3Dv2 release plus the per-category test annotations used by PoseDiffusion, VGGT and
pi3)::

    <root>/<category>/<sequence>/images/frameXXXXXX.jpg
    <root>/annotations/<category>_test.jgz    (gzip JSON: {sequence: [{"filepath": path relative
                                               to <root>, "R": 3x3, "T": 3, "focal_length": 2,
                                               "principal_point": 2}, ...]})

Protocol (VGGT/pi3 relative-pose evaluation): every category with an annotation file, sequences
in file order; sequences with fewer than 50 annotated frames, or with any frame whose T sums to
more than 1e5 (broken translations), are skipped; 10 frames are drawn without replacement per
sequence with numpy's default_rng(seed) (one generator for the whole run, seed 0 by default).
Cameras are PyTorch3D's (row-vector X_cam = X_world R + T, x left, y up, NDC focal and principal
point scaled by min(H, W) / 2); they are converted to OpenCV camera-to-world and pixel intrinsics
(principal point shifted by -0.5 so that (0, 0) is the centre of the top-left pixel). No depth is
loaded: the static point metrics are not computed on Co3Dv2.
"""

from __future__ import annotations

import gzip
import json
import logging
import pathlib
from collections.abc import Iterator

import numpy as np

from flow3r_jax.evaluation.benchmarks import io
from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError, BenchmarkDataMissing, Sequence

NAME = "co3dv2"
KIND = "static"
LAYOUT = __doc__.split("Layout")[1].split("Protocol")[0]
MIN_FRAMES = 50
FRAMES_PER_SEQUENCE = 10
MAX_TRANSLATION_SUM = 1e5
PYTORCH3D_TO_OPENCV = np.diag([-1.0, -1.0, 1.0])
log = logging.getLogger(__name__)


def pytorch3d_to_opencv(rotation, translation, focal_ndc, principal_ndc, height: int, width: int):
    """PyTorch3D camera (R, T, NDC focal/principal point) -> (camera_to_world 4x4, K 3x3) OpenCV."""
    world_to_camera = np.eye(4)
    world_to_camera[:3, :3] = PYTORCH3D_TO_OPENCV @ np.asarray(rotation, np.float64).T
    world_to_camera[:3, 3] = PYTORCH3D_TO_OPENCV @ np.asarray(translation, np.float64)
    half = min(height, width) / 2.0
    focal = np.asarray(focal_ndc, np.float64) * half
    principal = -np.asarray(principal_ndc, np.float64) * half + np.array([width, height]) / 2.0 - 0.5
    k = np.array([[focal[0], 0, principal[0]], [0, focal[1], principal[1]], [0, 0, 1]])
    return np.linalg.inv(world_to_camera), k


def read_annotations(path: pathlib.Path) -> dict:
    try:
        with gzip.open(path, "rt") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkDataError(f"{path}: not a gzip JSON annotation file ({error})") from error


def load(root: pathlib.Path, *, seed: int = 0, frames_per_sequence: int = FRAMES_PER_SEQUENCE,
         min_frames: int = MIN_FRAMES) -> Iterator[Sequence]:
    """Yields one Sequence of `frames_per_sequence` sampled frames per usable test sequence."""
    root = pathlib.Path(root)
    annotation_files = sorted((root / "annotations").glob("*_test.jgz"))
    if not annotation_files:
        raise BenchmarkDataMissing(NAME, str(root / "annotations" / "<category>_test.jgz"), LAYOUT)
    rng = np.random.default_rng(seed)
    for annotation_file in annotation_files:
        category = annotation_file.name[:-len("_test.jgz")]
        for seq_name, frames in read_annotations(annotation_file).items():
            if len(frames) < min_frames:
                log.info("%s/%s: %d frames < %d; skipped by the protocol", category, seq_name, len(frames), min_frames)
                continue
            if any(sum(f["T"]) > MAX_TRANSLATION_SUM for f in frames):
                log.info("%s/%s: broken translation annotation; skipped by the protocol", category, seq_name)
                continue
            ids = sorted(rng.choice(len(frames), frames_per_sequence, replace=False).tolist())
            images, poses, intrinsics = [], [], []
            for i in ids:
                frame = frames[i]
                path = root / frame["filepath"]
                if not path.is_file():
                    raise BenchmarkDataMissing(NAME, str(path), LAYOUT)
                image = io.read_rgb(path)
                pose, k = pytorch3d_to_opencv(frame["R"], frame["T"], frame["focal_length"],
                                              frame["principal_point"], *image.shape[:2])
                images.append(image), poses.append(pose), intrinsics.append(k)
            shapes = {im.shape for im in images}
            if len(shapes) != 1:
                raise BenchmarkDataError(f"{category}/{seq_name}: sampled frames differ in size: {shapes}")
            yield Sequence(name=f"{NAME}/{category}/{seq_name}", images=np.stack(images),
                           camera_poses=np.stack(poses), intrinsics=np.stack(intrinsics), frame_ids=ids)
