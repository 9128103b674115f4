"""Shared base of every training config.

`get_base_config()` returns an unlocked ConfigDict holding every key a training run reads; the
per-recipe configs (`flow3r_tiny.py`, `flow3r_large.py`) change values only, then lock it. A locked
ConfigDict refuses unknown keys and ml_collections refuses values of the wrong type, so a mistyped
`--config.x=...` override fails at start-up with the offending key named. Sequence-valued keys are
tuples, the sequence type overrides accept: `--config.optimizer.param_groups='(("^encoder/", 0.0,
False, True),)'`.
"""

from __future__ import annotations

import ml_collections

from flow3r_jax import sharding
from flow3r_jax.models import sizes


def _placeholder(kind):
    return ml_collections.config_dict.placeholder(kind)


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    # Persistent XLA compilation cache folder (local or URL); empty: off. A relaunch then loads the
    # compiled bucket programs instead of compiling them again.
    c.compilation_cache_dir = ""
    # Filled from --workdir by tools/launch.py; checkpoints, TensorBoard events and logs go there.
    c.workdir = ""

    # Architecture (flow3r_jax/models/sizes.py); recipes replace it with their size.
    c.model = sizes.get_model_config("flow3r_tiny")

    # Mesh sizes; one of them may be -1 (all remaining devices).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical-axis -> mesh-axes table (see flow3r_jax/sharding.py).
    c.sharding = ml_collections.ConfigDict(dict(
        rules=sharding.DEFAULT_RULES))

    # Samples (clips) per optimizer step over all hosts when no per-device budget is set
    # (data.tokens_per_device, data.images_per_device); split into grad_accum_steps micro-batches.
    c.global_batch_size = 8
    c.grad_accum_steps = 1

    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-4,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.05,
        warmup_steps=100,
        # Cosine decay from the peak to learning_rate * final_lr_ratio at total_steps.
        final_lr_ratio=0.0,
        clip_norm=1.0,
        # Parameter groups, first match wins: [regex on the "a/b/c" parameter path, lr multiplier,
        # weight decay on (True) / off (False), frozen]. Unmatched parameters: multiplier 1, decay on.
        param_groups=(),
        # Parameters never decayed, even in a decaying group (regexes on the path): norms, biases
        # (also fused qkv biases), class / register tokens, position embeddings, LayerScale gammas.
        # Parameters of rank <= 1 are never decayed either.
        no_decay_patterns=("norm", "bias$", "token", "pos_embed", "gamma$"),
    ))

    # The released loss. point_weight, normal_weight: local point and normal losses; camera_weight:
    # weight of (camera_trans_alpha * Huber(camera_huber_delta) translation + rotation); conf_weight:
    # confidence BCE (0 disables; the paper's confidence stage uses 0.05), conf_threshold: weighted L1
    # error below which a pixel's confidence target is 1; flow_weight: flow loss, flow_charbonnier_alpha /
    # _c: generalised Charbonnier shape and scale (NDC units), flow_mask_threshold: co-visibility mask
    # threshold; scale_align_points: valid-pixel subset used to solve the per-sample point scale.
    c.loss = ml_collections.ConfigDict(dict(
        point_weight=1.0,
        normal_weight=1.0,
        camera_weight=0.1,
        camera_trans_alpha=100.0,
        camera_huber_delta=0.1,
        conf_weight=0.0,
        conf_threshold=0.02,
        flow_weight=0.01,
        flow_charbonnier_alpha=0.5,
        flow_charbonnier_c=0.24,
        flow_mask_threshold=0.5,
        scale_align_points=4096,
    ))

    # Input pipeline (flow3r_jax/data/pipeline.py).
    c.data = ml_collections.ConfigDict(dict(
        # Training sources, mixed by weight; entries {path | synthetic, weight, labeled, name}
        # (flow3r_jax/data/sources.py). "synthetic": a split of the embedded synthetic dataset.
        sources=({"synthetic": "train"},),
        # Held-out sources (weights ignored), read by the "held_out" evaluator.
        eval_sources=({"synthetic": "eval"},),
        # Folder of the synthetic splits (built on first use).
        cache_dir="",
        # Training batches take the static shapes of a set of buckets (flow3r_jax/data/buckets.py): each
        # global batch is B clips x N frames x H x W with S flow pairs, one bucket per step drawn uniformly
        # by (seed, step), the same on every host; the train step is compiled once per bucket at start.
        # Evaluation uses one fixed shape: num_frames, pairs_per_sample and eval_resolution.
        # N frames and S flow pairs per sample (pairs padded with zero-mask pairs); the frame count of the
        # buckets when frame_counts is empty, and the evaluation frame count.
        num_frames=2,
        pairs_per_sample=2,
        # > 0: S = round(pairs_per_frame * N) (at least 1) pairs per training clip instead of pairs_per_sample.
        pairs_per_frame=0.0,
        # Output size when neither resolutions nor pixel_range is set; also the evaluation size.
        height=28,
        width=42,
        # Stored pixels per frame the wire buffers of an H x W batch hold, as a multiple of H x W
        # (flow3r_jax/data/wire.py): frames, labels and flow grids up to that size ship as stored and the
        # device resamples them; larger ones (and frames shrunk more than 2x) are resampled on the host.
        # Larger values move the host's resize to the device for more sources at more link bytes.
        wire_source_area=1.25,
        # Explicit ((N, H, W), ...) buckets; empty: every frame count x every resolution below.
        buckets=(),
        # Frame counts N of the buckets; empty: (num_frames,). A clip shorter than its batch's N is a corrupt
        # record (RecordError, or replaced with skip_corrupt), so the shards' clips need max(N) frames.
        frame_counts=(),
        # Explicit (H, W) list.
        resolutions=(),
        # (low, high): resolutions with H * W at num_pixel_levels pixel counts log-spaced over the range,
        # each with num_aspects aspect ratios W / H log-spaced over aspect_range (one level: the geometric
        # mean); sides rounded to multiples of patch_size.
        pixel_range=(),
        num_pixel_levels=1,
        aspect_range=(0.5, 2.0),
        num_aspects=5,
        # Per-device budget of one micro-batch; 0 = not limited by that measure. With either set, a bucket's
        # clips per device are the largest whole number within every set budget (patch tokens
        # N * (H / patch) * (W / patch) per clip; N images per clip), and its global batch is that number
        # x grad_accum_steps x the devices the batch axis is split over (mesh axes of the "batch" rule);
        # global_batch_size is then unused. With neither, every bucket's global batch is global_batch_size.
        # Loss and learning rate with varying batch sizes: every loss term is a mean over the batch's
        # samples (flow3r_jax/losses/total.py), so each step's gradient has the same scale whatever its
        # bucket; the learning-rate schedule counts optimizer steps, not samples, and is the same for every
        # bucket (as pi3's dynamic batches). Larger buckets only lower the gradient noise of their step.
        tokens_per_device=0,
        images_per_device=0,
        # Both sides of every resolution are multiples of it.
        patch_size=14,
        # (H, W) of evaluation samples; empty: (height, width), else the first bucket's.
        eval_resolution=(),
        # Random crop side as a fraction of the largest crop of the bucket's aspect ratio.
        crop_scale_range=(0.8, 1.0),
        # Photometric augmentation of training samples: factors 1 + U(-a, a) for brightness, contrast,
        # saturation; hue rotation U(-hue, hue) half-turns.
        augment=True,
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        hue=0.02,
        # Grain worker processes (0 = in the main process), batches buffered per worker, threads and
        # prefetched batches per process.
        worker_count=0,
        worker_buffer_size=2,
        read_threads=1,
        read_buffer_size=4,
        # Replace a corrupt record by the next one of its source (counted, logged) instead of raising.
        skip_corrupt=False,
        # The synthetic splits (flow3r_jax/data/synthetic_dataset.py): clips per split; rendered size
        # (None: height, width); frames and stored pairs per clip (None: max(4, num_frames),
        # 2 * pairs_per_sample); shards; moving objects; seed (the eval split uses synthetic_seed + 1).
        num_train_clips=64,
        num_eval_clips=8,
        synthetic_height=_placeholder(int),
        synthetic_width=_placeholder(int),
        synthetic_frames_per_clip=_placeholder(int),
        synthetic_pairs_per_clip=_placeholder(int),
        synthetic_num_shards=4,
        synthetic_dynamic=False,
        synthetic_seed=0,
    ))

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=500,
        keep=3,
        async_save=True,
        # Orbax replica-parallel writes of replicated arrays (see train/checkpointing.py).
        replica_parallel_save=True,
    ))

    c.logging = ml_collections.ConfigDict(dict(
        every_steps=10,
        # Depth / flow prediction-vs-target images; 0 disables.
        image_every_steps=500,
        # Profiler trace of num_steps steps starting at start_step; num_steps 0 disables.
        profile_start_step=10,
        profile_num_steps=0,
    ))

    # Evaluators (flow3r_jax/evaluation/evaluators.py): name -> {type, every_steps (0: not during
    # training), options of the type}. held_out: batch_size, num_batches (0 = all), angle_thresholds,
    # point_metrics. benchmarks: benchmarks, data_root, pixel_limit, seed.
    c.evals = ml_collections.ConfigDict(dict(
        held_out=dict(type="held_out", every_steps=1000, batch_size=8, num_batches=4, angle_thresholds=(30,),
                      point_metrics=False),
    ))

    # kind: "scratch" (fresh init), "flow3r" (a released Flow3r state_dict) or "pi3" (a pi3
    # state_dict; the flow head keeps its fresh initialisation).
    c.init = ml_collections.ConfigDict(dict(
        kind="scratch",
        checkpoint_path="",
    ))
    return c
