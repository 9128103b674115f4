"""Pseudo-flow targets for unlabeled clips: pluggable dense flow estimators + forward-backward consistency.

An estimator maps two RGB frames (H, W, 3) uint8 to the pixel displacement (H, W, 2) float32 (dx, dy) of
every pixel of the first frame in the second; one with an `estimate_batch(sources, targets)` method
(N, H, W, 3) -> (N, H, W, 2) gets all flows of a clip in one call. Estimators are registered by name:

* ``"dis"`` (default, no weights): OpenCV DIS optical flow on grey images (preset "medium").
* ``"raft_small"``, ``"raft_large"``: torchvision's RAFT from a local checkpoint file, batched, on the GPU
  when there is one (data_pipelines/raft_flow.py; optional torch + torchvision).
* ``"ufm"``, ``"roma"``, ``"sea_raft"``: learned matchers. They run only from a local checkpoint file and a
  user-supplied loader (``"module:function"``; the function takes the checkpoint path and returns an
  estimator callable). Nothing is downloaded; a missing file/package/loader is a clear PseudoFlowError.

Flows of a clip's frame pairs (`pseudo_flows`): "composed" (default) chains adjacent-frame flows so long
frame gaps keep the accuracy of short ones (data_pipelines/flow_chain.py); "direct" estimates each pair.

Co-visibility mask (`forward_backward_mask`): a pixel x is kept when its target x' = x + f_ij(x) lies in
the image and the backward flow brings it home: |f_ij(x) + f_ji(x')|^2 <= FB_ALPHA (|f_ij(x)|^2 +
|f_ji(x')|^2) + FB_BETA (the usual occlusion test of Sundaram et al. 2010; f_ji(x') bilinear).
Targets are stored as NDC target coordinates (flow3r_jax/geometry/ndc.py), clipped to the record limit.
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Callable
from typing import Protocol

import cv2
import numpy as np

from data_pipelines.flow_chain import chain_links, compose_flows
from flow3r_jax.data.flow_grid import coarsen_flow, refine_flow
from flow3r_jax.data.records import FLOW_NDC_LIMIT
from flow3r_jax.geometry.ndc import ndc_coords_to_pixel_flow, pixel_flow_to_ndc_coords, pixel_grid

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


def _raft(variant: str, **kwargs) -> FlowEstimator:
    from data_pipelines.raft_flow import RAFTFlow  # torch is optional: imported only when RAFT is asked for
    return RAFTFlow(variant, **kwargs)


for _variant in ("small", "large"):
    register_estimator(f"raft_{_variant}")(lambda _variant=_variant, **kwargs: _raft(_variant, **kwargs))


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


FLOW_MODES = ("composed", "direct")


def estimate_flows(estimator: FlowEstimator, frames: np.ndarray, pairs) -> np.ndarray:
    """(T, H, W, 3) uint8 frames, (P, 2) pairs -> (P, H, W, 2) float32 pixel flows of the pairs, in one
    batch when the estimator has `estimate_batch` (learned matchers), else pair by pair."""
    pairs = np.asarray(pairs, int).reshape(-1, 2)
    batch = getattr(estimator, "estimate_batch", None)
    if batch is not None:
        return np.asarray(batch(frames[pairs[:, 0]], frames[pairs[:, 1]]), np.float32)
    return np.stack([estimator(frames[i], frames[j]) for i, j in pairs]).astype(np.float32)


def pseudo_flows(frames: np.ndarray, pairs, estimator: FlowEstimator, mode: str = "composed"):
    """(T, H, W, 3) uint8 frames, (P, 2) pairs -> (P, H, W, 2) float32 pixel flows and (P, H, W) bool masks.

    mode "composed": every flow is chained from adjacent-frame flows (data_pipelines/flow_chain.py), each
    link estimated once in both directions; the mask is the chain mask. "direct": each pair is estimated
    directly in both directions; the mask is the forward-backward test (module doc)."""
    if mode not in FLOW_MODES:
        raise PseudoFlowError(f"pseudo-flow mode must be one of {FLOW_MODES}, got {mode!r}")
    pairs = [(int(i), int(j)) for i, j in np.asarray(pairs, int).reshape(-1, 2)]
    height, width = frames.shape[1:3]
    if not pairs:
        return np.zeros((0, height, width, 2), np.float32), np.zeros((0, height, width), bool)
    if mode == "direct":
        needed = sorted({p for i, j in pairs for p in ((i, j), (j, i))})
    else:
        needed = sorted({p for i, j in pairs for a, b in chain_links(i, j) for p in ((a, b), (b, a))})
    flows = dict(zip(needed, estimate_flows(estimator, frames, needed), strict=True))
    if mode == "direct":
        return (np.stack([flows[p] for p in pairs]),
                np.stack([forward_backward_mask(flows[(i, j)], flows[(j, i)]) for i, j in pairs]))
    link_masks = {(a, b): forward_backward_mask(flows[(a, b)], flows[(b, a)]) for a, b in needed}
    composed = [compose_flows([flows[link] for link in chain_links(i, j)],
                              [link_masks[link] for link in chain_links(i, j)]) for i, j in pairs]
    return np.stack([f for f, _ in composed]), np.stack([m for _, m in composed])


def pseudo_flow_targets(frames: np.ndarray, pairs, estimator: FlowEstimator, mode: str = "composed"):
    """(T, H, W, 3) uint8 frames, (P, 2) pairs -> (P, H, W, 2) float32 NDC target coordinates (clipped to
    the record limit) and (P, H, W) float32 co-visibility masks, from `pseudo_flows`."""
    flows, masks = pseudo_flows(frames, pairs, estimator, mode)
    coords = np.clip(pixel_flow_to_ndc_coords(flows, np), -FLOW_NDC_LIMIT, FLOW_NDC_LIMIT)
    return coords.astype(np.float32), masks.astype(np.float32)


def as_stored_per_cell(flows: np.ndarray, masks: np.ndarray, stride: int,
                       max_error_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(P, H, W, 2) pixel flows and (P, H, W) masks as `pseudo_flows` gives -> the same stored per stride x
    stride cell and read back per pixel (flow3r_jax/data/flow_grid.py): pixel flows and bool masks."""
    height, width = flows.shape[1:3]
    cells = coarsen_flow(pixel_flow_to_ndc_coords(flows, np), np.asarray(masks, np.float32), stride, max_error_px)
    coords, kept = refine_flow(*cells, height, width, stride)
    return ndc_coords_to_pixel_flow(coords, np), kept > 0


