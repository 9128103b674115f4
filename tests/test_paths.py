"""Work-directory files through URLs (flow3r_jax/files.py), and shards at URLs refused with the fix.

The URL test writes the run config and benchmark outputs to s3://bucket/... in a child process where
etils.epath serves s3:// through fsspec (EPATH_USE_TF=false) and fsspec's in-memory filesystem stands
in for the object store (registered as the s3 implementation), so nothing leaves the machine; the
project code runs unchanged on real epath URLs.
"""

import json
import os
import subprocess
import sys

import pytest
from support import ROOT, child_env, tiny_config
from test_evaluate_e2e import FRAMES, HEIGHT, WIDTH, write_sintel_clip

from flow3r_jax import files
from flow3r_jax.data import pipeline, shard_reader
from flow3r_jax.data.buckets import train_buckets
from flow3r_jax.data.synthetic import generate_clip
from flow3r_jax.train import run_config

WORKDIR_URL = "s3://bucket/runs/tiny"


def write_through_url(data_root: str) -> None:
    """Child process: writes <WORKDIR_URL>/config.json and benchmark outputs under
    <WORKDIR_URL>/evaluations/benchmarks, reads the config back (directly and through a local copy),
    prints the stored files as JSON."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from flow3r_jax.evaluation.runner import EvalSettings, evaluate_benchmarks, oracle_predict_fn

    fsspec.register_implementation("s3", MemoryFileSystem, clobber=True)
    config = tiny_config("/unused")
    run_config.write_run_config(WORKDIR_URL, config)
    recorded = run_config.read_run_config(WORKDIR_URL)
    evaluate_benchmarks(["sintel"], data_root, oracle_predict_fn, f"{WORKDIR_URL}/evaluations/benchmarks",
                        EvalSettings(pixel_limit=HEIGHT * WIDTH),
                        loader_options={"sintel": {"sequences": ("alley_2",)}})
    # Text files as text; the evaluation plots (PNG) as their first bytes.
    stored = {key: value.getvalue()[:8].hex() if key.endswith(".png") else value.getvalue().decode()
              for key, value in MemoryFileSystem.store.items()}
    with files.local_copy(f"{WORKDIR_URL}/config.json") as local:
        copied = local.read_text()
    print(json.dumps({"stored": stored, "copied": copied, "copy_removed": not local.exists(),
                      "recorded_total_steps": recorded.total_steps,
                      "recorded_model_differences": run_config.model_differences(recorded.model, config.model)}))


def test_run_config_and_evaluation_outputs_are_written_through_a_url(tmp_path):
    write_sintel_clip(tmp_path / "sintel", generate_clip(0, HEIGHT, WIDTH, FRAMES, dynamic=True), "alley_2")
    env = child_env({"EPATH_USE_TF": "false", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])})
    code = f"import test_paths; test_paths.write_through_url({str(tmp_path)!r})"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stored = report["stored"]
    outputs = f"{WORKDIR_URL}/evaluations/benchmarks"
    assert sorted(stored) == sorted([f"{WORKDIR_URL}/config.json", f"{outputs}/sequences/sintel__alley_2.json",
                                     f"{outputs}/summary.json", f"{outputs}/results.md",
                                     f"{outputs}/plots/sintel__alley_2_trajectory.png",
                                     f"{outputs}/plots/sintel_summary.png"])  # no temporaries
    png_signature = b"\x89PNG\r\n\x1a\n".hex()
    assert all(value == png_signature for key, value in stored.items() if key.endswith(".png"))
    assert json.loads(stored[f"{WORKDIR_URL}/config.json"]) == json.loads(
        tiny_config("/unused").to_json_best_effort())
    assert report["copied"] == stored[f"{WORKDIR_URL}/config.json"] and report["copy_removed"]
    assert report["recorded_total_steps"] == 300 and report["recorded_model_differences"] == {}
    assert json.loads(stored[f"{outputs}/summary.json"])["benchmarks"]["sintel"]["num_sequences"] == 1
    assert json.loads(stored[f"{outputs}/sequences/sintel__alley_2.json"])["num_frames"] == FRAMES
    assert "| sintel |" in stored[f"{outputs}/results.md"]


@pytest.mark.parametrize("path", ["gs://bucket/clips", "gs://bucket/clips/*.array_record"])
def test_shards_at_a_url_are_refused_naming_a_mounted_path(path):
    data_cfg = tiny_config("/unused").data
    data_cfg.sources = ({"path": path},)
    with pytest.raises(ValueError, match=r"gs://bucket/clips.*ArrayRecord shards.*mount the bucket.*gcsfuse"):
        pipeline.make_train_iterator(data_cfg, buckets=train_buckets(data_cfg, global_batch_size=8), seed=0,
                                     process_index=0, process_count=1)
    with pytest.raises(ValueError, match="ArrayRecord shards"):
        shard_reader.ShardRecords(["gs://bucket/clips/a.array_record"])


def test_local_paths_and_urls_name_the_same_files(tmp_path):
    assert str(files.as_path("gs://bucket/run") / "config.json") == "gs://bucket/run/config.json"
    assert files.absolute("gs://bucket/run") == files.as_path("gs://bucket/run")
    assert str(files.absolute(os.path.relpath(tmp_path))) == str(tmp_path.resolve())
    with files.local_copy(tmp_path / "a.txt") as local:
        assert local == tmp_path / "a.txt"
    with pytest.raises(ValueError, match="need a local or mounted path"):
        with files.atomic_directory("gs://bucket/cache/split"):
            pass
