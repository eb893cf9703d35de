"""Conversions between parametrisations (METHOD.md §1) against their defining identities."""

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import paths


def _batch(seed=0, n=64, shape=(3, 4, 2)):
    k0, k1, kt = jax.random.split(jax.random.key(seed), 3)
    x0 = jax.random.normal(k0, (n, *shape))
    x1 = jax.random.normal(k1, (n, *shape))
    t = jax.random.uniform(kt, (n,), minval=0.01, maxval=0.99)
    return x0, x1, t


def test_interpolation_endpoints_and_velocity():
    x0, x1, t = _batch()
    np.testing.assert_array_equal(paths.interpolate(x0, x1, jnp.zeros(64)), x0)
    np.testing.assert_array_equal(paths.interpolate(x0, x1, jnp.ones(64)), x1)
    # d/dt x_t = x1 - x0 by central difference (linear in t: exact up to rounding)
    h = 1e-2
    fd = (paths.interpolate(x0, x1, t + h) - paths.interpolate(x0, x1, t - h)) / (2 * h)
    np.testing.assert_allclose(fd, paths.target_velocity(x0, x1), atol=1e-4)


def test_exact_denoiser_gives_exact_velocity_and_noise():
    # With D = x0 (the pair's own data), v = x1 - x0 and eps_hat = x1 exactly (METHOD.md §1).
    x0, x1, t = _batch(1)
    x_t = paths.interpolate(x0, x1, t)
    np.testing.assert_allclose(paths.velocity_from_denoised(x_t, t, x0), x1 - x0, atol=2e-4)
    np.testing.assert_allclose(paths.noise_from_denoised(x_t, t, x0), x1, atol=2e-4)
    v = paths.velocity_from_denoised(x_t, t, x0)
    np.testing.assert_allclose(paths.denoised_from_velocity(x_t, t, v), x0, atol=2e-5)


def test_ve_coordinates_and_sigma():
    x0, x1, t = _batch(2)
    x_t = paths.interpolate(x0, x1, t)
    sigma = paths.sigma_from_t(t)
    # x_VE = x0 + sigma * x1: EDM's variance-exploding parametrisation of the same point
    np.testing.assert_allclose(
        paths.to_ve(x_t, t), x0 + paths.expand_t(sigma, x0) * x1, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(paths.t_from_sigma(sigma), t, rtol=1e-6)
    np.testing.assert_allclose(paths.from_ve(paths.to_ve(x_t, t), t), x_t, rtol=1e-5, atol=1e-6)
    assert abs(paths.EDM_T_MAX - 80.0 / 81.0) < 1e-15


def test_log_snr_inverse():
    t = jnp.linspace(0.001, 0.999, 101)
    np.testing.assert_allclose(paths.t_from_log_snr(paths.log_snr(t)), t, rtol=1e-5)
    np.testing.assert_allclose(paths.log_snr(t), np.log((1 - t) / t), rtol=1e-5, atol=1e-6)