def estimator_epe(estimator: FlowEstimator, clips, pairs, mode: str = "composed") -> dict:
    """Accuracy of the stored pseudo-flow (`pseudo_flows`) of `estimator` on synthetic clips
    (flow3r_jax.data.synthetic.SyntheticClip objects) for the (i, j) `pairs` of every clip; see `flow_accuracy`."""
    exact = [[clip.flow(i, j) for i, j in pairs] for clip in clips]
    return flow_accuracy(exact, [pseudo_flows(clip.images, pairs, estimator, mode) for clip in clips])


def flow_accuracy(exact, estimated) -> dict:
    """Pseudo-flow against exact flow. exact: per clip, per pair (coords (H, W, 2) target pixels, covisible
    (H, W) bool) as SyntheticClip.flow gives; estimated: per clip (flows (P, H, W, 2), masks (P, H, W)) as
    `pseudo_flows` gives. Returns epe (pixels, mean over ground-truth co-visible pixels), epe_kept (over
    those also kept by the mask), kept_fraction (of GT co-visible pixels the mask keeps), occluded_kept
    (fraction of GT non-co-visible pixels the mask wrongly keeps) and motion (mean exact displacement in
    pixels of co-visible pixels)."""
    errors, kept_errors, motion, kept, occluded_kept, num_covisible, num_occluded = [], [], [], 0, 0, 0, 0
    for clip_exact, (flows, masks) in zip(exact, estimated, strict=True):
        for (coords, covisible), flow, mask in zip(clip_exact, flows, masks, strict=True):
            exact_flow = coords - pixel_grid(*coords.shape[:2], np)
            error = np.linalg.norm(flow - exact_flow, axis=-1)
            errors.append(error[covisible])
            kept_errors.append(error[covisible & mask])
            motion.append(np.linalg.norm(exact_flow, axis=-1)[covisible])
            kept += int(np.sum(covisible & mask))
            occluded_kept += int(np.sum(~covisible & mask))
            num_covisible += int(covisible.sum())
            num_occluded += int((~covisible).sum())
    return {"epe": float(np.concatenate(errors).mean()), "epe_kept": float(np.concatenate(kept_errors).mean()),
            "kept_fraction": kept / max(num_covisible, 1), "occluded_kept": occluded_kept / max(num_occluded, 1),
            "motion": float(np.concatenate(motion).mean())}
