"""The analytic teacher (METHOD.md §6) against independent references."""

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import grids, pairs, paths
from simple_reflow.data.toy import toy_mixture
from simple_reflow.teachers import GaussianMixture, edm_to_flow


def _image_mixture(seed=0, k=3, shape=(4, 4, 3)):
    key_m, key_s = jax.random.split(jax.random.key(seed))
    return GaussianMixture(
        means=jax.random.normal(key_m, (k, *shape)),
        stds=jax.random.uniform(key_s, (k,), minval=0.2, maxval=0.8),
        weights=jnp.arange(1.0, k + 1.0),
    )


def test_flow_denoiser_equals_edm_denoiser_through_wrapper():
    gm = _image_mixture()
    x = 2.0 * jax.random.normal(jax.random.key(1), (64, 4, 4, 3))
    t = jax.random.uniform(jax.random.key(2), (64,), minval=0.002, maxval=paths.EDM_T_MAX)
    flow = gm.denoise(x, t)
    via_edm = edm_to_flow(gm.edm_denoise)(x, t)
    # float32: values are O(1), a few ulps of rounding through the σ = t/(1 − t) conversion
    np.testing.assert_allclose(flow, via_edm, rtol=1e-4, atol=1e-4)


def test_single_gaussian_posterior_mean_closed_form():
    # K = 1: E[x0 | x_t] = μ + (1 − t)s²/v(t)·(x − (1 − t)μ), by Gaussian conditioning.
    mu, s = np.array([1.0, -2.0]), 0.7
    gm = GaussianMixture(means=mu[None], stds=jnp.array([s]), weights=jnp.array([1.0]))
    x = np.random.default_rng(0).normal(size=(10, 2))
    t = np.linspace(0.05, 0.95, 10)
    v = (1 - t) ** 2 * s**2 + t**2
    expected = mu + ((1 - t) * s**2 / v)[:, None] * (x - (1 - t)[:, None] * mu)
    np.testing.assert_allclose(
        gm.denoise(jnp.asarray(x, jnp.float32), jnp.asarray(t)), expected, rtol=1e-5, atol=1e-5
    )


def test_posterior_mean_is_a_monte_carlo_conditional_mean():
    # Brute force: bin samples of (x0, x_t) near a query point and average x0.
    gm = toy_mixture()
    n, t = 400_000, 0.6
    key0, key1 = jax.random.split(jax.random.key(3))
    x0 = gm.sample(key0, n)
    x_t = (1 - t) * x0 + t * jax.random.normal(key1, (n, 2))
    q = jnp.array([[1.2, 0.4]])  # [1, 2]
    near = jnp.linalg.norm(x_t - q, axis=1) < 0.1
    mc = np.asarray(x0)[np.asarray(near)].mean(0)
    exact = np.asarray(gm.denoise(q, jnp.array([t]))[0])
    count = int(near.sum())
    # Monte Carlo error ~ posterior std / √count (posterior std ≤ 1.5 here) plus the bin width.
    assert np.all(np.abs(mc - exact) < 4 * 1.5 / np.sqrt(count) + 0.1), (mc, exact, count)


def test_samples_have_the_mixture_moments():
    gm = toy_mixture()
    x = np.asarray(gm.sample(jax.random.key(4), 200_000))
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.03)
    # Cov = Σ π_k μ_k μ_kᵀ + s²I = (16/2 + 0.25) I for 8 points on a circle of radius 4
    np.testing.assert_allclose(np.cov(x.T), 8.25 * np.eye(2), atol=0.1)


def test_backward_then_forward_returns_the_noise():
    # Integrate noise → data and back with many Heun steps. The ends are approximated at
    # t_max = 1 − 1e-4 and t_min = 1e-4 (METHOD.md §2 [recon]): each neglects a term of size
    # ≈ 1e-4·|x| ≤ 5e-4 (|x| ≤ 5 here), so the round trip is within ≈ 1e-3 plus the solver's
    # error (Heun, 400 steps: ~1e-5, measured 3e-5 in all); 2e-3 bounds the sum.
    gm = toy_mixture()
    t_max, t_min = 1 - 1e-4, 1e-4
    grid_b = grids.make_grid("edm", 400, t_max=t_max)
    x0, x1, _ = jax.jit(
        lambda i: pairs.backward_pairs(gm, jax.random.key(5), i, (2,), grid_b, solver="heun")
    )(jnp.arange(512))
    grid_f = np.concatenate([[t_min], np.sort(grid_b)[1:]])
    _, x1_back, _ = jax.jit(lambda x: pairs.forward_pairs(gm, x, grid_f, solver="heun"))(x0)
    err = np.abs(np.asarray(x1_back) - np.asarray(x1))
    assert err.max() < 2e-3, err.max()


def test_closed_form_moments_equal_those_of_exact_samples():
    """A 10-component mixture in 4×4×3 (d = 48): the closed-form mean and covariance against
    10^5 exact samples. Sampling error: the mean's std per coordinate is √(Var/n) ≤ √(2/10^5)
    ≈ 0.0045 (Var ≤ 2 here), so 0.03 is > 6 std; a covariance entry's std is
    √((Var_i Var_j + C_ij²)/n) ≤ √(8/10^5) ≈ 0.009, so 0.06 is > 6 std."""
    key_m, key_s = jax.random.split(jax.random.key(0))
    gm = GaussianMixture(
        jax.random.normal(key_m, (10, 4, 4, 3)), jnp.full((10,), 0.3), jnp.arange(1.0, 11.0)
    )
    x = np.asarray(gm.sample(key_s, 100_000), np.float64).reshape(100_000, -1)
    assert np.abs(x.mean(0) - gm.mean()).max() < 0.03
    assert np.abs(np.cov(x.T) - gm.covariance()).max() < 0.06
    assert np.abs(np.diag(gm.covariance())).min() > 0.09  # at least the components' s²
