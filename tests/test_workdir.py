"""A training work directory records its config: the tools (predict, evaluate, export) rebuild exactly that
model from it alone, and a relaunch with a different model is refused naming the differing keys."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image
from scipy.spatial.transform import Rotation
from support import run_tool, tiny_config, with_values

from flow3r_jax.inference.checkpoint import load_model_from_workdir
from flow3r_jax.inference.predictor import model_predict_fn, predict_sequence
from flow3r_jax.inference.preprocess import load_images
from flow3r_jax.train import loop, run_config

# The tools run with the fixture's tiny frames and XLA attention (the default "auto" is resolved by the model).
TOOL_FLAGS = ("--attention_impl=xla", f"--pixel_limit={28 * 42}")

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


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_predict_tool_runs_the_workdir_model(trained, frames, tmp_path):
    _, workdir, _ = trained
    result = run_tool("predict", f"--workdir={workdir}", f"--input={frames}", f"--out={tmp_path}", "--pairs=0-1,2-0",
                      *TOOL_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "prediction.json").read_text())
    assert meta["num_frames"] == 3 and meta["pairs"] == [[0, 1], [2, 0]]
    for name in ("points.ply", "scene.glb", "cameras.json", "maps/depth_0002.png", "flow/flow_0002_0000.png",
                 "colmap/sparse/0/cameras.bin"):
        assert (tmp_path / name).is_file(), name
    # The same prediction as the recorded model computes here (float32 on CPU, same frames).
    model, _ = load_model_from_workdir(str(workdir), overrides={"dtype": "float32", "attention_impl": "xla"})
    expected = predict_sequence(model_predict_fn(model), load_images(frames, pixel_limit=28 * 42)[0],
                                show_progress=False)
    cameras = json.loads((tmp_path / "cameras.json").read_text())
    np.testing.assert_allclose([f["camera_to_world"] for f in cameras["frames"]], expected["camera_poses"],
                               atol=1e-5)


def _kinetics_clip(root, frames_count=4):
    clip = root / "kinetics700" / "clip0"
    (clip / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = []
    for i in range(frames_count):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(clip / "images" / f"{i:03d}.png")
        quaternion = Rotation.from_euler("y", 3 * i, degrees=True).as_quat()
        lines.append(f"{i} {0.1 * i} 0 {0.02 * i} " + " ".join(f"{q:.9f}" for q in quaternion))
    (clip / "poses.txt").write_text("\n".join(lines) + "\n")
    return root


def test_evaluate_tool_runs_the_workdir_model_in_chunks(trained, tmp_path):
    _, workdir, _ = trained
    data_root = _kinetics_clip(tmp_path / "data")
    out = tmp_path / "eval"
    result = run_tool("evaluate", f"--workdir={workdir}", "--benchmarks=kinetics700", f"--data_root={data_root}",
                      f"--out={out}", "--chunk_size=3", "--overlap=2", *TOOL_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["kinetics700"]["num_sequences"] == 1
    metrics = summary["benchmarks"]["kinetics700"]["metrics"]
    assert summary["settings"]["chunk_size"] == 3 and np.isfinite(metrics["ATE"])
    for name in ("plots/kinetics700__clip0_trajectory.png", "plots/kinetics700_summary.png"):
        assert Image.open(out / name).size[0] > 100, name


def test_export_tool_refuses_a_model_without_pytorch_layout_before_loading(trained, tmp_path):
    # The tracking head has no official PyTorch layout (tests/test_export_tool.py exports a work directory
    # of a model that has one, bit-exact).
    _, workdir, _ = trained
    out = tmp_path / "model.safetensors"
    result = run_tool("export_pytorch", f"--workdir={workdir}", f"--out={out}", timeout=120)
    assert result.returncode == 1 and "model.flow_head.type 'tracking' has no PyTorch key layout" in result.stderr
    assert str(workdir) in result.stderr and not out.exists()
