"""Build ArrayRecord clip shards with Apache Beam from videos or synthetic seeds.

  python tools/build_shards.py --out /data/clips --num_shards 64 --videos 'videos/**/*.mp4'
  python tools/build_shards.py --out /data/clips --num_shards 64 --video_list videos.txt \
      --estimator raft_large --checkpoint_path raft_large_C_T_SKHT_V2-ff5fadd5.pth
  python tools/build_shards.py --out /data/synth --num_shards 8 --synthetic 400 --dynamic
Arguments this script does not define are Beam pipeline options (default DirectRunner), e.g.
  --runner=DataflowRunner --project=... --direct_num_workers=4 --direct_running_mode=multi_processing
"""

import json
import logging
import sys

from absl import app, flags

from data_pipelines.beam_pipeline import SyntheticSpec, build_shards_beam
from data_pipelines.pseudo_flow import FLOW_MODES
from data_pipelines.video import VideoClipConfig, video_paths
from flow3r_jax.data.shard_writer import input_seed

_OUT = flags.DEFINE_string("out", None, "Output directory (shared by all workers).", required=True)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "Number of shards.", required=True)
_PREFIX = flags.DEFINE_string("prefix", "clips", "Shard file name prefix.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of pair sampling / synthetic scenes.")
_VIDEOS = flags.DEFINE_list("videos", [], "Video files or glob patterns (** allowed), comma-separated.")
_VIDEO_LIST = flags.DEFINE_string("video_list", None, "Text file with one video path per line.")
_SYNTHETIC = flags.DEFINE_integer("synthetic", None, "Number of synthetic clips.")
_TARGET_FPS = flags.DEFINE_float("target_fps", VideoClipConfig.target_fps, "Frames per second kept.")
_CLIP_LENGTH = flags.DEFINE_integer("clip_length", VideoClipConfig.clip_length, "Frames per clip.")
_CLIP_STRIDE = flags.DEFINE_integer("clip_stride", VideoClipConfig.clip_stride, "Kept frames between clip starts.")
_TARGET_PIXELS = flags.DEFINE_integer("target_pixels", VideoClipConfig.target_pixels, "Pixels per frame.")
_PAIRS_PER_CLIP = flags.DEFINE_integer("pairs_per_clip", VideoClipConfig.pairs_per_clip, "Flow pairs per clip.")
_MAX_GAP = flags.DEFINE_integer("max_gap", VideoClipConfig.max_gap, "Largest frame gap of a flow pair.")
_FLOW_MODE = flags.DEFINE_enum("flow_mode", VideoClipConfig.flow_mode, FLOW_MODES,
                               "composed: chain adjacent-frame flows; direct: estimate each pair.")
_FLOW_STRIDE = flags.DEFINE_integer("flow_stride", VideoClipConfig.flow_stride,
                                    "Flow stored per stride x stride cell, of videos and synthetic clips "
                                    "(1: per pixel, for a learned matcher).")
_ESTIMATOR = flags.DEFINE_string("estimator", "dis", "Pseudo-flow estimator (data_pipelines/pseudo_flow.py).")
_CHECKPOINT_PATH = flags.DEFINE_string("checkpoint_path", None, "Local checkpoint of a learned estimator.")
_LOADER = flags.DEFINE_string("loader", None, "module:function loading a ufm / roma / sea_raft estimator.")
_ESTIMATOR_OPTIONS = flags.DEFINE_string("estimator_options", "{}",
                                         'More estimator arguments as JSON, e.g. \'{"device": "cuda"}\'.')
_HEIGHT = flags.DEFINE_integer("height", SyntheticSpec.height, "Synthetic frame height.")
_WIDTH = flags.DEFINE_integer("width", SyntheticSpec.width, "Synthetic frame width.")
_DYNAMIC = flags.DEFINE_bool("dynamic", False, "Synthetic scenes with moving objects.")
flags.register_multi_flags_validator(
    ["videos", "video_list", "synthetic"], lambda f: (bool(f["videos"]) + (f["video_list"] is not None)
                                                       + (f["synthetic"] is not None)) == 1,
    "give exactly one of --videos, --video_list, --synthetic")


def parse_flags(argv):
    """Parse the flags above; the arguments left over (program name first) are Beam pipeline options."""
    try:
        return flags.FLAGS(argv, known_only=True)
    except flags.Error as error:
        sys.exit(f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull to see help on flags.")


def main(argv):
    pipeline_args = argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if _SYNTHETIC.value is not None:
        manifest = build_shards_beam(
            [input_seed(_SEED.value, k) for k in range(_SYNTHETIC.value)], _OUT.value, _NUM_SHARDS.value,
            source="synthetic", synthetic=SyntheticSpec(height=_HEIGHT.value, width=_WIDTH.value,
                                                        frames_per_clip=_CLIP_LENGTH.value,
                                                        pairs_per_clip=_PAIRS_PER_CLIP.value, dynamic=_DYNAMIC.value,
                                                        flow_stride=_FLOW_STRIDE.value),
            seed=_SEED.value, prefix=_PREFIX.value, pipeline_args=pipeline_args)
    else:
        config = VideoClipConfig(target_fps=_TARGET_FPS.value, clip_length=_CLIP_LENGTH.value,
                                 clip_stride=_CLIP_STRIDE.value, target_pixels=_TARGET_PIXELS.value,
                                 pairs_per_clip=_PAIRS_PER_CLIP.value, max_gap=_MAX_GAP.value,
                                 flow_mode=_FLOW_MODE.value, flow_stride=_FLOW_STRIDE.value)
        estimator_kwargs = {k: v for k, v in (("checkpoint_path", _CHECKPOINT_PATH.value), ("loader", _LOADER.value))
                            if v} | json.loads(_ESTIMATOR_OPTIONS.value)
        manifest = build_shards_beam(video_paths(_VIDEOS.value, _VIDEO_LIST.value), _OUT.value, _NUM_SHARDS.value,
                                     video_config=config, estimator=_ESTIMATOR.value,
                                     estimator_kwargs=estimator_kwargs, seed=_SEED.value, prefix=_PREFIX.value,
                                     pipeline_args=pipeline_args)
    print(f"{manifest['total_records']} clips in {manifest['num_shards']} shards, "
          f"{manifest['num_failures']} failed inputs -> {_OUT.value}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
