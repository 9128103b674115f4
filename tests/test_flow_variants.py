"""Flow-head variants: each trains a step through the real sharded train step on a real labeled +
unlabeled synthetic batch (flow loss finite and positive) and outputs flow (B, S, H, W, 2);
projective flow equals analytic reprojection on a known scene; the intrinsics estimate recovers a
centred pinhole in numpy and jax."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import model_sizes
from data_pipelines.synthetic import generate_clip
from flow3r_jax import sharding
from flow3r_jax.data import pipeline
from flow3r_jax.geometry.camera import depth_to_local_points, intrinsics_from_local_points, reprojection_flow
from flow3r_jax.geometry.ndc import pixel_grid, pixel_to_ndc
from flow3r_jax.losses import compute_losses, default_loss_config
from flow3r_jax.models import build_model
from flow3r_jax.models.flow3r import FLOW_HEAD_TYPES
from flow3r_jax.models.projective_flow import projective_flow
from flow3r_jax.train import optimizer, state as state_lib, train_step

HEIGHT, WIDTH = 28, 42


def _tiny_model(variant):
    cfg = model_sizes.flow3r_tiny()
    cfg.encoder.depth, cfg.decoder.depth, cfg.heads.depth = 1, 2, 1
    cfg.flow_head.type = variant
    return cfg


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    """Real shards: a labeled synthetic split and the same clips read as an unlabeled source."""
    cfg = ml_collections.ConfigDict(dict(
        cache_dir=str(tmp_path_factory.mktemp("variants")), num_frames=2, pairs_per_sample=2, height=HEIGHT,
        width=WIDTH, num_train_clips=4, num_eval_clips=4, augment=False))
    pipeline.ensure_synthetic_dataset(cfg)
    train_dir = pipeline.synthetic_split_dir(cfg, "train")
    cfg.sources = [{"path": train_dir, "labeled": True}, {"path": train_dir, "labeled": False}]
    return cfg


@pytest.mark.parametrize("variant", FLOW_HEAD_TYPES)
def test_variant_trains_a_step_and_outputs_flow(variant, data_cfg):
    cfg = _tiny_model(variant)
    opt_cfg = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, warmup_steps=0, final_lr_ratio=1.0,
        clip_norm=1.0, param_groups=[], no_decay_patterns=[]))
    loss_cfg = default_loss_config()
    mesh = sharding.make_mesh(-1, 1, 1)
    rules = sharding.rules_from_config([[n, list(a) if isinstance(a, tuple) else a]
                                        for n, a in sharding.DEFAULT_RULES])

    def model_fn(rngs):
        return build_model(cfg, rngs=rngs)

    layout = state_lib.make_layout(model_fn, lambda p: optimizer.make_optimizer(opt_cfg, 10, p), mesh, rules, 0)
    state = state_lib.init_state(layout, model_fn, seed=0)
    initial = jax.device_get(state.params)
    local = next(pipeline.make_train_iterator(data_cfg, global_batch_size=8, seed=0, process_index=0,
                                              process_count=1))
    assert local["is_labeled"].any() and not local["is_labeled"].all()
    step = train_step.make_train_step(
        layout, lambda out, batch: compute_losses(out, batch, loss_cfg),
        schedule=optimizer.learning_rate_schedule(opt_cfg, 10),
        frozen=optimizer.frozen_mask(layout.abstract.params, opt_cfg), accum_steps=1,
        mesh=mesh, rules=rules, example_batch=local)
    with sharding.use_rules(mesh, rules):
        batch = train_step.global_batch(local, mesh, rules)
        state, metrics = step(state, batch)
        out = jax.eval_shape(train_step.make_predict_fn(layout), state.params, state.buffers, batch["images"],
                             batch["pair_indices"])

    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    if variant == "none":
        assert "flow" not in out and "flow_head" not in initial
        assert float(metrics["loss/flow"]) == 0.0
        return
    assert out["flow"].shape == (8, 2, HEIGHT, WIDTH, 2)
    # the step's flow term is computed from that output against the batch's flow targets
    assert np.isfinite(float(metrics["loss/flow"])) and float(metrics["loss/flow"]) > 0.0
    # projective flow has no parameters of its own; the learned heads are updated by the step
    assert ("flow_head" in initial) == (variant != "projective")
    if variant != "projective":
        before = jax.tree.leaves(initial["flow_head"])
        after = jax.tree.leaves(jax.device_get(state.params)["flow_head"])
        assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def _centred_scene():
    """A synthetic clip's GT depth and poses with its intrinsics' principal point moved to the image
    centre (depth + centred K + poses define the scene exactly)."""
    clip = generate_clip(seed=3, height=HEIGHT, width=WIDTH, num_frames=3, dynamic=False)
    intrinsics = clip.intrinsics.astype(np.float64).copy()
    intrinsics[:, 0, 2], intrinsics[:, 1, 2] = (WIDTH - 1) / 2.0, (HEIGHT - 1) / 2.0
    intrinsics[:, 1, 1] *= 1.1   # fx != fy
    return clip.depth.astype(np.float64), intrinsics, clip.camera_poses.astype(np.float64)


def test_intrinsics_estimate_recovers_centred_pinhole_in_numpy_and_jax():
    depth, intrinsics, _ = _centred_scene()
    local = depth_to_local_points(depth, intrinsics)
    np.testing.assert_allclose(intrinsics_from_local_points(local), intrinsics, rtol=1e-9)
    estimate = intrinsics_from_local_points(jnp.asarray(local, jnp.float32))
    np.testing.assert_allclose(np.asarray(estimate), intrinsics, rtol=1e-4)   # float32


def test_projective_flow_equals_analytic_reprojection():
    depth, intrinsics, poses = _centred_scene()
    local = depth_to_local_points(depth, intrinsics)
    pairs = np.array([[[0, 1], [2, 0], [1, 2], [1, 1]]], np.int32)
    flow = np.asarray(projective_flow(jnp.asarray(local[None], jnp.float32), jnp.asarray(poses[None], jnp.float32),
                                      jnp.asarray(pairs)))
    assert flow.shape == (1, 4, HEIGHT, WIDTH, 2)
    identity = pixel_to_ndc(pixel_grid(HEIGHT, WIDTH, np), HEIGHT, WIDTH)
    for s, (i, j) in enumerate(pairs[0]):
        expected = reprojection_flow(depth[i], poses[i], poses[j], intrinsics[i], intrinsics[j])
        ok = expected.in_front
        assert ok.mean() > 0.9
        # tolerance: float32 arithmetic on coordinates of magnitude ~1 (NDC), ~0.005 pixel
        np.testing.assert_allclose(flow[0, s][ok], expected.coords_ndc[ok], atol=2e-4)
        if i != j:   # a real camera motion, not the identity
            assert np.abs(expected.coords_ndc[ok] - identity[ok]).max() > 0.01
