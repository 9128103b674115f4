"""Building a model and loading its weights from an Orbax training checkpoint or a PyTorch file."""

from __future__ import annotations

import pathlib

from flax import nnx

from configs.model_sizes import get_model_config
from flow3r_jax.models import build_model

PYTORCH_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def restore_orbax_params(directory: pathlib.Path, model: nnx.Module, step: int | None = None) -> int:
    """Loads params and buffers of a training checkpoint (flow3r_jax.train.checkpointing) into `model`.

    Only the "state" item's `params` and `buffers` are read (optimizer state and data iterator are
    skipped). Returns the restored step. Raises FileNotFoundError when no finalised step exists.
    """
    import orbax.checkpoint as ocp

    from flow3r_jax.train.checkpointing import STATE_ITEM

    with ocp.CheckpointManager(directory.resolve(), item_names=(STATE_ITEM,)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no finalised Orbax checkpoint step")
        _, params, buffers = nnx.split(model, nnx.Param, ...)
        target = {"params": nnx.to_pure_dict(params), "buffers": nnx.to_pure_dict(buffers)}
        restored = manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                               restore_args=ocp.checkpoint_utils.construct_restore_args(target))}))
        restored = restored[STATE_ITEM]
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(buffers, restored["buffers"])
    nnx.update(model, params, buffers)
    return step


def load_model(model_name: str, checkpoint: str | None, *, random_init: bool = False, seed: int = 0) -> nnx.Module:
    """Builds `model_name` (configs/model_sizes.py) and loads `checkpoint` into it.

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
    path = pathlib.Path(checkpoint)
    if path.is_dir():
        restore_orbax_params(path, model)
    elif path.is_file() and path.suffix in PYTORCH_SUFFIXES:
        from flow3r_jax.interop.pytorch import import_pytorch_checkpoint

        import_pytorch_checkpoint(path, model, cfg)
    else:
        raise FileNotFoundError(f"{path}: expected an Orbax checkpoint directory or a PyTorch file "
                                f"({', '.join(PYTORCH_SUFFIXES)})")
    return model
