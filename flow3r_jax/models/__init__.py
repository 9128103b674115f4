"""Flax NNX implementation of Flow3r (and pi3, its trunk without the flow head)."""

from flow3r_jax.models.flow3r import Flow3r, build_model

__all__ = ["Flow3r", "build_model"]
