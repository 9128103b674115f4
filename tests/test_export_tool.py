"""tools/export_pytorch.py: a real Orbax training checkpoint -> official-layout state_dict, bit-exact."""

import grain
import ml_collections
import numpy as np
import optax

from flow3r_jax.models.sizes import get_model_config
from flow3r_jax import sharding
from flow3r_jax.interop.pytorch import load_state_dict, pytorch_weight_loader
from flow3r_jax.models import build_model
from flow3r_jax.train import checkpointing, state as state_lib
from support import load_tool

export_pytorch = load_tool("export_pytorch")


def test_export_from_orbax_training_checkpoint(shared_dir, tmp_path):
    weights = shared_dir / "reference" / "flow3r_tiny" / "weights.safetensors"
    cfg = get_model_config("flow3r_tiny")

    def model_fn(rngs):
        return build_model(cfg, rngs=rngs)

    mesh = sharding.make_mesh(data=2, fsdp=4)
    layout = state_lib.make_layout(model_fn, lambda p: optax.adamw(1e-4), mesh, sharding.DEFAULT_RULES, seed=0)
    state = state_lib.init_state(layout, model_fn, seed=0, load_weights=pytorch_weight_loader(weights, cfg))
    ckpt_cfg = ml_collections.ConfigDict(dict(every_steps=1, keep=1, async_save=True, replica_parallel_save=False))
    manager = checkpointing.make_manager(str(tmp_path / "ckpt"), ckpt_cfg)
    assert checkpointing.save(manager, 1, state, iter(grain.MapDataset.range(8).batch(2)), force=True)
    manager.wait_until_finished()
    manager.close()

    out = tmp_path / "flow3r_tiny.safetensors"
    assert export_pytorch.main(["--checkpoint", str(tmp_path / "ckpt"), "--model", "flow3r_tiny", "--out", str(out)]) == 0
    original, exported = load_state_dict(weights), load_state_dict(out)
    assert set(original) == set(exported)
    for key in original:
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
