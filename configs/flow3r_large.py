"""Paper-scale Flow3r recipe: pi3 initialisation, frozen encoder, factored flow supervision.

What the paper and pi3 publish is used as is (AdamW lr 5e-5, betas (0.9, 0.95), weight decay 0.05,
cosine schedule, clip 1.0, bf16, gradient checkpointing, frozen encoder, ~834K unlabeled clips plus
labeled data). Everything the paper does not state is a project choice, marked "choice" below with
its reason. Usage (the pi3 checkpoint path is required):
  python tools/launch.py --config configs/flow3r_large.py --workdir gs://bucket/flow3r_large \\
      --config.init.checkpoint_path=/path/to/pi3.safetensors
"""

from configs import common
from flow3r_jax.models import sizes


def get_config(arg=None):
    del arg
    c = common.get_base_config()
    c.model = sizes.flow3r_large()
    c.model.dtype = "bfloat16"          # pi3: bf16 mixed precision (parameters stay float32)
    # pi3: gradient checkpointing; choice: "full" (save nothing per block), the policy under which the
    # largest bucket (one 24 x 518 x 518 clip per device) fits 60 GiB per device: 21.6 GiB against 72.5
    # GiB with "dots" (README, memory plan).
    c.model.remat_policy = "full"
    # model.attention_impl stays "auto": splash attention on TPU, cuDNN flash attention on GPU (bf16),
    # the chunked XLA kernel on CPU; all three keep attention memory linear in the up to 24 x (5 + 37 x 37)
    # tokens of a clip's global blocks instead of quadratic (flow3r_jax/models/attention.py).

    # Shape buckets (flow3r_jax/data/buckets.py), pi3's ranges: 2-24 frames per clip, 100K-255K pixels
    # per image, aspect ratios W / H 0.5-2.0, patch 14. choice: 4 frame counts x 2 pixel levels x 3
    # aspects = 24 buckets, each compiled once at start (set compilation_cache_dir to reuse them).
    c.data.frame_counts = (2, 8, 16, 24)
    c.data.pixel_range = (100_000, 255_000)
    c.data.num_pixel_levels = 2
    c.data.aspect_range = (0.5, 2.0)
    c.data.num_aspects = 3
    # Per-device budget: at most the tokens of one 24 x 518 x 518 clip (24 x 37 x 37 = 32,856), the
    # memory plan's reference point (<= 60 GiB per device with remat), and pi3's 64 images per GPU. So
    # the 24-frame buckets hold 1 clip per device and the 2-frame ones 32 (64 images); global batch =
    # clips per device x data x fsdp devices (global_batch_size is unused).
    c.data.tokens_per_device = 24 * 37 * 37
    c.data.images_per_device = 64
    # choice: 40K steps; with 64 chips a step holds 64-2048 clips (128-4096 images).
    c.total_steps = 40_000
    c.grad_accum_steps = 1              # choice: raise on small slices to keep the global batch
    # choice: parameters and optimizer state sharded over groups of 8 chips (one host), data
    # parallel across hosts; a 1B model with Adam state (~16 GB f32) fits comfortably this way.
    c.mesh.data = -1
    c.mesh.fsdp = 8
    c.mesh.tensor = 1

    c.optimizer.learning_rate = 5e-5    # pi3
    c.optimizer.b1 = 0.9                # pi3
    c.optimizer.b2 = 0.95               # pi3
    c.optimizer.weight_decay = 0.05     # pi3
    c.optimizer.clip_norm = 1.0         # pi3
    c.optimizer.warmup_steps = 1_000    # choice: 2.5% of training, common for fine-tuning ViTs
    c.optimizer.final_lr_ratio = 0.01   # choice: cosine down to 1% of the peak
    c.optimizer.param_groups = (
        ("^encoder/", 0.0, False, True),    # pi3: frozen DINOv2 encoder
        # choice: the flow head starts from scratch while the trunk is pre-trained, so it gets a
        # 10x learning rate to catch up within the short fine-tuning run.
        ("^flow_head/", 10.0, True, False),
    )

    # Evaluation shape. choice: 8 frames at 392 x 518 = 203K pixels, inside pi3's 100K-255K.
    c.data.num_frames = 8
    c.data.height = 392
    c.data.width = 518
    c.data.pairs_per_sample = 8
    c.data.pairs_per_frame = 1.0        # choice: one flow pair per frame on average, in every bucket
    # The shard directories must be given (--config.data.sources=...); see data_pipelines/.
    # choice: half of each batch from unlabeled video (pseudo-flow only), half from labeled 3D data;
    # the paper mixes ~834K unlabeled clips with labeled data but gives no ratio.
    c.data.sources = (
        {"name": "unlabeled_video", "path": "", "labeled": False, "weight": 0.5},
        {"name": "labeled", "path": "", "labeled": True, "weight": 0.5},
    )
    c.data.eval_sources = ({"name": "labeled_eval", "path": "", "labeled": True},)
    c.data.worker_count = 8             # choice: decoding batches of up to 4096 images needs several processes
    c.data.read_threads = 4

    c.checkpoint.every_steps = 1_000    # choice: ~1 checkpoint per hour on a v5p-64 class slice
    c.checkpoint.keep = 3
    c.logging.every_steps = 50
    c.logging.image_every_steps = 2_000
    c.evals.held_out.every_steps = 2_000
    c.evals.held_out.num_batches = 16
    c.evals.held_out.batch_size = 16

    c.init.kind = "pi3"                 # paper: Flow3r is trained starting from pi3
    c.lock()
    return c
