"""Shape buckets: the static shapes training batches take, their batch sizes, and the bucket of each step.

A bucket is one static global batch shape: `batch_size` clips of `num_frames` frames at height x width
with `num_pairs` flow pairs each, whose wire buffers hold `source_pixels` stored pixels per frame
(flow3r_jax/data/wire.py; `wire_source_pixels`). Every global batch comes from one bucket, so the train
step compiles once per bucket and never again.

Bucket set (data config keys, defaults and meaning in configs/common.py):
  - explicit `data.buckets` ((N, H, W), ...), else the product of
  - frame counts `data.frame_counts` (empty: (num_frames,)) and resolutions: `data.resolutions`, else
    `data.pixel_range` x `data.aspect_range` (`resolution_list`), else ((height, width),).
Flow pairs per clip: round(pairs_per_frame * N) (at least 1) when pairs_per_frame > 0, else
pairs_per_sample.

Batch sizes. With a per-device budget (`data.tokens_per_device`: patch tokens N * (H / p) * (W / p) of a
clip; `data.images_per_device`: N frames of a clip; 0 = not limited by that measure) each device's
micro-batch holds the largest whole number of clips within every set budget:

    clips_per_device = min(floor(tokens_per_device / tokens(bucket)), floor(images_per_device / N))
    global batch     = clips_per_device * grad_accum_steps * batch_devices

(batch_devices: devices the batch axis is split over, the mesh axes of the "batch" rule). A bucket
that does not fit one clip per device is an error naming it. Without a budget every bucket's global
batch is `global_batch_size`.

Schedule: the bucket of global batch `step` is a uniform draw keyed by (seed, step) (drawn in chunks of
CHUNK_STEPS steps for speed), identical on every host; the first global sample index of each step is
the running sum of the batch sizes before it, so the hosts together read the mixed record stream
exactly once whatever the buckets. Both are pure functions of (buckets, seed, step): a resumed run
continues the same schedule.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SCHEDULE_STREAM = 1
CHUNK_STEPS = 1024


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """One static global batch shape: batch_size clips x num_frames frames x height x width, num_pairs pairs,
    wire buffers of source_pixels stored pixels per frame."""

    num_frames: int
    height: int
    width: int
    num_pairs: int
    batch_size: int
    source_pixels: int

    def tokens(self, patch_size: int) -> int:
        """Patch tokens of one clip."""
        return self.num_frames * (self.height // patch_size) * (self.width // patch_size)

    def __str__(self) -> str:
        return f"{self.batch_size}x{self.num_frames}x{self.height}x{self.width} ({self.num_pairs} pairs)"


def resolution_list(pixel_range: tuple[float, float], num_pixel_levels: int, aspect_range: tuple[float, float],
                    num_aspects: int, patch_size: int) -> list[tuple[int, int]]:
    """(H, W) pairs, multiples of `patch_size`: for each of num_pixel_levels pixel counts log-spaced over
    pixel_range, num_aspects aspect ratios W / H log-spaced over aspect_range (one level or aspect: the
    geometric mean of the range); H * W is the pixel count up to rounding each side to the patch size.
    Duplicates removed."""
    (low_px, high_px), (low, high) = pixel_range, aspect_range
    if (not 0 < low <= high or num_aspects < 1 or num_pixel_levels < 1 or not 0 < low_px <= high_px
            or low_px < patch_size ** 2):
        raise ValueError(f"invalid resolution settings: pixel_range={pixel_range}, num_pixel_levels="
                         f"{num_pixel_levels}, aspect_range={aspect_range}, num_aspects={num_aspects}, "
                         f"patch_size={patch_size}")
    out: list[tuple[int, int]] = []
    for pixels in _log_levels(low_px, high_px, num_pixel_levels):
        for aspect in _log_levels(low, high, num_aspects):
            height = np.sqrt(pixels / aspect)
            size = tuple(max(patch_size, int(round(side / patch_size)) * patch_size)
                         for side in (height, height * aspect))
            if size not in out:
                out.append(size)
    return out


def _log_levels(low: float, high: float, count: int) -> list[float]:
    return [float(np.sqrt(low * high))] if count == 1 else [float(v) for v in np.geomspace(low, high, count)]


def bucket_shapes(data_cfg) -> list[tuple[int, int, int]]:
    """The (N, H, W) shapes of the config's buckets (module docstring), checked against the patch size."""
    patch = int(data_cfg.patch_size)
    if data_cfg.buckets:
        shapes = [tuple(int(v) for v in nhw) for nhw in data_cfg.buckets]
    else:
        frames = [int(n) for n in data_cfg.frame_counts] or [int(data_cfg.num_frames)]
        if data_cfg.resolutions:
            sizes = [tuple(int(v) for v in hw) for hw in data_cfg.resolutions]
        elif data_cfg.pixel_range:
            sizes = resolution_list(tuple(data_cfg.pixel_range), int(data_cfg.num_pixel_levels),
                                    tuple(data_cfg.aspect_range), int(data_cfg.num_aspects), patch)
        else:
            sizes = [(int(data_cfg.height), int(data_cfg.width))]
        shapes = [(n, h, w) for n in frames for (h, w) in sizes]
    for shape in shapes:
        if len(shape) != 3 or min(shape) <= 0 or shape[1] % patch or shape[2] % patch:
            raise ValueError(f"data bucket {shape}: expected (frames, height, width), positive, with height and "
                             f"width multiples of data.patch_size={patch}")
    if len(set(shapes)) != len(shapes):
        raise ValueError(f"data buckets repeat a shape: {shapes}")
    return shapes


