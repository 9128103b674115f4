"""Evaluate a model on the paper's benchmarks; writes per-sequence JSON, Markdown tables and plots.

  python tools/evaluate.py --checkpoint flow3r.bin --benchmarks sintel,bonn,7scenes --data_root data/eval \
      --out outputs/eval
  python tools/evaluate.py --workdir workdirs/run --benchmarks all --data_root data/eval --out outputs/eval

Benchmarks: kinetics700, epic_kitchens, sintel, bonn, co3dv2, scannet, nrgbd, 7scenes (or "all").
Each is read from <data_root>/<name>/ in the layout documented in flow3r_jax/evaluation/benchmarks/.
"""

import pathlib
import sys

from absl import app, flags

from flow3r_jax.evaluation.benchmarks import BENCHMARKS
from flow3r_jax.evaluation.runner import EvalSettings, check_benchmarks, evaluate_model
from flow3r_jax.inference import model_source
from flow3r_jax.inference.preprocess import DEFAULT_PIXEL_LIMIT

model_source.define_flags()
_BENCHMARKS = flags.DEFINE_list("benchmarks", None, f"Comma-separated: {','.join(BENCHMARKS)} or 'all'.",
                                required=True)
_DATA_ROOT = flags.DEFINE_string("data_root", "data/eval", "Folder holding one sub-folder per benchmark.")
_OUT = flags.DEFINE_string("out", "outputs/eval", "Output folder.")
_PIXEL_LIMIT = flags.DEFINE_integer("pixel_limit", DEFAULT_PIXEL_LIMIT, "Max pixels per frame (pi3 rule).")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 64, "Max frames per forward pass.")
_OVERLAP = flags.DEFINE_integer("overlap", 8, "Frames shared by consecutive chunks (their Sim(3) alignment).")
_PLOTS = flags.DEFINE_bool("plots", True, "Write trajectory and summary plots under <out>/plots.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    names = list(BENCHMARKS) if _BENCHMARKS.value == ["all"] else _BENCHMARKS.value
    source = model_source.from_flags()
    try:
        check_benchmarks(names, _DATA_ROOT.value)
        source.validate()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"evaluate: {error}")
    settings = EvalSettings(pixel_limit=_PIXEL_LIMIT.value, chunk_size=_CHUNK_SIZE.value, overlap=_OVERLAP.value,
                            plots=_PLOTS.value)
    summary = evaluate_model(source, names, _DATA_ROOT.value, _OUT.value, settings, seed=source.seed)
    print((pathlib.Path(_OUT.value) / "results.md").read_text())
    if not all(s["num_sequences"] for s in summary.values()):
        sys.exit("evaluate: a benchmark had no sequences")


if __name__ == "__main__":
    app.run(main)
