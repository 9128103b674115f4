"""Colour visualisations of flow, depth and confidence maps (numpy in, uint8 RGB out).

Flow uses the Middlebury colour wheel of Baker et al. (2011): hue encodes direction, saturation
encodes magnitude relative to a normaliser (the largest flow magnitude unless one is given).
Depth uses OpenCV's TURBO colormap on inverse depth, near = warm. Both are used by
`flow3r_jax.inference.export` and by training image summaries.
"""

from __future__ import annotations

import cv2
import numpy as np

# Number of hue steps between the six primary/secondary colours of the Middlebury wheel:
# red->yellow, yellow->green, green->cyan, cyan->blue, blue->magenta, magenta->red.
_WHEEL_SEGMENTS = (15, 6, 4, 11, 13, 6)


def color_wheel() -> np.ndarray:
    """(55, 3) float32 RGB in [0, 255]: the Middlebury flow colour wheel, starting at red."""
    anchors = np.array([[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255], [0, 0, 255],
                        [255, 0, 255]], np.float32)
    rows = []
    for k, steps in enumerate(_WHEEL_SEGMENTS):
        start, end = anchors[k], anchors[(k + 1) % len(anchors)]
        t = np.arange(steps, dtype=np.float32)[:, None] / steps
        rows.append(start + t * (end - start))
    return np.concatenate(rows, axis=0)


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(H, W, 2) pixel flow (dx, dy) -> (H, W, 3) uint8 RGB.

    Direction selects the hue (angle atan2(-dy, -dx) / pi as in the Middlebury code: rightward
    motion is red, leftward cyan); magnitude / max_magnitude (clipped to 1) blends from white to
    the hue. Non-finite flow is drawn black.
    """
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow_to_color: expected (H, W, 2) flow, got shape {flow.shape}")
    finite = np.all(np.isfinite(flow), axis=-1)
    dx = np.where(finite, flow[..., 0], 0.0)
    dy = np.where(finite, flow[..., 1], 0.0)
    magnitude = np.sqrt(dx ** 2 + dy ** 2)
    if max_magnitude is None:
        max_magnitude = float(magnitude.max())
    radius = np.clip(magnitude / max(max_magnitude, 1e-6), 0.0, 1.0)
    wheel = color_wheel()
    n = len(wheel)
    angle = np.arctan2(-dy, -dx) / np.pi                       # (-1, 1]
    position = (angle + 1.0) / 2.0 * (n - 1)
    k0 = np.floor(position).astype(np.int32) % n
    k1 = (k0 + 1) % n
    frac = (position - np.floor(position))[..., None]
    hue = ((1 - frac) * wheel[k0] + frac * wheel[k1]) / 255.0
    rgb = 1.0 - radius[..., None] * (1.0 - hue)
    rgb = np.where(finite[..., None], rgb, 0.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def colorize_depth(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 RGB (TURBO on inverse depth, robust 2-98 % range).

    Pixels that are invalid (mask False, non-finite or depth <= 0) are drawn black.
    """
    depth = np.asarray(depth, np.float32)
    ok = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= valid
    out = np.zeros(depth.shape + (3,), np.uint8)
    if not ok.any():
        return out
    inverse = np.where(ok, 1.0 / np.where(ok, depth, 1.0), 0.0)
    lo, hi = np.percentile(inverse[ok], [2, 98])
    scaled = np.clip((inverse - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    out[ok] = bgr[..., ::-1][ok]
    return out


def colorize_confidence(confidence: np.ndarray) -> np.ndarray:
    """(H, W) confidence in [0, 1] -> (H, W, 3) uint8 RGB (VIRIDIS, 1 = yellow)."""
    scaled = np.round(np.clip(np.asarray(confidence, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(scaled, cv2.COLORMAP_VIRIDIS)[..., ::-1].copy()
