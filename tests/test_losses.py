"""Distances and the normalised loss (METHOD.md §3) against direct computations."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simple_reflow import losses


def test_sq_l2_and_pseudo_huber_closed_form():
    delta = jax.random.normal(jax.random.key(0), (5, 4, 4, 3))
    flat = np.asarray(delta).reshape(5, -1)
    np.testing.assert_allclose(losses.sq_l2(delta), (flat**2).mean(1), rtol=1e-6)
    c = 0.00054 * math.sqrt(48)
    expected = np.sqrt((flat**2).sum(1) + c * c) - c
    np.testing.assert_allclose(losses.pseudo_huber(delta), expected, rtol=1e-6)


def test_gaussian_blur_matches_direct_convolution():
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 9, 7, 3)))
    sigma = 1.0
    r = 3
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    direct = np.zeros_like(x)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            direct += k[i] * k[j] * xp[:, i:i + 9, j:j + 7, :]
    np.testing.assert_allclose(losses.gaussian_blur(jnp.asarray(x), sigma), direct, atol=1e-5)


def test_high_pass_kills_constants_and_hpf_is_positive_definite():
    const = jnp.full((2, 8, 8, 3), 2.5)
    np.testing.assert_allclose(losses.high_pass(const), 0.0, atol=1e-5)
    # d(Δ) ≥ ‖Δ‖²/dim > 0 for Δ ≠ 0, and λ = 0 gives squared ℓ2 exactly.
    delta = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
    d = losses.hpf_distance(delta, weight=10.0)
    assert np.all(np.asarray(d) >= np.asarray(losses.sq_l2(delta)))
    np.testing.assert_allclose(losses.hpf_distance(delta, weight=0.0), losses.sq_l2(delta))
    # On non-image data H = 0 (METHOD.md §3).
    v = jax.random.normal(jax.random.key(3), (4, 2))
    np.testing.assert_allclose(losses.hpf_distance(v, 10.0), losses.sq_l2(v))


def test_normalized_loss_gradient_is_grad_log_d():
    # d_i(θ) = ‖θ - a_i‖² per sample; the normalised loss's gradient is mean_i ∇ log d_i.
    a = jax.random.normal(jax.random.key(4), (6, 3))
    theta = jnp.array([0.3, -0.2, 0.1])

    def d_of(th):
        return jnp.sum((th[None] - a) ** 2, axis=1)

    g = jax.grad(lambda th: losses.normalized_mean(d_of(th), delta=0.0))(theta)
    expected = np.mean([2 * (np.asarray(theta) - np.asarray(ai)) / np.sum((theta - ai) ** 2)
                        for ai in a], axis=0)
    np.testing.assert_allclose(g, expected, rtol=1e-5)
    g_log = jax.grad(lambda th: jnp.mean(jnp.log(d_of(th))))(theta)
    np.testing.assert_allclose(g, g_log, rtol=1e-5)
    assert float(losses.normalized_mean(d_of(theta))) == pytest.approx(1.0, abs=1e-6)


def _cfg(**kw):
    base = dict(distance="l2", normalize=False, space="denoiser", hpf_weight=10.0, hpf_sigma=1.0)
    return ml_collections.ConfigDict({**base, **kw})


TIME = ml_collections.ConfigDict(dict(dist="uniform", u_shape_a=4.0, logit_mean=0.0,
                                      logit_std=1.0))


def test_flow_loss_zero_for_exact_pair_denoiser_and_space_factor():
    # A "model" that returns x0 exactly has zero loss; one off by c·t·(x1 − x0) has velocity-space
    # error c·(x1 − x0), so the velocity-space loss is c²·mean‖x1 − x0‖² independent of t.
    x0 = jax.random.normal(jax.random.key(5), (128, 2))
    x1 = jax.random.normal(jax.random.key(6), (128, 2))
    batch = {"x0": x0, "x1": x1}

    def exact(x_t, t, cond=None, key=None):
        tb = t[:, None]
        return (x_t - tb * x1) / (1 - tb)

    loss, _ = losses.flow_loss(exact, batch, jax.random.key(0), _cfg(), TIME)
    assert float(loss) < 1e-8

    def off(x_t, t, cond=None, key=None):
        return exact(x_t, t) - 0.5 * t[:, None] * (x1 - x0)

    loss_v, _ = losses.flow_loss(off, batch, jax.random.key(0), _cfg(space="velocity"), TIME)
    expected = 0.25 * np.mean(np.asarray((x1 - x0) ** 2).mean(1))
    assert float(loss_v) == pytest.approx(expected, rel=1e-3)


def test_bad_loss_config_names_the_field():
    with pytest.raises(ValueError, match="loss.distance"):
        losses.validate_loss_config(_cfg(distance="l1"))
    with pytest.raises(ValueError, match="loss.space"):
        losses.validate_loss_config(_cfg(space="noise"))
