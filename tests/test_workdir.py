"""A training work directory records its config: tools rebuild exactly that model from it, and a
relaunch with a different model is refused naming the differing keys."""

import json

import numpy as np
import pytest

from flow3r_jax.inference.checkpoint import load_model_from_workdir
from flow3r_jax.train import loop, run_config
from support import tiny_config, with_values

# A non-default model: the tracking flow head and a smaller trunk than flow3r_tiny.
MODEL_OVERRIDES = {"model.flow_head.type": "tracking", "model.decoder.depth": 2, "model.encoder.depth": 1,
                   "model.heads.depth": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("workdir")
    config = tiny_config(root / "synthetic", **MODEL_OVERRIDES, **{
        "total_steps": 2, "optimizer.warmup_steps": 1, "checkpoint.every_steps": 2, "evals.held_out.every_steps": 0,
        "logging.image_every_steps": 0, "global_batch_size": 8})
    outcome = loop.train_and_evaluate(config, str(root / "run"))
    return config, root / "run", outcome


def test_the_recorded_config_is_the_resolved_config(trained):
    config, workdir, _ = trained
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["model"]["flow_head"]["type"] == "tracking" and recorded["model"]["decoder"]["depth"] == 2
    assert recorded["total_steps"] == 2
    loaded = run_config.read_run_config(workdir)
    assert loaded.data.sources == config.data.sources and isinstance(loaded.data.aspect_range, tuple)
    assert loaded.evals.held_out.every_steps == 0 and loaded.data.cache_dir == config.data.cache_dir
    assert run_config.model_differences(loaded.model, config.model) == {}


def test_model_rebuilt_from_the_workdir_has_the_trained_weights(trained):
    _, workdir, outcome = trained
    model, cfg = load_model_from_workdir(str(workdir))
    assert cfg.flow_head.type == "tracking" and cfg.decoder.depth == 2
    from flax import nnx

    restored = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    kernel = restored["decoder"]["global_blocks"]["mlp"]["fc1"]["kernel"]
    np.testing.assert_array_equal(kernel, np.asarray(outcome.state.params["decoder"]["global_blocks"]["mlp"]["fc1"]
                                                     ["kernel"]))
    assert "tracking" in type(model.flow_head).__name__.lower()


def test_relaunch_with_another_model_is_refused_naming_the_keys(trained):
    config, workdir, _ = trained
    changed = with_values(config)
    changed.model.flow_head.type = "factored"
    changed.model.decoder.depth = 4
    changed.total_steps = 4
    with pytest.raises(ValueError, match=r"model\.decoder\.depth \(recorded 2, now 4\).*model\.flow_head\.type"):
        loop.train_and_evaluate(changed, str(workdir))
    assert json.loads((workdir / "config.json").read_text())["model"]["flow_head"]["type"] == "tracking"


def test_execution_keys_may_change_between_launches(trained):
    config, workdir, _ = trained
    faster = with_values(config)
    faster.model.remat_policy, faster.model.dtype = "full", "bfloat16"
    run_config.check_same_model(str(workdir), faster)
