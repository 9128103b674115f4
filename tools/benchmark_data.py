"""Input pipeline throughput against the JPEG decode bound.

Prints frames/s of the Grain training pipeline (flow3r_jax/data/pipeline.py: wire batches, which the
train step expands on the device) per worker count, for labeled samples and for flow-only samples, the
MB per sample of its batches and of the batch contract they expand to, the pure JPEG decode rate of the
same frames in one process (the bound of one process: a sample cannot be built faster than its frames
decode), and their ratio, overall and per process (workers, or 1 without), then the time the train
step's first operation, the jitted `expand_batch`, takes per sample on the default JAX device. The decode
rate is timed right before and right after each row, and the row is compared with their mean, since the
speed of a shared machine drifts. On such a machine wall-clock rates also move with the load; the CPU column
compares frames per CPU second of this process instead (pipeline without workers against decode).

Defaults: the large recipe's sample shape (clips of 8 frames at 392x518, samples of 8 frames at 378x504
with 8 flow pairs, batch 2), and clips storing as many pairs as the ingestion writes by default
(`pairs_per_clip` of data_pipelines/video.py and data_pipelines/scannet.py). The clips are synthetic
(flow3r_jax/data/synthetic.py). Labeled records carry the renderer's labels and exact flow, as
`tools/build_shards.py --synthetic` writes them; flow-only records are what video ingestion writes for the
paper's unlabeled videos (data_pipelines/video.py `unlabeled_clip`: no labels, DIS pseudo-flow composed
along the clip). Both store flow per 2 x 2 cell by default, as those producers do; `--flow_stride=1`
stores it per pixel. `--distinct_clips` are rendered once and repeated into `--clips` records in
`--cache_dir`, reused by later runs (Grain's index shuffle costs about 30 ms per epoch, so epochs of a few
dozen records would add a millisecond to every sample that a dataset of realistic size does not pay).

With the default `--wire_source_area` the stored frames, labels and flow fit the wire buffers and ship as
they are (the device resamples them); `--wire_source_area=1` makes the host resample every field, as
for sources larger than the buffers.

    python tools/benchmark_data.py --workers=0,1,2
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import common
from data_pipelines.beam_pipeline import SyntheticSpec
from data_pipelines.pseudo_flow import make_estimator
from data_pipelines.video import VideoClipConfig, unlabeled_clip
from flow3r_jax.data import pipeline
from flow3r_jax.data.buckets import Bucket, wire_source_pixels
from flow3r_jax.data.records import RECORD_VERSION, decode_frames, encode_clip, open_clip
from flow3r_jax.data.shard_reader import ShardRecords
from flow3r_jax.data.shard_writer import complete_manifest, write_manifest, write_shard
from flow3r_jax.data.synthetic import generate_clip, synthetic_record
from flow3r_jax.data.wire import expand_batch
from flow3r_jax.files import atomic_directory

_CACHE_DIR = flags.DEFINE_string("cache_dir", os.path.join(tempfile.gettempdir(), "flow3r_jax_benchmark_data"),
                                 "folder of the benchmark shards (built on first use)")
_CLIPS = flags.DEFINE_integer("clips", 256, "records in the benchmark shards")
_DISTINCT_CLIPS = flags.DEFINE_integer("distinct_clips", 2, "rendered clips the records cycle through")
_CLIP_FRAMES = flags.DEFINE_integer("clip_frames", 8, "frames per stored clip")
_CLIP_HEIGHT = flags.DEFINE_integer("clip_height", 392, "stored frame height")
_CLIP_WIDTH = flags.DEFINE_integer("clip_width", 518, "stored frame width")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "frames per sample")
_PAIRS = flags.DEFINE_integer("pairs", 8, "flow pairs per sample")
_STORED_PAIRS = flags.DEFINE_integer("stored_pairs", VideoClipConfig.pairs_per_clip,
                                     "flow pairs per stored clip (default: the ingestion default)")
_FLOW_STRIDE = flags.DEFINE_integer("flow_stride", VideoClipConfig.flow_stride,
                                    "flow stored per stride x stride cell in both kinds of records (default: "
                                    "what tools/build_shards.py writes)")
_HEIGHT = flags.DEFINE_integer("height", 378, "sample height")
_WIDTH = flags.DEFINE_integer("width", 504, "sample width")
_BATCH = flags.DEFINE_integer("batch", 2, "samples per batch")
_BATCHES = flags.DEFINE_integer("batches", 10, "timed batches per worker count")
_WARMUP = flags.DEFINE_integer("warmup", 2, "batches before timing")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts to time")
_WIRE_SOURCE_AREA = flags.DEFINE_float("wire_source_area", common.get_base_config().data.wire_source_area,
                                       "data.wire_source_area (flow3r_jax/data/wire.py): 1 resamples every "
                                       "field on the host, the default ships the stored frames for the device")


def benchmark_shards(labeled: bool) -> str:
    """Folder of the benchmark shards, built once per setting: `clips` records cycling through
    `distinct_clips` rendered clips, 4 shards; labeled records or flow-only ones (module docstring)."""
    build = {"kind": "benchmark", "record_version": RECORD_VERSION, "clips": _CLIPS.value,
             "distinct_clips": _DISTINCT_CLIPS.value, "frames": _CLIP_FRAMES.value, "height": _CLIP_HEIGHT.value,
             "width": _CLIP_WIDTH.value, "pairs": _STORED_PAIRS.value, "labeled": labeled}
    if labeled:
        build["flow_cells"] = {"flow_stride": _FLOW_STRIDE.value,
                               "flow_cell_error_px": SyntheticSpec.flow_cell_error_px}
    else:
        build["ingestion"] = dataclasses.asdict(VideoClipConfig(clip_length=_CLIP_FRAMES.value,
                                                                pairs_per_clip=_STORED_PAIRS.value,
                                                                flow_stride=_FLOW_STRIDE.value))
    digest = hashlib.sha1(json.dumps(build, sort_keys=True).encode()).hexdigest()[:12]
    out = pathlib.Path(_CACHE_DIR.value) / f"benchmark-{digest}"
    if out.is_dir() and complete_manifest(out, build) is not None:
        return str(out)
    start = time.perf_counter()
    rendered = [encode_clip(_benchmark_clip(seed, build)) for seed in range(build["distinct_clips"])]
    num_shards = min(4, build["clips"])
    with atomic_directory(str(out)) as tmp:
        entries = [write_shard(tmp, "bench", shard, num_shards,
                               [(f"clip{k}", rendered[k % len(rendered)])
                                for k in range(shard, build["clips"], num_shards)], build)
                   for shard in range(num_shards)]
        write_manifest(tmp, "bench", entries, build)
    print(f"benchmark shards built in {time.perf_counter() - start:.0f}s: {out}")
    return str(out)


def _benchmark_clip(seed: int, build: dict):
    """Rendered clip `seed` as a labeled record Clip or as video ingestion's flow-only one."""
    shape = (seed, build["height"], build["width"], build["frames"])
    if build["labeled"]:
        return synthetic_record(*shape, build["pairs"], dynamic=seed % 2 == 1, **build["flow_cells"])
    clip = generate_clip(*shape, dynamic=seed % 2 == 1)
    return unlabeled_clip(clip.images, clip.timestamps, f"benchmark:{seed}", VideoClipConfig(**build["ingestion"]),
                          make_estimator("dis"), seed=(seed, 1))


