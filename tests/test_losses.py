"""Distances and the normalised loss (METHOD.md §3) against direct computations."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simple_reflow import losses, time_dist
from simple_reflow.train import configure


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
            direct += k[i] * k[j] * xp[:, i : i + 9, j : j + 7, :]
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
    expected = np.mean(
        [2 * (np.asarray(theta) - np.asarray(ai)) / np.sum((theta - ai) ** 2) for ai in a], axis=0
    )
    np.testing.assert_allclose(g, expected, rtol=1e-5)
    g_log = jax.grad(lambda th: jnp.mean(jnp.log(d_of(th))))(theta)
    np.testing.assert_allclose(g, g_log, rtol=1e-5)
    assert float(losses.normalized_mean(d_of(theta))) == pytest.approx(1.0, abs=1e-6)


def test_flow_loss_zero_for_exact_pair_denoiser_and_space_factor():
    # A "model" that returns x0 exactly has zero loss; one off by c·t·(x1 − x0) has velocity-space
    # error c·(x1 − x0), so the velocity-space loss is c²·mean‖x1 − x0‖² independent of t.
    x0 = jax.random.normal(jax.random.key(5), (128, 2))
    x1 = jax.random.normal(jax.random.key(6), (128, 2))
    batch = {"x0": x0, "x1": x1}

    def exact(x_t, t, cond=None, key=None):
        tb = t[:, None]
        return (x_t - tb * x1) / (1 - tb)

    loss, _ = losses.flow_loss(exact, batch, jax.random.key(0))
    assert float(loss) < 1e-8

    def off(x_t, t, cond=None, key=None):
        return exact(x_t, t) - 0.5 * t[:, None] * (x1 - x0)

    loss_v, _ = losses.flow_loss(off, batch, jax.random.key(0), space="velocity")
    expected = 0.25 * np.mean(np.asarray((x1 - x0) ** 2).mean(1))
    assert float(loss_v) == pytest.approx(expected, rel=1e-3)


def test_flow_loss_uses_the_given_time_and_distance():
    # With t ≡ 0.5 and D ≡ 0: x_t = (x0 + x1)/2, Δ = −x0, so the loss is the distance of −x0,
    # and t_max clips the times (here to 0.25, where a velocity-space Δ is 4·x0).
    x0 = jax.random.normal(jax.random.key(7), (16, 3))
    batch = {"x0": x0, "x1": jnp.zeros_like(x0)}
    zero = lambda x_t, t, cond=None, key=None: jnp.zeros_like(x_t)  # noqa: E731
    half = lambda key, shape: jnp.full(shape, 0.5)  # noqa: E731
    sums = lambda d: jnp.sum(jnp.abs(d.reshape(d.shape[0], -1)), axis=1)  # noqa: E731
    loss, _ = losses.flow_loss(zero, batch, jax.random.key(0), distance_fn=sums, time_fn=half)
    assert float(loss) == pytest.approx(float(np.abs(np.asarray(x0)).sum(1).mean()), rel=1e-6)
    loss_v, _ = losses.flow_loss(
        zero, batch, jax.random.key(0), distance_fn=sums, time_fn=half, space="velocity", t_max=0.25
    )
    assert float(loss_v) == pytest.approx(4 * float(loss), rel=1e-6)


def test_make_distance_and_flow_loss_name_bad_arguments():
    delta = jax.random.normal(jax.random.key(8), (3, 8, 8, 3))
    np.testing.assert_allclose(
        losses.make_distance("hpf", hpf_weight=2.0)(delta), losses.hpf_distance(delta, weight=2.0)
    )
    assert losses.make_distance("pseudo_huber") is losses.pseudo_huber
    with pytest.raises(ValueError, match="^distance='l1'"):
        losses.make_distance("l1")
    with pytest.raises(ValueError, match="^hpf_sigma=0"):
        losses.make_distance("hpf", hpf_sigma=0)
    batch = {"x0": delta, "x1": delta}
    with pytest.raises(ValueError, match="^space='noise'"):
        losses.flow_loss(None, batch, jax.random.key(0), space="noise")
    with pytest.raises(ValueError, match="^t_max=1.5"):
        losses.flow_loss(None, batch, jax.random.key(0), t_max=1.5)


def _cfg(**kw):
    base = dict(distance="l2", normalize=False, space="denoiser", hpf_weight=10.0, hpf_sigma=1.0)
    return ml_collections.ConfigDict({**base, **kw})


def test_bad_loss_config_names_the_field():
    with pytest.raises(ValueError, match="loss.distance"):
        configure.validate_loss_config(_cfg(distance="l1"))
    with pytest.raises(ValueError, match="loss.space"):
        configure.validate_loss_config(_cfg(space="noise"))
    with pytest.raises(ValueError, match=r"^loss\.hpf_weight=-1"):
        configure.validate_loss_config(_cfg(hpf_weight=-1.0))
    with pytest.raises(ValueError, match="loss.kind"):
        configure.validate_loss_config(_cfg(kind="score"))


def test_config_adapter_passes_every_field():
    """The loss a config builds equals the loss built from keywords by hand, field by field:
    a field the adapter dropped or swapped (u_shape_a ↔ logit_std, ...) changes the value."""
    x0 = jax.random.normal(jax.random.key(9), (64, 8, 8, 1))
    batch = {"x0": x0, "x1": jax.random.normal(jax.random.key(10), x0.shape)}
    model = lambda x_t, t, cond=None, key=None: 0.3 * x_t * t[:, None, None, None]  # noqa: E731
    loss_cfg = _cfg(distance="hpf", hpf_weight=3.0, hpf_sigma=0.7, space="velocity")
    time_cfg = ml_collections.ConfigDict(
        dict(dist="logit_normal", u_shape_a=4.0, logit_mean=-0.5, logit_std=1.3, t_max=0.9)
    )
    by_hand = functools.partial(
        losses.flow_loss,
        distance_fn=functools.partial(losses.hpf_distance, weight=3.0, sigma=0.7),
        time_fn=functools.partial(time_dist.sample_time, dist="logit_normal", mean=-0.5, std=1.3),
        space="velocity",
        t_max=0.9,
    )
    want = float(by_hand(model, batch, jax.random.key(11))[0])
    got = float(
        configure.flow_loss_from_config(loss_cfg, time_cfg)(model, batch, jax.random.key(11))[0]
    )
    assert got == want
    for field, value in [("hpf_sigma", 1.0), ("hpf_weight", 10.0), ("space", "denoiser")]:
        changed = configure.flow_loss_from_config(
            _cfg(**{**loss_cfg.to_dict(), field: value}), time_cfg
        )
        assert float(changed(model, batch, jax.random.key(11))[0]) != want, field
    for field, value in [("logit_mean", 0.0), ("logit_std", 1.0), ("t_max", 1.0)]:
        other = ml_collections.ConfigDict({**time_cfg.to_dict(), field: value})
        changed = configure.flow_loss_from_config(loss_cfg, other)
        assert float(changed(model, batch, jax.random.key(11))[0]) != want, field
