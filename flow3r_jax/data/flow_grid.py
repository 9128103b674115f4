"""Flow stored on a coarser grid: one flow vector per stride x stride cell of source pixels.

A record may store a pair's flow with `flow_stride` s > 1 (flow3r_jax/data/records.py). Cell (v, u) holds
the source pixels rows [s v, s v + s) x columns [s u, s u + s), clipped at the frame border, and stores:

  * the target (NDC of the target frame, as every stored flow) of the cell's centre, the mean position of
    its pixels, moved by the mean displacement of its pixels: the mean of its pixels' targets, so within
    their range (a cell of pixels clipped to the record's limit stays within it);
  * a confidence: the lowest of its pixels, and 0 where some pixel's displacement is more than
    `max_error_px` from the mean (a motion boundary inside the cell).

Reading, every pixel of a cell moves with the cell's displacement (its target is its own position plus the
cell's displacement), so a pixel with non-zero confidence is within `max_error_px` of the flow it was
coarsened from. This is for flow without detail finer than the cell: OpenCV's DIS "medium" estimates flow
at half resolution and upsamples it bilinearly. On the synthetic clips of tools/benchmark_pseudo_flow.py
its composed flow stored with s = 2 and a 1 px bound takes a quarter of the bytes and keeps a little
fewer but more accurate pixels (end-point error on kept pixels 0.74 instead of 0.77 px at gap 1 and 3.22
instead of 3.66 px at gap 8, keeping 93% instead of 94% and 72% instead of 79% of co-visible pixels).

Pixel convention as flow3r_jax/geometry/ndc.py: pixel (x, y) centres, NDC +1 at pixel 0.
"""

from __future__ import annotations

import math

import numpy as np

from flow3r_jax.geometry.ndc import ndc_to_pixel, pixel_grid, pixel_to_ndc


def flow_grid_shape(height: int, width: int, stride: int) -> tuple[int, int]:
    """(rows, columns) of cells of an H x W frame at `stride`."""
    return math.ceil(height / stride), math.ceil(width / stride)


def cell_sizes(size: int, stride: int) -> np.ndarray:
    """(ceil(size / stride),) pixels of each cell along one axis of `size` pixels: `stride` each, the last
    one fewer where `stride` does not divide `size`."""
    return np.diff(np.append(np.arange(0, size, stride), size))


def cell_centres(size: int, stride: int) -> np.ndarray:
    """(ceil(size / stride),) float64 mean pixel position of each cell along one axis of `size` pixels."""
    return np.arange(0, size, stride) + (cell_sizes(size, stride) - 1) / 2.0


def _centre_grid(height: int, width: int, stride: int) -> np.ndarray:
    """(Hc, Wc, 2) pixel position (x, y) of every cell centre."""
    return np.stack(np.meshgrid(cell_centres(width, stride), cell_centres(height, stride)), axis=-1)


def coarsen_flow(coords: np.ndarray, mask: np.ndarray, stride: int,
                 max_error_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution flow -> its cells (module docstring).

    coords (P, H, W, 2) NDC target coordinates of every pixel of the source frame in the target frame (of
    the same size); mask (P, H, W) confidence in [0, 1]. Returns coords (P, Hc, Wc, 2) float32 NDC target
    of each cell centre and mask (P, Hc, Wc) float32, (Hc, Wc) = `flow_grid_shape`; at stride 1 the
    input as float32.
    """
    coords, mask = np.asarray(coords, np.float32), np.asarray(mask, np.float32)
    if stride == 1:
        return coords, mask
    height, width = np.shape(mask)[1:]
    rows, cols = flow_grid_shape(height, width, stride)
    pad = ((0, 0), (0, rows * stride - height), (0, cols * stride - width))
    displacement = ndc_to_pixel(coords, height, width) - pixel_grid(height, width, np)

    def members(array: np.ndarray, mode: str) -> list[np.ndarray]:
        """(P, H, W) -> the s^2 arrays (P, Hc, Wc) of the pixel at each offset within its cell, the border
        cells padded by `mode`."""
        padded = np.pad(array, pad, mode=mode)
        return [padded[:, i::stride, j::stride] for i in range(stride) for j in range(stride)]

    sizes = np.outer(cell_sizes(height, stride), cell_sizes(width, stride))
    planes = [displacement[..., axis] for axis in range(2)]
    means = [sum(members(plane, "constant")) / sizes for plane in planes]
    # Edge padding repeats border pixels, which changes neither the largest deviation, the lowest mask nor
    # the range of the pixels' targets.
    squared = np.max([(x - means[0]) ** 2 + (y - means[1]) ** 2
                      for x, y in zip(*(members(plane, "edge") for plane in planes), strict=True)], axis=0)
    lowest = np.min(members(mask, "edge"), axis=0)
    target = pixel_to_ndc(_centre_grid(height, width, stride) + np.stack(means, axis=-1), height, width)
    # The mean of the pixels' targets, kept within their range where float rounding would leave it.
    pixel_targets = [members(coords[..., axis], "edge") for axis in range(2)]
    target = np.clip(target, np.stack([np.min(m, axis=0) for m in pixel_targets], -1),
                     np.stack([np.max(m, axis=0) for m in pixel_targets], -1))
    return target.astype(np.float32), np.where(squared <= max_error_px ** 2, lowest, 0.0).astype(np.float32)


def refine_flow(coords: np.ndarray, mask: np.ndarray, height: int, width: int,
                stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells -> full resolution: coords (P, Hc, Wc, 2) NDC cell targets, mask (P, Hc, Wc) -> coords
    (P, H, W, 2) float32 NDC, every pixel moved by its cell's displacement, and mask (P, H, W) float32, its
    cell's confidence."""
    heights, widths = cell_sizes(height, stride), cell_sizes(width, stride)
    displacement = ndc_to_pixel(np.asarray(coords, np.float64), height, width) - _centre_grid(height, width, stride)
    full = np.repeat(np.repeat(displacement, heights, axis=1), widths, axis=2) + pixel_grid(height, width, np)
    full_mask = np.repeat(np.repeat(np.asarray(mask, np.float32), heights, axis=1), widths, axis=2)
    return pixel_to_ndc(full, height, width).astype(np.float32), full_mask


def cell_offsets(index: np.ndarray, size: int, stride: int, ndc_scale: float) -> np.ndarray:
    """(n,) source pixel indices along one axis of `size` pixels -> (n,) int16 change of stored flow
    integers (NDC x `ndc_scale`) from the centre of each pixel's cell to the pixel itself, rounded (error
    <= 0.5 integer): reading a stored cell target q, the pixel's target is q + offset."""
    shift = index - cell_centres(size, stride)[index // stride]
    return np.rint(-2.0 * ndc_scale / max(size - 1, 1) * shift).astype(np.int16)
