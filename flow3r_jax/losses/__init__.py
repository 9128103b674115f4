"""Training losses of Flow3r: point, normal, camera, confidence and factored-flow terms.

Public API: `compute_losses(outputs, batch, loss_cfg) -> (total, terms)`; the loss config's keys and
the released values are in configs/common.py (`loss`).
"""

from flow3r_jax.losses.total import compute_losses

__all__ = ["compute_losses"]
