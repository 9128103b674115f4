"""Pick numpy or jax.numpy to match the arrays a geometry function receives."""

import jax
import jax.numpy as jnp
import numpy as np


def array_module(*arrays):
    """`jax.numpy` if any argument is a jax array (or tracer), else `numpy` (keeps float64 on the host)."""
    if any(isinstance(a, jax.Array) for a in arrays):
        return jnp
    return np
