"""PyTorch checkpoint interchange: exact round trip, manifest equality, clear mismatch errors."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from flow3r_jax.interop.pytorch import (
    CheckpointMismatchError,
    export_pytorch_checkpoint,
    import_pytorch_checkpoint,
    load_state_dict,
    params_to_state_dict,
    save_state_dict,
)
from flow3r_jax.models import build_model
from flow3r_jax.models.sizes import get_model_config


def _abstract_params(name):
    cfg = get_model_config(name)
    model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
    return cfg, nnx.state(model, nnx.Param)


@pytest.mark.parametrize("name,manifest", [("flow3r_large", "flow3r_large_keys.json"),
                                           ("pi3_large", "pi3_large_keys.json")])
def test_large_manifest_and_parameter_count(shared_dir, name, manifest):
    ref = json.loads((shared_dir / "reference" / manifest).read_text())
    cfg, params = _abstract_params(name)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == ref["total_parameters"]
    exported = jax.eval_shape(lambda p: params_to_state_dict(p, cfg), params)
    ours = {k: tuple(v.shape) for k, v in exported.items()}
    theirs = {e["key"]: tuple(e["shape"]) for e in ref["entries"]}
    assert ours == theirs


def test_round_trip_is_bit_exact(shared_dir, tmp_path):
    src = shared_dir / "reference" / "flow3r_tiny" / "weights.safetensors"
    cfg = get_model_config("flow3r_tiny")
    model = build_model(cfg, rngs=nnx.Rngs(1))
    import_pytorch_checkpoint(src, model, cfg)
    out = tmp_path / "exported.safetensors"
    export_pytorch_checkpoint(nnx.state(model, nnx.Param), cfg, out)
    original, exported = load_state_dict(src), load_state_dict(out)
    assert set(original) == set(exported)
    for key in original:
        assert original[key].shape == exported[key].shape, key
        np.testing.assert_array_equal(original[key], exported[key], err_msg=key)


def test_torch_bin_round_trip_loads_strictly(shared_dir, tmp_path):
    torch = pytest.importorskip("torch")
    src = load_state_dict(shared_dir / "reference" / "flow3r_tiny" / "weights.safetensors")
    save_state_dict(src, tmp_path / "w.bin")
    raw = torch.load(str(tmp_path / "w.bin"), weights_only=True)
    assert set(raw) == set(src)
    cfg = get_model_config("flow3r_tiny")
    model = build_model(cfg, rngs=nnx.Rngs(2))
    import_pytorch_checkpoint(tmp_path / "w.bin", model, cfg)
    sd = params_to_state_dict(nnx.state(model, nnx.Param), cfg)
    for key in src:
        np.testing.assert_array_equal(np.asarray(sd[key]), src[key], err_msg=key)


def test_mismatch_lists_missing_unexpected_and_misshapen(shared_dir, tmp_path):
    sd = load_state_dict(shared_dir / "reference" / "flow3r_tiny" / "weights.safetensors")
    del sd["encoder.norm.weight"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["point_head.proj.bias"] = np.zeros(7, np.float32)
    bad = tmp_path / "bad.safetensors"
    save_state_dict(sd, bad)
    cfg = get_model_config("flow3r_tiny")
    model = build_model(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(CheckpointMismatchError) as err:
        import_pytorch_checkpoint(bad, model, cfg)
    msg = str(err.value)
    assert str(bad) in msg and "encoder.norm.weight" in msg and "extra.weight" in msg and "point_head.proj.bias" in msg


def test_pi3_checkpoint_into_flow3r_keeps_fresh_flow_head(shared_dir, tmp_path):
    sd = load_state_dict(shared_dir / "reference" / "flow3r_tiny" / "weights.safetensors")
    pi3 = {k: v for k, v in sd.items() if not k.startswith("flow_head.")}
    save_state_dict(pi3, tmp_path / "pi3.safetensors")
    cfg = get_model_config("flow3r_tiny")
    model = build_model(cfg, rngs=nnx.Rngs(3))
    fresh = np.asarray(model.flow_head.mlp[0].kernel[...]).copy()
    with pytest.raises(CheckpointMismatchError, match="flow_head"):
        import_pytorch_checkpoint(tmp_path / "pi3.safetensors", model, cfg)
    import_pytorch_checkpoint(tmp_path / "pi3.safetensors", model, cfg, missing_ok=("flow_head.",))
    np.testing.assert_array_equal(np.asarray(model.flow_head.mlp[0].kernel[...]), fresh)
    np.testing.assert_array_equal(np.asarray(model.encoder.norm.scale[...]), sd["encoder.norm.weight"])
