"""Orbax checkpoints holding the train state and the Grain data-iterator position together.

One CheckpointManager per run directory, items "state" (TrainState: step, params, buffers, optimizer
state) and "data_iter" (the Grain iterator state, one file per process). Saves are asynchronous and
happen every `checkpoint.every_steps` steps or when the job reaches a preemption sync point (Orbax
asks every process at the same step); only finalised checkpoints are ever restored. Restoring takes
the abstract state of the *current* run, so a checkpoint written under one mesh loads onto another.
"""

from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import save_decision_policy

from flow3r_jax.files import absolute

STATE_ITEM = "state"
DATA_ITEM = "data_iter"


def make_manager(directory: str, ckpt_cfg) -> ocp.CheckpointManager:
    """Manager for `directory` (local path or URL, e.g. gs://; created if absent) with the config's
    interval, keep-N and async mode.

    ckpt_cfg.replica_parallel_save selects Orbax's replica-parallel writing of replicated arrays
    (each replica writes a slice): faster on large data-parallel meshes, but its first save compiles
    a slicing program per array shape, which dominates short CPU runs. The choice is process-wide.
    """
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=ckpt_cfg.replica_parallel_save),
        override=True)
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_decision_policy.AnySavePolicy([
            save_decision_policy.FixedIntervalPolicy(ckpt_cfg.every_steps),
            save_decision_policy.PreemptionCheckpointingPolicy(),
        ]),
        max_to_keep=ckpt_cfg.keep,
        enable_async_checkpointing=ckpt_cfg.async_save,
        create=True,
        # A killed run can leave a half-written step behind; the resumed run rewrites that step.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(absolute(directory), options=options, item_names=(STATE_ITEM, DATA_ITEM))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, *, force: bool = False) -> bool:
    """Saves (asynchronously) if `step` is on the interval, a preemption point, or `force`."""
    args = ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state),
        DATA_ITEM: grain.checkpoint.CheckpointSave(data_iter),
    })
    return manager.save(step, args=args, force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, data_iter=None, step: int | None = None):
    """Restores `step` (default: the latest) onto the shardings of `abstract_state`.

    abstract_state: pytree of jax.ShapeDtypeStruct with `sharding` set (the target mesh). data_iter,
    if given, is moved in place to the saved position. Returns the state, or None when the directory
    holds no finalised checkpoint.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE_ITEM]


def restore_params(directory: str, target: dict, step: int | None = None) -> tuple[dict, int]:
    """Reads only `params` and `buffers` of a training checkpoint (no optimizer state, no data position).

    directory: a checkpoints folder written by `make_manager`; target: {"params": ..., "buffers": ...}
    pure dicts of arrays or ShapeDtypeStructs (their shardings are used). Returns (restored dict, step).
    Raises FileNotFoundError naming the folder when it holds no finalised step.
    """
    with ocp.CheckpointManager(absolute(directory), item_names=(STATE_ITEM,)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no finalised Orbax checkpoint step")
        restored = manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                               restore_args=ocp.checkpoint_utils.construct_restore_args(target))}))
    return restored[STATE_ITEM], step



def restore_orbax_params(directory: str, targets: dict, step: int | None = None) -> dict:
    """Restores only the parameters of a training checkpoint in `directory` (the latest finalised step,
    or `step`) straight onto their target shardings: no optimizer state, no data position.

    targets: {parameter path tuple: ShapeDtypeStruct with sharding}; returns {path: jax.Array}. With
    `directory` and `step` bound (functools.partial) it is a weight loader (flow3r_jax/train/state.py).
    Raises FileNotFoundError naming the folder when it holds no finalised step.
    """
    from flax import traverse_util

    restored, _ = restore_params(directory, {"params": traverse_util.unflatten_dict(targets)}, step)
    return traverse_util.flatten_dict(restored["params"])
