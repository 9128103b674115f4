"""Writing a model's weights in the official PyTorch layout (state_dict as .safetensors or .bin)."""

from __future__ import annotations

import pathlib

from flax import nnx

from flow3r_jax.inference.model_source import ModelSource


def check_export(source: ModelSource, out: str | pathlib.Path) -> None:
    """ValueError / FileNotFoundError naming the bad input: the model source, a model without a PyTorch
    layout (e.g. the tracking flow head), or an output that is not .safetensors / .bin."""
    from flow3r_jax.interop.key_map import key_rules

    if pathlib.Path(out).suffix not in (".safetensors", ".bin"):
        raise ValueError(f"{out}: expected a .safetensors or .bin output file")
    source.validate()
    try:
        key_rules(source.model_config())
    except ValueError as error:
        raise ValueError(f"{source.workdir or source.model}: {error}") from error


def export_to_pytorch(source: ModelSource, out: str | pathlib.Path) -> None:
    """Loads `source` and writes its parameters to `out` (.safetensors, or .bin with torch installed) with
    the official key set and shapes (`Flow3r().load_state_dict(..., strict=True)` loads it)."""
    from flow3r_jax.interop.pytorch import export_pytorch_checkpoint

    check_export(source, out)
    model, cfg = source.load()
    export_pytorch_checkpoint(nnx.state(model, nnx.Param), cfg, out)
