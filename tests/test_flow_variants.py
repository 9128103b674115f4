"""Flow-head variants: each trains a step through the real sharded train step on a real labeled +
unlabeled synthetic batch (flow loss finite and positive) and outputs flow (B, S, H, W, 2);
projective flow equals analytic reprojection on a known scene; the intrinsics estimate recovers a
centred pinhole in numpy and jax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import tiny_config

from flow3r_jax import sharding
from flow3r_jax.data import pipeline
from flow3r_jax.data.synthetic import generate_clip
from flow3r_jax.data.synthetic_dataset import ensure_synthetic_dataset, synthetic_split_dir
from flow3r_jax.geometry.camera import depth_to_local_points, intrinsics_from_local_points, reprojection_flow
from flow3r_jax.geometry.ndc import pixel_grid, pixel_to_ndc
from flow3r_jax.models.flow3r import FLOW_HEAD_TYPES
from flow3r_jax.models.projective_flow import projective_flow
from flow3r_jax.train import setup, train_step

HEIGHT, WIDTH = 28, 42


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("variants")


def _variant_config(variant, cache_dir):
    """The tiny config, shallower, with the variant's flow head; a labeled synthetic split and the same
    clips read as an unlabeled source."""
    config = tiny_config(cache_dir, **{
        "model.encoder.depth": 1, "model.decoder.depth": 2, "model.heads.depth": 1, "model.flow_head.type": variant,
        "data.num_train_clips": 4, "data.num_eval_clips": 4, "data.augment": False, "optimizer.warmup_steps": 0,
        "total_steps": 10})
    train_dir = synthetic_split_dir(config.data, "train")
    ensure_synthetic_dataset(config.data)
    config.data.sources = ({"path": train_dir, "labeled": True}, {"path": train_dir, "labeled": False})
    return config


@pytest.mark.parametrize("variant", FLOW_HEAD_TYPES)
def test_variant_trains_a_step_and_outputs_flow(variant, cache_dir):
    config = _variant_config(variant, cache_dir)
    program = setup.build_program(config, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    state = program.init_state()
    initial = jax.device_get(state.params)
    local = next(pipeline.make_train_iterator(config.data, buckets=list(program.buckets), seed=0, process_index=0,
                                              process_count=1))
    assert local["is_labeled"].any() and not local["is_labeled"].all()
    with sharding.use_rules(program.mesh, program.rules):
        batch = program.global_batch(local)
        state, metrics = program.train_step(state, batch)
        out = jax.eval_shape(lambda params, buffers, wire: _forward(program, params, buffers, wire), state.params,
                             state.buffers, batch)

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
        assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def _forward(program, params, buffers, wire):
    """Model outputs on the batch contract of a wire batch, expanded as the train step does."""
    batch = train_step.expand_wire_batch(wire)
    return program.layout.model(params, buffers)(batch["images"], batch["pair_indices"])


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
