"""Grain input pipeline: clip shards -> batches of numpy arrays, per host.

Training batches are wire batches (flow3r_jax/data/wire.py WIRE_CONTRACT: decoded frames, stored labels
and flow with the index vectors that sample them, per-sample maps), which the train step expands into the
batch contract on the device; evaluation batches are expanded on the host (`expand_batch` with numpy)
and are in the batch contract.

Training stream (`make_train_iterator`), for sources s = 0..K-1:

    ShardRecords(s) -> shuffle(seed_s) -> repeat()      one global shuffle per epoch and source
    -> MapDataset.mix(weights)                          deterministic interleave with the weights
    range(steps) -> map(host batch of step t)           bucket of t and its first sample from
                                                        BucketSchedule(buckets, seed) (data/buckets.py);
                                                        samples g = first + p, first + p + P, ... built
                                                        (decode, frames/pairs, crop, colour; wire format)
                                                        and stacked
    -> to_iter_dataset(ReadOptions) -> mp_prefetch(worker_count)

Each global batch has the static shape of one bucket (frames, height, width, pairs, batch size), the
same on every host. Global sample g of the mixed stream is built by host g mod process_count, so the
hosts together consume the stream exactly once, in step, and each source's first epoch is covered
exactly once before any record repeats. Every random choice of sample g (frames, pairs, crop, colour)
comes from `sampling.sample_rng(seed, g)`; the bucket of step t from (seed, t). Nothing depends on the
number of hosts' workers or threads (threads and workers build whole batches), and the Grain iterator
state (`get_state` / `set_state`, or the Orbax item `grain.checkpoint.CheckpointHandler` with
`CheckpointSave` / `CheckpointRestore`: the next step) resumes exactly where it stopped.

Corrupt data: a shard that cannot be opened raises ValueError naming the file when the pipeline is
built; a record that cannot be read or decoded, or whose intrinsics / poses are not finite, raises
RecordError naming "<file>#<index>" (values computed on the device are guarded by the train step). With
`skip_corrupt` the sample instead uses the next record of the same source (deterministically), logs a
warning naming the bad record, and counts it in the
`CorruptRecordCounter` passed to `make_train_iterator`. Evaluation never skips.

Data config keys (`data_cfg`): documented in configs/common.py, which holds their defaults; sources in
flow3r_jax/data/sources.py; the synthetic splits in flow3r_jax/data/synthetic_dataset.py.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import grain
import numpy as np
from absl import flags

from flow3r_jax.data.buckets import Bucket, BucketSchedule, bucket_shapes, wire_source_pixels
from flow3r_jax.data.records import RecordError, open_clip
from flow3r_jax.data.samples import build_sample
from flow3r_jax.data.sampling import sample_rng, select_frames_and_pairs
from flow3r_jax.data.shard_reader import RawRecord, ShardRecords
from flow3r_jax.data.sources import resolve_sources
from flow3r_jax.data.transforms import center_crop, random_color_jitter, random_crop
from flow3r_jax.data.wire import empty_wire_batch, expand_batch
from flow3r_jax.data.worker_settings import apply_worker_settings

MAX_CONSECUTIVE_CORRUPT = 16
MAX_STEPS = 2 ** 62      # length of the (endless) step stream
SHUFFLE_STREAM = 3
_SKIPPED_KEY = "skipped_records"


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """How a record becomes a sample; shared by the training and evaluation builders."""

    crop_scale_range: tuple[float, float]
    jitter: tuple[float, float, float, float] | None   # brightness, contrast, saturation, hue; None = off
    skip_corrupt: bool


class CorruptRecordCounter:
    """Counts corrupt records replaced in the batches delivered so far (main process, not checkpointed)."""

    def __init__(self):
        self.count = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.count += int(batch.pop(_SKIPPED_KEY).sum())
        return batch


def make_train_iterator(data_cfg, *, buckets: list[Bucket], seed: int, process_index: int, process_count: int,
                        corrupt_counter: CorruptRecordCounter | None = None):
    """Infinite Grain iterator of this host's batches: dicts of numpy arrays in the wire format, batch
    `step` in the shape of `BucketSchedule(buckets, seed).bucket(step)` with B = its batch_size //
    process_count. `buckets`: `train_buckets` (flow3r_jax/data/buckets.py). Checkpoint the iterator with
    `get_state`/`set_state` or Orbax."""
    for bucket in buckets:
        if bucket.batch_size % process_count:
            raise ValueError(f"bucket {bucket}: batch size not divisible by process_count {process_count}")
    apply_worker_settings()  # this process and the Grain workers (flow3r_jax/data/worker_settings.py)
    sources = resolve_sources(data_cfg, data_cfg.sources)
    readers = [ShardRecords(list(s.paths)) for s in sources]
    builder = _SampleBuilder(readers, [s.labeled for s in sources], _sample_spec(data_cfg, train=True),
                             train=True, seed=seed)
    mixed = _mixed_records(readers, [s.weight for s in sources], seed)
    host_batch = _HostBatch(mixed, builder, BucketSchedule(buckets, seed), process_index, process_count)
    batches = grain.MapDataset.range(MAX_STEPS).map(host_batch)
    stream = batches.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.read_threads,
                                                       prefetch_buffer_size=data_cfg.read_buffer_size))
    worker_count = data_cfg.worker_count
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags; keep their defaults
            flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=data_cfg.worker_buffer_size))
    return iter(stream.map(corrupt_counter or CorruptRecordCounter()))


def host_record_stream(data_cfg, *, seed: int, process_index: int, process_count: int) -> grain.MapDataset:
    """(source number, record index) of this host's training samples, in order, without decoding them:
    the record order `make_train_iterator` uses (corrupt-record replacement aside)."""
    sources = resolve_sources(data_cfg, data_cfg.sources)
    mixed = _mixed_records([ShardRecords(list(s.paths)) for s in sources], [s.weight for s in sources], seed)
    return mixed.map(_record_key)[process_index::process_count]


def make_eval_dataset(data_cfg, *, batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> grain.MapDataset:
    """Deterministic, finite dataset of this host's evaluation batches (batch contract, expanded from the
    wire format on the host; no augmentation):
    records of `eval_sources` in stored order, host p taking records p, p + P, ...; `num_frames` frames,
    `pairs_per_sample` pairs, centre crop at `eval_resolution` (one fixed shape), deterministic frames and
    pairs. The last batch may be smaller than batch_size."""
    sources = resolve_sources(data_cfg, data_cfg.eval_sources)
    readers = [ShardRecords(list(s.paths)) for s in sources]
    builder = _SampleBuilder(readers, [s.labeled for s in sources], _sample_spec(data_cfg, train=False),
                             train=False, seed=0)
    height, width = eval_resolution(data_cfg)
    shape = Bucket(num_frames=int(data_cfg.num_frames), height=height, width=width,
                   num_pairs=int(data_cfg.pairs_per_sample), batch_size=batch_size,
                   source_pixels=wire_source_pixels(data_cfg, height, width))
    records = grain.MapDataset.concatenate([grain.MapDataset.source(src).map(functools.partial(_tag_source, k))
                                            for k, src in enumerate(readers)])
    host = records[process_index::process_count]
    if len(host) == 0:
        raise ValueError(f"process {process_index} of {process_count} gets no evaluation records "
                         f"({len(records)} in total)")
    return host.map_with_index(functools.partial(builder, shape)).map(_drop_skip_count).batch(
        batch_size, drop_remainder=False).map(functools.partial(expand_batch, xp=np))


def eval_resolution(data_cfg) -> tuple[int, int]:
    """(H, W) of evaluation samples: eval_resolution, else (height, width), else the first bucket's."""
    if data_cfg.eval_resolution:
        size = tuple(int(v) for v in data_cfg.eval_resolution)
    elif data_cfg.height:
        size = (int(data_cfg.height), int(data_cfg.width))
    else:
        size = bucket_shapes(data_cfg)[0][1:]
    height, width = size
    patch = data_cfg.patch_size
    if height % patch or width % patch or height <= 0 or width <= 0:
        raise ValueError(f"evaluation resolution {height}x{width}: both sides must be positive multiples of "
                         f"data.patch_size={patch}")
    return size


