"""Data-side throughput figures. Each section is one function; run all or pick with --section.

pipeline: clips/s and frames/s of the Grain training pipeline (flow3r_jax/data/pipeline.py) per worker
count, against the pure JPEG decode rate of the same frames in one process (the physical bound of a
single process; with W workers the bound is about W times higher on W free cores).
pseudo_flow: flow fields/s of the pseudo-flow estimators (data_pipelines/pseudo_flow.py, one direction,
one process) and their end-point error against the exact flow of synthetic clips, per frame gap.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time


import numpy as np

from flow3r_jax.data import pipeline
from flow3r_jax.data.buckets import Bucket
from flow3r_jax.data.records import decode_clip, decode_frames
from flow3r_jax.data.shard_reader import ShardRecords


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
        bucket = Bucket(args.num_frames, args.height, args.width, args.pairs, args.batch)
        iterator = pipeline.make_train_iterator(cfg | {"worker_count": workers}, buckets=[bucket],
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


def benchmark_pseudo_flow(args) -> None:
    """Print a table: estimator, frame gap, flow fields/s, EPE on co-visible pixels and on kept pixels,
    fraction of co-visible pixels the forward-backward mask keeps, fraction of occluded pixels it keeps."""
    from data_pipelines.pseudo_flow import estimator_epe, make_estimator
    from flow3r_jax.data.synthetic import generate_clip

    clips = [generate_clip(seed, args.clip_height, args.clip_width, args.clip_frames, dynamic=seed % 2 == 1)
             for seed in range(args.flow_clips)]
    print(f"{args.flow_clips} synthetic clips of {args.clip_height}x{args.clip_width} (half dynamic)")
    print(f"{'estimator':>14} {'gap':>4} {'fields/s':>9} {'EPE px':>7} {'EPE kept':>9} {'kept':>6} {'occl kept':>10}")
    for preset in args.dis_presets:
        estimator = make_estimator("dis", preset=preset)
        start = time.perf_counter()
        for clip in clips:
            for i in range(args.clip_frames - 1):
                estimator(clip.images[i], clip.images[i + 1])
        fields_per_s = len(clips) * (args.clip_frames - 1) / (time.perf_counter() - start)
        for gap in args.flow_gaps:
            pairs = [(i, i + gap) for i in range(0, args.clip_frames - gap, gap)]
            stats = estimator_epe(estimator, clips, pairs)
            print(f"{'dis/' + preset:>14} {gap:>4d} {fields_per_s:>9.1f} {stats['epe']:>7.2f} "
                  f"{stats['epe_kept']:>9.2f} {stats['kept_fraction']:>6.2f} {stats['occluded_kept']:>10.2f}")


SECTIONS = {"pipeline": benchmark_pipeline, "pseudo_flow": benchmark_pseudo_flow}


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
    parser.add_argument("--flow_clips", type=int, default=8, help="pseudo_flow: synthetic clips evaluated")
    parser.add_argument("--flow_gaps", type=int, nargs="+", default=[1, 2, 4], help="pseudo_flow: frame gaps")
    parser.add_argument("--dis_presets", nargs="+", default=["fast", "medium"], help="pseudo_flow: DIS presets")
    args = parser.parse_args()
    for name in args.section or sorted(SECTIONS):
        print(f"== {name} ==")
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
