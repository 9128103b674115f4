"""tools/export_pytorch.py: a training work directory (recorded config + Orbax checkpoint) and a checkpoint
directory -> official-layout state_dict, bit-exact."""

import grain
import ml_collections
import numpy as np
import optax
import pytest
from support import run_tool, tiny_config

from flow3r_jax import sharding
from flow3r_jax.interop.pytorch import load_state_dict, pytorch_weight_loader
from flow3r_jax.models import build_model
from flow3r_jax.models.sizes import get_model_config
from flow3r_jax.train import checkpointing, run_config
from flow3r_jax.train import state as state_lib


@pytest.fixture(scope="module")
def workdir(shared_dir, tmp_path_factory):
    """A work directory of flow3r_tiny: its config.json and one Orbax checkpoint of the reference weights."""
    weights = shared_dir / "reference" / "flow3r_tiny" / "weights.safetensors"
    root = tmp_path_factory.mktemp("run")
    cfg = get_model_config("flow3r_tiny")

    def model_fn(rngs):
        return build_model(cfg, rngs=rngs)

    mesh = sharding.make_mesh(data=2, fsdp=4)
    layout = state_lib.make_layout(model_fn, lambda p: optax.adamw(1e-4), mesh, sharding.DEFAULT_RULES, seed=0)
    state = state_lib.init_state(layout, model_fn, seed=0, load_weights=pytorch_weight_loader(weights, cfg))
    ckpt_cfg = ml_collections.ConfigDict(dict(every_steps=1, keep=1, async_save=True, replica_parallel_save=False))
    manager = checkpointing.make_manager(str(root / "checkpoints"), ckpt_cfg)
    assert checkpointing.save(manager, 1, state, iter(grain.MapDataset.range(8).batch(2)), force=True)
    manager.wait_until_finished()
    manager.close()
    config = tiny_config(root / "data")
    config.model = cfg
    run_config.write_run_config(root, config)
    return root, weights


@pytest.mark.parametrize("source", ["workdir", "checkpoint"])
def test_export_is_bit_exact(workdir, source, tmp_path):
    root, weights = workdir
    out = tmp_path / "flow3r_tiny.safetensors"
    flags = [f"--workdir={root}"] if source == "workdir" else [f"--checkpoint={root / 'checkpoints'}",
                                                                "--model=flow3r_tiny"]
    result = run_tool("export_pytorch", *flags, f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    original, exported = load_state_dict(weights), load_state_dict(out)
    assert set(original) == set(exported)
    for key in original:
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)


def test_export_names_a_bad_output_before_loading(workdir, tmp_path):
    root, _ = workdir
    result = run_tool("export_pytorch", f"--workdir={root}", f"--out={tmp_path / 'model.pt'}", timeout=120)
    assert result.returncode == 1 and "model.pt: expected a .safetensors or .bin output file" in result.stderr
