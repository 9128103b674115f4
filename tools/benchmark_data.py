"""Data-side throughput figures. Each section is one function; run all or pick with --section.

pipeline: clips/s and frames/s of the Grain training pipeline (flow3r_jax/data/pipeline.py) per worker
count, against the pure JPEG decode rate of the same frames in one process (the physical bound of a
single process; with W workers the bound is about W times higher on W free cores).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from flow3r_jax.data import pipeline  # noqa: E402
from flow3r_jax.data.records import decode_clip, decode_frames  # noqa: E402
from flow3r_jax.data.shards import ShardRecords  # noqa: E402


def benchmark_pipeline(args) -> None:
    """Print a table: worker count, clips/s, frames/s, ratio to the single-process JPEG decode rate."""
    cfg = dict(cache_dir=args.cache_dir, num_frames=args.num_frames, pairs_per_sample=args.pairs,
               height=args.height, width=args.width, num_train_clips=args.clips, num_eval_clips=2,
               synthetic_height=args.clip_height, synthetic_width=args.clip_width,
               synthetic_frames_per_clip=args.clip_frames, synthetic_num_shards=4)
    start = time.perf_counter()
    train_dir = pipeline.ensure_synthetic_dataset(cfg)[-1]
    print(f"synthetic shards ready in {time.perf_counter() - start:.1f}s: {train_dir}")

    records = ShardRecords([str(p) for p in sorted(pathlib.Path(train_dir).glob("*.array_record"))])
    clips = [decode_clip(records[k].data, records[k].where) for k in range(len(records))]
    rng = np.random.default_rng(0)
    chosen = [np.sort(rng.choice(c.num_frames, args.num_frames, replace=False)) for c in clips]
    start = time.perf_counter()
    for clip, frames in zip(clips, chosen):
        decode_frames(clip, frames)
    decode_fps = len(clips) * args.num_frames / (time.perf_counter() - start)

    print(f"\nJPEG decode (1 process): {decode_fps:.1f} frames/s of {args.clip_height}x{args.clip_width}")
    print(f"pipeline: batch {args.batch} x {args.num_frames} frames, {args.pairs} pairs, output "
          f"{args.height}x{args.width}, {args.batches} batches after {args.warmup} warm-up")
    print(f"{'workers':>8} {'clips/s':>10} {'frames/s':>10} {'vs decode':>10}")
    for workers in args.workers:
        iterator = pipeline.make_train_iterator(cfg | {"worker_count": workers}, global_batch_size=args.batch,
                                                seed=0, process_index=0, process_count=1)
        for _ in range(args.warmup):
            next(iterator)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(iterator)
        clips_per_s = args.batches * args.batch / (time.perf_counter() - start)
        iterator.close()
        frames_per_s = clips_per_s * args.num_frames
        print(f"{workers:>8d} {clips_per_s:>10.1f} {frames_per_s:>10.1f} {frames_per_s / decode_fps:>10.2f}")


SECTIONS = {"pipeline": benchmark_pipeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=sorted(SECTIONS), action="append",
                        help="sections to run (default: all)")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "flow3r_jax_benchmark_data"))
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--clip_frames", type=int, default=8)
    parser.add_argument("--clip_height", type=int, default=168)
    parser.add_argument("--clip_width", type=int, default=224)
    parser.add_argument("--num_frames", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--height", type=int, default=126)
    parser.add_argument("--width", type=int, default=168)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    for name in args.section or sorted(SECTIONS):
        print(f"== {name} ==")
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