def jpeg_decode_rate(shard_dir: str) -> tuple[float, float]:
    """Frames per second and per CPU second of decoding `num_frames` frames of every record in one
    process (records opened first)."""
    records = ShardRecords([str(p) for p in sorted(pathlib.Path(shard_dir).glob("*.array_record"))])
    clips = [open_clip(records[k].data, records[k].where) for k in range(len(records))]
    rng = np.random.default_rng(0)
    chosen = [np.sort(rng.choice(c.num_frames, _NUM_FRAMES.value, replace=False)) for c in clips]
    decode_frames(clips[0], chosen[0])
    start, cpu_start = time.perf_counter(), time.process_time()
    for clip, frames in zip(clips, chosen, strict=True):
        decode_frames(clip, frames)
    frames = len(clips) * _NUM_FRAMES.value
    return frames / (time.perf_counter() - start), frames / (time.process_time() - cpu_start)


def pipeline_rate(shard_dir: str, workers: int, labeled: bool) -> tuple[float, float, dict]:
    """Frames per second and per CPU second of this process of the training iterator with `workers`
    Grain worker processes over the shards declared `labeled` or not, and its last (wire) batch."""
    data_cfg = common.get_base_config().data
    data_cfg.update(sources=({"path": shard_dir, "labeled": labeled},), num_frames=_NUM_FRAMES.value,
                    pairs_per_sample=_PAIRS.value, height=_HEIGHT.value, width=_WIDTH.value, worker_count=workers,
                    wire_source_area=_WIRE_SOURCE_AREA.value)
    bucket = Bucket(_NUM_FRAMES.value, _HEIGHT.value, _WIDTH.value, _PAIRS.value, _BATCH.value,
                    wire_source_pixels(data_cfg, _HEIGHT.value, _WIDTH.value))
    iterator = pipeline.make_train_iterator(data_cfg, buckets=[bucket], seed=0, process_index=0, process_count=1)
    for _ in range(_WARMUP.value):
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(_BATCHES.value):
        batch = next(iterator)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    iterator.close()
    frames = _BATCHES.value * _BATCH.value * _NUM_FRAMES.value
    return frames / elapsed, frames / cpu, batch


