"""Pair generation: each pair depends only on its index; forward pairs' grid checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simple_reflow import grids, pairs
from simple_reflow.data.toy import toy_mixture

GRID = grids.uniform_grid(4)


def _generator():
    gm = toy_mixture()
    key = jax.random.key(7)
    fn = jax.jit(lambda i: pairs.backward_pairs(gm, key, i, (2,), GRID, solver="heun")[:2])

    def generate(idx):
        x0, x1 = fn(jnp.asarray(idx))
        return {"x0": x0, "x1": x1}

    return generate


def test_pairs_depend_only_on_their_index():
    gen = _generator()
    a = gen(np.arange(0, 8, dtype=np.int32))
    b = gen(np.arange(4, 12, dtype=np.int32))
    np.testing.assert_array_equal(a["x1"][4:], b["x1"][:4])
    np.testing.assert_allclose(a["x0"][4:], b["x0"][:4], rtol=1e-6)


def test_forward_pairs_need_an_increasing_grid_below_one():
    gm = toy_mixture()
    with pytest.raises(ValueError, match="increasing"):
        pairs.forward_pairs(gm, jnp.zeros((2, 2)), GRID)
    with pytest.raises(ValueError, match="t_max < 1"):
        pairs.forward_pairs(gm, jnp.zeros((2, 2)), np.array([0.01, 0.5, 1.0]))
