"""Train state: what it holds, its shardings, and its creation directly on the mesh.

Parameters and buffers are kept as pure nested dicts (the model's nnx state without Variable
wrappers), so optax, Orbax and jit see plain pytrees; the model is rebuilt inside traced code with
`nnx.merge(graphdef, params, buffers)`. Nothing is materialised on one device first: the abstract
state comes from `nnx.eval_shape`, shardings from the parameters' logical axis names, and the real
state from a weight loader (checkpoint tensors placed straight onto those shardings) and a jit whose
`out_shardings` are those shardings for whatever the loader does not provide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx, traverse_util
from jax.sharding import Mesh

from flow3r_jax import sharding
from flow3r_jax.train import optimizer as optimizer_lib

# {parameter path: target ShapeDtypeStruct with sharding} -> {parameter path: placed jax.Array} for the
# parameters a checkpoint holds; paths are tuples of the nnx state (e.g. ("decoder", "frame_blocks", ...)).
WeightLoader = Callable[[dict[tuple, jax.ShapeDtypeStruct]], dict[tuple, jax.Array]]


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
    graphdef, params, buffers = abstract_weights(model_fn, seed, mesh, rules)
    param_sh, buffer_sh = _shardings_of(params), _shardings_of(buffers)
    optimizer = make_optimizer(params)
    opt_abstract = jax.eval_shape(optimizer.init, params)
    replicated = sharding.replicated(mesh)
    opt_sh = _follow_param_shardings(opt_abstract, params, param_sh, replicated)
    shardings = TrainState(step=replicated, params=param_sh, buffers=buffer_sh, opt_state=opt_sh)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, buffers=buffers,
                          opt_state=opt_abstract)
    return StateLayout(graphdef, optimizer, _with_shardings(abstract, shardings), shardings)


def abstract_weights(model_fn: Callable[[nnx.Rngs], nnx.Module], seed: int, mesh: Mesh, rules):
    """(graphdef, params, buffers) of the model without allocating it: params and buffers are pure dicts
    of ShapeDtypeStructs carrying the NamedSharding their logical axis names get under `rules`."""
    abstract_model = nnx.eval_shape(lambda: model_fn(nnx.Rngs(seed)))
    graphdef, param_vars, buffer_vars = nnx.split(abstract_model, nnx.Param, ...)
    param_sh = nnx.to_pure_dict(sharding.state_shardings(param_vars, mesh, rules))
    buffer_sh = nnx.to_pure_dict(sharding.state_shardings(buffer_vars, mesh, rules))
    return (graphdef, _with_shardings(nnx.to_pure_dict(param_vars), param_sh),
            _with_shardings(nnx.to_pure_dict(buffer_vars), buffer_sh))


def _shardings_of(abstract):
    return jax.tree.map(lambda a: a.sharding, abstract)


def init_weights(model_fn: Callable[[nnx.Rngs], nnx.Module], seed: int, abstract_params: dict,
                 abstract_buffers: dict, load: WeightLoader | None = None) -> tuple[dict, dict]:
    """The model's params and buffers (pure dicts) created directly on their shardings.

    abstract_params / abstract_buffers: ShapeDtypeStructs with shardings (`abstract_weights`). `load`
    places the parameters a checkpoint holds (flow3r_jax/interop/pytorch.py `pytorch_weight_loader`,
    flow3r_jax/train/checkpointing.py `orbax_weight_loader`); only the remaining parameters (e.g. a
    fresh flow head under pi3 weights) and the buffers are initialised, by one jit of the constructor
    whose unused random initialisers XLA removes. Nothing is initialised only to be overwritten.
    """
    targets = traverse_util.flatten_dict(abstract_params)
    loaded = load(targets) if load is not None else {}
    fresh_paths = [p for p in targets if p not in loaded]
    fresh = []
    buffers = abstract_buffers
    if fresh_paths or jax.tree.leaves(abstract_buffers):
        def fresh_weights():
            _, params, buffers = _split_pure(model_fn(nnx.Rngs(seed)))
            flat = traverse_util.flatten_dict(params)
            return [flat[p] for p in fresh_paths], buffers

        out_shardings = ([targets[p].sharding for p in fresh_paths], _shardings_of(abstract_buffers))
        fresh, buffers = jax.jit(fresh_weights, out_shardings=out_shardings)()
    params = traverse_util.unflatten_dict({**loaded, **dict(zip(fresh_paths, fresh, strict=True))})
    return params, buffers


def init_state(layout: StateLayout, model_fn: Callable[[nnx.Rngs], nnx.Module], seed: int,
               load_weights: WeightLoader | None = None) -> TrainState:
    """Creates the train state directly sharded on the mesh.

    load_weights (optional): the initial weights' loader (see `init_weights`); the optimizer state is
    created for the loaded weights.
    """
    shard = layout.shardings
    params, buffers = init_weights(model_fn, seed, layout.abstract.params, layout.abstract.buffers, load_weights)
    opt_state = jax.jit(layout.optimizer.init, out_shardings=shard.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shard.step)
    return TrainState(step=step, params=params, buffers=buffers, opt_state=opt_state)
