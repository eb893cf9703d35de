"""Fréchet distance against closed forms for Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from simple_reflow.metrics.frechet import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
)


def _random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def test_one_dimensional_closed_form():
    # FD(N(m1, s1²), N(m2, s2²)) = (m1 − m2)² + (s1 − s2)².
    fd = frechet_distance_from_stats([1.0], [[4.0]], [-2.0], [[0.25]])
    assert fd == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_commuting_covariances_closed_form():
    # Diagonal (commuting) covariances: FD = ‖μ₁ − μ₂‖² + Σ_k (√a_k − √b_k)².
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3.0, 20), rng.uniform(0.1, 3.0, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_general_covariances_match_sqrtm_and_are_symmetric():
    rng = np.random.default_rng(1)
    c1, c2 = _random_cov(rng, 12), _random_cov(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    ref = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(c1)
        + np.trace(c2)
        - 2.0 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    )
    got = frechet_distance_from_stats(mu1, c1, mu2, c2)
    assert got == pytest.approx(ref, rel=1e-8)
    assert frechet_distance_from_stats(mu2, c2, mu1, c1) == pytest.approx(got, rel=1e-10)
    assert frechet_distance_from_stats(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-10)
    # Rank-deficient covariances (fewer samples than dimensions) stay finite and exact.
    l1, l2 = _random_cov(rng, 12, rank=3), _random_cov(rng, 12, rank=5)
    ref = (
        np.trace(l1)
        + np.trace(l2)
        - 2.0 * np.sum(np.sqrt(np.clip(np.linalg.eigvals(l1 @ l2).real, 0, None)))
    )
    assert frechet_distance_from_stats(mu1, l1, mu1, l2) == pytest.approx(ref, rel=1e-6)


def test_samples_converge_to_gaussian_closed_form():
    rng = np.random.default_rng(2)
    d, n = 4, 200_000
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
    mu2 = np.full(d, 0.5)
    x = rng.multivariate_normal(np.zeros(d), c1, size=n).reshape(n, 2, 2)  # images flatten
    y = rng.multivariate_normal(mu2, c2, size=n)
    exact = frechet_distance_from_stats(np.zeros(d), c1, mu2, c2)
    # Sample mean/covariance errors are O(1/√n) ≈ 0.002 relative per entry.
    assert frechet_distance(x, y) == pytest.approx(exact, rel=0.03)
    mu, cov = gaussian_stats(x)
    np.testing.assert_allclose(cov, c1, atol=0.02)
    assert mu.shape == (d,)
