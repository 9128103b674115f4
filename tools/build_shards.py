"""Build ArrayRecord clip shards with Apache Beam from videos or synthetic seeds.

  python tools/build_shards.py --out /data/clips --num_shards 64 --videos 'videos/**/*.mp4'
  python tools/build_shards.py --out /data/synth --num_shards 8 --synthetic 400 --dynamic
Arguments this script does not know are Beam pipeline options (default DirectRunner), e.g.
  --runner=DataflowRunner --project=... --direct_num_workers=4 --direct_running_mode=multi_processing
"""

import argparse
import glob
import logging
import pathlib


from data_pipelines.beam_pipeline import SyntheticSpec, build_shards_beam
from flow3r_jax.data.shard_writer import input_seed
from data_pipelines.video import VideoClipConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (shared by all workers)")
    parser.add_argument("--num_shards", type=int, required=True)
    parser.add_argument("--prefix", default="clips")
    parser.add_argument("--seed", type=int, default=0)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--videos", nargs="+", help="video files or glob patterns (** allowed)")
    inputs.add_argument("--video_list", help="text file with one video path per line")
    inputs.add_argument("--synthetic", type=int, help="number of synthetic clips")
    parser.add_argument("--target_fps", type=float, default=VideoClipConfig.target_fps)
    parser.add_argument("--clip_length", type=int, default=VideoClipConfig.clip_length)
    parser.add_argument("--clip_stride", type=int, default=VideoClipConfig.clip_stride)
    parser.add_argument("--target_pixels", type=int, default=VideoClipConfig.target_pixels)
    parser.add_argument("--pairs_per_clip", type=int, default=VideoClipConfig.pairs_per_clip)
    parser.add_argument("--max_gap", type=int, default=VideoClipConfig.max_gap)
    parser.add_argument("--estimator", default="dis", help="pseudo-flow estimator name (data_pipelines/pseudo_flow.py)")
    parser.add_argument("--checkpoint_path", help="checkpoint of a learned estimator")
    parser.add_argument("--loader", help="module:function loading a learned estimator")
    parser.add_argument("--height", type=int, default=SyntheticSpec.height)
    parser.add_argument("--width", type=int, default=SyntheticSpec.width)
    parser.add_argument("--dynamic", action="store_true", help="synthetic scenes with moving objects")
    args, pipeline_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    estimator_kwargs = {k: v for k, v in (("checkpoint_path", args.checkpoint_path), ("loader", args.loader)) if v}
    if args.synthetic is not None:
        manifest = build_shards_beam(
            [input_seed(args.seed, k) for k in range(args.synthetic)], args.out, args.num_shards, source="synthetic",
            synthetic=SyntheticSpec(height=args.height, width=args.width, frames_per_clip=args.clip_length,
                                    pairs_per_clip=args.pairs_per_clip, dynamic=args.dynamic),
            seed=args.seed, prefix=args.prefix, pipeline_args=pipeline_args)
    else:
        if args.video_list:
            paths = [line.strip() for line in pathlib.Path(args.video_list).read_text().splitlines() if line.strip()]
        else:
            paths = sorted(p for pattern in args.videos for p in (glob.glob(pattern, recursive=True) or [pattern]))
        config = VideoClipConfig(target_fps=args.target_fps, clip_length=args.clip_length, clip_stride=args.clip_stride,
                                 target_pixels=args.target_pixels, pairs_per_clip=args.pairs_per_clip,
                                 max_gap=args.max_gap)
        manifest = build_shards_beam(paths, args.out, args.num_shards, video_config=config, estimator=args.estimator,
                                     estimator_kwargs=estimator_kwargs, seed=args.seed, prefix=args.prefix,
                                     pipeline_args=pipeline_args)
    print(f"{manifest['total_records']} clips in {manifest['num_shards']} shards, "
          f"{manifest['num_failures']} failed inputs -> {args.out}")


if __name__ == "__main__":
    main()
