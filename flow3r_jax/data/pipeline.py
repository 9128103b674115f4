"""Grain input pipeline: clip shards -> batches in the training batch contract (numpy, per host).

Training stream (`make_train_iterator`), for sources s = 0..K-1:

    ShardRecords(s) -> shuffle(seed_s) -> repeat()      one global shuffle per epoch and source
    -> MapDataset.mix(weights)                          deterministic interleave with the weights
    -> map_with_index(build sample g)                   decode, frames/pairs, crop, colour jitter
    -> [process_index::process_count]                   per-host shard of the global sample stream
    -> batch(global_batch_size // process_count)        static shapes
    -> to_iter_dataset(ReadOptions) -> mp_prefetch(worker_count)

Global sample g of the mixed stream is built by host g mod process_count, so the hosts together
consume the stream exactly once, in step, and each source's first epoch is covered exactly once before
any record repeats. Every random choice of sample g (frames, pairs, crop, colour) comes from
`sampling.sample_rng(seed, g)`; the output (H, W) of global batch g // global_batch_size comes from
`sampling.batch_resolution(resolutions, seed, step)` (the same on every host). Nothing depends on the
number of hosts' workers or threads, and the Grain iterator state (`get_state` / `set_state`, or the
Orbax item `grain.checkpoint.CheckpointHandler` with `CheckpointSave` / `CheckpointRestore`) resumes
exactly where it stopped.

Corrupt data: a shard that cannot be opened raises ValueError naming the file when the pipeline is
built; a record that cannot be read or decoded, or whose sample holds non-finite values, raises
RecordError naming "<file>#<index>". With `skip_corrupt` the sample instead uses the next record of the
same source (deterministically), logs a warning naming the bad record, and counts it in the
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

from flow3r_jax.data.records import RecordError, open_clip
from flow3r_jax.data.sampling import batch_resolution, resolution_list, sample_rng, select_frames_and_pairs
from flow3r_jax.data.samples import build_sample
from flow3r_jax.data.shard_reader import RawRecord, ShardRecords
from flow3r_jax.data.sources import resolve_sources
from flow3r_jax.data.transforms import center_crop, random_color_jitter, random_crop
from flow3r_jax.data.worker_memory import keep_freed_memory

MAX_CONSECUTIVE_CORRUPT = 16
SHUFFLE_STREAM = 3
_SKIPPED_KEY = "skipped_records"


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """How a record becomes a sample; shared by the training and evaluation builders."""

    num_frames: int
    num_pairs: int
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


def make_train_iterator(data_cfg, *, global_batch_size: int, seed: int, process_index: int,
                        process_count: int, corrupt_counter: CorruptRecordCounter | None = None):
    """Infinite Grain iterator of this host's batches: dicts of numpy arrays in the batch contract with
    B = global_batch_size // process_count. Checkpoint it with `get_state`/`set_state` or Orbax."""
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count "
                         f"{process_count}")
    keep_freed_memory()  # this process and the Grain workers (flow3r_jax/data/worker_memory.py)
    sources = resolve_sources(data_cfg, data_cfg.sources)
    readers = [ShardRecords(list(s.paths)) for s in sources]
    builder = _SampleBuilder(readers, [s.labeled for s in sources], _sample_spec(data_cfg, train=True),
                             train=True, seed=seed, resolutions=train_resolutions(data_cfg),
                             global_batch_size=global_batch_size)
    mixed = _mixed_records(readers, [s.weight for s in sources], seed)
    host = mixed.map_with_index(builder)[process_index::process_count]
    batches = host.batch(global_batch_size // process_count, drop_remainder=True)
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
    """Deterministic, finite dataset of this host's evaluation batches (batch contract, no augmentation):
    records of `eval_sources` in stored order, host p taking records p, p + P, ...; centre crop at
    `eval_resolution`, deterministic frames and pairs. The last batch may be smaller than batch_size."""
    sources = resolve_sources(data_cfg, data_cfg.eval_sources)
    readers = [ShardRecords(list(s.paths)) for s in sources]
    builder = _SampleBuilder(readers, [s.labeled for s in sources], _sample_spec(data_cfg, train=False),
                             train=False, seed=0, resolutions=[eval_resolution(data_cfg)], global_batch_size=1)
    records = grain.MapDataset.concatenate([grain.MapDataset.source(src).map(functools.partial(_tag_source, k))
                                            for k, src in enumerate(readers)])
    host = records[process_index::process_count]
    if len(host) == 0:
        raise ValueError(f"process {process_index} of {process_count} gets no evaluation records "
                         f"({len(records)} in total)")
    return host.map_with_index(builder).map(_drop_skip_count).batch(batch_size, drop_remainder=False)


def train_resolutions(data_cfg) -> list[tuple[int, int]]:
    """The (H, W) list training batches draw from (module docstring: resolutions / pixel_budget / height)."""
    patch = data_cfg.patch_size
    if data_cfg.resolutions:
        sizes = [tuple(int(v) for v in hw) for hw in data_cfg.resolutions]
    elif data_cfg.pixel_budget > 0:
        sizes = resolution_list(data_cfg.pixel_budget, tuple(data_cfg.aspect_range), data_cfg.num_aspects, patch)
    else:
        sizes = [(int(data_cfg.height), int(data_cfg.width))]
    _check_multiples(sizes, patch)
    return sizes


def eval_resolution(data_cfg) -> tuple[int, int]:
    """(H, W) of evaluation samples."""
    if data_cfg.eval_resolution:
        size = tuple(int(v) for v in data_cfg.eval_resolution)
    elif data_cfg.height:
        size = (int(data_cfg.height), int(data_cfg.width))
    else:
        size = train_resolutions(data_cfg)[0]
    _check_multiples([size], data_cfg.patch_size)
    return size


def _sample_spec(data_cfg, train: bool) -> SampleSpec:
    jitter = None
    if train and data_cfg.augment:
        jitter = tuple(float(data_cfg[k]) for k in ("brightness", "contrast", "saturation", "hue"))
    return SampleSpec(num_frames=int(data_cfg.num_frames),
                      num_pairs=int(data_cfg.pairs_per_sample),
                      crop_scale_range=tuple(float(v) for v in data_cfg.crop_scale_range),
                      jitter=jitter, skip_corrupt=train and bool(data_cfg.skip_corrupt))


class _SampleBuilder:
    """map_with_index transform: (global sample index, (source number, RawRecord)) -> sample dict.

    Training builders (spec.jitter / random crops) draw every random choice from sample_rng(seed, index);
    evaluation builders use centre crops and the deterministic frame selection.
    """

    def __init__(self, sources: list[ShardRecords], labeled: list[bool], spec: SampleSpec, *, train: bool,
                 seed: int, resolutions: list[tuple[int, int]], global_batch_size: int):
        self._sources = sources
        self._labeled = labeled
        self._spec = spec
        self._train = train
        self._seed = seed
        self._resolutions = resolutions
        self._global_batch_size = global_batch_size

    def __call__(self, index: int, tagged: tuple[int, RawRecord]) -> dict[str, np.ndarray]:
        source, record = tagged
        out_hw = batch_resolution(self._resolutions, self._seed, index // self._global_batch_size)
        for skipped in range(MAX_CONSECUTIVE_CORRUPT + 1):
            try:
                sample = self._build(record, source, out_hw, index)
                sample[_SKIPPED_KEY] = np.int32(skipped)
                return sample
            except RecordError as err:
                if not self._spec.skip_corrupt:
                    raise
                logging.warning("skipping corrupt record: %s", err)
                record = self._sources[source][record.index + 1]
        raise RecordError(f"{record.where}: more than {MAX_CONSECUTIVE_CORRUPT} consecutive corrupt records")

    def _build(self, record: RawRecord, source: int, out_hw: tuple[int, int], index: int) -> dict:
        if record.data is None:
            raise RecordError(f"{record.where}: cannot read record: {record.error}")
        clip = open_clip(record.data, record.where)
        rng = sample_rng(self._seed, index) if self._train else None
        try:
            selection = select_frames_and_pairs(clip.num_frames, clip.flow_pairs, self._spec.num_frames,
                                                self._spec.num_pairs, rng)
        except ValueError as err:
            raise RecordError(f"{record.where}: {err}") from err
        source_hw = (clip.height, clip.width)
        crop = center_crop(source_hw, out_hw) if rng is None else \
            random_crop(source_hw, out_hw, self._spec.crop_scale_range, rng)
        jitter = None if rng is None or self._spec.jitter is None else random_color_jitter(rng, *self._spec.jitter)
        return build_sample(clip, selection, crop, jitter, self._labeled[source], record.where)


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


def _check_multiples(sizes, patch: int) -> None:
    for height, width in sizes:
        if height % patch or width % patch or height <= 0 or width <= 0:
            raise ValueError(f"resolution {height}x{width}: both sides must be positive multiples of {patch}")
