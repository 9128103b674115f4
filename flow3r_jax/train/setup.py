"""The one setup path: (training config, mesh) -> the train program and its pieces.

The training loop, the benchmarks (ahead-of-time compilation from abstract inputs), the flow-supervision
study and the tests all build their program here, so they compile exactly what a run compiles:

    config -> checks -> mesh + logical rules -> shape buckets (batch sizes from the per-device budget)
    -> model function -> optimizer (groups, schedule, frozen mask) -> abstract state + shardings
    (StateLayout) -> jitted train step; batch specs, per-bucket AOT programs and predict functions

Nothing is allocated until `init_state` is called. A run compiles the train step once per bucket, ahead
of time (`compile_buckets`), and then only calls those executables: the number of train-step
compilations is the number of buckets for the whole run (a batch of another shape is an error).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import jax
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from flow3r_jax import sharding
from flow3r_jax.data.buckets import Bucket, train_buckets
from flow3r_jax.inference.predictor import PredictFn, make_forward
from flow3r_jax.losses import compute_losses
from flow3r_jax.models import build_model
from flow3r_jax.train import optimizer as optimizer_lib
from flow3r_jax.train import state as state_lib
from flow3r_jax.train import train_step as train_step_lib

INIT_KINDS = ("scratch", "flow3r", "pi3")


def check_config(config, process_count: int | None = None) -> None:
    """Cross-field checks a ConfigDict's types cannot express; raises ValueError naming the key."""
    process_count = jax.process_count() if process_count is None else process_count
    if config.total_steps <= 0:
        raise ValueError(f"total_steps={config.total_steps} must be positive")
    if config.init.kind not in INIT_KINDS:
        raise ValueError(f"init.kind={config.init.kind!r}; expected one of {INIT_KINDS}")
    if config.init.kind != "scratch" and not config.init.checkpoint_path:
        raise ValueError(f"init.kind={config.init.kind!r} needs init.checkpoint_path")
    if config.grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps={config.grad_accum_steps} must be positive")
    if not (config.data.tokens_per_device > 0 or config.data.images_per_device > 0):
        per_host, rest = divmod(config.global_batch_size, process_count)
        if rest:
            raise ValueError(f"global_batch_size={config.global_batch_size} not divisible by {process_count} "
                             "processes")
        if per_host % config.grad_accum_steps:
            raise ValueError(f"per-host batch {per_host} not divisible by grad_accum_steps="
                             f"{config.grad_accum_steps}")


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """What a run compiles and how to feed it; see `build_program`."""

    config: object
    mesh: Mesh
    rules: tuple
    layout: state_lib.StateLayout        # model graph, optimizer, abstract state and its shardings
    schedule: optax.Schedule
    frozen: dict                          # pytree of bools over the params
    buckets: tuple[Bucket, ...]           # training batch shapes with their global batch sizes
    train_step: Callable                  # jitted (state, global batch) -> (state, metrics)
    forward: Callable                     # (params, buffers, images, pair_indices) -> numpy outputs

    def model_fn(self, rngs: nnx.Rngs) -> nnx.Module:
        return build_model(self.config.model, rngs=rngs)

    def init_state(self) -> state_lib.TrainState:
        """A fresh train state on the mesh, with the config's initial weights (config.init)."""
        return state_lib.init_state(self.layout, self.model_fn, self.config.seed, _weight_loader(self.config))

    def global_batch(self, local_batch: dict) -> dict:
        """This host's numpy (wire) batch -> global jax.Arrays on the mesh."""
        return train_step_lib.global_batch(local_batch, self.mesh, self.rules)

    def compile(self, batch_spec: dict):
        """The train step compiled ahead of time for the abstract state and `batch_spec`."""
        with sharding.use_rules(self.mesh, self.rules):
            return self.train_step.lower(self.layout.abstract, batch_spec).compile()

    def bucket_spec(self, bucket: Bucket) -> dict:
        """Abstract global wire batch of one bucket with its shardings (for AOT compilation)."""
        return train_step_lib.batch_spec(self.mesh, self.rules, bucket)

    def compile_buckets(self) -> dict[Bucket, Callable]:
        """{bucket: the train step compiled ahead of time for it}, for every bucket (logs count and time)."""
        start = time.perf_counter()
        programs = {bucket: self.compile(self.bucket_spec(bucket)) for bucket in self.buckets}
        logging.info("compiled the train step for %d buckets in %.1f s: %s", len(programs),
                     time.perf_counter() - start, ", ".join(str(b) for b in programs))
        return programs

    def bucket_of(self, batch: dict) -> Bucket:
        """The bucket whose shape a global wire batch has; ValueError if none."""
        b, n, source_pixels = batch["images"].shape[:3]
        bucket = Bucket(num_frames=n, height=batch["source_rows"].shape[1], width=batch["source_cols"].shape[1],
                        num_pairs=batch["pair_indices"].shape[1], batch_size=b, source_pixels=source_pixels)
        if bucket not in self.buckets:
            raise ValueError(f"batch of shape {bucket} matches no training bucket of {[str(b) for b in self.buckets]}")
        return bucket

    def predict_fn(self, state: state_lib.TrainState) -> PredictFn:
        """A numpy predict function of the model with the weights of `state` (inference/predictor.py)."""
        return functools.partial(self.forward, state.params, state.buffers)


