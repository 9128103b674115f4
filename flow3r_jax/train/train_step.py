"""The jitted, sharded train step and the host-to-global batch boundary.

Per-host numpy batches become global jax.Arrays in exactly one place (`global_batch`): axis 0 is
split over the mesh axes of the logical "batch" rule, every other axis is replicated. Training batches
cross in the wire format (flow3r_jax/data/wire.py); the step's first operation on each (micro-)batch is
`expand_batch` into the batch contract the losses read. The step takes the donated TrainState and that
global batch, and returns the new state and a dict of scalar metrics (replicated). Gradient
accumulation scans over micro-batches; a step whose loss or gradient is not finite (including
non-finite values computed by the expansion) leaves parameters and optimizer state unchanged and
reports `skipped = 1`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from flow3r_jax import sharding
from flow3r_jax.data.buckets import Bucket
from flow3r_jax.data.wire import WIRE_CONTRACT, expand_batch, wire_batch_shapes
from flow3r_jax.train.state import StateLayout, TrainState

LossFn = Callable[[dict, dict], tuple[jax.Array, dict]]   # (model outputs, batch) -> (total, terms)


def wire_shardings(mesh: Mesh, rules) -> dict:
    """NamedSharding per key of the wire contract: leading (batch) axis on the "batch" rule."""
    return {key: sharding.batch_sharding(mesh, rules, 1 + len(shape)) for key, (shape, _) in WIRE_CONTRACT.items()}


def batch_spec(mesh: Mesh, rules, bucket: Bucket) -> dict:
    """Abstract global wire batch of `bucket` (ShapeDtypeStructs with their shardings)."""
    shardings = wire_shardings(mesh, rules)
    shapes = wire_batch_shapes(bucket.batch_size, bucket.num_frames, bucket.num_pairs, bucket.height, bucket.width,
                               bucket.source_pixels)
    return {key: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[key]) for key, (shape, dtype) in shapes.items()}


def global_batch(local_batch: dict, mesh: Mesh, rules) -> dict:
    """Assembles each host's slice of the batch into global arrays (B_global = B_local * hosts)."""
    shardings = {k: sharding.batch_sharding(mesh, rules, np.ndim(v)) for k, v in local_batch.items()}
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
            for k, v in local_batch.items()}


def expand_wire_batch(batch: dict) -> dict:
    """Wire batch -> batch contract with jax.numpy (flow3r_jax/data/wire.py `expand_batch`), traced into
    the train step."""
    return expand_batch(batch, jnp)


def _micro_batches(batch: dict, steps: int) -> dict:
    """(B, ...) -> (steps, B / steps, ...): micro-batch k holds samples k, k + steps, ... so each
    micro-batch stays spread over all devices of the batch axes."""
    def split(x):
        if x.shape[0] % steps:
            raise ValueError(f"batch of {x.shape[0]} samples does not split into {steps} micro-batches")
        x = x.reshape((x.shape[0] // steps, steps) + x.shape[1:]).swapaxes(0, 1)
        return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
    return jax.tree.map(split, batch)


def make_train_step(layout: StateLayout, loss_fn: LossFn, *, schedule: optax.Schedule, frozen,
                    accum_steps: int, mesh: Mesh, rules, batch_shardings: dict,
                    expand: Callable[[dict], dict] | None = None):
    """Returns the jitted step(state, global_batch) -> (state, metrics) with the state's shardings.

    Trace and call it inside `sharding.use_rules(mesh, rules)` (activation constraints need them).
    frozen: pytree of bools over the params (optimizer.frozen_mask); frozen gradients are left out
    of the reported gradient norm. batch_shardings: NamedSharding per batch key (for wire batches:
    `wire_shardings`). expand: the first operation on each (micro-)batch, on the device
    (`expand_wire_batch` for wire batches; None: the loss reads the batch as given), so only one
    expanded micro-batch is live at a time.
    """
    def objective(params, buffers, batch):
        if expand is not None:
            batch = expand(batch)
        outputs = layout.model(params, buffers)(batch["images"], batch["pair_indices"])
        return loss_fn(outputs, batch)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def gradients(params, buffers, batch):
        if accum_steps == 1:
            return grad_fn(params, buffers, batch)

        def add_micro_batch(total, micro):
            return jax.tree.map(jnp.add, total, grad_fn(params, buffers, micro)), None

        micro = _micro_batches(batch, accum_steps)
        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(grad_fn, params, buffers, first))
        summed, _ = jax.lax.scan(add_micro_batch, zeros, micro)
        return jax.tree.map(lambda x: x / accum_steps, summed)

    def step(state: TrainState, batch: dict):
        (loss, terms), grads = gradients(state.params, state.buffers, batch)
        trainable = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, frozen)
        grad_norm = optax.global_norm(trainable)
        updates, opt_state = layout.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = state.replace(step=state.step + 1, params=keep_if_finite(params, state.params),
                                  opt_state=keep_if_finite(opt_state, state.opt_state))
        metrics = {"loss": loss, **{f"loss/{k}": v for k, v in terms.items()},
                   "grad_norm": grad_norm, "param_norm": optax.global_norm(new_state.params),
                   "learning_rate": schedule(state.step), "skipped": (~finite).astype(jnp.int32)}
        return new_state, metrics

    return jax.jit(step, in_shardings=(layout.shardings, batch_shardings),
                   out_shardings=(layout.shardings, sharding.replicated(mesh)), donate_argnums=0)
