"""Closed-form alignments: Umeyama Sim(3), weighted median and the exact weighted-L1 scale."""

from flow3r_jax.geometry._backend import array_module


def umeyama_alignment(source, target, weights=None, with_scale: bool = True):
    """Least-squares similarity (s, R, t) with target ~= s * R @ source + t (Umeyama 1991).

    Args: source, target (M, 3) corresponding points; weights (M,) non-negative or None;
    with_scale=False fixes s = 1 (rigid SE(3) alignment).
    Returns (scale (), rotation (3, 3) proper (det +1), translation (3,)).
    """
    xp = array_module(source, target, weights)
    if weights is None:
        weights = xp.ones(source.shape[:-1], dtype=source.dtype)
    weights = weights / xp.sum(weights)
    mean_source = xp.sum(weights[:, None] * source, axis=0)
    mean_target = xp.sum(weights[:, None] * target, axis=0)
    centred_source = source - mean_source
    centred_target = target - mean_target
    covariance = (weights[:, None] * centred_target).T @ centred_source
    u, singular, vt = xp.linalg.svd(covariance)
    last = xp.where(xp.linalg.det(u) * xp.linalg.det(vt) < 0, -1.0, 1.0).astype(source.dtype)
    correction = xp.concatenate([xp.ones(2, dtype=source.dtype), last[None]])
    rotation = (u * correction) @ vt
    if with_scale:
        variance = xp.sum(weights * xp.sum(centred_source**2, axis=-1))
        scale = xp.sum(singular * correction) / variance
    else:
        scale = xp.asarray(1.0, dtype=source.dtype)
    translation = mean_target - scale * rotation @ mean_source
    return scale, rotation, translation


def apply_similarity(scale, rotation, translation, points):
    """(..., 3) points -> scale * R @ p + t."""
    xp = array_module(points, rotation)
    return scale * xp.einsum("ij,...j->...i", rotation, points) + translation


def weighted_median(values, weights):
    """Lower weighted median along the last axis: the smallest sorted value v_k with
    2 * (cumulative weight up to k) - total weight >= 0. (..., M), (..., M) non-negative -> (...).
    """
    xp = array_module(values, weights)
    order = xp.argsort(values, axis=-1)
    sorted_values = xp.take_along_axis(values, order, axis=-1)
    cumulative = xp.cumsum(xp.take_along_axis(weights, order, axis=-1), axis=-1)
    reached = 2.0 * cumulative - cumulative[..., -1:] >= 0
    index = xp.argmax(reached, axis=-1)
    return xp.take_along_axis(sorted_values, index[..., None], axis=-1)[..., 0]


def weighted_l1_scale(source, target, weights, eps: float = 1e-7):
    """Exact minimiser over s of sum_i w_i |s x_i - y_i| (untruncated MoGe `align`). (..., M) -> (...).

    The objective is convex and piecewise linear with kinks at y_i / x_i, so the optimum is the weighted
    median of the ratios y_i / x_i with weights w_i |x_i| (signs flipped so x_i >= 0; |x_i| < eps is
    treated as eps in the ratio). The result may be negative; callers take its absolute value.
    """
    xp = array_module(source, target, weights)
    sign = xp.sign(source)
    source, target = source * sign, target * sign
    ratios = target / xp.maximum(source, eps)
    return weighted_median(ratios, weights * source)


def align_points_scale(source, target, weights, eps: float = 1e-7):
    """Weighted-L1 optimal scale of 3D points: min_s sum_i w_i ||s p_i - g_i||_1.

    source, target (..., M, 3); weights (..., M) shared by the three coordinates -> (...).
    """
    xp = array_module(source, target, weights)
    flat_weights = xp.repeat(weights, 3, axis=-1)
    flat_shape = source.shape[:-2] + (source.shape[-2] * 3,)
    return weighted_l1_scale(source.reshape(flat_shape), target.reshape(flat_shape), flat_weights, eps)
