"""Model loading without random initialisation: a file's tensors land on their shardings bit-exactly,
through local (memory-mapped), URL (etils.epath) and converted torch files; pi3 files keep a fresh
flow head; mismatches are listed."""

import os
import pathlib
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest
from etils.epath import gpath as epath_gpath
from etils.epath import testing as epath_testing
from flax import nnx
from jax.sharding import NamedSharding

from flow3r_jax.inference.checkpoint import load_model
from flow3r_jax.interop.pytorch import (
    CheckpointMismatchError,
    export_pytorch_checkpoint,
    load_state_dict,
    save_state_dict,
)
from flow3r_jax.models import build_model
from flow3r_jax.models.sizes import get_model_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An eagerly initialised flow3r_tiny (seed 3) and its official-layout .safetensors file."""
    cfg = get_model_config("flow3r_tiny")
    model = build_model(cfg, rngs=nnx.Rngs(3))
    path = tmp_path_factory.mktemp("weights") / "flow3r_tiny.safetensors"
    export_pytorch_checkpoint(nnx.state(model, nnx.Param), cfg, path)
    return nnx.to_flat_state(nnx.state(model, nnx.Param)), path


def _assert_params_equal(model, expected_flat, skip=()):
    got = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert set(got) == {p for p, _ in expected_flat}
    for path, var in expected_flat:
        if path[0] not in skip:
            np.testing.assert_array_equal(np.asarray(got[path][...]), np.asarray(var[...]), err_msg=str(path))


def test_loaded_parameters_are_bit_exact_and_sharded(reference):
    flat, path = reference
    model = load_model("flow3r_tiny", str(path), seed=0)
    _assert_params_equal(model, flat)
    kernel = model.decoder.frame_blocks.mlp.fc1.kernel[...]
    assert isinstance(kernel.sharding, NamedSharding) and len(kernel.sharding.device_set) == jax.device_count()
    assert "fsdp" in kernel.sharding.spec


def test_pi3_file_keeps_a_fresh_flow_head(reference, tmp_path):
    flat, path = reference
    pi3 = {k: v for k, v in load_state_dict(path).items() if not k.startswith("flow_head.")}
    save_state_dict(pi3, tmp_path / "pi3.safetensors")
    cfg = get_model_config("flow3r_tiny")
    with pytest.raises(CheckpointMismatchError, match="flow_head"):
        load_model("flow3r_tiny", str(tmp_path / "pi3.safetensors"))
    from flow3r_jax.inference.checkpoint import build_with_weights
    from flow3r_jax.interop.pytorch import pytorch_weight_loader

    model = build_with_weights(cfg, pytorch_weight_loader(tmp_path / "pi3.safetensors", cfg,
                                                          missing_ok=("flow_head.",)), seed=5)
    _assert_params_equal(model, flat, skip=("flow_head",))
    # The fresh head is initialised under jit, the reference eagerly: the same random draws, scaled with
    # float32 rounding that may differ by one ulp (rtol 1e-6).
    fresh = nnx.state(build_model(cfg, rngs=nnx.Rngs(5)).flow_head, nnx.Param)
    got = nnx.to_flat_state(nnx.state(model.flow_head, nnx.Param))
    for (p, want), (_, value) in zip(nnx.to_flat_state(fresh), got, strict=True):
        np.testing.assert_allclose(np.asarray(value[...]), np.asarray(want[...]), rtol=1e-6, atol=0, err_msg=str(p))


def test_url_paths_are_read_through_epath(reference, tmp_path):
    flat, path = reference
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "w.safetensors").write_bytes(path.read_bytes())
    opened = []

    def open_in_bucket(open_fn, file, mode):
        opened.append(os.fspath(file))
        return open_fn(os.fspath(file).replace("gs://bucket", str(bucket)), mode)

    def exists_in_bucket(exists_fn, file):
        return exists_fn(os.fspath(file).replace("gs://bucket", str(bucket)))

    # etils' own file-system double: gs:// served from a local folder (with TensorFlow installed, epath
    # would send gs:// to tf.io.gfile, so that backend is switched off here).
    with epath_testing.mock_epath(open=open_in_bucket, exists=exists_in_bucket), \
            mock.patch.object(epath_gpath, "_is_tf_installed", lambda: False):
        model = load_model("flow3r_tiny", "gs://bucket/w.safetensors")
    assert opened == ["gs://bucket/w.safetensors"]
    _assert_params_equal(model, flat)


def test_mismatch_lists_keys_before_reading(reference, tmp_path):
    _, path = reference
    sd = load_state_dict(path)
    del sd["encoder.norm.weight"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["point_head.proj.bias"] = np.zeros(7, np.float32)
    save_state_dict(sd, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        load_model("flow3r_tiny", str(tmp_path / "bad.safetensors"))
    message = str(err.value)
    assert "1 missing: encoder.norm.weight" in message and "1 unexpected: extra.weight" in message
    assert "point_head.proj.bias: file (7,)" in message


def test_convert_tool_turns_a_torch_file_into_safetensors(reference, tmp_path):
    torch = pytest.importorskip("torch")
    flat, path = reference
    torch.save({k: torch.from_numpy(v) for k, v in load_state_dict(path).items()}, tmp_path / "flow3r.bin")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), "--input",
                             str(tmp_path / "flow3r.bin")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    converted = tmp_path / "flow3r.safetensors"
    assert converted.exists() and "wrote" in result.stdout
    _assert_params_equal(load_model("flow3r_tiny", str(converted)), flat)