def make_mesh(config) -> Mesh:
    """The (data, fsdp, tensor) mesh of config.mesh over all devices."""
    return sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)


def batch_devices(mesh: Mesh, rules) -> int:
    """Number of devices the batch axis is split over (the mesh axes of the logical "batch" rule)."""
    axes = sharding.batch_sharding(mesh, rules, 1).spec[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def use_compilation_cache(directory: str) -> None:
    """Turns on JAX's persistent compilation cache in `directory` (before the first compilation)."""
    jax.config.update("jax_compilation_cache_dir", directory)


def build_program(config, mesh: Mesh | None = None) -> TrainProgram:
    """Checks `config` and builds its train program on `mesh` (default: the config's mesh)."""
    check_config(config)
    if config.compilation_cache_dir:
        use_compilation_cache(config.compilation_cache_dir)
    mesh = make_mesh(config) if mesh is None else mesh
    rules = sharding.rules_from_config(config.sharding.rules)
    buckets = train_buckets(config.data, global_batch_size=config.global_batch_size,
                            batch_devices=batch_devices(mesh, rules), grad_accum_steps=config.grad_accum_steps,
                            process_count=jax.process_count())

    def model_fn(rngs):
        return build_model(config.model, rngs=rngs)

    def make_optimizer(params):
        return optimizer_lib.make_optimizer(config.optimizer, config.total_steps, params)

    layout = state_lib.make_layout(model_fn, make_optimizer, mesh, rules, config.seed)
    schedule = optimizer_lib.learning_rate_schedule(config.optimizer, config.total_steps)
    frozen = optimizer_lib.frozen_mask(layout.abstract.params, config.optimizer)
    step = train_step_lib.make_train_step(
        layout, lambda outputs, batch: compute_losses(outputs, batch, config.loss), schedule=schedule,
        frozen=frozen, accum_steps=config.grad_accum_steps, mesh=mesh, rules=rules,
        batch_shardings=train_step_lib.wire_shardings(mesh, rules), expand=train_step_lib.expand_wire_batch)
    return TrainProgram(config=config, mesh=mesh, rules=rules, layout=layout, schedule=schedule, frozen=frozen,
                        buckets=tuple(buckets), train_step=step, forward=make_forward(layout.graphdef, mesh, rules))


def _weight_loader(config):
    """None for a fresh model, else the weight loader (state.py `WeightLoader`) of the PyTorch checkpoint
    config.init names (the importer, and the PyTorch-format readers it needs, load only when used)."""
    if config.init.kind == "scratch":
        return None
    from flow3r_jax.interop.pytorch import pytorch_weight_loader

    missing_ok = ("flow_head.",) if config.init.kind == "pi3" else ()
    return pytorch_weight_loader(config.init.checkpoint_path, config.model, missing_ok=missing_ok)
