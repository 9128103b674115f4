"""Pseudo-flow targets for unlabeled clips: pluggable dense flow estimators + forward-backward consistency.

An estimator maps two RGB frames (H, W, 3) uint8 to the pixel displacement (H, W, 2) float32 (dx, dy) of
every pixel of the first frame in the second. Estimators are registered by name:

* ``"dis"`` (default, no weights): OpenCV DIS optical flow on grey images (preset "medium").
* ``"ufm"``, ``"roma"``, ``"sea_raft"``: learned matchers. They run only from a local checkpoint file and a
  user-supplied loader (``"module:function"``; the function takes the checkpoint path and returns an
  estimator callable). Nothing is downloaded; a missing file/package/loader is a clear PseudoFlowError.

Co-visibility mask (`forward_backward_mask`): a pixel x is kept when its target x' = x + f_ij(x) lies in
the image and the backward flow brings it home: |f_ij(x) + f_ji(x')|^2 <= FB_ALPHA (|f_ij(x)|^2 +
|f_ji(x')|^2) + FB_BETA (the usual occlusion test of Sundaram et al. 2010; f_ji(x') bilinear).
Targets are stored as NDC target coordinates (flow3r_jax/geometry/ndc.py), clipped to the record limit.
"""

from __future__ import annotations

import importlib
import pathlib
from typing import Callable, Protocol

import cv2
import numpy as np

from flow3r_jax.data.records import FLOW_NDC_LIMIT
from flow3r_jax.geometry.ndc import pixel_flow_to_ndc_coords

FB_ALPHA = 0.01
FB_BETA = 0.5


class PseudoFlowError(RuntimeError):
    """An estimator cannot be built or run; the message says what is missing and where."""


