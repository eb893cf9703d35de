"""Toy data definitions (BENCHMARKS.md B1), exact W2 and straightness."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simple_reflow import grids
from simple_reflow.data.toy import make_toy_sampler, sample_toy
from simple_reflow.metrics.transport import straightness, w2
from simple_reflow.teachers import GaussianMixture


def test_w2_equals_brute_force_over_permutations():
    rng = np.random.default_rng(0)
    for n in (3, 5, 6):
        x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
        best = min(
            np.mean(np.sum((x - y[list(p)]) ** 2, 1)) for p in itertools.permutations(range(n))
        )
        assert w2(x, y) == pytest.approx(np.sqrt(best), rel=1e-9)


def test_w2_of_a_shift_is_the_shift():
    x = np.random.default_rng(1).normal(size=(200, 2))
    assert w2(x, x + np.array([3.0, 4.0])) == pytest.approx(5.0, rel=1e-9)


def test_moons_definition():
    from sklearn.datasets import make_moons

    x = np.asarray(sample_toy("moons", jax.random.key(0), 100_000))
    ref, _ = make_moons(100_000, noise=0.05, random_state=0)
    ref = 2.0 * (ref - np.array([0.5, 0.25]))
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.02)  # centred
    np.testing.assert_allclose(np.cov(x.T), np.cov(ref.T), atol=0.03)  # scikit-learn's moons ×2
    assert w2(x[:2000], ref[:2000]) < 0.15


def test_checkerboard_definition():
    x = np.asarray(sample_toy("checkerboard", jax.random.key(1), 100_000))
    assert x.min() >= -4 and x.max() <= 4
    cell = np.floor((x + 4) / 2).astype(int)
    assert np.all((cell.sum(1) % 2) == 0)  # only dark cells
    counts = np.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    dark = counts[counts > 0]
    assert len(dark) == 8 and dark.min() > 0.9 * dark.max()  # uniform over the 8 dark cells


def test_8gaussians_definition():
    x = np.asarray(sample_toy("8gaussians", jax.random.key(2), 80_000))
    angles = np.arctan2(x[:, 1], x[:, 0])
    k = np.round(angles / (np.pi / 4)).astype(int) % 8
    centers = 4 * np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], 1)
    resid = x - centers
    np.testing.assert_allclose(resid.std(0), 0.5, rtol=0.02)
    np.testing.assert_allclose(np.bincount(k) / len(k), 1 / 8, atol=0.01)
    with pytest.raises(ValueError, match="data.name"):
        make_toy_sampler("spirals")


def test_straightness_zero_for_straight_flow_and_positive_otherwise():
    # A point mass at μ (s = 0): x_t = (1 − t)μ + t·z is straight with constant speed, S = 0.
    straight = GaussianMixture(
        means=jnp.array([[2.0, -1.0]]), stds=jnp.array([0.0]), weights=jnp.array([1.0])
    )
    z = jax.random.normal(jax.random.key(3), (512, 2))
    s = straightness(straight, z, grids.uniform_grid(50), solver="euler")
    assert abs(float(s)) < 1e-6
    # s = 0.3: x_t = (1 − t)μ + √((1 − t)²s² + t²) z curves; S = E∫‖ẋ_t − (x1 − x0)‖² dt
    # = E‖z‖²·∫(g'(t) − (1 − s))² dt with g(t) = √((1 − t)²s² + t²), computed by quadrature.
    sd = 0.3
    curved = GaussianMixture(
        means=jnp.array([[2.0, -1.0]]), stds=jnp.array([sd]), weights=jnp.array([1.0])
    )
    tt = np.linspace(0, 1, 200_001)
    g = np.sqrt((1 - tt) ** 2 * sd**2 + tt**2)
    dg = np.gradient(g, tt)
    expected = float(np.mean(np.sum(np.asarray(z) ** 2, 1))) * np.trapezoid(
        (dg - (1 - sd)) ** 2, tt
    )
    s = straightness(curved, z, grids.uniform_grid(400), solver="heun")
    assert float(s) == pytest.approx(expected, rel=0.02)


def test_sliced_w2_of_a_shift_and_of_itself():
    from simple_reflow.metrics.transport import sliced_w2

    x = np.asarray(jax.random.normal(jax.random.key(0), (2000, 4, 4, 3)))
    assert sliced_w2(x, x, jax.random.key(1)) == 0.0
    assert sliced_w2(x, x[::-1], jax.random.key(1)) == 0.0  # order does not matter
    # y = x + c with |c| = 2 in d = 48: SW2² = |c|² mean_θ cos²∠(θ, c) exactly (a translation
    # shifts every sorted projection by θ·c); E cos² = 1/d and one direction's cos² has relative
    # std √(2(d−1)/(d+2)) ≈ 1.37, so the mean of 256 has 8.6% and SW2 4.3%: 20% is 4.6 std.
    c = np.zeros(48)
    c[5] = 2.0
    got = sliced_w2(x, x + c.reshape(4, 4, 3), jax.random.key(2))
    assert abs(got - 2.0 / np.sqrt(48)) < 0.2 * 2.0 / np.sqrt(48)
    assert sliced_w2(x, x + 2 * c.reshape(4, 4, 3), jax.random.key(2)) == pytest.approx(2 * got)
