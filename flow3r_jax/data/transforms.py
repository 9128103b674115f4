"""Crop/resize and photometric transforms of one sample's frames and labels (numpy, per sample).

Pixel convention: (0, 0) is the centre of the top-left pixel, so pixel (x, y) covers the square
[x - 0.5, x + 0.5] x [y - 0.5, y + 0.5]. A `CropResize` takes the integer-aligned window
[x0, x0 + crop_width) x [y0, y0 + crop_height) of a source frame and scales it to out_width x out_height:

    x_out = (x_src + 0.5 - x0) * out_width / crop_width - 0.5      (same for y)

which is exactly the mapping OpenCV's `resize` uses. Images are resampled with area averaging when
shrinking and bilinearly when enlarging; labels (depth, validity, world points, flow targets, flow masks)
take the value of the nearest source pixel, so no label is ever blended across a depth edge. Intrinsics
and flow target coordinates go through the same affine map.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from flow3r_jax.geometry.ndc import ndc_to_pixel, pixel_to_ndc

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CropResize:
    """Integer crop window of a source frame resized to (out_height, out_width)."""

    x0: int
    y0: int
    crop_width: int
    crop_height: int
    out_width: int
    out_height: int

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): output pixels per source pixel."""
        return self.out_width / self.crop_width, self.out_height / self.crop_height

    def affine(self) -> np.ndarray:
        """(3, 3) float64 map of homogeneous source pixel coordinates to output pixel coordinates."""
        sx, sy = self.scale
        return np.array([[sx, 0.0, (0.5 - self.x0) * sx - 0.5],
                         [0.0, sy, (0.5 - self.y0) * sy - 0.5],
                         [0.0, 0.0, 1.0]])

    def map_pixels(self, coords_px: np.ndarray) -> np.ndarray:
        """(..., 2) source pixel (x, y) -> (..., 2) output pixel (x, y), float32."""
        out = np.add(coords_px, np.float32(0.5), dtype=np.float32)
        for axis, (offset, scale) in enumerate(zip((self.x0, self.y0), self.scale)):
            coord = out[..., axis]
            coord -= np.float32(offset)
            coord *= np.float32(scale)
        out -= np.float32(0.5)
        return out

    def transform_intrinsics(self, intrinsics: np.ndarray) -> np.ndarray:
        """(..., 3, 3) source intrinsics -> (..., 3, 3) float32 intrinsics of the output image."""
        return (self.affine() @ intrinsics.astype(np.float64)).astype(np.float32)

    def nearest_source_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows (out_height,), cols (out_width,)) int source indices of the pixel nearest each output pixel."""
        sx, sy = self.scale
        cols = self.x0 + np.floor((np.arange(self.out_width) + 0.5) / sx).astype(np.int64)
        rows = self.y0 + np.floor((np.arange(self.out_height) + 0.5) / sy).astype(np.int64)
        return (np.clip(rows, self.y0, self.y0 + self.crop_height - 1),
                np.clip(cols, self.x0, self.x0 + self.crop_width - 1))

    def sample_nearest(self, array: np.ndarray) -> np.ndarray:
        """(n, H_src, W_src, ...) labels -> (n, out_height, out_width, ...) nearest-pixel samples."""
        rows, cols = self.nearest_source_index()
        return array.take(rows, axis=1).take(cols, axis=2)

    def resize_images(self, frames: np.ndarray) -> np.ndarray:
        """(n, H_src, W_src, 3) uint8 -> (n, out_height, out_width, 3) float32 in [0, 1]."""
        shrinking = self.out_width < self.crop_width or self.out_height < self.crop_height
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        out = np.empty((frames.shape[0], self.out_height, self.out_width, 3), np.float32)
        for k, frame in enumerate(frames):
            window = frame[self.y0:self.y0 + self.crop_height, self.x0:self.x0 + self.crop_width]
            out[k] = cv2.resize(window, (self.out_width, self.out_height), interpolation=interpolation)
        return out * np.float32(1.0 / 255.0)


def random_crop(source_hw: tuple[int, int], out_hw: tuple[int, int], scale_range: tuple[float, float],
                rng: np.random.Generator) -> CropResize:
    """Crop with the output's aspect ratio: side = U(scale_range) x the largest such crop, random position."""
    return _crop(source_hw, out_hw, rng.uniform(*scale_range), rng)


