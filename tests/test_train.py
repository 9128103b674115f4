"""End-to-end training of the tiny config on 8 simulated CPU devices (data=2 x fsdp=4 mesh).

- in process: a few steps on one fixed batch with the encoder frozen: losses finite and falling,
  frozen parameters bit-identical, the others updated;
- as real `tools/launch.py` processes: one uninterrupted run, and one killed with SIGKILL after its
  first checkpoint and then relaunched; the relaunched run logs exactly the uninterrupted losses.
  Its final checkpoint is then restored onto a different mesh (fsdp=8).
The subprocesses share a persistent XLA compilation cache, and the reference run starts while the
in-process test compiles, so the killed run and its relaunch mostly load compiled programs.
"""

import pathlib
import signal
import time

import jax
import numpy as np
import pytest
from support import logged_scalars, start_launcher, tiny_config

from flow3r_jax import sharding
from flow3r_jax.data import pipeline
from flow3r_jax.data.synthetic_dataset import ensure_synthetic_dataset
from flow3r_jax.evaluation import held_out
from flow3r_jax.train import checkpointing, console, setup, summaries

ROOT = pathlib.Path(__file__).resolve().parents[1]
FROZEN_ENCODER = (("^encoder/", 0.0, False, True),)
TOTAL_STEPS = 20  # long enough that the killed run is still going when checkpoint 3 lands
CHECKPOINT_EVERY = 3
STRAIGHT_RUN_ARGS = (f"--config.evals.held_out.every_steps={TOTAL_STEPS}", "--config.evals.held_out.num_batches=1",
                     f"--config.logging.image_every_steps={TOTAL_STEPS}")
# support.FIXED_SHAPE as flags: one training shape (tests/test_buckets.py resumes across buckets).
FIXED_SHAPE_ARGS = ("--config.data.frame_counts=()", "--config.data.resolutions=()",
                    "--config.data.images_per_device=0")
KILLED_RUN_ARGS = ("--config.evals.held_out.every_steps=0", "--config.logging.image_every_steps=0")


