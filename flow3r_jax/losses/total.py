"""The training objective: all loss terms combined with per-sample labelled/unlabelled masking.

Labelled samples (batch["is_labeled"]) get the point, camera, normal (where batch["normal_ok"]) and
optional confidence losses; every sample gets the flow loss where outputs carry "flow". Each term is
pooled over the samples it applies to; a sample whose inputs or term are non-finite is dropped from
that term and counted in terms["nonfinite_count"].
"""

import jax.numpy as jnp

from flow3r_jax.losses.camera import camera_terms
from flow3r_jax.losses.flow import flow_sums
from flow3r_jax.losses.normal import normal_loss_per_sample
from flow3r_jax.losses.normalization import normalize_ground_truth, normalize_prediction
from flow3r_jax.losses.point import confidence_bce_sums, point_terms
from flow3r_jax.losses.reductions import finite_or_zero, pool_samples, sample_is_finite


def compute_losses(outputs: dict, batch: dict, loss_cfg):
    """Total loss and its terms for one batch.

    outputs: the model output contract (points, local_points, conf, camera_poses, optional flow).
    batch: the training batch contract (valid_mask, points, camera_poses, is_labeled, normal_ok,
    flow_coords, flow_mask; others unused). loss_cfg: the `loss` section of a training config (configs/common.py).
    Returns (total scalar, terms): unweighted terms point, normal, camera_translation, camera_rotation,
    camera (= alpha * translation + rotation), conf, flow; weighted terms "<name>_weighted" for point,
    normal, camera, conf, flow; point_scale (mean solved scale over finite labelled samples); nonfinite_count.
    """
    local_points = jnp.asarray(outputs["local_points"])
    pred_poses = jnp.asarray(outputs["camera_poses"])
    gt_points = jnp.asarray(batch["points"])
    gt_poses = jnp.asarray(batch["camera_poses"])
    labeled = jnp.asarray(batch["is_labeled"], bool)
    normal_ok = jnp.asarray(batch["normal_ok"], bool) & labeled
    valid = jnp.asarray(batch["valid_mask"], bool) & labeled[:, None, None, None]
    use_conf = loss_cfg.conf_weight > 0

    geometry_finite = (
        sample_is_finite(local_points)
        & sample_is_finite(pred_poses)
        & sample_is_finite(gt_points)
        & sample_is_finite(gt_poses)
    )
    gt = normalize_ground_truth(finite_or_zero(gt_points), finite_or_zero(gt_poses), valid)
    pred = normalize_prediction(finite_or_zero(local_points), finite_or_zero(pred_poses), valid)
    points = point_terms(pred.local_points, gt.local_points, valid, loss_cfg.scale_align_points)
    has_points = labeled & (points.counts > 0)

    point = pool_samples(points.sums, points.counts, has_points, geometry_finite)
    normal = pool_samples(
        normal_loss_per_sample(points.aligned_local_points, gt.local_points, valid),
        jnp.ones_like(points.counts),
        normal_ok & has_points,
        geometry_finite,
    )
    cams = camera_terms(pred.camera_poses, gt.camera_poses, points.scale, loss_cfg.camera_huber_delta)
    per_sample_camera = loss_cfg.camera_trans_alpha * cams.translation + cams.rotation
    camera_finite = geometry_finite & jnp.isfinite(per_sample_camera)
    camera_translation = pool_samples(cams.translation, jnp.ones_like(points.counts), has_points, camera_finite)
    camera_rotation = pool_samples(cams.rotation, jnp.ones_like(points.counts), has_points, camera_finite)
    camera_value = loss_cfg.camera_trans_alpha * camera_translation.value + camera_rotation.value
    nonfinite = point.nonfinite + normal.nonfinite + camera_translation.nonfinite

    if use_conf:
        conf_logits = jnp.asarray(outputs["conf"])
        conf_sums = confidence_bce_sums(finite_or_zero(conf_logits), points.pixel_error, valid, loss_cfg.conf_threshold)
        conf = pool_samples(conf_sums, points.counts, has_points, geometry_finite & sample_is_finite(conf_logits))
        conf_value, nonfinite = conf.value, nonfinite + conf.nonfinite
    else:
        conf_value = jnp.zeros(())

    if "flow" in outputs:
        pred_flow = jnp.asarray(outputs["flow"])
        target_flow, flow_mask = jnp.asarray(batch["flow_coords"]), jnp.asarray(batch["flow_mask"])
        sums, counts = flow_sums(
            finite_or_zero(pred_flow),
            finite_or_zero(target_flow),
            finite_or_zero(flow_mask),
            loss_cfg.flow_charbonnier_alpha,
            loss_cfg.flow_charbonnier_c,
            loss_cfg.flow_mask_threshold,
        )
        flow_finite = sample_is_finite(pred_flow) & sample_is_finite(target_flow) & sample_is_finite(flow_mask)
        flow = pool_samples(sums, counts, counts > 0, flow_finite)
        flow_value, nonfinite = flow.value, nonfinite + flow.nonfinite
    else:
        flow_value = jnp.zeros(())

    weighted = {
        "point_weighted": loss_cfg.point_weight * point.value,
        "normal_weighted": loss_cfg.normal_weight * normal.value,
        "camera_weighted": loss_cfg.camera_weight * camera_value,
        "conf_weighted": loss_cfg.conf_weight * conf_value,
        "flow_weighted": loss_cfg.flow_weight * flow_value,
    }
    total = sum(weighted.values())
    scaled = has_points & geometry_finite
    terms = {
        "point": point.value,
        "normal": normal.value,
        "camera_translation": camera_translation.value,
        "camera_rotation": camera_rotation.value,
        "camera": camera_value,
        "conf": conf_value,
        "flow": flow_value,
        **weighted,
        "point_scale": jnp.sum(jnp.where(scaled, points.scale, 0.0)) / jnp.maximum(jnp.sum(scaled), 1),
        "nonfinite_count": nonfinite,
    }
    return total, terms
