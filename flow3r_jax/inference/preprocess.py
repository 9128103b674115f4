"""Loading a folder of images or a video into the model's input layout.

Resolution rule (the one of pi3's `load_images_as_tensor`, which Flow3r's demo uses): from the
first frame's size (W, H), scale = sqrt(pixel_limit / (W * H)); the patch counts are
k = round(W * scale / 14), m = round(H * scale / 14); while (14 k) * (14 m) > pixel_limit, decrement
whichever of k, m makes k / m move towards the original aspect ratio (k when k / m is wider than
W / H, else m); the target is (14 max(k, 1), 14 max(m, 1)). Every frame is resized to that size with
Lanczos resampling (no crop), so the aspect ratio is kept up to the rounding to multiples of 14.
pixel_limit defaults to 255,000 (pi3's PIXEL_LIMIT).

An input is first opened without decoding (`open_frames`: file list, or the video header's size, rate
and frame count), so bad input and out-of-range frame indices are reported before any decoding. A
video is then decoded as a stream: only the kept frames (`video_keep_rule`: sampled at `fps`, then
every `interval`-th) are converted and resized, one at a time, so memory holds the kept frames at the
model resolution, never the whole video.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

PATCH_SIZE = 14
DEFAULT_PIXEL_LIMIT = 255_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")


def target_size(width: int, height: int, pixel_limit: int = DEFAULT_PIXEL_LIMIT,
                patch_size: int = PATCH_SIZE) -> tuple[int, int]:
    """(target_width, target_height): both multiples of `patch_size`, area <= pixel_limit."""
    if width <= 0 or height <= 0:
        raise ValueError(f"target_size: image size must be positive, got {width}x{height}")
    scale = math.sqrt(pixel_limit / (width * height))
    scaled_w, scaled_h = width * scale, height * scale
    k, m = round(scaled_w / patch_size), round(scaled_h / patch_size)
    while (k * patch_size) * (m * patch_size) > pixel_limit:
        if k / m > scaled_w / scaled_h:
            k -= 1
        else:
            m -= 1
    return max(1, k) * patch_size, max(1, m) * patch_size


def list_image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """Image files (png/jpg/jpeg, any case) directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class FrameSource:
    """An opened input, nothing decoded: a folder of images or a video.

    files: the kept image files (folders); width/height: the first frame's size; num_frames: how many
    frames will be kept (None for a video whose container does not record its frame count).
    keep: for videos, the rule deciding from a decoded frame index whether that frame is kept.
    """

    path: pathlib.Path
    width: int
    height: int
    num_frames: int | None
    files: tuple[pathlib.Path, ...] = ()
    keep: Callable[[int], bool] | None = None


def video_keep_rule(rate: float, fps: float | None, interval: int) -> Callable[[int], bool]:
    """index -> kept? Frames are picked by index at the stream's average `rate`: with `fps`, sample k
    (time k / fps) takes frame i = ceil(k * rate / fps), the first frame at or after it; then every
    `interval`-th sample is kept. fps None or >= rate samples every frame."""
    step = 1.0 if fps is None or fps >= rate else rate / fps

    def keep(index: int) -> bool:
        sample = math.floor(index / step + 1e-9)            # the last sample time at or before this frame
        takes_this_frame = sample * step > index - 1 + 1e-9  # ... falls after the previous frame
        return takes_this_frame and sample % interval == 0

    return keep


def open_video(path: pathlib.Path, interval: int, fps: float | None) -> FrameSource:
    """Reads a video's header (PyAV): frame size, frame rate and count; decodes nothing."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
            total = int(stream.frames)
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable video ({error})") from error
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: the video stream has no frame size")
    keep = video_keep_rule(rate, fps, interval)
    num_frames = sum(keep(i) for i in range(total)) if total > 0 else None
    return FrameSource(path, width, height, num_frames, keep=keep)


def open_frames(path: str | pathlib.Path, interval: int = 1, fps: float | None = None) -> FrameSource:
    """Opens a folder of images (sorted by file name, every `interval`-th) or a video (sampled at `fps`
    frames per second, then every `interval`-th) without decoding it.

    Raises FileNotFoundError / ValueError naming `path` when it cannot be read.
    """
    path = pathlib.Path(path)
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if path.is_dir():
        files = tuple(list_image_files(path)[::interval])
        if not files:
            raise ValueError(f"{path}: no frames found (images must end in {', '.join(IMAGE_SUFFIXES)})")
        try:
            with Image.open(files[0]) as image:
                width, height = image.size
        except OSError as error:
            raise ValueError(f"{files[0]}: not a readable image ({error})") from error
        return FrameSource(path, width, height, len(files), files=files)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return open_video(path, interval, fps)
    if path.exists():
        raise ValueError(f"{path}: expected a folder of images or a video file ({', '.join(VIDEO_SUFFIXES)})")
    raise FileNotFoundError(f"{path}: no such folder or video file")


def decoded_frames(source: FrameSource) -> Iterator[Image.Image]:
    """The kept frames of `source` as RGB PIL images, one at a time (a video is decoded as a stream)."""
    for file in source.files:
        try:
            with Image.open(file) as image:
                yield image.convert("RGB")
        except OSError as error:
            raise ValueError(f"{file}: not a readable image ({error})") from error
    if source.keep is None:
        return
    import av

    with av.open(str(source.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                if source.keep(index):
                    yield frame.to_image()
        except av.error.FFmpegError as error:
            raise ValueError(f"{source.path}: decoding failed after {index} frames ({error})") from error


def resized_frames(source: FrameSource, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The kept frames Lanczos-resized to size=(W, H) as they are decoded: (H, W, 3) float32 in [0, 1]."""
    for frame in decoded_frames(source):
        yield np.asarray(frame.resize(size, Image.Resampling.LANCZOS), np.float32) / 255.0


def load_images(path: str | pathlib.Path | FrameSource, pixel_limit: int = DEFAULT_PIXEL_LIMIT,
                interval: int = 1, fps: float | None = None) -> np.ndarray:
    """A folder of images or a video (or an opened FrameSource) -> (1, N, H, W, 3) float32 in [0, 1],
    H, W multiples of 14.

    The size comes from the first frame (see the module docstring); all frames get that size. Only the
    kept frames, at that size, are held in memory.
    """
    source = path if isinstance(path, FrameSource) else open_frames(path, interval, fps)
    frames = list(resized_frames(source, target_size(source.width, source.height, pixel_limit)))
    if not frames:
        raise ValueError(f"{source.path}: no frames decoded")
    return np.stack(frames, axis=0)[None]