def _launch(cache_root, workdir, *extra):
    env = {"JAX_DEFAULT_MATMUL_PRECISION": "highest", "JAX_COMPILATION_CACHE_DIR": str(cache_root / "xla_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    args = ["--config", str(ROOT / "configs" / "flow3r_tiny.py"), f"--config.data.cache_dir={cache_root / 'synthetic'}",
            "--config.mesh.data=2", "--config.mesh.fsdp=4", f"--config.total_steps={TOTAL_STEPS}",
            f"--config.checkpoint.every_steps={CHECKPOINT_EVERY}", "--config.logging.every_steps=1",
            "--config.optimizer.warmup_steps=2", *FIXED_SHAPE_ARGS, *extra]
    return start_launcher(workdir, args, workdir.parent / f"{workdir.name}.log", env)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Synthetic data and the XLA compilation cache, shared by every run of this module."""
    root = tmp_path_factory.mktemp("train_cache")
    ensure_synthetic_dataset(_config(root).data)
    return root


@pytest.fixture(scope="module")
def straight_run(cache_dir, tmp_path_factory):
    """The uninterrupted reference run (with evaluation and image summaries at the last step),
    started in the background as soon as a test asks for it, so that it compiles while the
    in-process test does; the runs started later then hit its compilation cache."""
    workdir = tmp_path_factory.mktemp("runs") / "straight"
    process = _launch(cache_dir, workdir, *STRAIGHT_RUN_ARGS)
    yield workdir, process
    if process.poll() is None:
        process.kill()
        process.wait()


def _config(cache_root, **overrides):
    return tiny_config(cache_root / "synthetic", **{"mesh.data": 2, "mesh.fsdp": 4, "optimizer.warmup_steps": 2,
                                                      **overrides})


def test_fixed_batch_losses_fall_and_frozen_encoder_stays_bit_identical(cache_dir, straight_run):
    del straight_run  # only started here, to overlap its compilation with this test's
    config = _config(cache_dir, **{"optimizer.param_groups": FROZEN_ENCODER, "optimizer.warmup_steps": 0,
                                    "total_steps": 50})
    program = setup.build_program(config)
    state = program.init_state()
    initial = jax.device_get(state.params)
    local = next(pipeline.make_train_iterator(config.data, buckets=list(program.buckets), seed=0, process_index=0,
                                              process_count=1))
    losses = []
    with sharding.use_rules(program.mesh, program.rules):
        batch = program.global_batch(local)
        for _ in range(6):
            state, metrics = program.train_step(state, batch)
            losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.9 * losses[0], losses
    final = jax.device_get(state.params)
    for a, b in zip(jax.tree.leaves(initial["encoder"]), jax.tree.leaves(final["encoder"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(initial["decoder"]["global_blocks"]["mlp"]["fc1"]["kernel"],
                              final["decoder"]["global_blocks"]["mlp"]["fc1"]["kernel"])


def test_killed_run_resumes_with_identical_losses_and_restores_on_another_mesh(cache_dir, straight_run, tmp_path):
    straight_dir, straight = straight_run
    killed_dir = tmp_path / "killed"
    killed = _launch(cache_dir, killed_dir, *KILLED_RUN_ARGS)
    first_checkpoint = killed_dir / "checkpoints" / str(CHECKPOINT_EVERY)
    while killed.poll() is None and not first_checkpoint.exists():
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, (killed_dir.parent / "killed.log").read_text()[-3000:]
    assert not (killed_dir / "checkpoints" / str(TOTAL_STEPS)).exists()
    resumed = _launch(cache_dir, killed_dir, *KILLED_RUN_ARGS)
    assert resumed.wait(timeout=600) == 0, (killed_dir.parent / "killed.log").read_text()[-3000:]
    assert straight.wait(timeout=600) == 0, (straight_dir.parent / "straight.log").read_text()[-3000:]

    expected, got = logged_scalars(straight_dir, "loss"), logged_scalars(killed_dir, "loss")
    assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert np.isfinite(expected[step])
        np.testing.assert_array_equal(got[step], expected[step], err_msg=f"step {step}")
    assert set(logged_scalars(straight_dir, "eval/held_out/flow_epe_px")) == {TOTAL_STEPS}
    assert set(logged_scalars(straight_dir, "flow")) == {TOTAL_STEPS}  # prediction-vs-target image summary

    restored = {}
    for data, fsdp in ((2, 4), (1, 8)):
        config = _config(cache_dir, **{"mesh.data": data, "mesh.fsdp": fsdp, "total_steps": TOTAL_STEPS})
        program = setup.build_program(config)
        manager = checkpointing.make_manager(str(killed_dir / "checkpoints"), config.checkpoint)
        restored[fsdp] = checkpointing.restore(manager, program.layout.abstract)
        manager.close()
    assert int(restored[8].step) == TOTAL_STEPS
    kernel = restored[8].params["decoder"]["global_blocks"]["mlp"]["fc1"]["kernel"]
    assert "fsdp" in str(kernel.sharding.spec) and kernel.sharding.mesh.shape["fsdp"] == 8
    for a, b in zip(jax.tree.leaves(restored[4]), jax.tree.leaves(restored[8]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_metrics_are_zero_for_a_perfect_prediction(cache_dir):
    config = _config(cache_dir)
    batch = pipeline.make_eval_dataset(config.data, batch_size=4)[0]
    labeled = int(np.flatnonzero(batch["is_labeled"])[0])
    depth = np.where(batch["valid_mask"], batch["depth"], 1.0)
    outputs = {"flow": batch["flow_coords"], "camera_poses": batch["camera_poses"],
               "local_points": np.concatenate([np.zeros(depth.shape + (2,)), 2.0 * depth[..., None]], -1)}
    result = held_out.sample_metrics(batch, outputs, labeled)
    assert result["flow_epe_px"] == 0.0 and result["flow_px3"] == 1.0
    np.testing.assert_allclose(result["depth_abs_rel"], 0.0, atol=1e-6)  # scale 2 removed by alignment
    np.testing.assert_allclose(result["rotation_error_deg"], 0.0, atol=1e-3)
    assert result["RRA@30"] == 100.0

    outputs["flow"] = batch["flow_coords"] + np.array([2.0 / (batch["images"].shape[3] - 1), 0.0], np.float32)
    assert abs(held_out.sample_metrics(batch, outputs, labeled)["flow_epe_px"] - 1.0) < 1e-4  # 1 px shift


def test_scalar_window_means_skips_and_images(cache_dir):
    window = summaries.ScalarWindow(peak_flops=1e12)
    for loss, skipped, frames in ((1.0, 0, 16), (3.0, 1, 48)):   # steps of different shape buckets
        window.add({"loss": np.float32(loss), "skipped": np.int32(skipped)}, frames=frames, flops_per_step=1e9)
    summary = window.summary()
    assert summary["loss"] == 2.0 and summary["skipped_steps"] == 1 and summary["skipped_steps_total"] == 1
    assert summary["perf/frames_per_second"] > 0 and summary["perf/step_time_s"] > 0
    elapsed = 2 * summary["perf/step_time_s"]
    np.testing.assert_allclose(summary["perf/frames_per_second"] * elapsed, 16 + 48, rtol=1e-9)
    assert summary["perf/tflops"] == pytest.approx(2e9 / elapsed / 1e12)
    assert summary["perf/mfu"] == pytest.approx(2e9 / elapsed / 1e12)
    assert "MFU" in console.progress_line(2, 10, summary)

    batch = pipeline.make_eval_dataset(_config(cache_dir).data, batch_size=2)[0]
    h, w = batch["images"].shape[2:4]
    local_points = np.concatenate([np.zeros(batch["depth"].shape + (2,)), batch["depth"][..., None] + 1], -1)
    outputs = {"local_points": local_points, "flow": batch["flow_coords"]}
    images = summaries.prediction_images(batch, outputs)
    assert images["depth"].shape == images["flow"].shape == (1, h, 3 * w, 3)
    assert images["flow"].dtype == np.uint8
    # Perfect flow: target and prediction panels agree on co-visible pixels.
    visible = batch["flow_mask"][0, 0] > 0.5
    np.testing.assert_array_equal(images["flow"][0, :, w:2 * w][visible], images["flow"][0, :, 2 * w:][visible])
