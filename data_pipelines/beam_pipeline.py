"""Apache Beam job: video files (or synthetic clip seeds) -> N ArrayRecord clip shards + manifest.

One Beam element per shard to build: input k goes to shard k mod N (flow3r_jax/data/shard_writer.py), the
shards are spread over workers by a Reshuffle, and each worker streams its inputs into one shard file
(temp name, then rename) and its entry file. Any runner works (DirectRunner by default; pass Beam
pipeline options, e.g. ["--runner=DataflowRunner", ...]); `out_dir` must be a filesystem path the
workers share.

Failures: an input that raises while being turned into records (undecodable or too-short video, a
pseudo-flow error, ...) contributes no records; it is listed with the reason in its shard entry, in
manifest.json ("failures", "num_failures") and in failures.jsonl, and the job goes on. Reruns: shards
whose entry matches the file checksum and the build settings are skipped, so finished work is never
duplicated; manifest.json is written by the driver once every shard is finished.
Workers: the DoFn holds only picklable settings; each worker builds its record maker (with the flow
estimator, e.g. a RAFT model on the worker's GPU) once in DoFn.setup and reuses it for every shard it
writes. Progress: Beam counters in namespace "flow3r_shards" (inputs_ok, inputs_failed, clips_written,
shards_written, estimators_built: one per worker set up for video inputs), one log line per finished
shard and one line with the job's counters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipelines.video import VideoClipConfig
from flow3r_jax.data.shard_writer import complete_manifest, finished_shard, input_seed, write_manifest, write_shard
from flow3r_jax.files import atomic_write

FAILURES_NAME = "failures.jsonl"
_NAMESPACE = "flow3r_shards"


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Settings of synthetic inputs; each input is a clip seed (int). Their exact flow is stored per
    `flow_stride` cell with the bound `flow_cell_error_px` as video ingestion stores pseudo-flow (1: per
    pixel; flow3r_jax/data/flow_grid.py)."""

    height: int = 112
    width: int = 154
    frames_per_clip: int = 8
    pairs_per_clip: int = 8
    dynamic: bool = False
    image_format: str = "jpeg"
    flow_stride: int = VideoClipConfig.flow_stride
    flow_cell_error_px: float = VideoClipConfig.flow_cell_error_px


def build_shards_beam(inputs: list, out_dir, num_shards: int, *, source: str = "video",
                      video_config: VideoClipConfig | None = None, estimator: str = "dis",
                      estimator_kwargs: dict | None = None, synthetic: SyntheticSpec | None = None,
                      seed: int = 0, prefix: str = "clips", pipeline_args: list[str] | None = None) -> dict:
    """Run the shard job over `inputs` (video paths for source="video", int seeds for "synthetic");
    returns the manifest. Does nothing when `out_dir` already holds a complete manifest of this build.
    `video_config` / `synthetic` default to VideoClipConfig() / SyntheticSpec(); the estimator is built
    from (`estimator`, `estimator_kwargs`) once per worker (data_pipelines/pseudo_flow.py)."""
    video_config = VideoClipConfig() if video_config is None else video_config
    synthetic = SyntheticSpec() if synthetic is None else synthetic
    if source not in ("video", "synthetic"):
        raise ValueError(f"source must be 'video' or 'synthetic', got {source!r}")
    if not 0 < num_shards <= len(inputs):
        raise ValueError(f"num_shards must be in [1, {len(inputs)}] (number of inputs), got {num_shards}")
    inputs = [str(x) if source == "video" else int(x) for x in inputs]
    build = {"source": source, "seed": seed, "estimator": estimator, "estimator_kwargs": estimator_kwargs or {},
             "settings": dataclasses.asdict(video_config if source == "video" else synthetic),
             "num_inputs": len(inputs), "inputs_sha256": hashlib.sha256(json.dumps(inputs).encode()).hexdigest()}
    manifest = complete_manifest(out_dir, build)
    if manifest is not None:
        logging.info("%s: complete manifest found, nothing to do", out_dir)
        return manifest
    pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
    todo = [s for s in range(num_shards) if finished_shard(out_dir, prefix, s, num_shards, build) is None]
    logging.info("%s: %d of %d shards to build", out_dir, len(todo), num_shards)
    if todo:
        jobs = [(s, [(k, inputs[k]) for k in range(s, len(inputs), num_shards)]) for s in todo]
        pipeline = beam.Pipeline(options=PipelineOptions(pipeline_args or []))
        _ = (pipeline | "Shards" >> beam.Create(jobs) | "Spread" >> beam.Reshuffle()
             | "Write" >> beam.ParDo(_WriteShardFn(str(out_dir), prefix, num_shards, build)))
        result = pipeline.run()
        result.wait_until_finish()
        counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                    if c.key.metric.namespace == _NAMESPACE}
        logging.info("%s: job counters %s", out_dir, json.dumps(counters, sort_keys=True))
    entries = [finished_shard(out_dir, prefix, s, num_shards, build) for s in range(num_shards)]
    missing = [s for s, e in enumerate(entries) if e is None]
    if missing:
        raise RuntimeError(f"{out_dir}: shards {missing} were not written; rerun to finish them")
    failures = [json.dumps(f) for e in entries for f in e["failures"]]
    atomic_write(pathlib.Path(out_dir) / FAILURES_NAME, "".join(line + "\n" for line in failures))
    return write_manifest(out_dir, prefix, entries, build)


