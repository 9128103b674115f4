"""Loading a folder of images or a video into the model's input layout.

Resolution rule (the one of pi3's `load_images_as_tensor`, which Flow3r's demo uses): from the
first frame's size (W, H), scale = sqrt(pixel_limit / (W * H)); the patch counts are
k = round(W * scale / 14), m = round(H * scale / 14); while (14 k) * (14 m) > pixel_limit, decrement
whichever of k, m makes k / m move towards the original aspect ratio (k when k / m is wider than
W / H, else m); the target is (14 max(k, 1), 14 max(m, 1)). Every frame is resized to that size with
Lanczos resampling (no crop), so the aspect ratio is kept up to the rounding to multiples of 14.
pixel_limit defaults to 255,000 (pi3's PIXEL_LIMIT).
"""

from __future__ import annotations

import math
import pathlib

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


def read_video_frames(path: pathlib.Path, interval: int = 1) -> list[Image.Image]:
    """Every `interval`-th decoded frame of a video file (PyAV), as RGB PIL images."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % interval == 0:
                frames.append(frame.to_image().convert("RGB"))
    return frames


def load_frames(path: str | pathlib.Path, interval: int = 1) -> list[Image.Image]:
    """RGB PIL images from a folder of images (sorted by file name) or a video file.

    Raises FileNotFoundError / ValueError naming `path` when nothing can be loaded.
    """
    path = pathlib.Path(path)
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if path.is_dir():
        files = list_image_files(path)[::interval]
        frames = []
        for file in files:
            try:
                with Image.open(file) as image:
                    frames.append(image.convert("RGB"))
            except OSError as error:
                raise ValueError(f"{file}: not a readable image ({error})") from error
    elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        frames = read_video_frames(path, interval)
    elif path.exists():
        raise ValueError(f"{path}: expected a folder of images or a video file ({', '.join(VIDEO_SUFFIXES)})")
    else:
        raise FileNotFoundError(f"{path}: no such folder or video file")
    if not frames:
        raise ValueError(f"{path}: no frames found (images must end in {', '.join(IMAGE_SUFFIXES)})")
    return frames


def resize_frames(frames: list[Image.Image], size: tuple[int, int]) -> np.ndarray:
    """Lanczos-resizes PIL frames to size=(W, H) -> (N, H, W, 3) float32 in [0, 1]."""
    resized = [np.asarray(f.resize(size, Image.Resampling.LANCZOS), np.float32) / 255.0 for f in frames]
    return np.stack(resized, axis=0)


def load_images(path: str | pathlib.Path, pixel_limit: int = DEFAULT_PIXEL_LIMIT,
                interval: int = 1) -> np.ndarray:
    """A folder of images or a video -> (1, N, H, W, 3) float32 in [0, 1], H, W multiples of 14.

    The size comes from the first frame (see the module docstring); all frames get that size.
    """
    frames = load_frames(path, interval)
    size = target_size(*frames[0].size, pixel_limit=pixel_limit)
    return resize_frames(frames, size)[None]