class FlowEstimator(Protocol):
    def __call__(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB source and target -> (H, W, 2) float32 pixel flow source -> target."""


_REGISTRY: dict[str, Callable[..., FlowEstimator]] = {}


def register_estimator(name: str):
    """Decorator: register a factory `(**kwargs) -> FlowEstimator` under `name`."""
    def decorate(factory):
        if name in _REGISTRY:
            raise ValueError(f"flow estimator {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return decorate


def make_estimator(name: str, **kwargs) -> FlowEstimator:
    """Build the registered estimator `name` with `kwargs`."""
    if name not in _REGISTRY:
        raise PseudoFlowError(f"unknown flow estimator {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def registered_estimators() -> list[str]:
    return sorted(_REGISTRY)


@register_estimator("dis")
class DISFlow:
    """OpenCV Dense Inverse Search optical flow on grey images; no learned weights."""

    _PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}

    def __init__(self, preset: str = "medium"):
        if preset not in self._PRESETS:
            raise PseudoFlowError(f"DIS preset must be one of {sorted(self._PRESETS)}, got {preset!r}")
        self._dis = cv2.DISOpticalFlow_create(self._PRESETS[preset])

    def __call__(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        grey = [cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in (source, target)]
        return self._dis.calc(grey[0], grey[1], None).astype(np.float32)


_LEARNED_MATCHERS = {
    "ufm": "UFM (UniFlowMatch): pip-install its package from the authors' release",
    "roma": "RoMa: pip install romatch",
    "sea_raft": "SEA-RAFT: clone the authors' repository and put it on PYTHONPATH",
}


class LearnedMatcher:
    """Plug-in slot for a learned dense matcher, loaded from a local checkpoint (never downloaded)."""

    def __init__(self, name: str, checkpoint_path: str | None = None, loader: str | None = None):
        how = _LEARNED_MATCHERS[name]
        if checkpoint_path is None or not pathlib.Path(checkpoint_path).is_file():
            raise PseudoFlowError(
                f"flow estimator {name!r} needs a local checkpoint file (got {checkpoint_path!r}): download "
                f"the weights yourself and pass checkpoint_path=<file>. Package: {how}.")
        if loader is None or ":" not in loader:
            raise PseudoFlowError(
                f"flow estimator {name!r} needs loader='module:function', a function that takes the checkpoint "
                f"path and returns a callable (source, target) uint8 RGB -> (H, W, 2) pixel flow. Package: {how}.")
        module_name, function_name = loader.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise PseudoFlowError(f"flow estimator {name!r}: cannot import loader module {module_name!r} "
                                  f"({err}). Package: {how}.") from err
        self._name = name
        self._matcher = getattr(module, function_name)(str(checkpoint_path))

    def __call__(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        flow = np.asarray(self._matcher(source, target), np.float32)
        if flow.shape != source.shape[:2] + (2,):
            raise PseudoFlowError(f"flow estimator {self._name!r} returned shape {flow.shape}, "
                                  f"expected {source.shape[:2] + (2,)}")
        return flow


for _name in _LEARNED_MATCHERS:
    register_estimator(_name)(lambda _name=_name, **kwargs: LearnedMatcher(_name, **kwargs))


def forward_backward_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """(H, W, 2) flows i->j and j->i -> (H, W) bool co-visibility of the pixels of frame i (module doc)."""
    forward, backward = np.asarray(forward, np.float32), np.asarray(backward, np.float32)
    height, width = forward.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    target_x, target_y = grid_x + forward[..., 0], grid_y + forward[..., 1]
    back = cv2.remap(backward, target_x, target_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (target_x >= 0) & (target_x <= width - 1) & (target_y >= 0) & (target_y <= height - 1)
    mismatch = np.sum((forward + back) ** 2, -1)
    bound = FB_ALPHA * (np.sum(forward ** 2, -1) + np.sum(back ** 2, -1)) + FB_BETA
    return inside & (mismatch <= bound)


def pseudo_flow_targets(frames: np.ndarray, pairs: np.ndarray, estimator: FlowEstimator):
    """(T, H, W, 3) uint8 frames, (P, 2) pairs -> (P, H, W, 2) float32 NDC target coordinates and
    (P, H, W) float32 forward-backward co-visibility masks. Each ordered flow is estimated once."""
    height, width = frames.shape[1:3]
    cache = {}

    def flow(i, j):
        if (i, j) not in cache:
            cache[(i, j)] = estimator(frames[i], frames[j])
        return cache[(i, j)]

    coords = np.zeros((len(pairs), height, width, 2), np.float32)
    masks = np.zeros((len(pairs), height, width), np.float32)
    for p, (i, j) in enumerate(np.asarray(pairs, int)):
        forward = flow(i, j)
        coords[p] = np.clip(pixel_flow_to_ndc_coords(forward, np), -FLOW_NDC_LIMIT, FLOW_NDC_LIMIT)
        masks[p] = forward_backward_mask(forward, flow(j, i))
    return coords, masks


def estimator_epe(estimator: FlowEstimator, clips, pairs) -> dict:
    """End-point error (pixels) of `estimator` against the exact flow of synthetic clips.

    `clips`: flow3r_jax.data.synthetic.SyntheticClip objects; `pairs`: (i, j) pairs evaluated in every clip.
    Returns epe (mean over ground-truth co-visible pixels), epe_kept (over those also kept by the
    forward-backward mask), kept_fraction (of GT co-visible pixels the mask keeps) and occluded_kept
    (fraction of GT non-co-visible pixels the mask wrongly keeps).
    """
    errors, kept_errors, kept, occluded_kept, num_covisible, num_occluded = [], [], 0, 0, 0, 0
    for clip in clips:
        for i, j in pairs:
            gt_coords, covisible = clip.flow(i, j)
            gt_flow = gt_coords - np.stack(np.meshgrid(np.arange(gt_coords.shape[1]), np.arange(gt_coords.shape[0])), -1)
            forward = estimator(clip.images[i], clip.images[j])
            mask = forward_backward_mask(forward, estimator(clip.images[j], clip.images[i]))
            error = np.linalg.norm(forward - gt_flow, axis=-1)
            errors.append(error[covisible])
            kept_errors.append(error[covisible & mask])
            kept += int(np.sum(covisible & mask))
            occluded_kept += int(np.sum(~covisible & mask))
            num_covisible += int(covisible.sum())
            num_occluded += int((~covisible).sum())
    return {"epe": float(np.concatenate(errors).mean()), "epe_kept": float(np.concatenate(kept_errors).mean()),
            "kept_fraction": kept / max(num_covisible, 1), "occluded_kept": occluded_kept / max(num_occluded, 1)}
