"""The training loop: one readable function from a config and a work directory to a trained model.

    train program (setup.py) -> train step compiled for every shape bucket -> data iterator
    -> restore latest checkpoint or initialise
    -> for each step: host batch -> global batch -> its bucket's train step -> progress / summaries /
       evaluators / checkpoint

Work directory layout: `config.json` (the resolved config, run_config.py), `checkpoints/` (Orbax, with the
data-iterator state), `tensorboard/` (event files, process 0 only), `evaluations/` (files written by
evaluators). Re-running with the same work directory resumes from the latest finalised checkpoint,
including the data position, so the continued run reproduces the uninterrupted one; a relaunch with a
different model config is refused.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging
from clu import periodic_actions

from flow3r_jax import perf, sharding
from flow3r_jax.data import pipeline
from flow3r_jax.data.synthetic_dataset import ensure_synthetic_dataset, synthetic_splits
from flow3r_jax.evaluation.evaluators import build_evaluators
from flow3r_jax.train import checkpointing, console, run_config, setup, summaries
from flow3r_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """The final train state (also after a preemption save, at the step reached) and the results of
    the evaluators run at that step ({evaluator name: {metric: value}}; empty if none ran)."""

    state: TrainState
    evaluations: dict[str, dict[str, float]]


def train_and_evaluate(config, workdir: str) -> TrainOutcome:
    """Trains `config` in `workdir` up to config.total_steps (resuming if checkpoints exist)."""
    program = setup.build_program(config)
    mesh, rules = program.mesh, program.rules
    manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"), config.checkpoint)
    if manager.latest_step() is not None:
        run_config.check_same_model(workdir, config)
    if jax.process_index() == 0:
        run_config.write_run_config(workdir, config)
    writer = summaries.create_writer(workdir)
    logging.info("mesh %s, %d processes, workdir %s", dict(mesh.shape), jax.process_count(), workdir)

    if synthetic_splits(config.data):
        ensure_synthetic_dataset(config.data)
    bucket_steps = program.compile_buckets()
    data_iter = pipeline.make_train_iterator(config.data, buckets=list(program.buckets), seed=config.seed,
                                             process_index=jax.process_index(), process_count=jax.process_count())
    train_state = checkpointing.restore(manager, program.layout.abstract, data_iter)
    if train_state is None:
        train_state = program.init_state()
    start_step = int(train_state.step)
    logging.info("starting at step %d of %d", start_step, config.total_steps)

    evaluators = build_evaluators(config, workdir)
    # Image summaries show the first held-out sample: one fixed shape, whatever the training buckets.
    image_sample = pipeline.make_eval_dataset(config.data, batch_size=1)[0] if config.logging.image_every_steps \
        else None
    hooks = []
    if config.logging.profile_num_steps > 0 and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=config.logging.profile_num_steps,
                                              first_profile=config.logging.profile_start_step, every_secs=None))
    window = summaries.ScalarWindow(peak_flops=perf.peak_flops(list(mesh.devices.flat)))
    step_flops = summaries.train_flops_counter(config.model, program.frozen)
    evaluations = {}
    try:
        with sharding.use_rules(mesh, rules):
            for step in range(start_step + 1, config.total_steps + 1):
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = program.global_batch(next(data_iter))
                    bucket = program.bucket_of(batch)
                    train_state, step_metrics = bucket_steps[bucket](train_state, batch)
                window.add(step_metrics, frames=bucket.batch_size * bucket.num_frames,
                           flops_per_step=step_flops(batch))
                for hook in hooks:
                    hook(step)
                last = step == config.total_steps
                if step % config.logging.every_steps == 0 or last:
                    summary = window.summary()
                    writer.write_scalars(step, summary)
                    logging.info("%s", console.progress_line(step, config.total_steps, summary))
                if config.logging.image_every_steps and step % config.logging.image_every_steps == 0:
                    outputs = program.predict_fn(train_state)(image_sample["images"], image_sample["pair_indices"])
                    writer.write_images(step, summaries.prediction_images(image_sample, outputs))
                due = [name for name, (every, _) in evaluators.items() if every and (step % every == 0 or last)]
                if due:
                    predict = program.predict_fn(train_state)
                    evaluations = {name: evaluators[name][1].run(predict) for name in due}
                    for name, results in evaluations.items():
                        writer.write_scalars(step, {f"eval/{name}/{k}": v for k, v in results.items()})
                        logging.info("eval %s at step %d: %s", name, step,
                                     ", ".join(f"{k} {v:.4g}" for k, v in sorted(results.items())))
                checkpointing.save(manager, step, train_state, data_iter, force=last)
                if manager.reached_preemption(step):
                    logging.warning("preemption at step %d: checkpoint saved, stopping", step)
                    break
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.flush()
    return TrainOutcome(state=train_state, evaluations=evaluations)
