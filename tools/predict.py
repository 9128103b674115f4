"""Predict geometry, cameras and flow for a folder of images or a video, and export viewable files.

  python tools/predict.py --input my_frames/ --checkpoint flow3r.bin --pairs 0-1,1-2 --out outputs/demo
  python tools/predict.py --input clip.mp4 --workdir workdirs/run --fps 3 --out outputs/clip --view
  python tools/predict.py --input clip.mp4 --random_init --model flow3r_tiny --out outputs/smoke

Outputs (flow3r_jax/inference/export.py): points.ply, scene.glb (y-up glTF), colmap/ (COLMAP binary
model), cameras.json, maps/, flow/, prediction.json (metadata and warnings).
"""

import sys

from absl import app, flags

from flow3r_jax.inference import model_source
from flow3r_jax.inference.export import ExportOptions
from flow3r_jax.inference.pipeline import PredictOptions, check_inputs, parse_pairs, predict_to_files
from flow3r_jax.inference.preprocess import DEFAULT_PIXEL_LIMIT

model_source.define_flags()
_INPUT = flags.DEFINE_string("input", None, "Folder of images (png/jpg, sorted by name) or a video file.",
                             required=True)
_OUT = flags.DEFINE_string("out", "outputs/predict", "Output folder.")
_PAIRS = flags.DEFINE_string("pairs", None, "Flow pairs of kept frames, e.g. 0-1,1-2.")
_FPS = flags.DEFINE_float("fps", 5.0, "Frames kept per second of a video (0: every frame); image folders ignore it.")
_INTERVAL = flags.DEFINE_integer("interval", 1, "Keep every k-th image / sampled video frame.")
_PIXEL_LIMIT = flags.DEFINE_integer("pixel_limit", DEFAULT_PIXEL_LIMIT, "Max pixels per frame (pi3 rule).")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 64, "Max frames per forward pass.")
_OVERLAP = flags.DEFINE_integer("overlap", 8, "Frames shared by consecutive chunks (their Sim(3) alignment).")
_CONF_THRESHOLD = flags.DEFINE_float("conf_threshold", 0.1, "sigmoid(conf) above which a pixel is a point.")
_GLB = flags.DEFINE_bool("glb", True, "Write scene.glb (points and camera frustums, y up).")
_GLB_MAX_POINTS = flags.DEFINE_integer("glb_max_points", 1_000_000, "Point budget of scene.glb.")
_COLMAP = flags.DEFINE_bool("colmap", True, "Write a COLMAP binary model under colmap/.")
_COLMAP_MAX_POINTS = flags.DEFINE_integer("colmap_max_points", 200_000, "Point budget of the COLMAP model.")
_VIEW = flags.DEFINE_bool("view", False, "Then open the outputs in the browser viewer (tools/view.py) until Ctrl-C.")
_VIEW_PORT = flags.DEFINE_integer("view_port", 8080, "Port of the viewer on 127.0.0.1 (with --view).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    source = model_source.from_flags()
    export = ExportOptions(conf_threshold=_CONF_THRESHOLD.value, glb=_GLB.value, glb_max_points=_GLB_MAX_POINTS.value,
                           colmap=_COLMAP.value, colmap_max_points=_COLMAP_MAX_POINTS.value,
                           seed=flags.FLAGS.seed)
    try:
        options = PredictOptions(input=_INPUT.value, out=_OUT.value, pairs=parse_pairs(_PAIRS.value),
                                 interval=_INTERVAL.value, fps=_FPS.value or None, pixel_limit=_PIXEL_LIMIT.value,
                                 chunk_size=_CHUNK_SIZE.value, overlap=_OVERLAP.value, export=export)
        frames = check_inputs(source, options)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"predict: {error}")
    metadata = predict_to_files(source, options, frames)
    print(f"wrote {metadata['num_points']} points and {metadata['num_frames']} cameras to {options.out}"
          + (f" ({len(metadata['warnings'])} warnings, listed in prediction.json)" if metadata["warnings"] else ""))
    if _VIEW.value:
        from flow3r_jax.inference.viewer import view

        view(options.out, port=_VIEW_PORT.value)


if __name__ == "__main__":
    app.run(main)
