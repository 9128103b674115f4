"""Training configs: they load, are locked, and command-line overrides are checked."""

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common, flow3r_large, flow3r_tiny
from flow3r_jax import sharding
from flow3r_jax.train import optimizer, setup

TINY = "configs/flow3r_tiny.py"


def _parse(*overrides, path=TINY):
    argv = ["launch", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


@pytest.mark.parametrize("module", [flow3r_tiny, flow3r_large])
def test_configs_are_complete_and_locked(module):
    config = module.get_config()
    assert config.is_locked
    assert set(config.loss.keys()) == set(common.get_base_config().loss.keys())
    sharding.rules_from_config(config.sharding.rules)
    optimizer.parse_param_groups(config.optimizer.param_groups)
    sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, num_devices=64)
    assert config.optimizer.warmup_steps < config.total_steps
    with pytest.raises(AttributeError, match="totl_steps"):
        config.totl_steps = 5


def test_large_recipe_values():
    config = flow3r_large.get_config()
    assert config.optimizer.learning_rate == 5e-5
    assert (config.optimizer.b1, config.optimizer.b2) == (0.9, 0.95)
    assert config.optimizer.weight_decay == 0.05 and config.optimizer.clip_norm == 1.0
    assert config.model.dtype == "bfloat16" and config.model.remat_policy != "none"
    assert config.init.kind == "pi3"
    groups = optimizer.parse_param_groups(config.optimizer.param_groups)
    assert groups[0].frozen and groups[0].pattern.search("encoder/blocks/attn/qkv/kernel")


def test_overrides_apply_with_types_checked():
    config = _parse("--config.total_steps=7", "--config.optimizer.learning_rate=3e-4",
                    "--config.model.dtype=bfloat16", "--config.mesh.fsdp=4")
    assert config.total_steps == 7 and config.optimizer.learning_rate == 3e-4
    assert config.model.dtype == "bfloat16" and config.mesh.fsdp == 4
    assert config.is_locked


def test_sequence_overrides():
    config = _parse("--config.optimizer.param_groups=((\"^encoder/\", 0.0, False, True),)",
                    "--config.data.sources=({\"path\": \"/data/a\", \"labeled\": False, \"weight\": 0.7},)")
    assert optimizer.parse_param_groups(config.optimizer.param_groups)[0].frozen
    assert config.data.sources[0]["path"] == "/data/a" and config.data.sources[0]["labeled"] is False


def test_unknown_key_fails_naming_it():
    with pytest.raises(AttributeError, match='Did you mean "total_steps"'):
        _parse("--config.totl_steps=5")
    with pytest.raises(AttributeError, match="lr"):
        _parse("--config.optimizer.lr=0.1")


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(flags.Error, match="total_steps"):
        _parse("--config.total_steps=abc")
    with pytest.raises(flags.Error, match="async_save"):
        _parse("--config.checkpoint.async_save=maybe")


def test_cross_field_checks_name_the_key():
    config = flow3r_tiny.get_config()
    config.init.kind = "pi3"
    with pytest.raises(ValueError, match="init.checkpoint_path"):
        setup.check_config(config)
    config = flow3r_tiny.get_config()
    config.init.kind = "vggt"
    with pytest.raises(ValueError, match="init.kind"):
        setup.check_config(config)
    config = flow3r_tiny.get_config()
    config.data.images_per_device = 0   # fixed global_batch_size (8), which 3 micro-batches do not split
    config.grad_accum_steps = 3
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        setup.check_config(config)
