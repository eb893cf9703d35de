"""B2's pieces at small sizes: the mixture, the exact-solution reference and its floor, the
coupling error of an untrained network, and the metrics against the closed-form moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import b2_gmm_images as b2
from simple_reflow import grids, sampler
from simple_reflow.pairs import noise_for_indices


def test_mixture_has_smooth_unit_rms_means():
    gm = b2.make_mixture(16)
    means = np.asarray(gm.means)
    assert means.shape == (10, 16, 16, 3) and np.allclose(gm.stds, 0.3)
    assert abs(np.sqrt(np.mean(means**2)) - 1.0) < 1e-5
    # smooth: neighbouring pixels are far more alike than independent ones (corr ≫ 0)
    a, b = means[:, :, :-1].ravel(), means[:, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8


@pytest.mark.slow
def test_exact_solution_floor_is_near_zero_and_an_untrained_network_is_far():
    gm = b2.make_mixture(16)
    x1 = np.asarray(noise_for_indices(jax.random.key(0), jnp.arange(64), gm.shape))
    x_star, nfe = b2.exact_solution(gm, x1)
    finer, finer_nfe = b2.exact_solution(gm, x1, rtol=1e-7)
    assert finer_nfe > nfe > 10
    floor = float(np.mean((finer - x_star) ** 2))
    # Dopri5 at rtol = atol = 1e-5: per-coordinate error ~1e-5..1e-4, squared ≲ 1e-7
    assert floor < 1e-6
    # The reference reaches the data: its samples lie near the component means (std 0.3)
    nearest = (
        np.min(np.sum((x_star[:, None] - np.asarray(gm.means)[None]) ** 2, axis=(2, 3, 4)), axis=1)
        / x_star[0].size
    )
    assert np.all(nearest < 0.15)  # ≈ 0.09 = 0.3² for a sample of its component
    model_def, params = b2.build_student(gm.shape, 0)
    grid = grids.make_grid("uniform", 1, t_max=b2.T_MAX)
    x, _ = sampler.sample(model_def.denoiser(params), jnp.asarray(x1), grid, solver="euler")
    untrained = float(np.mean((np.asarray(x) - x_star) ** 2))
    assert untrained > 1000 * floor and untrained > 0.5


def test_metrics_of_exact_samples_and_of_a_shifted_set():
    gm = b2.make_mixture(16)
    n = 4000
    exact = np.asarray(gm.sample(jax.random.key(1), n))
    other = np.asarray(gm.sample(jax.random.key(2), n))
    m = b2.metrics(other, gm, exact, exact, jax.random.key(3))
    shifted = b2.metrics(other + 0.5, gm, exact, exact, jax.random.key(3))
    # FD of a shift c grows by |c|² = 768·0.25 = 192 exactly (in expectation of the rest)
    assert abs((shifted["fd"] - m["fd"]) - 192.0) < 5.0
    # SW2 of independent exact sets is small against the shift's |c|/√d-scaled 0.5
    assert m["sw2"] < 0.1 < 0.4 < shifted["sw2"]
    assert m["coupling_error"] > 1.0  # independent samples: no coupling
    assert b2.metrics(exact, gm, exact, exact, jax.random.key(3))["coupling_error"] == 0.0
