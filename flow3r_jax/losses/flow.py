"""Factored-flow loss: generalised Charbonnier of the per-pixel L2 error on co-visible pixels.

Predictions and targets are target-image coordinates in NDC (flow3r_jax.geometry.ndc); c is in NDC
units. The error enters squared, so the loss and its gradient are finite at a perfect prediction.
"""

import jax.numpy as jnp


def generalized_charbonnier(squared_error, alpha: float, c: float):
    """rho(e) = |alpha - 2| / alpha * (((e / c)^2 / |alpha - 2| + 1)^(alpha / 2) - 1), from e^2."""
    magnitude = abs(alpha - 2.0)
    return magnitude / alpha * ((squared_error / c**2 / magnitude + 1.0) ** (alpha / 2.0) - 1.0)


def flow_sums(pred_coords, target_coords, flow_mask, alpha: float, c: float, mask_threshold: float):
    """(B, S, H, W, 2) x2, (B, S, H, W) -> per-sample (sums (B,), counts (B,)) over pixels with mask > threshold."""
    covisible = flow_mask > mask_threshold
    squared_error = jnp.sum((pred_coords - target_coords) ** 2, axis=-1)
    loss = jnp.where(covisible, generalized_charbonnier(squared_error, alpha, c), 0.0)
    return jnp.sum(loss, axis=(1, 2, 3)), jnp.sum(covisible, axis=(1, 2, 3)).astype(loss.dtype)
