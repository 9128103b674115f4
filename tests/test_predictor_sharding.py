"""Inference shards the parameters over all devices and matches the single-device forward
(tolerance 1e-5 absolute: only reduction order differs)."""

import jax
import numpy as np
from flax import nnx

from flow3r_jax.inference.predictor import model_predict_fn
from flow3r_jax.models import build_model
from flow3r_jax.models.sizes import get_model_config


def test_sharded_inference_matches_single_device():
    assert jax.device_count() == 8
    model = build_model(get_model_config("flow3r_tiny"), rngs=nnx.Rngs(0))
    images = np.random.default_rng(1).uniform(size=(1, 3, 28, 42, 3)).astype(np.float32)
    pairs = np.array([[[0, 1], [2, 0]]], np.int32)
    expected = nnx.jit(lambda m, x, p: m(x, p))(model, images, pairs)
    got = model_predict_fn(model)(images, pairs)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], np.asarray(expected[key]), atol=1e-5, rtol=0, err_msg=key)
