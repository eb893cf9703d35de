"""FlowTurbo's pseudo-corrector and sampling plans (Zhao et al. 2024; METHOD.md §9).

- The NFE returned by ``sampler.sample(..., solver="pseudo_heun")`` equals the network calls
  counted at run time (a host callback per executed call), not a recount by the sampler's rule.
- Its order of convergence on the closed-form flow of a single Gaussian (float64, from the exact
  state at t = 0.9 as in tests/test_sampler.py) is Heun's: the reused velocity v(x̃_i, t_i) is
  off by x̃_i − x_i = O(h²), so the local error stays O(h³).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_calls

from simple_reflow import flowturbo, grids, sampler
from simple_reflow.teachers import GaussianMixture

T_MAX = 0.9
GAUSS = GaussianMixture(
    means=jnp.array([[1.0, -2.0]]), stds=jnp.array([0.5]), weights=jnp.array([1.0])
)


@pytest.mark.parametrize(
    "grid", [grids.uniform_grid(7), grids.uniform_grid(7) * 0.9, grids.uniform_grid(1)]
)
def test_pseudo_heun_counts_every_network_call(grid):
    fn, counter = count_calls(lambda x, t, c: GAUSS.denoise(x, t))
    x, nfe = jax.jit(lambda x1: sampler.sample(fn, x1, grid, solver="pseudo_heun"))(
        jnp.ones((2, 2))
    )
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == counter["calls"] > 0, (int(nfe), counter["calls"])
    # one call to start and one per interval, none for the Euler step into t = 0
    assert int(nfe) == len(grid) - (grid[-1] == 0.0)


def _error(solver, n):
    z = jax.random.normal(jax.random.key(0), (256, 2))
    grid = grids.uniform_grid(n) * T_MAX
    with jax.enable_x64(True):
        z64 = jnp.asarray(np.asarray(z), jnp.float64)
        gm = GaussianMixture(
            GAUSS.means.astype(jnp.float64),
            GAUSS.stds.astype(jnp.float64),
            GAUSS.weights.astype(jnp.float64),
        )
        x_start = gm.exact_flow(z64, jnp.full((256,), T_MAX, jnp.float64))
        x0, _ = sampler.integrate(lambda x, t, c: gm.denoise(x, t), x_start, grid, solver=solver)
        exact = gm.exact_flow(z64, jnp.zeros((256,), jnp.float64))
        return float(jnp.max(jnp.abs(x0 - exact)))


def test_pseudo_heun_is_second_order():
    ns = np.array([8, 16, 32, 64])
    errs = np.array([_error("pseudo_heun", n) for n in ns])
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(slope - 2.0) < 0.25, (slope, errs)
    # and it is a different method from Heun (not a relabelled copy)
    assert abs(errs[0] - _error("heun", 8)) > 1e-3 * errs[0]


def test_parse_plan():
    assert flowturbo.parse_plan("H2P3R2") == (("H", 2), ("P", 3), ("R", 2))
    assert flowturbo.parse_plan("h1p5") == (("H", 1), ("P", 5))
    assert flowturbo.parse_plan("P4") == (("P", 4),)
    for bad, token in [("H2X3", "X3"), ("H0P2", "H0"), ("H2P", "P"), ("H2-P3", "-"), ("R2", "R2")]:
        with pytest.raises(ValueError, match="plan") as info:
            flowturbo.parse_plan(bad)
        assert repr(token) in str(info.value), (bad, str(info.value))
    with pytest.raises(ValueError, match="non-empty"):
        flowturbo.parse_plan("")


def test_plan_calls():
    # H: 2 calls per step; P: 1 per step (its first velocity is the previous step's second);
    # a P block opening the plan pays one extra call to start; R: refiner calls only
    assert flowturbo.plan_calls("H2P3") == (2 * 2 + 3, 0)
    assert flowturbo.plan_calls("P4") == (1 + 4, 0)
    assert flowturbo.plan_calls("H1P5R3") == (7, 6)
    # a P-only plan costs what the sampler's pseudo_heun reports on a grid not ending at 0
    assert flowturbo.plan_calls("P4")[0] == sampler.nfe_of(np.linspace(0.9, 0.1, 5), "pseudo_heun")
