"""Gradient-safe building blocks of the losses: safe norms, input sanitising and guarded pooling.

A sample whose inputs or loss term are not finite is dropped from that term (zeroed, not propagated)
and counted. Inputs are sanitised first (non-finite entries replaced by 0) so that the dropped branch
has finite Jacobians and a NaN cannot reach the gradient through the zero cotangent.
"""

from typing import NamedTuple

import jax.numpy as jnp


def safe_norm(vectors, axis: int = -1):
    """Euclidean norm whose gradient is 0 (not NaN) at the zero vector."""
    squared = jnp.sum(vectors**2, axis=axis)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def finite_or_zero(values):
    """Replace non-finite entries by 0 (the gradient passes through finite entries only)."""
    return jnp.where(jnp.isfinite(values), values, 0.0)


def sample_is_finite(values):
    """(B, ...) -> (B,) bool: every entry of the sample is finite."""
    return jnp.all(jnp.isfinite(values).reshape(values.shape[0], -1), axis=-1)


class PooledTerm(NamedTuple):
    value: jnp.ndarray  # scalar: sum of kept per-sample sums / sum of kept per-sample counts (0 if none)
    nonfinite: jnp.ndarray  # scalar int32: samples the term applied to that were dropped as non-finite


def pool_samples(sums, counts, applies, inputs_finite) -> PooledTerm:
    """Pool per-sample (sum, count) pairs over the samples a term applies to, dropping non-finite ones.

    sums, counts (B,) float; applies, inputs_finite (B,) bool. The result equals the mean over all kept
    elements (the reference loss's batch-wide mean) when every sample is finite.
    """
    keep = applies & inputs_finite & jnp.isfinite(sums) & jnp.isfinite(counts)
    total = jnp.sum(jnp.where(keep, sums, 0.0))
    count = jnp.sum(jnp.where(keep, counts, 0.0))
    value = total / jnp.maximum(count, 1.0)
    value = jnp.where(count > 0, value, 0.0)
    return PooledTerm(value, jnp.sum(applies & ~keep).astype(jnp.int32))
