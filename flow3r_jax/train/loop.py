"""The training loop: one readable function from a config and a work directory to a trained model.

    mesh + rules -> data iterator -> abstract state -> restore latest checkpoint or initialise
    -> for each step: host batch -> global batch -> train step -> metrics / images / eval / checkpoint

Work directory layout: `checkpoints/` (Orbax, with the data-iterator state), `tensorboard/` (event
files, process 0 only). Re-running with the same work directory resumes from the latest finalised
checkpoint, including the data position, so the continued run reproduces the uninterrupted one.
"""

from __future__ import annotations

import itertools
import logging
import os

import jax
from clu import periodic_actions

from flow3r_jax import sharding
from flow3r_jax.data import pipeline
from flow3r_jax.losses import compute_losses
from flow3r_jax.models import build_model
from flow3r_jax.train import checkpointing, evaluation, metrics, optimizer, state as state_lib, train_step

INIT_KINDS = ("scratch", "flow3r", "pi3")


def check_config(config) -> None:
    """Cross-field checks a ConfigDict's types cannot express; raises ValueError naming the key."""
    if config.total_steps <= 0:
        raise ValueError(f"total_steps={config.total_steps} must be positive")
    if config.init.kind not in INIT_KINDS:
        raise ValueError(f"init.kind={config.init.kind!r}; expected one of {INIT_KINDS}")
    if config.init.kind != "scratch" and not config.init.checkpoint_path:
        raise ValueError(f"init.kind={config.init.kind!r} needs init.checkpoint_path")
    per_host, rest = divmod(config.global_batch_size, jax.process_count())
    if rest:
        raise ValueError(f"global_batch_size={config.global_batch_size} not divisible by "
                         f"{jax.process_count()} processes")
    if per_host % config.grad_accum_steps:
        raise ValueError(f"per-host batch {per_host} not divisible by grad_accum_steps={config.grad_accum_steps}")
    if config.eval.every_steps and config.eval.batch_size % jax.process_count():
        raise ValueError(f"eval.batch_size={config.eval.batch_size} not divisible by {jax.process_count()} processes")


def _weight_loader(config):
    """None for a fresh model, else a function importing the PyTorch checkpoint into a model
    (the importer, and the PyTorch-format readers it needs, load only when used)."""
    if config.init.kind == "scratch":
        return None
    from flow3r_jax.interop.pytorch import import_pytorch_checkpoint

    missing_ok = ("flow_head.",) if config.init.kind == "pi3" else ()
    return lambda model: import_pytorch_checkpoint(config.init.checkpoint_path, model, config.model,
                                                   missing_ok=missing_ok)


def _uses_synthetic_data(data_cfg) -> bool:
    return any("synthetic" in entry for entry in list(data_cfg.sources) + list(data_cfg.eval_sources))


def _eval_batches(config):
    dataset = pipeline.make_eval_dataset(config.data, batch_size=config.eval.batch_size // jax.process_count(),
                                         process_index=jax.process_index(), process_count=jax.process_count())
    if len(dataset) < config.eval.num_batches:
        raise ValueError(f"eval.num_batches={config.eval.num_batches} but the evaluation split has only "
                         f"{len(dataset)} batches of {config.eval.batch_size}")
    return [dataset[i] for i in range(config.eval.num_batches)]


def train_and_evaluate(config, workdir: str) -> state_lib.TrainState:
    """Trains `config` in `workdir` up to config.total_steps (resuming if checkpoints exist).

    Returns the final train state (also after a preemption save, with the step reached).
    """
    check_config(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rules = sharding.rules_from_config(config.sharding.rules)
    writer = metrics.create_writer(workdir)
    logging.info("mesh %s, %d processes, workdir %s", dict(mesh.shape), jax.process_count(), workdir)

    if _uses_synthetic_data(config.data):
        pipeline.ensure_synthetic_dataset(config.data)
    data_iter = pipeline.make_train_iterator(config.data, global_batch_size=config.global_batch_size,
                                             seed=config.seed, process_index=jax.process_index(),
                                             process_count=jax.process_count())

    def model_fn(rngs):
        return build_model(config.model, rngs=rngs)

    layout = state_lib.make_layout(
        model_fn, lambda params: optimizer.make_optimizer(config.optimizer, config.total_steps, params),
        mesh, rules, config.seed)
    manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"), config.checkpoint)
    train_state = checkpointing.restore(manager, layout.abstract, data_iter)
    if train_state is None:
        train_state = state_lib.init_state(layout, model_fn, config.seed, _weight_loader(config))
    start_step = int(train_state.step)
    logging.info("starting at step %d of %d", start_step, config.total_steps)

    first_batch = next(data_iter)
    step_fn = train_step.make_train_step(
        layout, lambda outputs, batch: compute_losses(outputs, batch, config.loss),
        schedule=optimizer.learning_rate_schedule(config.optimizer, config.total_steps),
        frozen=optimizer.frozen_mask(layout.abstract.params, config.optimizer),
        accum_steps=config.grad_accum_steps, mesh=mesh, rules=rules, example_batch=first_batch)
    predict_fn = train_step.make_predict_fn(layout)

    def predict(batch):
        return predict_fn(train_state.params, train_state.buffers, batch["images"], batch["pair_indices"])

    def to_global(local):
        return train_step.global_batch(local, mesh, rules)

    # Sample 0 of a batch-major pytree, replicated so that every host can read it.
    first_sample = jax.jit(lambda tree: jax.tree.map(lambda x: x[:1], tree), out_shardings=sharding.replicated(mesh))

    hooks = [periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                             every_steps=config.logging.every_steps)]
    if config.logging.profile_num_steps > 0 and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=config.logging.profile_num_steps,
                                              first_profile=config.logging.profile_start_step, every_secs=None))
    window = metrics.ScalarWindow(frames_per_step=config.global_batch_size * config.data.num_frames)
    eval_batches = _eval_batches(config) if config.eval.every_steps else []

    try:
        with sharding.use_rules(mesh, rules):
            local_batches = itertools.chain([first_batch], data_iter)
            for step in range(start_step + 1, config.total_steps + 1):
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = to_global(next(local_batches))
                    train_state, step_metrics = step_fn(train_state, batch)
                window.add(step_metrics)
                for hook in hooks:
                    hook(step)
                if step % config.logging.every_steps == 0 or step == config.total_steps:
                    writer.write_scalars(step, window.summary())
                if config.logging.image_every_steps and step % config.logging.image_every_steps == 0:
                    sample_batch, sample_outputs = jax.device_get(first_sample((batch, predict(batch))))
                    writer.write_images(step, metrics.prediction_images(sample_batch, sample_outputs))
                if config.eval.every_steps and (step % config.eval.every_steps == 0 or step == config.total_steps):
                    results = evaluation.evaluate(predict, eval_batches, to_global)
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
                checkpointing.save(manager, step, train_state, data_iter, force=step == config.total_steps)
                if manager.reached_preemption(step):
                    logging.warning("preemption at step %d: checkpoint saved, stopping", step)
                    break
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.flush()
    return train_state
