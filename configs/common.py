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

from configs import model_sizes
from flow3r_jax import sharding
from flow3r_jax.losses import default_loss_config


def _placeholder(kind):
    return ml_collections.config_dict.placeholder(kind)


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    # Filled from --workdir by tools/launch.py; checkpoints, TensorBoard events and logs go there.
    c.workdir = ""

    # Architecture (configs/model_sizes.py); recipes replace it with their size.
    c.model = model_sizes.get_model_config("flow3r_tiny")

    # Mesh sizes; one of them may be -1 (all remaining devices).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical-axis -> mesh-axes table (see flow3r_jax/sharding.py).
    c.sharding = ml_collections.ConfigDict(dict(
        rules=sharding.DEFAULT_RULES))

    # Samples (clips) per optimizer step over all hosts; split into grad_accum_steps micro-batches.
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

    c.loss = default_loss_config()

    # Input pipeline (keys and meanings: flow3r_jax/data/pipeline.py). Empty / None values mean
    # "derive it" as described there.
    c.data = ml_collections.ConfigDict(dict(
        sources=({"synthetic": "train"},),
        eval_sources=({"synthetic": "eval"},),
        cache_dir="",
        num_frames=2,
        pairs_per_sample=2,
        height=28,
        width=42,
        resolutions=(),
        pixel_budget=0,
        aspect_range=(0.5, 2.0),
        num_aspects=5,
        patch_size=14,
        eval_resolution=(),
        crop_scale_range=(0.8, 1.0),
        augment=True,
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        hue=0.02,
        worker_count=0,
        worker_buffer_size=2,
        read_threads=1,
        read_buffer_size=4,
        skip_corrupt=False,
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

    c.eval = ml_collections.ConfigDict(dict(
        every_steps=1000,
        num_batches=4,
        batch_size=8,
    ))

    # kind: "scratch" (fresh init), "flow3r" (a released Flow3r state_dict) or "pi3" (a pi3
    # state_dict; the flow head keeps its fresh initialisation).
    c.init = ml_collections.ConfigDict(dict(
        kind="scratch",
        checkpoint_path="",
    ))
    return c
