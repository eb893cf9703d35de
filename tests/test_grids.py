"""Inference time grids (METHOD.md §4)."""

import numpy as np
import pytest

from simple_reflow import grids, paths


@pytest.mark.parametrize("n,kappa", [(1, 20.0), (2, 20.0), (5, 20.0), (9, 20.0), (40, 5.0)])
def test_sigmoid_grid_properties(n, kappa):
    """t_0 = 1, t_N = 0 exactly; strictly decreasing; symmetric (t_i + t_{N−i} = 1); the steps
    grow from both ends towards the middle (dense at both ends)."""
    g = grids.sigmoid_grid(n, kappa)
    assert g.shape == (n + 1,) and g.dtype == np.float64
    assert g[0] == 1.0 and g[-1] == 0.0  # exactly, not approximately
    assert np.all(np.diff(g) < 0)
    np.testing.assert_allclose(g + g[::-1], 1.0, rtol=0, atol=1e-15)
    steps = -np.diff(g)  # [N], positive
    half = (n + 1) // 2  # steps[:half] rise towards the middle, steps[n - half:] mirror them
    assert np.all(np.diff(steps[:half]) > 0) and np.all(np.diff(steps[n - half :]) < 0)
    if n >= 3:
        assert max(steps[0], steps[-1]) < steps[n // 2] / 2


def test_sigmoid_grid_hand_computed_values():
    """With S(z) = 1/(1 + e^{−z}), S(x) − S(−x) = tanh(x/2) and S(−x) = 1 − S(x):

    N = 4, κ = 4: t_1 = (S(1) − S(−2)) / (S(2) − S(−2)) = (S(1) + S(2) − 1) / tanh(1)
                      = (0.7310585786300049 + 0.8807970779778823 − 1) / 0.7615941559557649
                      = 0.6118556566078872 / 0.7615941559557649 = 0.8033880667585180;
    N = 4, κ = 20: t_1 = (S(5) − S(−10)) / tanh(5)
                       = (0.9933071490757153 − 0.0000453978687024) / 0.9999092042625951
                       = 0.9933519433292101;
    N = 2, any κ: t_1 = (S(0) − S(−κ/2)) / (2 S(κ/2) − 1) = (S(κ/2) − ½) / (2 S(κ/2) − 1) = ½.
    t_2 = ½ and t_3 = 1 − t_1 for N = 4 by the symmetry.
    """
    a = 0.8033880667585180
    np.testing.assert_allclose(grids.sigmoid_grid(4, 4.0), [1, a, 0.5, 1 - a, 0], atol=1e-15)
    b = 0.9933519433292101
    np.testing.assert_allclose(grids.sigmoid_grid(4, 20.0), [1, b, 0.5, 1 - b, 0], atol=1e-15)
    for kappa in (0.5, 20.0, 80.0):
        np.testing.assert_allclose(grids.sigmoid_grid(2, kappa), [1, 0.5, 0], atol=1e-15)


@pytest.mark.parametrize("kappa", [0.3, 0.1, 0.03])
def test_sigmoid_grid_tends_to_uniform_as_kappa_vanishes(kappa):
    """With u = ½ − i/N and S(z) = ½ + ½ tanh(z/2), t = (tanh(κu/2) + tanh(κ/4)) / (2 tanh(κ/4)).
    Expanding tanh x = x − x³/3 + O(x⁵) gives t = u + ½ + κ²·u(1 − 4u²)/48 + O(κ⁴): the uniform
    grid plus a deviation of at most κ²·max u(1 − 4u²)/48 = κ²/(144√3) ≈ 0.00401 κ² (at u = 1/√12,
    where u(1 − 4u²) = 1/(3√3)).
    """
    n = 1000
    u = 0.5 - np.arange(n + 1) / n
    dev = grids.sigmoid_grid(n, kappa) - grids.uniform_grid(n)
    np.testing.assert_allclose(
        dev, kappa**2 * u * (1 - 4 * u**2) / 48, rtol=0, atol=1e-4 * kappa**4
    )  # the O(κ⁴) term (measured 6.2e-5·κ⁴)
    assert np.max(np.abs(dev)) == pytest.approx(kappa**2 / (144 * np.sqrt(3)), abs=1e-4 * kappa**4)


def test_edm_grid_is_edm_sigmas_in_flow_time():
    g = grids.scale_grid(grids.edm_grid(18), paths.EDM_T_MAX)
    sigma = g[:-1] / (1 - g[:-1])
    rho, smin, smax = 7.0, 0.002, 80.0
    i = np.arange(18)
    expected = (smax ** (1 / rho) + i / 17 * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(sigma, expected, rtol=1e-9)
    assert g[-1] == 0.0 and np.all(np.diff(g) < 0)


def test_uniform_and_make_grid():
    np.testing.assert_allclose(grids.uniform_grid(4), [1, 0.75, 0.5, 0.25, 0])
    g = grids.make_grid("sigmoid", 5, kappa=20.0, t_max=0.9)
    assert g[0] == pytest.approx(0.9) and g[-1] == 0.0
    with pytest.raises(ValueError, match="grid"):
        grids.make_grid("cosine", 5)


@pytest.mark.parametrize("t_max", [1.0, 80 / 81])
def test_forward_grid_is_the_backward_grid_reversed_from_t_min(t_max):
    t_min = 2e-3
    g = grids.forward_grid("edm", 6, t_min=t_min, t_max=t_max)
    assert g[0] == t_min and np.all(np.diff(g) > 0)
    assert g[-1] == pytest.approx(min(t_max, 1 - t_min), abs=1e-15)  # < 1: ε̂ is finite
    back = grids.make_grid("edm", 6, t_max=min(t_max, 1 - t_min))
    np.testing.assert_array_equal(g[1:], np.sort(back[back > t_min]))
