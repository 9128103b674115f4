"""Crop/resize and photometric transforms of one sample's frames and labels, in two halves.

Pixel convention: (0, 0) is the centre of the top-left pixel, so pixel (x, y) covers the square
[x - 0.5, x + 0.5] x [y - 0.5, y + 0.5]. A `CropResize` takes the integer-aligned window
[x0, x0 + crop_width) x [y0, y0 + crop_height) of a source frame and scales it to out_width x out_height:

    x_out = (x_src + 0.5 - x0) * out_width / crop_width - 0.5      (same for y)

which is exactly the mapping OpenCV's `resize` uses. Images are resampled bilinearly, or with area
averaging when shrinking by more than AREA_MIN_SHRINK; labels (depth, validity, world points, flow
targets, flow masks) take the value of the nearest source pixel, so no label is ever blended across a
depth edge. Intrinsics and flow target coordinates go through the same affine map.

Host half (numpy + OpenCV, whole clips): which source pixels each output row and column reads
(`nearest_source_index`, `linear_taps`), the few per-sample numbers of the other steps
(`color_transform`, `pixel_to_world`, `flow_maps`), and, when the stored grids do not ship as they are
(flow3r_jax/data/wire.py), the resampling itself: uint8 resize and nearest-pixel sampling of the stored
labels. Device half (`apply_color_transform`, `world_points`, `flow_targets`; array module `xp` = numpy
or jax.numpy, run by flow3r_jax/data/wire.py `expand_batch` after its gathers): colour jitter is one
3 x 4 colour transform per sample (with each frame's mean luma), world points one 3 x 3 transform plus
translation per frame, flow one
scale-and-offset of the stored integers. These are float32 where the step-by-step formulas were
evaluated in float64 or in several float32 steps, so results differ from those by float32 rounding
(about 1e-6 relative); label selection (nearest pixels, masks, validity) is exact.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from flow3r_jax.data.records import FLOW_NDC_SCALE
from flow3r_jax.geometry.ndc import pixel_grid, pixel_to_ndc

# Images shrunk by at most this factor are resampled bilinearly, further shrinks average areas. Up to 2x
# the 2 x 2 source pixels a bilinear sample blends cover most of its footprint, so aliasing is mild (at
# exactly 2x it is area averaging), while OpenCV's area averaging at fractional factors costs 3-5x more
# (392 x 518 frames shrunk 3%: 2.1 ms vs 0.6 ms per frame on one core of the development machine).
AREA_MIN_SHRINK = 2.0
# Element types that move a value of that many bytes as one unit (nearest sampling only moves bytes), all of
# which OpenCV resizes.
_UNIT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.int32, 8: np.float64}
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

    def interpolation(self) -> int:
        """OpenCV interpolation of the images: area averaging when shrinking by more than
        AREA_MIN_SHRINK on either axis, bilinear otherwise (see AREA_MIN_SHRINK)."""
        shrink = max(self.crop_width / self.out_width, self.crop_height / self.out_height)
        return cv2.INTER_AREA if shrink > AREA_MIN_SHRINK else cv2.INTER_LINEAR

    def affine(self) -> np.ndarray:
        """(3, 3) float64 map of homogeneous source pixel coordinates to output pixel coordinates."""
        sx, sy = self.scale
        return np.array([[sx, 0.0, (0.5 - self.x0) * sx - 0.5],
                         [0.0, sy, (0.5 - self.y0) * sy - 0.5],
                         [0.0, 0.0, 1.0]])

    def transform_intrinsics(self, intrinsics: np.ndarray) -> np.ndarray:
        """(..., 3, 3) source intrinsics -> (..., 3, 3) float32 intrinsics of the output image."""
        return (self.affine() @ intrinsics.astype(np.float64)).astype(np.float32)

    def nearest_source_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows (out_height,), cols (out_width,)) int64 index of the source pixel nearest each output
        pixel, as OpenCV's INTER_NEAREST_EXACT picks it (so `sample_nearest` agrees): the nearest one, with
        ties and near-ties (within 0.01 source pixel: OpenCV's 16-bit fixed point) going either way."""
        return (_nearest_exact(self.y0, self.crop_height, self.out_height),
                _nearest_exact(self.x0, self.crop_width, self.out_width))

    def linear_taps(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """OpenCV's INTER_LINEAR resize of the crop window as two taps per output row and column:
        ((rows (out_height, 2) int64 source rows, row_weights (out_height,) float32 weight of the second),
        (cols (out_width, 2), col_weights (out_width,))). Taps beyond the window's edge are clamped to it,
        as OpenCV replicates the border of the image it resizes."""
        return (_linear_taps(self.y0, self.crop_height, self.out_height),
                _linear_taps(self.x0, self.crop_width, self.out_width))

    def sample_nearest(self, array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n, H_src, W_src, ...) labels -> (n, out_height, out_width, ...) values of the source pixels
        `nearest_source_index` names, written into `out` when given (else a new array). OpenCV resizes
        the crop window with INTER_NEAREST_EXACT, moving the values of one pixel as one unit."""
        count, trailing = array.shape[0], array.shape[3:]
        if out is None:
            out = np.empty((count, self.out_height, self.out_width) + trailing, array.dtype)
        unit = _UNIT_OF_SIZE[array.dtype.itemsize]
        channels = math.prod(trailing)
        window = array[:, self.y0:self.y0 + self.crop_height, self.x0:self.x0 + self.crop_width]
        window = window.view(unit).reshape(window.shape[:3] + ((channels,) if channels > 1 else ()))
        target = out.view(unit).reshape(out.shape[:3] + ((channels,) if channels > 1 else ()))
        for source, dest in zip(window, target, strict=True):
            cv2.resize(source, (self.out_width, self.out_height), dst=dest, interpolation=cv2.INTER_NEAREST_EXACT)
        return out

    def sample_cells(self, array: np.ndarray, stride: int, out: np.ndarray | None = None) -> np.ndarray:
        """(n, Hf, Wf, ...) values per stride x stride cell of source pixels (flow3r_jax/data/flow_grid.py;
        1, 2, 4 or 8 bytes per cell) -> (n, out_height, out_width, ...) values of the cell holding each output
        pixel's nearest source pixel (`nearest_source_index`), written into `out` when given (else new).
        Stride 1 (one cell per pixel) is `sample_nearest`, OpenCV's nearest resize, faster than the gather."""
        if stride == 1:
            return self.sample_nearest(array, out)
        rows, cols = self.nearest_source_index()
        count, trailing = array.shape[0], array.shape[3:]
        if out is None:
            out = np.empty((count, self.out_height, self.out_width) + trailing, array.dtype)
        unit = _UNIT_OF_SIZE[array.dtype.itemsize * math.prod(trailing)]  # one unit per cell
        cells = np.ascontiguousarray(array).view(unit).reshape(array.shape[:3])
        # Columns first, on the fewer rows of cells; the row gather then copies whole rows. The indices are
        # in range by construction, and mode "clip" also writes `out` directly (no buffer).
        np.take(np.take(cells, cols // stride, axis=2, mode="clip"), rows // stride, axis=1,
                out=out.view(unit).reshape(out.shape[:3]), mode="clip")
        return out

    def resize_images(self, frames, out: np.ndarray | None = None) -> np.ndarray:
        """n frames (H_src, W_src, 3) uint8 (an array or a sequence) -> (n, out_height, out_width, 3) uint8
        (OpenCV rounds to integers), interpolated as `interpolation` says, written into `out` when given."""
        if out is None:
            out = np.empty((len(frames), self.out_height, self.out_width, 3), np.uint8)
        interpolation = self.interpolation()
        for frame, dest in zip(frames, out, strict=True):
            window = frame[self.y0:self.y0 + self.crop_height, self.x0:self.x0 + self.crop_width]
            cv2.resize(window, (self.out_width, self.out_height), dst=dest, interpolation=interpolation)
        return out


def _nearest_exact(start: int, size: int, out_size: int) -> np.ndarray:
    """(out_size,) int64 source index, in [start, start + size), that OpenCV's INTER_NEAREST_EXACT
    samples for each output index when resizing `size` source pixels to `out_size`."""
    ramp = np.arange(start, start + size, dtype=np.int32)[None, :]
    return cv2.resize(ramp, (out_size, 1), interpolation=cv2.INTER_NEAREST_EXACT)[0].astype(np.int64)


def _linear_taps(start: int, size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """((out_size, 2) int64 source indices in [start, start + size), (out_size,) float32 weight of the
    second) of OpenCV's INTER_LINEAR: position (v + 0.5) size / out_size - 0.5 in the window."""
    position = ((np.arange(out_size) + 0.5) * (size / out_size) - 0.5).astype(np.float32)
    first = np.floor(position)
    weight = position - first
    first = first.astype(np.int64)
    weight[first < 0] = 0.0
    first = np.maximum(first, 0)
    beyond = first >= size - 1
    weight[beyond] = 0.0
    first = np.minimum(first, size - 1)
    taps = np.stack([first, np.minimum(first + 1, size - 1)], axis=-1) + start
    return taps, weight.astype(np.float32)


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


def flow_maps(source_hw: tuple[int, int], crop: CropResize) -> tuple[np.ndarray, np.ndarray]:
    """How stored flow integers become flow targets of the output image, for pairs whose source and
    target frames share `crop`.

    Returns to_ndc (2, 2) float32, per axis (x, y) the (scale, offset) with output NDC = scale q + offset
    for a stored integer q, and bounds (2, 2) int32, per axis the inclusive range (lower, upper) of the q
    whose target lies inside the cropped target image (-0.5 <= v <= m - 0.5 for output pixel v, m the
    output size).

    Per axis: source pixel u = (n - 1) / 2 * (1 - q / S) (S = FLOW_NDC_SCALE, n the source size), output
    pixel v = (u + 0.5 - x0) m / c - 0.5 (the crop's affine map; window start x0, size c), so v + 0.5 =
    m / (2 c) ((n - 2 x0) - (n - 1) q / S) and output NDC = 1 - 2 v / (m - 1). v decreases with q, and the
    inside test becomes S (n - 2 x0 - 2 c) / (n - 1) <= q <= S (n - 2 x0) / (n - 1), an integer range.
    """
    scale = int(FLOW_NDC_SCALE)
    to_ndc = np.zeros((2, 2), np.float32)
    bounds = np.zeros((2, 2), np.int32)
    axes = ((source_hw[1], crop.out_width, crop.x0, crop.crop_width),
            (source_hw[0], crop.out_height, crop.y0, crop.crop_height))
    for axis, (size, out, start, crop_size) in enumerate(axes):
        upper = scale * (size - 2 * start) // (size - 1)
        lower = -(-scale * (size - 2 * start - 2 * crop_size) // (size - 1))       # ceil
        bounds[axis] = (max(-32768, lower), min(32767, upper))
        half_m_over_c = out / (2.0 * crop_size)
        to_ndc[axis] = (2.0 * half_m_over_c * (size - 1) / (scale * (out - 1)),
                        1.0 - 2.0 * (half_m_over_c * (size - 2 * start) - 0.5) / (out - 1))
    return to_ndc, bounds


def flow_targets(quantized, confidence, stored, to_ndc, bounds, xp):
    """Flow targets of the output image from nearest-sampled stored flow (device half of `flow_maps`).

    quantized (..., S, H, W, 2) int16 stored NDC x FLOW_NDC_SCALE of the target frame; confidence (..., S,
    H, W) uint8 stored mask x 255; stored (..., S) bool, False for padding pairs; to_ndc, bounds (..., 2, 2)
    from `flow_maps`. Returns coords (..., S, H, W, 2) float32 in NDC of the cropped target frame
    (identity for padding pairs) and mask (..., S, H, W) float32 in [0, 1], zero where the target leaves
    the cropped target image (decided exactly on the stored integers) and for padding pairs.
    """
    height, width = quantized.shape[-3], quantized.shape[-2]
    per_pixel = to_ndc[..., None, None, None, :, :]                        # (..., 1, 1, 1, 2, 2)
    limits = bounds[..., None, None, None, :, :]
    coords = quantized.astype(xp.float32) * per_pixel[..., 0] + per_pixel[..., 1]
    inside = xp.all((quantized >= limits[..., 0]) & (quantized <= limits[..., 1]), axis=-1)
    identity = pixel_to_ndc(pixel_grid(height, width, xp), height, width)
    coords = xp.where(stored[..., None, None, None], coords, identity)
    keep = inside & stored[..., None, None]
    mask = xp.where(keep, confidence.astype(xp.float32) / xp.float32(255.0), xp.float32(0.0))
    return coords, mask


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


def color_transform(jitter: ColorJitter | None) -> np.ndarray:
    """Colour jitter -> (3, 4) float32 [A | b]: the affine colour map x -> A x + b m of a frame's values x
    in [0, 1], m the frame's mean luma (identity, b = 0, when `jitter` is None); `apply_color_transform`
    applies it to every frame of a sample with each frame's own m.

    Order: brightness (scale), contrast (blend with the frame's mean luma), saturation (blend with the
    pixel's luma), hue (rotation of the chroma plane in YIQ space), then a clip to [0, 1]. Before the clip
    these steps are one affine map per frame.
    """
    out = np.eye(3, 4, dtype=np.float32)
    if jitter is None:
        return out
    cos, sin = np.cos(jitter.hue), np.sin(jitter.hue)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    hue = _YIQ_TO_RGB.astype(np.float64) @ rotation @ _RGB_TO_YIQ.astype(np.float64) if jitter.hue else np.eye(3)
    luma = _LUMA.astype(np.float64)
    saturation = jitter.saturation * np.eye(3) + (1.0 - jitter.saturation) * np.outer(np.ones(3), luma)
    colour = hue @ saturation                                           # saturation, then hue
    out[:, :3] = colour * (jitter.contrast * jitter.brightness)
    out[:, 3] = colour @ np.full(3, (1.0 - jitter.contrast) * jitter.brightness)
    return out


def apply_color_transform(images, transform, xp):
    """(..., n, H, W, 3) frames (uint8, or float values in [0, 255]) and (..., 3, 4) colour maps of their
    samples (`color_transform`) -> (..., n, H, W, 3) float32 A x + b m clipped to [0, 1], x = images / 255
    and m each frame's mean luma of x; exactly images / 255 for the identity map. Written as elementwise
    products and sums (no matrix unit, so no reduced-precision matmul on accelerators)."""
    values = images.astype(xp.float32) * xp.float32(1.0 / 255.0)
    mean_luma = (values * xp.asarray(_LUMA)).sum(axis=-1).mean(axis=(-2, -1))      # (..., n)
    per_pixel = transform[..., None, None, None, :, :]                            # (..., 1, 1, 1, 3, 4)
    mapped = (values[..., None, :] * per_pixel[..., :3]).sum(axis=-1) + \
        per_pixel[..., 3] * mean_luma[..., None, None, None]
    return xp.clip(mapped, 0.0, 1.0)


def pixel_to_world(intrinsics: np.ndarray, camera_poses: np.ndarray) -> np.ndarray:
    """(n, 3, 3) source intrinsics and (n, 4, 4) camera-to-world poses -> (n, 3, 3) float32 R K^-1,
    computed in float64 (the ray map `world_points` applies)."""
    intrinsics, camera_poses = np.asarray(intrinsics, np.float64), np.asarray(camera_poses, np.float64)
    return (camera_poses[:, :3, :3] @ np.linalg.inv(intrinsics)).astype(np.float32)


def world_points(depth, valid, rows, cols, ray_map, camera_poses, xp):
    """World points of output pixels from the source pixels they sample.

    depth (..., n, h, w) float32 z-depth, 0 where `valid` (..., n, h, w) bool is False; rows (..., h) /
    cols (..., w) int the source pixel of every output row / column (`CropResize.nearest_source_index`);
    ray_map (..., n, 3, 3) float32 R K^-1 of the source frames (`pixel_to_world`); camera_poses (..., n, 4,
    4) camera-to-world. Returns (..., n, h, w, 3) float32 R K^-1 [col, row, 1] depth + t where valid, 0
    elsewhere.
    """
    scaled = xp.stack([cols[..., None, None, :].astype(xp.float32) * depth,
                       rows[..., None, :, None].astype(xp.float32) * depth, depth], axis=-1)
    rotated = (scaled[..., None, :] * ray_map[..., None, None, :, :]).sum(axis=-1)
    points = rotated + camera_poses[..., None, None, :3, 3]
    return xp.where(valid[..., None], points, xp.float32(0.0))
