"""Which model an inference tool runs: a training work directory, or a named size plus weights.

A `ModelSource` is checked (`validate`) before anything heavy runs, so a missing file or an unknown
size stops a tool at once with a message naming it; `load` then builds the model. predict, evaluate
and export share the same command-line flags (`define_flags`, `from_flags`).
"""

from __future__ import annotations

import dataclasses
import pathlib

from etils import epath

from flow3r_jax.inference.checkpoint import PYTORCH_SUFFIXES, load_model, load_model_from_workdir
from flow3r_jax.models.sizes import SIZES, get_model_config


def default_dtype() -> str:
    """The trunk's compute dtype when none is asked for: float32 on CPU, bfloat16 on accelerators."""
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """workdir: a training work directory (model from its config.json, weights from its latest checkpoint),
    or model (a size in flow3r_jax/models/sizes.py) with checkpoint (an Orbax checkpoint directory or a
    PyTorch file) or random_init. dtype / attention_impl set those model config fields before building
    (dtype None: `default_dtype()`)."""

    workdir: str | None = None
    checkpoint: str | None = None
    model: str = "flow3r_large"
    random_init: bool = False
    seed: int = 0
    dtype: str | None = None
    attention_impl: str = "auto"

    def validate(self) -> None:
        """Raises ValueError / FileNotFoundError naming the input when the source cannot be loaded."""
        if self.workdir:
            if self.checkpoint or self.random_init:
                raise ValueError("pass either a work directory or a checkpoint / random_init, not both")
            from flow3r_jax.train.run_config import config_path

            if not config_path(self.workdir).exists():
                raise FileNotFoundError(f"{config_path(self.workdir)}: no recorded config; is {self.workdir} a "
                                        "training work directory?")
            checkpoints = epath.Path(self.workdir) / "checkpoints"
            if not checkpoints.is_dir() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
                raise FileNotFoundError(f"{checkpoints}: no checkpoint steps in the work directory {self.workdir}")
            return
        if self.model not in SIZES:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(sorted(SIZES))}")
        if self.random_init:
            return
        if not self.checkpoint:
            raise ValueError("no weights: pass a work directory, a checkpoint, or random_init for a smoke test")
        path = pathlib.Path(self.checkpoint)
        if not (path.is_dir() or (path.is_file() and path.suffix in PYTORCH_SUFFIXES)):
            what = "no such file or directory" if not path.exists() else "not a checkpoint"
            raise FileNotFoundError(f"checkpoint {path}: {what}; expected an Orbax checkpoint directory or a "
                                    f"PyTorch file ({', '.join(PYTORCH_SUFFIXES)})")

    def overrides(self) -> dict:
        return {"dtype": self.dtype or default_dtype(), "attention_impl": self.attention_impl}

    def model_config(self):
        """The model config the source builds (recorded or named, with the overrides); reads no weights."""
        if self.workdir:
            from flow3r_jax.train.run_config import read_run_config

            cfg = read_run_config(self.workdir).model
        else:
            cfg = get_model_config(self.model)
        cfg.update(self.overrides())
        return cfg

    def load(self):
        """Validates, builds and loads the model -> (nnx model, its model config)."""
        self.validate()
        if self.workdir:
            return load_model_from_workdir(self.workdir, seed=self.seed, overrides=self.overrides())
        model = load_model(self.model, self.checkpoint, random_init=self.random_init, seed=self.seed,
                           overrides=self.overrides())
        return model, self.model_config()


def define_flags() -> None:
    """Defines the model-source flags of the inference tools (once per process, in the tool's module)."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training work directory: rebuilds the recorded model with the weights "
                        "of its latest checkpoint (instead of --checkpoint and --model).")
    flags.DEFINE_string("checkpoint", None, "Orbax checkpoint directory or PyTorch .bin/.pt/.pth/.safetensors.")
    flags.DEFINE_string("model", "flow3r_large", f"Model size of --checkpoint: {', '.join(sorted(SIZES))}.")
    flags.DEFINE_bool("random_init", False, "Random weights (smoke test).")
    flags.DEFINE_integer("seed", 0, "Seed of the random initialisation.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Trunk compute dtype (default: bfloat16 on "
                      "accelerators, float32 on CPU).")
    flags.DEFINE_string("attention_impl", "auto", "Attention kernel, passed to the model config's attention_impl.")


def from_flags() -> ModelSource:
    """The ModelSource the parsed `define_flags` flags describe."""
    from absl import flags

    values = flags.FLAGS
    return ModelSource(workdir=values.workdir, checkpoint=values.checkpoint, model=values.model,
                       random_init=values.random_init, seed=values.seed, dtype=values.dtype,
                       attention_impl=values.attention_impl)
