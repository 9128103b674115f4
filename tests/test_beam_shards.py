"""Beam DirectRunner shard job on videos encoded in the test, one of them corrupt; reruns skip finished work.
Also run with the DirectRunner's worker processes (what a distributed runner needs: picklable transforms, no
shared state) and with a RAFT estimator built once per worker."""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from test_video_ingest import write_video

from data_pipelines.beam_pipeline import FAILURES_NAME, SyntheticSpec, build_shards_beam
from data_pipelines.video import VideoClipConfig
from flow3r_jax.data.shard_reader import read_clips
from flow3r_jax.data.shard_writer import file_sha256, manifest_shard_files
from flow3r_jax.data.synthetic import generate_clip

CONFIG = VideoClipConfig(target_fps=10, clip_length=3, clip_stride=3, target_pixels=42 * 56, pairs_per_clip=2)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    paths = []
    for k, (name, codec) in enumerate([("a.mp4", "libx264"), ("b.mov", "mpeg4"), ("c.webm", "libvpx")]):
        path = root / name
        write_video(path, generate_clip(20 + k, 48, 64, 6, dynamic=k == 1).images, fps=10, codec=codec)
        paths.append(str(path))
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(open(paths[0], "rb").read()[:300])
    return paths[:2] + [str(corrupt)] + paths[2:]


def test_beam_job_reports_failure_and_rerun_skips_finished_shards(tmp_path, videos):
    out = tmp_path / "shards"
    manifest = build_shards_beam(videos, out, num_shards=2, video_config=CONFIG, prefix="video")
    # Three good videos of 6 frames at 10 fps -> 2 clips of 3 frames each; the corrupt one fails.
    assert manifest["total_records"] == 6 and manifest["num_shards"] == 2
    assert manifest["num_failures"] == 1 and manifest["failures"][0]["source"].endswith("corrupt.mp4")
    assert "corrupt.mp4" in manifest["failures"][0]["error"]
    failures = [json.loads(line) for line in (out / FAILURES_NAME).read_text().splitlines()]
    assert failures == manifest["failures"]
    sources = sorted(manifest["sources"])
    assert sources == sorted(f"{v}#{k}" for v in videos if "corrupt" not in v for k in range(2))
    clips = [c for p in manifest_shard_files(out) for c in read_clips(p)]
    assert sorted(c.source_id for c in clips) == sources
    assert all(c.height == 42 and c.width == 56 and c.flow_pairs.shape == (2, 2) for c in clips)
    for shard in manifest["shards"]:
        assert file_sha256(out / shard["file"]) == shard["sha256"]

    mtimes = {p.name: os.stat(p).st_mtime_ns for p in out.iterdir()}
    assert build_shards_beam(videos, out, num_shards=2, video_config=CONFIG, prefix="video") == manifest
    assert {p.name: os.stat(p).st_mtime_ns for p in out.iterdir()} == mtimes

    # An interrupted job (manifest and one shard missing) redoes only the missing shard.
    first, second = manifest_shard_files(out)
    (out / "manifest.json").unlink()
    second.unlink()
    rebuilt = build_shards_beam(videos, out, num_shards=2, video_config=CONFIG, prefix="video")
    assert rebuilt["total_records"] == 6 and os.stat(first).st_mtime_ns == mtimes[first.name]
    assert sorted(rebuilt["sources"]) == sources and rebuilt["shards"][0] == manifest["shards"][0]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_beam_job_on_synthetic_seeds(tmp_path):
    spec = SyntheticSpec(height=28, width=42, frames_per_clip=3, pairs_per_clip=2, dynamic=True)
    manifest = build_shards_beam([5, 6, 7], tmp_path, num_shards=2, source="synthetic", synthetic=spec)
    assert manifest["total_records"] == 3 and manifest["num_failures"] == 0
    clips = {c.source_id: c for p in manifest_shard_files(tmp_path) for c in read_clips(p)}
    assert len(clips) == 3 and all(c.is_labeled for c in clips.values())
    # Exact flow stored per 2 x 2 cell by default, as video ingestion stores pseudo-flow.
    assert all(c.flow_stride == 2 and c.flow_coords.shape == (2, 14, 21, 2) for c in clips.values())
    depth = generate_clip(6, 28, 42, 3, dynamic=True).depth
    match = [c for c in clips.values() if "seed=6:" in c.source_id][0]
    np.testing.assert_allclose(match.depth, depth, rtol=2.0 ** -11)


def test_build_shards_tool_passes_unknown_flags_to_beam(tmp_path):
    tool = [sys.executable, "tools/build_shards.py", "--out", str(tmp_path), "--num_shards", "2"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    done = subprocess.run(tool + ["--synthetic", "2", "--height", "28", "--width", "42", "--clip_length", "3",
                                  "--pairs_per_clip", "2", "--direct_num_workers=1"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 clips in 2 shards, 0 failed inputs" in done.stdout
    assert json.loads((tmp_path / "manifest.json").read_text())["total_records"] == 2
    missing = subprocess.run(tool, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "give exactly one of --videos, --video_list, --synthetic" in missing.stderr


def job_counters(caplog, out) -> dict:
    """The counters of the last shard job on `out`, from its log line."""
    lines = [r for r in caplog.records if r.getMessage().startswith(f"{out}: job counters ")]
    return json.loads(lines[-1].getMessage().split("job counters ", 1)[1])


def test_beam_job_in_worker_processes(tmp_path, videos, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "shards"
    processes = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    manifest = build_shards_beam(videos, out, num_shards=4, video_config=CONFIG, pipeline_args=processes)
    assert manifest["total_records"] == 6 and manifest["num_shards"] == 4
    assert [f["source"] for f in manifest["failures"]] == [videos[2]]
    counters = job_counters(caplog, out)
    assert counters["shards_written"] == 4 and counters["inputs_failed"] == 1 and counters["clips_written"] == 6
    # One estimator per worker process, not per shard.
    assert 1 <= counters["estimators_built"] <= 2
    serial = build_shards_beam(videos, tmp_path / "serial", num_shards=4, video_config=CONFIG)
    assert [s["sha256"] for s in serial["shards"]] == [s["sha256"] for s in manifest["shards"]]
    manifest_shard_files(out)[1].unlink()
    (out / "manifest.json").unlink()
    caplog.clear()
    rebuilt = build_shards_beam(videos, out, num_shards=4, video_config=CONFIG, pipeline_args=processes)
    assert rebuilt == manifest and job_counters(caplog, out)["shards_written"] == 1


def test_beam_job_with_raft_estimator(tmp_path, videos, caplog):
    caplog.set_level(logging.INFO)
    raft = {"random_weights": True, "num_flow_updates": 2}
    per_pixel = dataclasses.replace(CONFIG, flow_stride=1)  # a learned matcher's flow, kept per pixel
    manifest = build_shards_beam(videos[:2], tmp_path, num_shards=2, video_config=per_pixel, estimator="raft_small",
                                 estimator_kwargs=raft)
    assert manifest["total_records"] == 4 and manifest["num_failures"] == 0
    assert job_counters(caplog, tmp_path)["estimators_built"] == 1  # one worker: built once for both shards
    clips = [c for p in manifest_shard_files(tmp_path) for c in read_clips(p)]
    assert all(c.flow_stride == 1 and c.flow_coords.shape == (2, 42, 56, 2) and c.flow_mask.shape == (2, 42, 56)
               for c in clips)
