"""The adaptive reference solver (diffrax) against closed forms and a fine fixed-grid solve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import count_calls

from simple_reflow import grids, sampler
from simple_reflow.data.toy import toy_mixture
from simple_reflow.reference_solver import solve_adaptive
from simple_reflow.teachers import GaussianMixture

GAUSS = GaussianMixture(jnp.array([[1.0, -2.0]]), jnp.array([0.5]), jnp.ones(1))


def _solve(fn, x1, tol, method="dopri5"):
    out = jax.jit(lambda x: solve_adaptive(fn, x, rtol=tol, atol=tol, method=method))(x1)
    jax.block_until_ready(out)
    jax.effects_barrier()
    return out


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_converges_to_the_exact_flow_and_reports_its_nfe(method):
    """Single Gaussian: x0 = μ + s·x1 exactly (METHOD.md §6). The error falls with the
    tolerance, down to the O(t_end²) last step (t_end = 1e-3); the returned NFE equals the
    network calls executed (rejected steps included) and grows as the tolerance tightens."""
    x1 = jax.random.normal(jax.random.key(0), (256, 2))
    exact = GAUSS.exact_flow(x1, jnp.zeros(256))
    errors, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        fn, counter = count_calls(lambda x, t, c: GAUSS.denoise(x, t))
        x0, nfe = _solve(fn, x1, tol, method)
        assert int(nfe) == counter["calls"]
        errors.append(float(jnp.max(jnp.abs(x0 - exact))))
        nfes.append(int(nfe))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 2e-5, errors
    assert nfes[0] < nfes[1] < nfes[2], nfes


def test_agrees_with_a_fine_heun_solve_on_8gaussians():
    """The analytic 8-Gaussians teacher against itself: adaptive solve vs 4,000-step Heun —
    the coupling error of the exact teacher is ~0 (both solve the same ODE)."""
    teacher = toy_mixture()
    x1 = jax.random.normal(jax.random.key(1), (512, 2))
    x0, nfe = _solve(teacher.denoise, x1, 1e-6)
    fine, _ = jax.jit(
        lambda x: sampler.sample(teacher.denoise, x, grids.uniform_grid(4000), solver="heun")
    )(x1)
    gap = float(jnp.mean(jnp.sum((x0 - fine) ** 2, axis=1)))
    spread = float(jnp.mean(jnp.sum((x0 - x0.mean(0, keepdims=True)) ** 2, axis=1)))
    assert gap < 1e-6 * spread, (gap, spread, int(nfe))
    assert int(nfe) < 4000  # far fewer evaluations than the fixed grid


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        solve_adaptive(GAUSS.denoise, jnp.ones((1, 2)), method="rk4")
    with pytest.raises(ValueError, match="t_end"):
        solve_adaptive(GAUSS.denoise, jnp.ones((1, 2)), t_end=0.0)
