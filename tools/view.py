"""Look at a prediction in the browser: point cloud, cameras, per-frame image / depth / confidence.

  python tools/predict.py --input clip.mp4 --checkpoint flow3r.safetensors --out outputs/clip
  python tools/view.py outputs/clip                 # then open http://127.0.0.1:8080

Serves on 127.0.0.1 (this machine only) unless --host says otherwise (e.g. 0.0.0.0 to reach it from
another machine); Ctrl-C stops it. Library: flow3r_jax/inference/viewer.py.
"""

from __future__ import annotations

from absl import app, flags

from flow3r_jax.inference import viewer

_HOST = flags.DEFINE_string("host", viewer.DEFAULT_HOST, "Address to serve on.")
_PORT = flags.DEFINE_integer("port", viewer.DEFAULT_PORT, "Port to serve on.")
_MAX_POINTS = flags.DEFINE_integer("max_points", viewer.DEFAULT_MAX_POINTS,
                                   "Most points sent to the browser (frames are subsampled on a pixel grid).")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python tools/view.py OUT_DIR [--host ...] [--port ...]")
    viewer.view(argv[1], host=_HOST.value, port=_PORT.value, max_points=_MAX_POINTS.value)


if __name__ == "__main__":
    app.run(main)
