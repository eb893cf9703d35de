"""EDM's teacher loss in flow time against EDM's formula computed directly in NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import paths
from simple_reflow.losses_edm import edm_loss, edm_weight

P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 0.5


def _linear_model(a, b):
    """A flow denoiser D(x_t, t) = a·x_t + b·t that records its conditioning arguments."""
    seen = {}

    def model(x_t, t, cond=None, *, key=None):
        seen.update(cond=cond, key=key)
        return a * x_t + b * paths.expand_t(t, x_t)

    return model, seen


def test_edm_loss_equals_numpy_formula():
    key = jax.random.PRNGKey(0)
    y = jax.random.uniform(jax.random.PRNGKey(1), (16, 4, 4, 3), minval=-1.0, maxval=1.0)
    cond = jnp.arange(16, dtype=jnp.int32)
    model, seen = _linear_model(0.7, 0.3)
    loss, metrics = edm_loss(model, {"x0": y, "cond": cond}, key)

    # EDM's loss in VE space, with the documented key order (σ noise, ε noise, dropout).
    k_sigma, k_eps, _ = jax.random.split(key, 3)
    n = np.asarray(jax.random.normal(k_sigma, (16,)), np.float64)
    eps = np.asarray(jax.random.normal(k_eps, y.shape), np.float64)
    yn = np.asarray(y, np.float64)
    sigma = np.exp(P_MEAN + P_STD * n)[:, None, None, None]
    x_ve = yn + sigma * eps  # EDM: y + n, n ~ N(0, σ² I)
    t = sigma / (1.0 + sigma)  # METHOD.md §1: σ = t/(1 − t)
    d_edm = 0.7 * x_ve / (1.0 + sigma) + 0.3 * t  # D_EDM(x; σ) = D(x/(1 + σ), σ/(1 + σ))
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    per = (weight * (d_edm - yn) ** 2).reshape(16, -1).mean(axis=1)
    # float32 arithmetic on O(1)–O(100) terms: relative error ~1e-6.
    np.testing.assert_allclose(float(loss), per.mean(), rtol=2e-5)
    np.testing.assert_allclose(
        float(metrics["train/edm_mse"]), ((d_edm - yn) ** 2).mean(), rtol=2e-5
    )
    np.testing.assert_array_equal(seen["cond"], cond)
    assert seen["key"] is not None  # dropout is on while training


def test_edm_weight_formula():
    sigma = jnp.array([0.002, 0.1, 0.5, 1.0, 80.0])
    w = np.asarray(edm_weight(sigma, SIGMA_DATA), np.float64)
    s = np.asarray(sigma, np.float64)
    np.testing.assert_allclose(w, 1.0 / s**2 + 1.0 / SIGMA_DATA**2, rtol=1e-6)
    np.testing.assert_allclose(float(edm_weight(0.5, 0.5)), 8.0, rtol=1e-7)  # 0.5/0.0625
    # λ(σ) = 1/c_out(σ)², c_out = σ·σ_d/√(σ² + σ_d²) (EDM Table 1).
    c_out = s * SIGMA_DATA / np.sqrt(s**2 + SIGMA_DATA**2)
    np.testing.assert_allclose(w, 1.0 / c_out**2, rtol=1e-6)


def test_skip_only_denoiser_has_unit_loss_on_gaussian_data():
    """For y ~ N(0, σ_d² I) and D = c_skip(σ)·x_VE (EDM's network output F = 0),
    E[λ(σ)(D − y)²] = λ(σ)·σ²σ_d²/(σ² + σ_d²) = 1 at every σ: EDM's unit-variance target."""

    def skip_only(x_t, t, cond=None, *, key=None):
        sigma = paths.sigma_from_t(t)
        c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        return paths.expand_t(c_skip, x_t) * paths.to_ve(x_t, t)

    y = SIGMA_DATA * jax.random.normal(jax.random.PRNGKey(3), (8192, 4, 4, 1))
    loss, _ = jax.jit(lambda b, k: edm_loss(skip_only, b, k))({"x0": y}, jax.random.PRNGKey(4))
    # Each sample's term is a mean of 16 unit-variance χ²₁ draws (var 2/16): the batch mean
    # has std √(0.125/8192) ≈ 0.004, so 0.025 is a 6-sigma bound.
    assert abs(float(loss) - 1.0) < 0.025