def wire_source_pixels(data_cfg, height: int, width: int) -> int:
    """Stored pixels per frame the wire buffers of height x width batches hold: ceil(data.wire_source_area
    x height x width), at least height x width (what the host resamples to)."""
    area = float(data_cfg.wire_source_area)
    if area < 1.0:
        raise ValueError(f"data.wire_source_area={area}: must be at least 1 (the buffers hold the output frame)")
    return math.ceil(area * height * width)


def num_pairs(data_cfg, num_frames: int) -> int:
    """Flow pairs per clip of `num_frames` frames (module docstring)."""
    if data_cfg.pairs_per_frame > 0:
        return max(1, int(round(data_cfg.pairs_per_frame * num_frames)))
    return int(data_cfg.pairs_per_sample)


def train_buckets(data_cfg, *, global_batch_size: int, batch_devices: int = 1, grad_accum_steps: int = 1,
                  process_count: int = 1) -> list[Bucket]:
    """The config's buckets with their global batch sizes (module docstring), sorted by shape.

    Raises ValueError naming the bucket when it does not fit one clip per device, or when its batch does
    not split into process_count hosts x grad_accum_steps micro-batches.
    """
    patch = int(data_cfg.patch_size)
    token_budget, image_budget = int(data_cfg.tokens_per_device), int(data_cfg.images_per_device)
    out = []
    for n, h, w in bucket_shapes(data_cfg):
        bucket = Bucket(num_frames=n, height=h, width=w, num_pairs=num_pairs(data_cfg, n), batch_size=0,
                        source_pixels=wire_source_pixels(data_cfg, h, w))
        if token_budget > 0 or image_budget > 0:
            per_device = min(token_budget // bucket.tokens(patch) if token_budget > 0 else np.inf,
                             image_budget // n if image_budget > 0 else np.inf)
            if per_device < 1:
                raise ValueError(f"data bucket {n}x{h}x{w} ({bucket.tokens(patch)} tokens) exceeds the per-device "
                                 f"budget (data.tokens_per_device={token_budget}, "
                                 f"data.images_per_device={image_budget})")
            batch = int(per_device) * grad_accum_steps * batch_devices
        else:
            batch = int(global_batch_size)
        per_host, rest = divmod(batch, process_count)
        if rest or per_host % grad_accum_steps or batch <= 0:
            raise ValueError(f"data bucket {n}x{h}x{w}: global batch {batch} does not split into {process_count} "
                             f"processes x grad_accum_steps={grad_accum_steps} micro-batches")
        out.append(dataclasses.replace(bucket, batch_size=batch))
    return sorted(out)


class BucketSchedule:
    """Which bucket each global batch uses and where its samples start in the global sample stream."""

    def __init__(self, buckets: list[Bucket], seed: int):
        if not buckets:
            raise ValueError("no training buckets")
        self.buckets = list(buckets)
        self._seed = seed
        self._sizes = np.array([b.batch_size for b in buckets], np.int64)
        self._chunks: list[np.ndarray] = []          # bucket numbers of steps [k * CHUNK, (k + 1) * CHUNK)
        self._chunk_starts: list[int] = [0]          # first sample index of each chunk

    def bucket_index(self, step: int) -> int:
        """Number (into `buckets`) of the bucket of global batch `step` (0-based)."""
        return int(self._chunk(step // CHUNK_STEPS)[step % CHUNK_STEPS])

    def bucket(self, step: int) -> Bucket:
        return self.buckets[self.bucket_index(step)]

    def first_sample(self, step: int) -> int:
        """Global index of the first sample of global batch `step`: the sum of the batch sizes before it."""
        chunk, offset = divmod(step, CHUNK_STEPS)
        self._chunk(chunk)
        return self._chunk_starts[chunk] + int(self._sizes[self._chunks[chunk][:offset]].sum())

    def _chunk(self, chunk: int) -> np.ndarray:
        while len(self._chunks) <= chunk:
            k = len(self._chunks)
            if len(self.buckets) == 1:
                ids = np.zeros((CHUNK_STEPS,), np.int64)
            else:
                ids = np.random.default_rng([self._seed, SCHEDULE_STREAM, k]).integers(
                    len(self.buckets), size=CHUNK_STEPS)
            self._chunks.append(ids)
            self._chunk_starts.append(self._chunk_starts[-1] + int(self._sizes[ids].sum()))
        return self._chunks[chunk]
