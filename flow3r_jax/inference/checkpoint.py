"""Building a model with its weights from an Orbax training checkpoint or a PyTorch file.

The model is never randomly initialised only to be overwritten: its structure comes from
`nnx.eval_shape`, the checkpoint's tensors are read (memory-mapped for local files) and placed straight
onto the parameters' shardings, and the result is merged into a model (flow3r_jax/train/state.py
`init_weights`, the same path training takes for its initial weights).
"""

from __future__ import annotations

import functools

from flax import nnx
from jax.sharding import Mesh

from flow3r_jax import sharding
from flow3r_jax.files import as_path
from flow3r_jax.models import build_model
from flow3r_jax.models.sizes import get_model_config

PYTORCH_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def build_with_weights(cfg, load=None, *, seed: int = 0, mesh: Mesh | None = None, rules=None) -> nnx.Module:
    """The model of config `cfg` with the weights `load` provides (a WeightLoader), placed on `mesh`.

    mesh / rules default to every device on `fsdp` and the default rules (as the predictor places a
    model). Parameters the loader does not provide, and all of them when `load` is None, are freshly
    initialised from `seed`.
    """
    from flow3r_jax.train import state as state_lib

    mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=1) if mesh is None else mesh
    rules = sharding.DEFAULT_RULES if rules is None else rules

    def model_fn(rngs):
        return build_model(cfg, rngs=rngs)

    graphdef, abstract_params, abstract_buffers = state_lib.abstract_weights(model_fn, seed, mesh, rules)
    params, buffers = state_lib.init_weights(model_fn, seed, abstract_params, abstract_buffers, load)
    return nnx.merge(graphdef, params, buffers)


def checkpoint_loader(checkpoint: str, cfg, step: int | None = None):
    """The weight loader of `checkpoint`: an Orbax checkpoint directory written by training, or a
    PyTorch state_dict file (.bin/.pt/.pth/.safetensors); local paths or URLs (etils.epath)."""
    path = as_path(checkpoint)
    if path.is_dir():
        from flow3r_jax.train.checkpointing import restore_orbax_params

        return functools.partial(restore_orbax_params, str(checkpoint), step=step)
    if path.suffix in PYTORCH_SUFFIXES and path.exists():
        from flow3r_jax.interop.pytorch import pytorch_weight_loader

        return pytorch_weight_loader(checkpoint, cfg)
    raise FileNotFoundError(f"{checkpoint}: expected an Orbax checkpoint directory or a PyTorch file "
                            f"({', '.join(PYTORCH_SUFFIXES)})")


def load_model(model_name: str, checkpoint: str | None, *, random_init: bool = False, seed: int = 0,
               overrides: dict | None = None, mesh: Mesh | None = None, rules=None) -> nnx.Module:
    """Builds `model_name` (flow3r_jax/models/sizes.py) with the weights of `checkpoint` on `mesh`.

    checkpoint: an Orbax checkpoint directory written by training, or a PyTorch state_dict file
    (.bin/.pt/.pth/.safetensors, e.g. the released flow3r.bin). random_init=True skips loading
    (smoke tests); otherwise a checkpoint is required. overrides: model config fields set before
    building (e.g. {"dtype": "bfloat16", "attention_impl": "xla"}). mesh / rules: see `build_with_weights`.
    """
    cfg = get_model_config(model_name)
    cfg.update(overrides or {})
    if random_init:
        return build_with_weights(cfg, seed=seed, mesh=mesh, rules=rules)
    if checkpoint is None:
        raise ValueError("a checkpoint is required (or pass random_init=True for a smoke test)")
    return build_with_weights(cfg, checkpoint_loader(str(checkpoint), cfg), seed=seed, mesh=mesh, rules=rules)


def load_model_from_workdir(workdir: str, *, step: int | None = None, seed: int = 0, overrides: dict | None = None,
                            mesh: Mesh | None = None, rules=None) -> tuple[nnx.Module, object]:
    """Rebuilds exactly the model a training run recorded in `workdir` (config.json) with the weights of
    its latest finalised checkpoint (or `step`). overrides: model config fields set before building (only
    the ones that change how the model computes: dtype, attention_impl). Returns (model, model config)."""
    from flow3r_jax.train.run_config import read_run_config

    cfg = read_run_config(workdir).model
    cfg.update(overrides or {})
    loader = checkpoint_loader(str(as_path(workdir) / "checkpoints"), cfg, step)
    return build_with_weights(cfg, loader, seed=seed, mesh=mesh, rules=rules), cfg