def _sample_spec(data_cfg, train: bool) -> SampleSpec:
    jitter = None
    if train and data_cfg.augment:
        jitter = tuple(float(data_cfg[k]) for k in ("brightness", "contrast", "saturation", "hue"))
    return SampleSpec(crop_scale_range=tuple(float(v) for v in data_cfg.crop_scale_range),
                      jitter=jitter, skip_corrupt=train and bool(data_cfg.skip_corrupt))


class _SampleBuilder:
    """(bucket, global sample index, (source number, RawRecord)) -> wire sample of the bucket's N frames,
    S pairs, H x W and stored pixels per frame (the bucket's batch size is not used here).

    Training builders (spec.jitter / random crops) draw every random choice from sample_rng(seed, index);
    evaluation builders use centre crops and the deterministic frame selection.
    """

    def __init__(self, sources: list[ShardRecords], labeled: list[bool], spec: SampleSpec, *, train: bool,
                 seed: int):
        self._sources = sources
        self._labeled = labeled
        self._spec = spec
        self._train = train
        self._seed = seed

    def __call__(self, shape: Bucket, index: int, tagged: tuple[int, RawRecord],
                 out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The wire sample (in `out` when given: one slot of a batch) plus the count of corrupt records
        skipped for it under _SKIPPED_KEY."""
        source, record = tagged
        for skipped in range(MAX_CONSECUTIVE_CORRUPT + 1):
            try:
                sample = self._build(record, source, shape, index, out)
                sample[_SKIPPED_KEY] = np.int32(skipped)
                return sample
            except RecordError as err:
                if not self._spec.skip_corrupt:
                    raise
                logging.warning("skipping corrupt record: %s", err)
                record = self._sources[source][record.index + 1]
        raise RecordError(f"{record.where}: more than {MAX_CONSECUTIVE_CORRUPT} consecutive corrupt records")

    def _build(self, record: RawRecord, source: int, shape: Bucket, index: int, out: dict | None) -> dict:
        if record.data is None:
            raise RecordError(f"{record.where}: cannot read record: {record.error}")
        clip = open_clip(record.data, record.where)
        rng = sample_rng(self._seed, index) if self._train else None
        try:
            selection = select_frames_and_pairs(clip.num_frames, clip.flow_pairs, shape.num_frames,
                                                shape.num_pairs, rng)
        except ValueError as err:
            raise RecordError(f"{record.where}: {err}") from err
        source_hw, out_hw = (clip.height, clip.width), (shape.height, shape.width)
        crop = center_crop(source_hw, out_hw) if rng is None else \
            random_crop(source_hw, out_hw, self._spec.crop_scale_range, rng)
        jitter = None if rng is None or self._spec.jitter is None else random_color_jitter(rng, *self._spec.jitter)
        return build_sample(clip, selection, crop, jitter, self._labeled[source], record.where, shape.source_pixels,
                            out)


class _HostBatch:
    """Grain map: global step -> this host's batch of that step, in the shape of the step's bucket; the
    samples are built in place in the batch's arrays.

    Host p of P takes global samples first + p, first + p + P, ... of the step (first: the step's first
    global sample index), so over all steps it reads samples p, p + P, ... of the mixed stream.
    """

    def __init__(self, mixed: grain.MapDataset, builder: _SampleBuilder, schedule: BucketSchedule,
                 process_index: int, process_count: int):
        self._mixed = mixed
        self._builder = builder
        self._schedule = schedule
        self._process_index = process_index
        self._process_count = process_count

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        bucket = self._schedule.bucket(step)
        first = self._schedule.first_sample(step) + self._process_index
        indices = range(first, first + bucket.batch_size, self._process_count)
        batch = empty_wire_batch(len(indices), bucket.num_frames, bucket.num_pairs, bucket.height, bucket.width,
                                 bucket.source_pixels)
        skipped = np.zeros(len(indices), np.int32)
        for slot, g in enumerate(indices):
            sample = self._builder(bucket, g, self._mixed[g], {key: array[slot, ...] for key, array in batch.items()})
            skipped[slot] = sample[_SKIPPED_KEY]
        batch[_SKIPPED_KEY] = skipped
        return batch


def _mixed_records(readers: list[ShardRecords], weights: list[float], seed: int) -> grain.MapDataset:
    """Infinite stream of (source number, RawRecord): each source shuffled per epoch, then mixed."""
    streams = []
    for k, reader in enumerate(readers):
        source_seed = int(np.random.SeedSequence([seed, SHUFFLE_STREAM, k]).generate_state(1)[0])
        shuffled = grain.MapDataset.source(reader).shuffle(seed=source_seed).repeat()
        streams.append(shuffled.map(functools.partial(_tag_source, k)))
    return streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)


def _tag_source(source: int, record: RawRecord) -> tuple[int, RawRecord]:
    return source, record


def _record_key(tagged: tuple[int, RawRecord]) -> tuple[int, int]:
    return tagged[0], tagged[1].index


def _drop_skip_count(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in sample.items() if k != _SKIPPED_KEY}
