"""Inference time grids (METHOD.md §4)."""

import numpy as np
import pytest

from simple_reflow import grids, paths


@pytest.mark.parametrize("n,kappa", [(1, 20.0), (5, 20.0), (9, 20.0), (40, 5.0)])
def test_sigmoid_grid_formula_monotone_and_exact_ends(n, kappa):
    g = grids.sigmoid_grid(n, kappa)

    def s(z):
        return 1 / (1 + np.exp(-z))

    i = np.arange(n + 1)
    formula = (s(kappa * (0.5 - i / n)) - s(-kappa / 2)) / (s(kappa / 2) - s(-kappa / 2))
    np.testing.assert_allclose(g, formula, rtol=0, atol=1e-15)
    assert g[0] == 1.0 and g[-1] == 0.0  # exactly, not approximately
    assert np.all(np.diff(g) < 0)
    # symmetric about t = 1/2: dense at both ends
    np.testing.assert_allclose(g + g[::-1], 1.0, atol=1e-12)


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