def megabytes_per_sample(batch: dict) -> float:
    """Bytes of a batch of _BATCH samples (numpy arrays), per sample, in MB."""
    return sum(v.nbytes for v in batch.values()) / _BATCH.value / 1e6


def main(argv) -> None:
    del argv
    shard_dirs = {labeled: benchmark_shards(labeled) for labeled in (True, False)}
    print(f"pipeline: batch {_BATCH.value} x {_NUM_FRAMES.value} frames, {_PAIRS.value} of "
          f"{_STORED_PAIRS.value} stored pairs, output "
          f"{_HEIGHT.value}x{_WIDTH.value}, {_BATCHES.value} batches after {_WARMUP.value} warm-up; JPEG decode of "
          f"{_CLIP_HEIGHT.value}x{_CLIP_WIDTH.value} frames in 1 process, timed before and after each row")
    print(f"{'samples':>10} {'workers':>8} {'frames/s':>10} {'decode/s':>10} {'vs decode':>10} {'per process':>12} "
          f"{'CPU vs decode':>14}")
    for labeled in (True, False):
        for workers in (int(w) for w in _WORKERS.value):
            before = jpeg_decode_rate(shard_dirs[True])
            rate, cpu_rate, batch = pipeline_rate(shard_dirs[labeled], workers, labeled)
            decode, decode_cpu = np.mean([before, jpeg_decode_rate(shard_dirs[True])], axis=0)
            cpu_ratio = f"{cpu_rate / decode_cpu:.2f}" if workers == 0 else "-"
            print(f"{'labeled' if labeled else 'flow-only':>10} {workers:>8d} {rate:>10.1f} {decode:>10.0f} "
                  f"{rate / decode:>10.2f} {rate / decode / max(workers, 1):>12.2f} {cpu_ratio:>14}")
    print(f"MB per sample: {megabytes_per_sample(batch):.1f} in the wire format, "
          f"{megabytes_per_sample(expand_batch(batch, np)):.1f} in the batch contract")
    print(f"expand_batch with jax.numpy (jitted) on {jax.devices()[0].device_kind}: "
          f"{expansion_seconds(batch) / _BATCH.value * 1e3:.1f} ms per sample")


def expansion_seconds(batch: dict, repeats: int = 5) -> float:
    """Seconds the jitted `expand_batch` (the train step's first operation) takes on a batch on device."""
    expand = jax.jit(functools.partial(expand_batch, xp=jnp))
    on_device = jax.device_put(batch)
    jax.block_until_ready(expand(on_device))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(expand(on_device))
    return (time.perf_counter() - start) / repeats


if __name__ == "__main__":
    app.run(main)