def center_crop(source_hw: tuple[int, int], out_hw: tuple[int, int]) -> CropResize:
    """Largest centred crop with the output's aspect ratio."""
    return _crop(source_hw, out_hw, 1.0, None)


def _crop(source_hw, out_hw, scale: float, rng) -> CropResize:
    src_h, src_w = source_hw
    out_h, out_w = out_hw
    aspect = out_w / out_h
    max_w = min(float(src_w), src_h * aspect)
    crop_w = int(np.clip(round(scale * max_w), 1, src_w))
    crop_h = int(np.clip(round(crop_w / aspect), 1, src_h))
    if rng is None:
        x0, y0 = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    else:
        x0, y0 = int(rng.integers(0, src_w - crop_w + 1)), int(rng.integers(0, src_h - crop_h + 1))
    return CropResize(x0, y0, crop_w, crop_h, out_w, out_h)


def transform_flow(flow_coords: np.ndarray, flow_mask: np.ndarray, source_hw: tuple[int, int],
                   source_crop: CropResize, target_crop: CropResize) -> tuple[np.ndarray, np.ndarray]:
    """Flow targets of one pair through the crops of its source and target frames.

    flow_coords (H_src, W_src, 2) NDC of the target frame at source size, flow_mask (H_src, W_src).
    Returns coords (H_out, W_out, 2) float32 in NDC of the cropped target frame and mask (H_out, W_out)
    float32, zero where the target point leaves the cropped target image.
    """
    coords_ndc = source_crop.sample_nearest(flow_coords[None])[0]
    mask = source_crop.sample_nearest(flow_mask[None])[0]
    target_px = target_crop.map_pixels(ndc_to_pixel(coords_ndc, *source_hw))
    height, width = target_crop.out_height, target_crop.out_width
    inside = ((target_px[..., 0] >= -0.5) & (target_px[..., 0] <= width - 0.5)
              & (target_px[..., 1] >= -0.5) & (target_px[..., 1] <= height - 0.5))
    return (pixel_to_ndc(target_px, height, width).astype(np.float32, copy=False),
            np.where(inside, mask, 0.0).astype(np.float32, copy=False))


@dataclasses.dataclass(frozen=True)
class ColorJitter:
    """Photometric factors of one sample: brightness/contrast/saturation multipliers, hue rotation (rad)."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0


def random_color_jitter(rng: np.random.Generator, brightness: float, contrast: float, saturation: float,
                        hue: float) -> ColorJitter:
    """Factors 1 + U(-a, a) for brightness/contrast/saturation; hue angle U(-hue, hue) x pi radians."""
    return ColorJitter(brightness=1.0 + rng.uniform(-brightness, brightness),
                       contrast=1.0 + rng.uniform(-contrast, contrast),
                       saturation=1.0 + rng.uniform(-saturation, saturation),
                       hue=float(np.pi * rng.uniform(-hue, hue)))


def apply_color_jitter(images: np.ndarray, jitter: ColorJitter) -> np.ndarray:
    """(n, H, W, 3) float32 in [0, 1] -> jittered images clipped to [0, 1] (same jitter on every frame).

    Order: brightness (scale), contrast (blend with the frame's mean luma), saturation (blend with the
    pixel's luma), hue (rotation of the chroma plane in YIQ space). Frames are processed one at a time,
    in place in the output, so the temporaries stay small; the per-pixel luma is applied one channel at a
    time, which is cheaper than broadcasting it over the length-3 channel axis.
    """
    out = np.empty(images.shape, np.float32)
    hue_rotation = None
    if jitter.hue != 0.0:
        cos, sin = np.cos(jitter.hue), np.sin(jitter.hue)
        rotation = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]], np.float32)
        hue_rotation = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).T
    for image, frame in zip(images, out):
        np.multiply(image, np.float32(jitter.brightness), out=frame)
        mean_luma = (frame @ _LUMA).mean()
        frame -= mean_luma
        frame *= np.float32(jitter.contrast)
        frame += mean_luma
        luma = frame @ _LUMA
        for channel in range(3):
            frame[..., channel] -= luma
        frame *= np.float32(jitter.saturation)
        for channel in range(3):
            frame[..., channel] += luma
        if hue_rotation is not None:
            frame[...] = frame @ hue_rotation
        np.clip(frame, 0.0, 1.0, out=frame)
    return out
