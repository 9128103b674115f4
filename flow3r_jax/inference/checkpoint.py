"""Building a model and loading its weights from an Orbax training checkpoint or a PyTorch file."""

from __future__ import annotations

import pathlib

from flax import nnx

from flow3r_jax.files import as_path
from flow3r_jax.models import build_model
from flow3r_jax.models.sizes import get_model_config

PYTORCH_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def restore_orbax_params(directory: pathlib.Path, model: nnx.Module, step: int | None = None) -> int:
    """Loads params and buffers of a training checkpoint (flow3r_jax.train.checkpointing) into `model`.

    Returns the restored step. Raises FileNotFoundError when no finalised step exists.
    """
    from flow3r_jax.train.checkpointing import restore_params

    _, params, buffers = nnx.split(model, nnx.Param, ...)
    target = {"params": nnx.to_pure_dict(params), "buffers": nnx.to_pure_dict(buffers)}
    restored, step = restore_params(str(directory), target, step)
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(buffers, restored["buffers"])
    nnx.update(model, params, buffers)
    return step


def load_model(model_name: str, checkpoint: str | None, *, random_init: bool = False, seed: int = 0) -> nnx.Module:
    """Builds `model_name` (flow3r_jax/models/sizes.py) and loads `checkpoint` into it.

    checkpoint: an Orbax checkpoint directory written by training, or a PyTorch state_dict file
    (.bin/.pt/.pth/.safetensors, e.g. the released flow3r.bin). random_init=True skips loading
    (smoke tests); otherwise a checkpoint is required.
    """
    cfg = get_model_config(model_name)
    model = build_model(cfg, rngs=nnx.Rngs(seed))
    if random_init:
        return model
    if checkpoint is None:
        raise ValueError("a checkpoint is required (or pass random_init=True for a smoke test)")
    path = as_path(checkpoint)
    if path.is_dir():
        restore_orbax_params(path, model)
    elif path.is_file() and path.suffix in PYTORCH_SUFFIXES:
        from flow3r_jax.interop.pytorch import import_pytorch_checkpoint

        import_pytorch_checkpoint(path, model, cfg)
    else:
        raise FileNotFoundError(f"{path}: expected an Orbax checkpoint directory or a PyTorch file "
                                f"({', '.join(PYTORCH_SUFFIXES)})")
    return model


def load_model_from_workdir(workdir: str, *, step: int | None = None, seed: int = 0) -> tuple[nnx.Module, object]:
    """Rebuilds exactly the model a training run recorded in `workdir` (config.json) with the weights of
    its latest finalised checkpoint (or `step`). Returns (model, model config)."""
    from flow3r_jax.train.run_config import read_run_config

    cfg = read_run_config(workdir).model
    model = build_model(cfg, rngs=nnx.Rngs(seed))
    restore_orbax_params(as_path(workdir) / "checkpoints", model, step)
    return model, cfg
