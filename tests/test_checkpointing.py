"""Orbax checkpoints of the train state + Grain iterator: keep-N, resume position, mesh change."""

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from flow3r_jax import sharding
from flow3r_jax.train import checkpointing, optimizer
from flow3r_jax.train import state as state_lib


class ToyModel(nnx.Module):
    """Two sharded layers and a norm: enough structure for sharding and optimizer groups."""

    def __init__(self, rngs):
        init = nnx.initializers.lecun_normal()
        self.encoder = nnx.Linear(16, 32, kernel_init=sharding.partitioned(init, ("embed", "mlp")), rngs=rngs)
        self.norm = nnx.LayerNorm(32, rngs=rngs)
        self.head = nnx.Linear(32, 16, kernel_init=sharding.partitioned(init, ("mlp", "embed")), rngs=rngs)

    def __call__(self, x):
        return self.head(self.norm(self.encoder(x)))


def _opt_cfg():
    return ml_collections.ConfigDict(dict(
        learning_rate=1e-2, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1, warmup_steps=1,
        final_lr_ratio=0.0, clip_norm=1.0, param_groups=[], no_decay_patterns=["norm", "bias"]))


def _layout(mesh):
    return state_lib.make_layout(ToyModel, lambda p: optimizer.make_optimizer(_opt_cfg(), 10, p),
                                 mesh, sharding.DEFAULT_RULES, seed=0)


def _ckpt_cfg(every=2, keep=2):
    return ml_collections.ConfigDict(dict(every_steps=every, keep=keep, async_save=True,
                                                replica_parallel_save=False))


def _data_iter():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4))


def test_keep_n_and_iterator_position(tmp_path):
    mesh = sharding.make_mesh(data=2, fsdp=4)
    layout = _layout(mesh)
    state = state_lib.init_state(layout, ToyModel, seed=0)
    it = _data_iter()
    manager = checkpointing.make_manager(tmp_path / "ckpt", _ckpt_cfg(every=2, keep=2))
    saved = []
    for step in range(1, 8):
        next(it)
        state = state.replace(step=jnp.asarray(step, jnp.int32))
        if checkpointing.save(manager, step, state, it):
            saved.append(step)
    expected_next = next(it)
    manager.wait_until_finished()
    assert saved == [2, 4, 6]
    assert manager.all_steps() == [4, 6]

    fresh = _data_iter()
    restored = checkpointing.restore(checkpointing.make_manager(tmp_path / "ckpt", _ckpt_cfg()),
                                     layout.abstract, fresh)
    assert int(restored.step) == 6
    next(fresh)  # the batch consumed at step 7 after the save at step 6
    np.testing.assert_array_equal(next(fresh), expected_next)


def test_restore_onto_different_mesh(tmp_path):
    mesh_a = sharding.make_mesh(data=2, fsdp=4)
    layout_a = _layout(mesh_a)
    state = state_lib.init_state(layout_a, ToyModel, seed=0)
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, opt_state = layout_a.optimizer.update(grads, state.opt_state, state.params)
    state = state.replace(step=jnp.asarray(1, jnp.int32), opt_state=opt_state,
                          params=jax.tree.map(jnp.add, state.params, updates))
    manager = checkpointing.make_manager(tmp_path / "ckpt", _ckpt_cfg(every=1))
    assert checkpointing.save(manager, 1, state, _data_iter())
    manager.wait_until_finished()

    mesh_b = sharding.make_mesh(data=1, fsdp=8)
    layout_b = _layout(mesh_b)
    restored = checkpointing.restore(checkpointing.make_manager(tmp_path / "ckpt", _ckpt_cfg()),
                                     layout_b.abstract)
    kernel = restored.params["encoder"]["kernel"]
    assert kernel.sharding == layout_b.shardings.params["encoder"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (2, 32)  # 16 rows over fsdp=8
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
