"""Training losses of Flow3r: point, normal, camera, confidence and factored-flow terms.

Public API: `compute_losses(outputs, batch, loss_cfg) -> (total, terms)` and `default_loss_config()`.
"""

import ml_collections

from flow3r_jax.losses.total import compute_losses


def default_loss_config() -> ml_collections.ConfigDict:
    """Schema and defaults of the loss section of a training config (values of the released loss).

    point_weight, normal_weight: weights of the local point and normal losses.
    camera_weight: weight of (camera_trans_alpha * Huber(camera_huber_delta) translation + rotation).
    conf_weight: weight of the confidence BCE (0 disables; the paper's confidence stage uses 0.05);
    conf_threshold: weighted L1 error below which a pixel's confidence target is 1.
    flow_weight: weight of the flow loss; flow_charbonnier_alpha / _c: generalised Charbonnier shape
    and scale (NDC units); flow_mask_threshold: co-visibility mask threshold.
    scale_align_points: size of the valid-pixel subset used to solve the per-sample point scale.
    """
    return ml_collections.ConfigDict(
        {
            "point_weight": 1.0,
            "normal_weight": 1.0,
            "camera_weight": 0.1,
            "camera_trans_alpha": 100.0,
            "camera_huber_delta": 0.1,
            "conf_weight": 0.0,
            "conf_threshold": 0.02,
            "flow_weight": 0.01,
            "flow_charbonnier_alpha": 0.5,
            "flow_charbonnier_c": 0.24,
            "flow_mask_threshold": 0.5,
            "scale_align_points": 4096,
        }
    )


__all__ = ["compute_losses", "default_loss_config"]
