"""Optimizer: AdamW with warmup + cosine, global-norm clipping and regex parameter groups.

Parameters are addressed by their path in the model's pure-dict state joined with "/", e.g.
"encoder/blocks/attn/qkv/kernel". `config.optimizer.param_groups` lists groups as
[regex, lr_multiplier, weight_decay, frozen]; the first group whose regex matches (re.search) a path
owns the parameter, unmatched parameters form the default group (multiplier 1, decay on, trainable).

Frozen parameters get zero updates and carry no Adam moments. Their gradients are zeroed before the
global norm is taken, so they neither count towards clipping nor, once XLA removes the dead
computation, cost a weight-gradient pass.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import optax

FROZEN_LABEL = "frozen"


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    pattern: re.Pattern
    lr_multiplier: float
    weight_decay: bool
    frozen: bool


def parse_param_groups(entries: Sequence[Sequence]) -> tuple[ParamGroup, ...]:
    """Validates config entries [regex, lr_multiplier, weight_decay, frozen] into ParamGroups."""
    groups = []
    for i, entry in enumerate(entries):
        if len(entry) != 4:
            raise ValueError(f"optimizer.param_groups[{i}] = {entry!r}: expected [regex, lr_multiplier, "
                             "weight_decay (bool), frozen (bool)]")
        pattern, mult, decay, frozen = entry
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"optimizer.param_groups[{i}]: bad regex {pattern!r}: {e}") from e
        if not isinstance(decay, bool) or not isinstance(frozen, bool):
            raise ValueError(f"optimizer.param_groups[{i}] = {entry!r}: weight_decay and frozen must be bools")
        if float(mult) < 0:
            raise ValueError(f"optimizer.param_groups[{i}]: lr_multiplier {mult} must be >= 0")
        groups.append(ParamGroup(compiled, float(mult), decay, frozen))
    return tuple(groups)


def path_string(path) -> str:
    """'a/b/c' for a jax key path of a nested dict (ints for scanned / list indices)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _group_index(path: str, groups: Sequence[ParamGroup]) -> int | None:
    for i, g in enumerate(groups):
        if g.pattern.search(path):
            return i
    return None


def _label(path: str, leaf, groups, no_decay: Sequence[re.Pattern]) -> str:
    index = _group_index(path, groups)
    group = groups[index] if index is not None else ParamGroup(re.compile(""), 1.0, True, False)
    if group.frozen:
        return FROZEN_LABEL
    decays = group.weight_decay and len(leaf.shape) >= 2 and not any(p.search(path) for p in no_decay)
    name = "default" if index is None else f"group{index}"
    return f"{name}:{'decay' if decays else 'no_decay'}"


def param_labels(params, opt_cfg):
    """Pytree of labels ("frozen" or "<group>:decay|no_decay") matching `params` (arrays or shapes)."""
    groups = parse_param_groups(opt_cfg.param_groups)
    no_decay = [re.compile(p) for p in opt_cfg.no_decay_patterns]
    return jax.tree_util.tree_map_with_path(lambda p, x: _label(path_string(p), x, groups, no_decay), params)


def frozen_mask(params, opt_cfg):
    """Pytree of bools: True for frozen parameters."""
    return jax.tree.map(lambda label: label == FROZEN_LABEL, param_labels(params, opt_cfg))


def learning_rate_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak over warmup_steps, then cosine to peak * final_lr_ratio."""
    if opt_cfg.warmup_steps >= total_steps:
        raise ValueError(f"optimizer.warmup_steps={opt_cfg.warmup_steps} must be < total_steps={total_steps}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt_cfg.learning_rate, warmup_steps=opt_cfg.warmup_steps,
        decay_steps=total_steps, end_value=opt_cfg.learning_rate * opt_cfg.final_lr_ratio)


def make_optimizer(opt_cfg, total_steps: int, params) -> optax.GradientTransformation:
    """The full update rule for `params` (a pytree of arrays or ShapeDtypeStructs).

    Order: zero frozen gradients -> clip by global norm -> per group: Adam moments, decoupled weight
    decay (decaying labels only) and the scheduled learning rate times the group's multiplier.
    """
    schedule = learning_rate_schedule(opt_cfg, total_steps)
    groups = parse_param_groups(opt_cfg.param_groups)
    labels = param_labels(params, opt_cfg)
    transforms = {FROZEN_LABEL: optax.set_to_zero()}
    for label in sorted(set(jax.tree.leaves(labels)) - {FROZEN_LABEL}):
        name, decay = label.split(":")
        mult = 1.0 if name == "default" else groups[int(name.removeprefix("group"))].lr_multiplier
        transforms[label] = optax.chain(
            optax.scale_by_adam(b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps),
            optax.add_decayed_weights(opt_cfg.weight_decay if decay == "decay" else 0.0),
            optax.scale_by_learning_rate(lambda step, m=mult: m * schedule(step)),
        )
    return optax.chain(
        optax.masked(optax.set_to_zero(), frozen_mask(params, opt_cfg)),
        optax.clip_by_global_norm(opt_cfg.clip_norm),
        optax.multi_transform(transforms, labels),
    )
