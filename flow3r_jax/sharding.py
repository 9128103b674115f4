"""Device mesh, logical axis names and the mapping between them.

Module code names the axes of every parameter and of the main activations with *logical* names
(``LOGICAL_AXES`` below). One rules table, given by the config (``config.sharding.rules``), maps each
logical name to zero, one or several mesh axes. The mesh has the axes ``data`` (pure data
parallelism), ``fsdp`` (data parallelism with parameters and optimizer state sharded over it) and
``tensor`` (tensor parallelism inside attention and MLP blocks).

The mesh axes are created with ``AxisType.Auto``: XLA's sharding propagation places intermediates,
steered by the logical constraints on parameters and on the main activations. (Explicit axes would
make every contraction in the model spell out its output sharding, which buys nothing here.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical names used by the model code. Parameters: "embed" (model width), "mlp" (MLP hidden),
# "heads" (attention heads of the q/k/v kernel and of the output projection's input),
# "conv_in"/"conv_out" (DPT convolution channels), "layers" (the stacked axis of scanned blocks),
# "norm" (LayerNorm / LayerScale vectors), None (replicated).
# Activations: "batch", "tokens", "act_embed", "act_mlp", "act_heads".
LOGICAL_AXES = (
    "batch", "tokens", "act_embed", "act_mlp", "act_heads",
    "embed", "mlp", "heads", "conv_in", "conv_out", "layers", "norm",
)

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("tokens", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("layers", None),
    ("norm", None),
)


def rules_from_config(rules: Sequence[Sequence]) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Normalises a rules table from a config (lists from ml_collections) into tuples.

    Raises ValueError for a logical name the model does not use or a mesh axis that does not exist.
    """
    out = []
    for entry in rules:
        if len(entry) != 2:
            raise ValueError(f"sharding rule {entry!r}: expected (logical_name, mesh_axes)")
        name, axes = entry
        if name not in LOGICAL_AXES:
            raise ValueError(f"sharding rule for unknown logical axis {name!r}; known: {LOGICAL_AXES}")
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes)
            bad = [a for a in axes if a not in MESH_AXES]
        else:
            bad = [axes] if axes is not None and axes not in MESH_AXES else []
        if bad:
            raise ValueError(f"sharding rule {name!r} -> {axes!r}: unknown mesh axes {bad}; known: {MESH_AXES}")
        out.append((name, axes))
    return tuple(out)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int | None = None) -> tuple[int, int, int]:
    """Resolves a (data, fsdp, tensor) mesh shape where at most one entry is -1 (fills the rest)."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one size may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh sizes {sizes} do not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh (data, fsdp, tensor)={tuple(sizes)} needs {int(np.prod(sizes))} devices, "
                         f"have {num_devices}")
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh over all devices (or `devices`), axis types Auto."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def state_shardings(abstract_state, mesh: Mesh, rules):
    """NamedShardings for an nnx.State whose Variables carry logical `out_sharding` metadata."""
    return nn.logical_to_mesh_sharding(nnx.get_partition_spec(abstract_state), mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Sharding of a batch-major array of rank `ndim`: axis 0 on the `batch` rule, rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def mesh_axes_of(rules, logical: str) -> tuple[str, ...]:
    """The mesh axes `logical` maps to under `rules` (empty when it is replicated or has no rule)."""
    for name, axes in rules:
        if name == logical:
            return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return ()


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Logical sharding constraint on an activation; a no-op outside `use_rules`/mesh context."""
    return nn.with_logical_constraint(x, names)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules):
    """Context in which model code runs sharded: the mesh is set and logical rules are active."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def partitioned(init, names: tuple[str | None, ...]):
    """Initializer wrapper attaching logical axis names to the created Param."""
    return nnx.with_partitioning(init, names)


nnx.use_eager_sharding(False)
