"""Predict from files to files: a folder of images or a video in, viewable outputs (see export.py) out.

Everything that can be checked cheaply is checked first (the input opens, the model source exists, the
flow pairs are in range), so bad input stops before frames are decoded or a model is built.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from flow3r_jax.inference.export import ExportOptions, export_prediction
from flow3r_jax.inference.model_source import ModelSource
from flow3r_jax.inference.preprocess import DEFAULT_PIXEL_LIMIT, FrameSource, load_images, open_frames

log = logging.getLogger(__name__)


def parse_pairs(text: str | None) -> np.ndarray | None:
    """'0-1,1-2' -> [[0, 1], [1, 2]] (int32); None or '' -> None. ValueError naming the text otherwise."""
    if not text:
        return None
    try:
        pairs = [tuple(int(v) for v in item.split("-")) for item in text.split(",")]
    except ValueError as error:
        raise ValueError(f"pairs {text!r}: expected 'i-j,k-l' with frame indices") from error
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"pairs {text!r}: every pair must be 'i-j'")
    return np.array(pairs, np.int32)


def check_pairs(pairs: np.ndarray | None, num_frames: int, input_path) -> None:
    """ValueError naming the input when a pair index is outside [0, num_frames)."""
    if pairs is not None and (pairs.min() < 0 or pairs.max() >= num_frames):
        raise ValueError(f"pairs {pairs.tolist()} out of range: {input_path} gives {num_frames} frames "
                         f"(indices 0-{num_frames - 1})")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """input: folder of images or video; out: output folder; pairs (S, 2) flow pairs or None; interval:
    every k-th image / sampled video frame; fps: video frames kept per second (None: all); pixel_limit:
    the resize budget; chunk_size / overlap: frames per forward pass and shared between chunks."""

    input: str
    out: str
    pairs: np.ndarray | None = None
    interval: int = 1
    fps: float | None = None
    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    chunk_size: int = 64
    overlap: int = 8
    export: ExportOptions = ExportOptions()


def check_inputs(source: ModelSource, options: PredictOptions) -> FrameSource:
    """Opens the input (no decoding) and checks the model source, the pairs and the chunking against it.

    Raises FileNotFoundError / ValueError naming the bad input. Returns the opened input.
    """
    from flow3r_jax.inference.predictor import chunk_frames

    frames = open_frames(options.input, options.interval, options.fps)
    source.validate()
    if frames.num_frames is not None:
        check_pairs(options.pairs, frames.num_frames, options.input)
        chunk_frames(frames.num_frames, options.chunk_size, options.overlap)
    return frames


def predict_to_files(source: ModelSource, options: PredictOptions, frames: FrameSource | None = None) -> dict:
    """Checks the inputs (unless `frames`, from `check_inputs`, is given), decodes the frames, predicts
    (chunked) and writes every output; returns the metadata written to prediction.json."""
    from flow3r_jax.inference.predictor import model_predict_fn, predict_sequence

    frames = check_inputs(source, options) if frames is None else frames
    images = load_images(frames, options.pixel_limit)[0]
    check_pairs(options.pairs, len(images), options.input)
    log.info("%s: %d frames at %dx%d", options.input, images.shape[0], images.shape[2], images.shape[1])
    model, _ = source.load()
    outputs = predict_sequence(model_predict_fn(model), images, options.pairs, chunk_size=options.chunk_size,
                               overlap=options.overlap)
    return export_prediction(options.out, images, outputs, options.pairs, options.export)
