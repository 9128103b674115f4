"""Evaluate a checkpoint on the paper's benchmarks; writes per-sequence JSON and Markdown tables.

Example:
  python tools/evaluate.py --checkpoint flow3r.bin --benchmarks sintel,bonn,7scenes --data-root data/eval \
      --out outputs/eval

Benchmarks: kinetics700, epic_kitchens, sintel, bonn, co3dv2, scannet, nrgbd, 7scenes (or "all").
Each is read from <data-root>/<name>/ in the layout documented in flow3r_jax/evaluation/benchmarks/.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys



def main(argv=None) -> int:
    from flow3r_jax.evaluation.benchmarks import BENCHMARKS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="Orbax checkpoint directory or PyTorch .bin/.pt/.pth/.safetensors")
    parser.add_argument("--benchmarks", required=True, help=f"comma-separated: {','.join(BENCHMARKS)} or 'all'")
    parser.add_argument("--data-root", default="data/eval", help="folder holding one sub-folder per benchmark")
    parser.add_argument("--model", default="flow3r_large", help="model size from flow3r_jax/models/sizes.py")
    parser.add_argument("--random-init", action="store_true", help="random weights (smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of model init and of frame sampling (Co3Dv2)")
    parser.add_argument("--pixel-limit", type=int, default=255_000, help="max pixels per frame (pi3 rule)")
    parser.add_argument("--out", default="outputs/eval", help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    names = list(BENCHMARKS) if args.benchmarks == "all" else [b for b in args.benchmarks.split(",") if b]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}")

    from flow3r_jax.evaluation.runner import EvalSettings, evaluate_benchmarks
    from flow3r_jax.inference.checkpoint import load_model
    from flow3r_jax.inference.predictor import model_predict_fn

    model = load_model(args.model, args.checkpoint, random_init=args.random_init, seed=args.seed)
    predict_fn = model_predict_fn(model)
    summary = evaluate_benchmarks(names, args.data_root, lambda seq: predict_fn, args.out,
                                  EvalSettings(pixel_limit=args.pixel_limit),
                                  loader_options={"co3dv2": {"seed": args.seed}})
    print((pathlib.Path(args.out) / "results.md").read_text())
    return 0 if all(s["num_sequences"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
