"""Predict geometry, cameras and flow for a folder of images or a video, and export viewable files.

Example:
  python tools/predict.py --input my_frames/ --checkpoint flow3r.bin --pairs 0-1,1-2 --out outputs/demo
  python tools/predict.py --input clip.mp4 --random-init --model flow3r_tiny --out outputs/smoke
"""

from __future__ import annotations

import argparse
import pathlib
import sys


import numpy as np


def parse_pairs(text: str | None) -> np.ndarray | None:
    """'0-1,1-2' -> [[0, 1], [1, 2]] (int32); None or '' -> None."""
    if not text:
        return None
    try:
        pairs = [tuple(int(v) for v in item.split("-")) for item in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--pairs {text!r}: expected 'i-j,k-l' with frame indices") from error
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"--pairs {text!r}: every pair must be 'i-j'")
    return np.array(pairs, np.int32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder of images (png/jpg) or a video file")
    parser.add_argument("--checkpoint", help="Orbax checkpoint directory or PyTorch .bin/.pt/.pth/.safetensors")
    parser.add_argument("--model", default="flow3r_large", help="model size from flow3r_jax/models/sizes.py")
    parser.add_argument("--random-init", action="store_true", help="random weights (smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--pairs", type=parse_pairs, default=None, help="flow pairs, e.g. 0-1,1-2")
    parser.add_argument("--out", default="outputs/predict", help="output folder")
    parser.add_argument("--interval", type=int, default=1, help="use every k-th image / video frame")
    parser.add_argument("--pixel-limit", type=int, default=255_000, help="max pixels per frame (pi3 rule)")
    parser.add_argument("--chunk-size", type=int, default=64, help="max frames per forward pass")
    parser.add_argument("--conf-threshold", type=float, default=0.1, help="sigmoid(conf) threshold for points")
    parser.add_argument("--no-glb", action="store_true", help="skip the GLB scene (needs trimesh)")
    args = parser.parse_args(argv)

    from flow3r_jax.inference.checkpoint import load_model
    from flow3r_jax.inference.export import export_prediction, keep_mask
    from flow3r_jax.geometry.camera import intrinsics_from_local_points
    from flow3r_jax.inference.predictor import model_predict_fn, predict_sequence
    from flow3r_jax.inference.preprocess import load_images

    images = load_images(args.input, pixel_limit=args.pixel_limit, interval=args.interval)[0]
    print(f"{args.input}: {images.shape[0]} frames at {images.shape[2]}x{images.shape[1]}")
    model = load_model(args.model, args.checkpoint, random_init=args.random_init, seed=args.seed)
    outputs = predict_sequence(model_predict_fn(model), images, args.pairs, chunk_size=args.chunk_size)
    valid = keep_mask(outputs["conf"][..., 0], outputs["local_points"][..., 2], args.conf_threshold)
    intrinsics = intrinsics_from_local_points(outputs["local_points"], valid)
    metadata = export_prediction(args.out, images, outputs, intrinsics, args.pairs, args.conf_threshold,
                                 write_glb_file=not args.no_glb)
    print(f"wrote {metadata['num_points']} points, {images.shape[0]} cameras and maps to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
