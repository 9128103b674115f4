"""Video files (mp4 / webm / mov, anything FFmpeg reads through PyAV) -> unlabeled clip records.

Sampling: frames are resampled to `target_fps` (a decoded frame is kept when its timestamp reaches the
next sampling time, so a video slower than target_fps keeps every frame); a clip is `clip_length`
consecutive kept frames; consecutive clips start `clip_stride` kept frames apart (stride == length:
back-to-back clips, smaller: overlapping clips); the tail shorter than a clip is not used. Frames are
resized (area interpolation) to the aspect-preserving size of about `target_pixels` pixels with each side
rounded to a multiple of 14 (`size_multiple_of_14`). Flow pairs follow flow3r_jax/data/pairs.py with frame
gaps up to `max_gap`, and their targets come from data_pipelines/pseudo_flow.py in `flow_mode`. Defaults
from tools/benchmark_pseudo_flow.py (392x518 synthetic clips): DIS flows composed along the clip keep
3.7 px end-point error on the pixels they keep (79% of the co-visible ones) at gap 8 (0.8 s at 10 fps),
where direct DIS has 8 px at gap 4 and 28 px at gap 8; with "direct" keep max_gap <= 2. The targets are
stored per `flow_stride` x `flow_stride` cell (flow3r_jax/data/flow_grid.py; default 2: DIS "medium"
estimates at half resolution, and the cells take a quarter of the bytes), cells whose pixels move more than
`flow_cell_error_px` apart masked; use flow_stride=1 for an estimator with per-pixel detail. A file that
cannot be opened or decoded, or that is too short for one clip, raises VideoError naming the file.
"""

from __future__ import annotations

import dataclasses
import glob
import pathlib
from collections.abc import Iterator

import av
import cv2
import numpy as np

from data_pipelines.pseudo_flow import FlowEstimator, pseudo_flow_targets
from flow3r_jax.data.flow_grid import coarsen_flow
from flow3r_jax.data.pairs import sample_pairs
from flow3r_jax.data.records import Clip, encode_frame

PATCH = 14


class VideoError(ValueError):
    """A video cannot be turned into clips; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class VideoClipConfig:
    target_fps: float = 10.0
    clip_length: int = 8
    clip_stride: int = 8
    target_pixels: int = 224 * 224
    pairs_per_clip: int = 8
    max_gap: int | None = 8
    flow_mode: str = "composed"
    flow_stride: int = 2
    flow_cell_error_px: float = 1.0
    image_format: str = "jpeg"
    jpeg_quality: int = 95


def size_multiple_of_14(height: int, width: int, target_pixels: int) -> tuple[int, int]:
    """Aspect-preserving (H', W') with H' W' ~= target_pixels, both rounded to a multiple of 14 (>= 14)."""
    scale = np.sqrt(target_pixels / (height * width))
    return (max(PATCH, int(round(height * scale / PATCH)) * PATCH),
            max(PATCH, int(round(width * scale / PATCH)) * PATCH))


def video_paths(patterns=(), list_file: str | None = None) -> list[str]:
    """Video paths from a text file (one path per line) or else glob `patterns` (** recursive), sorted; a
    pattern that matches nothing is kept as given, so the job reports it as a failed input."""
    if list_file:
        return [line.strip() for line in pathlib.Path(list_file).read_text().splitlines() if line.strip()]
    return sorted(p for pattern in patterns for p in (glob.glob(pattern, recursive=True) or [pattern]))


def video_clips(path, config: VideoClipConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frames (T, H, W, 3) uint8 RGB, timestamps (T,) float64 s) clips of one video (module doc)."""
    buffer, next_start, num_kept, num_clips = [], 0, 0, 0
    for frame, time in _resampled_frames(path, config):
        buffer.append((num_kept, frame, time))
        num_kept += 1
        buffer = [item for item in buffer if item[0] >= next_start]
        if len(buffer) == config.clip_length:
            yield np.stack([f for _, f, _ in buffer]), np.array([t for _, _, t in buffer], np.float64)
            num_clips += 1
            next_start += config.clip_stride
    if num_clips == 0:
        raise VideoError(f"{path}: too short for one clip ({num_kept} frames at {config.target_fps} fps, "
                         f"a clip needs {config.clip_length})")


def video_records(path, config: VideoClipConfig, estimator: FlowEstimator, seed: int) -> Iterator[Clip]:
    """Unlabeled record Clips of one video with pseudo-flow targets; clip k draws pairs from (seed, k)."""
    for index, (frames, timestamps) in enumerate(video_clips(path, config)):
        yield unlabeled_clip(frames, timestamps, f"{path}#{index}", config, estimator, seed=(seed, index))


def unlabeled_clip(frames: np.ndarray, timestamps: np.ndarray, source_id: str, config: VideoClipConfig,
                   estimator: FlowEstimator, seed) -> Clip:
    """One clip of frames (T, H, W, 3) uint8 RGB with timestamps (T,) -> unlabeled record Clip: pairs drawn
    from `seed` (flow3r_jax/data/pairs.py, up to config.pairs_per_clip with gaps up to config.max_gap),
    pseudo-flow targets in config.flow_mode stored per config.flow_stride cell (flow3r_jax/data/flow_grid.py:
    cells whose pixels move more than config.flow_cell_error_px apart are masked), frames encoded as
    config.image_format."""
    pairs = sample_pairs(len(frames), config.pairs_per_clip, seed=seed, max_gap=config.max_gap)
    coords, masks = pseudo_flow_targets(frames, pairs, estimator, config.flow_mode)
    coords, masks = coarsen_flow(coords, masks, config.flow_stride, config.flow_cell_error_px)
    return Clip(source_id=source_id, timestamps=timestamps,
                frames=[encode_frame(f, config.image_format, config.jpeg_quality) for f in frames],
                height=frames.shape[1], width=frames.shape[2], depth=None, intrinsics=None, camera_poses=None,
                valid_mask=None, normal_ok=False, flow_pairs=pairs, flow_coords=coords, flow_mask=masks,
                flow_stride=config.flow_stride)


def _resampled_frames(path, config: VideoClipConfig) -> Iterator[tuple[np.ndarray, float]]:
    """Decoded, resampled and resized (frame, timestamp) pairs; decoding errors become VideoError."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: cannot open video: {err}") from err
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        next_time, size = None, None
        try:
            for frame in container.decode(stream):
                time = float(frame.time) if frame.time is not None else 0.0
                if next_time is not None and time + 1e-6 < next_time:
                    continue
                step = 1.0 / config.target_fps
                next_time = time + step if next_time is None else max(next_time + step, time + 0.5 * step)
                rgb = frame.to_ndarray(format="rgb24")
                if size is None:
                    size = size_multiple_of_14(rgb.shape[0], rgb.shape[1], config.target_pixels)
                yield cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA), time
        except av.FFmpegError as err:
            raise VideoError(f"{path}: cannot decode video: {err}") from err
