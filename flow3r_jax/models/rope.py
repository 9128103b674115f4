"""2D rotary position embedding (RoPE) as used by the pi3/Flow3r decoder.

Each head's channels are split in halves: the first half is rotated by the token's row (y) position,
the second half by its column (x) position. Within a half of size D, channel i is paired with
i + D/2 ("rotate half", not interleaved), with inverse frequencies 1 / base**(arange(0, D, 2) / D).
"""

import jax.numpy as jnp


def token_positions(batch: int, grid_h: int, grid_w: int, num_special: int):
    """(batch, num_special + grid_h*grid_w, 2) int32 (row, col) positions: special tokens at (0, 0),
    patches row-major at (row + 1, col + 1)."""
    rows, cols = jnp.meshgrid(jnp.arange(grid_h), jnp.arange(grid_w), indexing="ij")
    patches = jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1) + 1
    pos = jnp.concatenate([jnp.zeros((num_special, 2), patches.dtype), patches], axis=0).astype(jnp.int32)
    return jnp.broadcast_to(pos[None], (batch,) + pos.shape)


def _rope1d(x, pos, base: float):
    """x (B, T, H, D); pos (B, T) -> x rotated by angle pos * inv_freq."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = pos.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def apply_rope2d(x, positions, base: float):
    """x (B, T, heads, head_dim); positions (B, T, 2) (row, col)."""
    y, x_ = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([_rope1d(y, positions[..., 0], base), _rope1d(x_, positions[..., 1], base)], axis=-1)
