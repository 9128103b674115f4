"""Tiny Flow3r trained from scratch on synthetic clips: runs on a laptop CPU in a few minutes.

The synthetic data set is written into `data.cache_dir` on the first run. Losses fall visibly within a
few hundred steps. Usage:
  python tools/launch.py --config configs/flow3r_tiny.py --workdir /tmp/flow3r_tiny
"""

from configs import common
from flow3r_jax.models import sizes


def get_config(arg=None):
    del arg
    c = common.get_base_config()
    c.model = sizes.flow3r_tiny()
    c.total_steps = 300
    c.mesh.data = -1
    c.optimizer.learning_rate = 1e-3
    c.optimizer.b2 = 0.99
    c.optimizer.weight_decay = 0.01
    c.optimizer.warmup_steps = 20
    c.optimizer.final_lr_ratio = 0.1
    c.data.cache_dir = "/tmp/flow3r_jax_cache/synthetic_tiny"
    # Four shape buckets: 2 or 3 frames, landscape or portrait; 16 images per device per step
    # (2 frames: 8 clips, 3 frames: 5 clips on one device). Evaluation: 2 frames at 28 x 42.
    c.data.frame_counts = (2, 3)
    c.data.resolutions = ((28, 42), (42, 28))
    c.data.images_per_device = 16
    c.data.num_frames = 2
    c.data.height = 28
    c.data.width = 42
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 2
    c.checkpoint.replica_parallel_save = False   # saves nothing on CPU, costs a compile per shape
    c.logging.every_steps = 10
    c.logging.image_every_steps = 100
    c.evals.held_out.every_steps = 100
    c.evals.held_out.num_batches = 1     # the synthetic eval split holds data.num_eval_clips = 8 clips
    c.evals.held_out.batch_size = 8
    c.lock()
    return c
