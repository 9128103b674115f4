"""Shape buckets: schedule, batch sizes from the per-device budget, the pipeline's per-bucket shapes and
labels, exact resume across buckets and a fixed number of train-step compilations (tiny model, real
ArrayRecord shards, Grain iterators and Orbax checkpoints, 8 simulated CPU devices)."""

import shutil

import jax
import numpy as np
import pytest
from support import data_config, logged_scalars, reprojection_errors, tiny_config, with_values

from configs import flow3r_large
from flow3r_jax import sharding
from flow3r_jax.data import pipeline
from flow3r_jax.data.buckets import Bucket, BucketSchedule, train_buckets
from flow3r_jax.data.synthetic_dataset import ensure_synthetic_dataset
from flow3r_jax.data.wire import expand_batch
from flow3r_jax.train import loop, setup

RUN_SEED = 5   # its first 4 steps take buckets 0, 1, 1, 0: the bucket changes at the checkpoint
# Four buckets: 2 or 4 frames, landscape or portrait; one flow pair per frame.
BUCKETS_DATA = dict(frame_counts=(2, 4), resolutions=((28, 42), (42, 28)), pairs_per_frame=1.0, num_frames=2,
                    pairs_per_sample=2, height=28, width=42, num_train_clips=8, num_eval_clips=2,
                    synthetic_num_shards=2, synthetic_height=42, synthetic_width=56, synthetic_frames_per_clip=5,
                    synthetic_pairs_per_clip=8, crop_scale_range=(0.6, 1.0))


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    cfg = data_config(cache_dir=str(tmp_path_factory.mktemp("synthetic")), **BUCKETS_DATA)
    ensure_synthetic_dataset(cfg)
    return cfg


def test_schedule_is_a_function_of_seed_and_step():
    buckets = [Bucket(2, 28, 42, 2, 8, 1176), Bucket(3, 28, 42, 2, 4, 1176), Bucket(2, 42, 28, 2, 16, 1176)]
    steps = np.arange(3000)
    reference = BucketSchedule(buckets, seed=7)
    drawn = np.array([reference.bucket_index(int(s)) for s in steps])
    # Another process asking for the steps in another order (random access, as Grain workers do) agrees.
    other = BucketSchedule(buckets, seed=7)
    for step in (2999, 1500, 0, 1023, 1024):
        assert other.bucket_index(step) == drawn[step]
        assert other.first_sample(step) == reference.first_sample(step)
    sizes = np.array([b.batch_size for b in buckets])[drawn]
    np.testing.assert_array_equal([reference.first_sample(int(s)) for s in steps], np.cumsum(sizes) - sizes)
    counts = np.bincount(drawn, minlength=3) / len(steps)
    assert np.all(np.abs(counts - 1 / 3) < 0.04), counts          # uniform over buckets (3000 draws)
    changed = np.array([BucketSchedule(buckets, seed=8).bucket_index(int(s)) for s in steps[:100]])
    assert np.mean(changed != drawn[:100]) > 0.4


