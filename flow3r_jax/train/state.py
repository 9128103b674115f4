"""Train state: what it holds, its shardings, and its creation directly on the mesh.

Parameters and buffers are kept as pure nested dicts (the model's nnx state without Variable
wrappers), so optax, Orbax and jit see plain pytrees; the model is rebuilt inside traced code with
`nnx.merge(graphdef, params, buffers)`. Nothing is materialised on one device first: the abstract
state comes from `nnx.eval_shape`, shardings from the parameters' logical axis names, and the real
state from a jit whose `out_shardings` are those shardings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from flow3r_jax import sharding
from flow3r_jax.train import optimizer as optimizer_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array            # int32 scalar: optimizer steps taken
    params: dict               # trainable nnx.Param values (pure dict, float32 master weights)
    buffers: dict              # every other model variable (e.g. normalisation constants)
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Static description of a train state: model structure, optimizer, abstract values, shardings."""
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    abstract: TrainState        # ShapeDtypeStructs carrying their NamedShardings
    shardings: TrainState       # NamedShardings

    def model(self, params, buffers) -> nnx.Module:
        return nnx.merge(self.graphdef, params, buffers)


def _split_pure(model: nnx.Module):
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(buffers)


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _follow_param_shardings(opt_abstract, params, param_sh, default):
    """Shardings for optimizer-state leaves: a leaf whose key path ends with a parameter's path and
    has its shape (Adam moments, in any nesting of chain / masked / multi_transform states) takes
    that parameter's sharding; every other leaf gets `default`."""
    by_path = {}
    for (path, p), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_sh), strict=True):
        by_path[optimizer_lib.path_string(path)] = (p.shape, s)

    def pick(path, leaf):
        keys = optimizer_lib.path_string(path).split("/")
        for start in range(len(keys)):
            match = by_path.get("/".join(keys[start:]))
            if match is not None and match[0] == leaf.shape:
                return match[1]
        return default

    return jax.tree_util.tree_map_with_path(pick, opt_abstract)


def make_layout(model_fn: Callable[[nnx.Rngs], nnx.Module], make_optimizer: Callable, mesh: Mesh, rules,
                seed: int) -> StateLayout:
    """Abstract train state and shardings without allocating parameters.

    model_fn: builds the model from nnx.Rngs. make_optimizer: abstract params -> optax transformation
    (the parameter groups need the parameter paths). Optimizer moments take their parameter's
    sharding; scalars (counts) are replicated.
    """
    abstract_model = nnx.eval_shape(lambda: model_fn(nnx.Rngs(seed)))
    graphdef, param_vars, buffer_vars = nnx.split(abstract_model, nnx.Param, ...)
    param_sh = nnx.to_pure_dict(sharding.state_shardings(param_vars, mesh, rules))
    buffer_sh = nnx.to_pure_dict(sharding.state_shardings(buffer_vars, mesh, rules))
    params = nnx.to_pure_dict(param_vars)
    buffers = nnx.to_pure_dict(buffer_vars)
    optimizer = make_optimizer(params)
    opt_abstract = jax.eval_shape(optimizer.init, params)
    replicated = sharding.replicated(mesh)
    opt_sh = _follow_param_shardings(opt_abstract, params, param_sh, replicated)
    shardings = TrainState(step=replicated, params=param_sh, buffers=buffer_sh, opt_state=opt_sh)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, buffers=buffers,
                          opt_state=opt_abstract)
    return StateLayout(graphdef, optimizer, _with_shardings(abstract, shardings), shardings)


def init_state(layout: StateLayout, model_fn: Callable[[nnx.Rngs], nnx.Module], seed: int,
               load_weights: Callable[[nnx.Module], None] | None = None) -> TrainState:
    """Creates the train state directly sharded on the mesh.

    load_weights (optional) overwrites the fresh model's weights in place (e.g. an imported PyTorch
    checkpoint) before the optimizer state is created.
    """
    shard = layout.shardings

    def fresh_model():
        _, params, buffers = _split_pure(model_fn(nnx.Rngs(seed)))
        return params, buffers

    params, buffers = jax.jit(fresh_model, out_shardings=(shard.params, shard.buffers))()
    if load_weights is not None:
        model = layout.model(params, buffers)
        load_weights(model)
        _, params, buffers = _split_pure(model)
        params = jax.device_put(params, shard.params)
        buffers = jax.device_put(buffers, shard.buffers)
    opt_state = jax.jit(layout.optimizer.init, out_shardings=shard.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shard.step)
    return TrainState(step=step, params=params, buffers=buffers, opt_state=opt_state)