class _WriteShardFn(beam.DoFn):
    """(shard index, [(input index, input)]) -> one finished shard file + entry (see module doc)."""

    def __init__(self, out_dir: str, prefix: str, num_shards: int, build: dict):
        self._out_dir, self._prefix, self._num_shards, self._build = out_dir, prefix, num_shards, build
        self._inputs_ok = beam.metrics.Metrics.counter(_NAMESPACE, "inputs_ok")
        self._inputs_failed = beam.metrics.Metrics.counter(_NAMESPACE, "inputs_failed")
        self._clips_written = beam.metrics.Metrics.counter(_NAMESPACE, "clips_written")
        self._shards_written = beam.metrics.Metrics.counter(_NAMESPACE, "shards_written")
        self._estimators_built = beam.metrics.Metrics.counter(_NAMESPACE, "estimators_built")

    def setup(self):
        self._records_of = _record_maker(self._build)
        self._report_setup = self._build["source"] == "video"

    def process(self, job):
        if self._report_setup:  # counters only count inside a bundle, so setup is reported here
            self._estimators_built.inc()
            self._report_setup = False
        shard, items = job
        failures = []

        def records():
            for index, item in items:
                try:
                    produced = list(self._records_of(index, item))
                except Exception as err:  # one bad input must not stop the job; it is reported instead
                    logging.warning("shard %d: input %s failed: %s", shard, item, err)
                    failures.append({"source": str(item), "error": f"{type(err).__name__}: {err}"})
                    self._inputs_failed.inc()
                    continue
                self._inputs_ok.inc()
                self._clips_written.inc(len(produced))
                yield from produced

        entry = write_shard(self._out_dir, self._prefix, shard, self._num_shards, records(), self._build, failures)
        self._shards_written.inc()
        logging.info("shard %d/%d written: %d clips, %d failed inputs", shard + 1, self._num_shards,
                     entry["num_records"], len(failures))
        yield entry["file"]


def _record_maker(build: dict):
    """build -> function (input index, input) -> list of (source_id, record bytes)."""
    from data_pipelines.pseudo_flow import make_estimator
    from data_pipelines.video import video_records
    from flow3r_jax.data.records import encode_clip
    from flow3r_jax.data.synthetic import synthetic_record

    settings = build["settings"]
    if build["source"] == "synthetic":
        def synthetic_records(index, seed):
            clip = synthetic_record(seed, settings["height"], settings["width"], settings["frames_per_clip"],
                                    settings["pairs_per_clip"], settings["dynamic"], settings["image_format"],
                                    flow_stride=settings["flow_stride"],
                                    flow_cell_error_px=settings["flow_cell_error_px"])
            return [(clip.source_id, encode_clip(clip))]
        return synthetic_records

    config = VideoClipConfig(**settings)
    estimator = make_estimator(build["estimator"], **build["estimator_kwargs"])

    def video_clip_records(index, path):
        clips = video_records(path, config, estimator, input_seed(build["seed"], index))
        return [(c.source_id, encode_clip(c)) for c in clips]
    return video_clip_records