def test_batch_sizes_follow_the_per_device_budget():
    cfg = data_config(frame_counts=(2, 3), resolutions=((28, 42), (56, 56)), tokens_per_device=48)
    # Tokens per clip: 28x42 -> 2 x 3 = 6 per frame, 56x56 -> 16 per frame.
    got = {(b.num_frames, b.height): b.batch_size
           for b in train_buckets(cfg, global_batch_size=0, batch_devices=8, grad_accum_steps=2, process_count=2)}
    assert got == {(2, 28): (48 // 12) * 2 * 8, (3, 28): (48 // 18) * 2 * 8,
                   (2, 56): (48 // 32) * 2 * 8, (3, 56): (48 // 48) * 2 * 8}
    limited = train_buckets(with_values(cfg, images_per_device=5), global_batch_size=0, batch_devices=1)
    assert [b.batch_size for b in limited] == [2, 1, 1, 1]          # min(tokens, 5 images // N) clips
    with pytest.raises(ValueError, match="4x56x56"):
        train_buckets(with_values(cfg, frame_counts=(4,)), global_batch_size=0, batch_devices=8)
    fixed = train_buckets(with_values(cfg, tokens_per_device=0), global_batch_size=6, batch_devices=8)
    assert {b.batch_size for b in fixed} == {6}
    with pytest.raises(ValueError, match="does not split into 4 processes"):
        train_buckets(with_values(cfg, tokens_per_device=0), global_batch_size=6, process_count=4)


def test_global_batch_counts_the_devices_of_the_batch_axis(tmp_path):
    config = tiny_config(tmp_path, **{"data.frame_counts": (2, 3), "data.images_per_device": 6})
    assert {(b.num_frames, b.batch_size) for b in setup.build_program(config, sharding.make_mesh(2, 4, 1)).buckets} \
        == {(2, 3 * 8), (3, 2 * 8)}
    assert {(b.num_frames, b.batch_size) for b in setup.build_program(config, sharding.make_mesh(2, 2, 2)).buckets} \
        == {(2, 3 * 4), (3, 2 * 4)}                                # tensor axis holds no batch


def test_large_recipe_buckets_are_pi3_ranges_within_one_reference_clip_per_device():
    config = flow3r_large.get_config()
    patch = config.data.patch_size
    buckets = train_buckets(config.data, global_batch_size=0, batch_devices=64)
    assert len(buckets) == 24
    reference = 24 * (518 // patch) ** 2
    for b in buckets:
        assert 2 <= b.num_frames <= 24 and b.num_pairs == b.num_frames
        assert 0.97 * 100_000 <= b.height * b.width <= 1.02 * 255_000
        assert 0.49 <= b.width / b.height <= 2.01 and b.height % patch == 0 and b.width % patch == 0
        per_device = b.batch_size // 64
        assert per_device * b.tokens(patch) <= reference and per_device * b.num_frames <= 64
    assert {b.num_frames: b.batch_size // 64 for b in buckets if b.height == b.width == 504} == \
        {2: 12, 8: 3, 16: 1, 24: 1}


def test_pipeline_builds_each_bucket_with_consistent_labels_and_hosts_agree(data_cfg):
    """Static scenes, every bucket: flow targets agree with the transformed depth / intrinsics / poses
    (tolerances as tests/test_data_pipeline.py: reprojected depth median 0.45 px, max 1.5 px; projected
    world points 0.05 px). Two simulated hosts build the halves of the one-host batches; evaluation keeps
    one fixed shape."""
    buckets = train_buckets(data_cfg, global_batch_size=2)
    args = dict(buckets=buckets, seed=3)
    one_host = pipeline.make_train_iterator(data_cfg, process_index=0, process_count=1, **args)
    hosts = [pipeline.make_train_iterator(data_cfg, process_index=p, process_count=2, **args) for p in range(2)]
    schedule = BucketSchedule(buckets, seed=3)
    steps = next(n for n in range(4, 64) if len({schedule.bucket_index(s) for s in range(n)}) == len(buckets))
    batches = []
    for step in range(steps):
        batch = next(one_host)
        bucket = schedule.bucket(step)
        assert batch["images"].shape == (2, bucket.num_frames, bucket.source_pixels, 3)
        assert batch["source_rows"].shape == (2, bucket.height) and batch["source_cols"].shape == (2, bucket.width)
        assert batch["flow_quantized"].shape == (2, bucket.num_frames, bucket.source_pixels, 2)
        parts = [next(h) for h in hosts]
        for key in batch:
            np.testing.assert_array_equal(np.stack([parts[0][key][0], parts[1][key][0]]), batch[key], err_msg=key)
        batches.append(batch)
    for iterator in (one_host, *hosts):
        iterator.close()
    expanded = [expand_batch(b, np) for b in batches]
    depth_errors, point_errors = reprojection_errors(expanded)
    assert depth_errors.size > 2000 and np.mean([b["flow_mask"].mean() for b in expanded]) > 0.2
    assert point_errors.max() < 0.05
    assert np.median(depth_errors) < 0.45 and depth_errors.max() < 1.5
    assert pipeline.make_eval_dataset(data_cfg, batch_size=2)[0]["images"].shape == (2, 2, 28, 42, 3)


# flow3r_tiny with two of its buckets (2 frames landscape, 3 frames portrait) at one clip per device (8 clips
# on the 8 devices), 4 steps, checkpoints at 2 and 4.
RUN_OVERRIDES = {"data.buckets": ((2, 28, 42), (3, 42, 28)), "data.images_per_device": 3,
                 "total_steps": 4, "checkpoint.every_steps": 2, "checkpoint.keep": 3, "logging.every_steps": 1,
                 "evals.held_out.every_steps": 0, "logging.image_every_steps": 0, "optimizer.warmup_steps": 1,
                 "seed": RUN_SEED}


@pytest.fixture(scope="module")
def bucket_runs(tmp_path_factory):
    """The run straight (counting train-step compilations); then a copy without checkpoint 4 and its
    TensorBoard events, relaunched: it resumes from checkpoint 2 (model state and Grain position)."""
    root = tmp_path_factory.mktemp("bucket_runs")
    config = tiny_config(root / "synthetic", **RUN_OVERRIDES)
    compiles = []

    def count_train_step_compiles(event, duration, **kwargs):
        del duration
        if event == "/jax/core/compile/backend_compile_duration" and kwargs.get("fun_name") == "jit(step)":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(count_train_step_compiles)
    try:
        straight = loop.train_and_evaluate(config, str(root / "straight"))
    finally:
        jax.monitoring.unregister_event_duration_listener(count_train_step_compiles)
    shutil.copytree(root / "straight", root / "resumed")
    shutil.rmtree(root / "resumed" / "checkpoints" / "4")
    shutil.rmtree(root / "resumed" / "tensorboard")
    resumed = loop.train_and_evaluate(config, str(root / "resumed"))
    return root, straight, resumed, len(compiles), setup.build_program(config).buckets


def test_resume_across_buckets_reproduces_the_straight_run(bucket_runs):
    root, straight, resumed, _, buckets = bucket_runs
    schedule = BucketSchedule(list(buckets), seed=RUN_SEED)
    assert [schedule.bucket_index(s) for s in range(4)] == [0, 1, 1, 0]  # buckets change at the checkpoint
    expected, got = logged_scalars(root / "straight", "loss"), logged_scalars(root / "resumed", "loss")
    assert sorted(expected) == [1, 2, 3, 4] and sorted(got) == [3, 4]
    for step in (3, 4):
        assert np.isfinite(expected[step])
        np.testing.assert_array_equal(got[step], expected[step], err_msg=f"step {step}")
    for a, b in zip(jax.tree.leaves(jax.device_get(straight.state.params)),
                    jax.tree.leaves(jax.device_get(resumed.state.params)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_train_step_compiles_once_per_bucket(bucket_runs):
    _, _, _, compiles, buckets = bucket_runs
    assert len(buckets) == 2 and compiles == len(buckets)
