"""FlowTurbo's sampling plans (Zhao et al. 2024; METHOD.md §9): parsing, and the network and
refiner calls a plan costs against the sampler's own NFE rule. The pseudo-corrector's counted
calls and measured order of convergence are tested with the other solvers in
tests/test_sampler.py."""

import numpy as np
import pytest

from simple_reflow import flowturbo, grids, sampler


def test_pseudo_heun_nfe_rule():
    # one call to start and one per interval, none for the Euler step into t = 0 (the calls
    # are counted at run time in tests/test_sampler.py; its order is measured there too)
    for grid in [grids.uniform_grid(7), grids.uniform_grid(7) * 0.9, grids.uniform_grid(1)]:
        assert sampler.nfe_of(grid, "pseudo_heun") == len(grid) - (grid[-1] == 0.0)


def test_parse_plan():
    assert flowturbo.parse_plan("H2P3R2") == (("H", 2), ("P", 3), ("R", 2))
    assert flowturbo.parse_plan("h1p5") == (("H", 1), ("P", 5))
    assert flowturbo.parse_plan("P4") == (("P", 4),)
    for bad, token in [("H2X3", "X3"), ("H0P2", "H0"), ("H2P", "P"), ("H2-P3", "-"), ("R2", "R2")]:
        with pytest.raises(ValueError, match="plan") as info:
            flowturbo.parse_plan(bad)
        assert repr(token) in str(info.value), (bad, str(info.value))
    with pytest.raises(ValueError, match="non-empty"):
        flowturbo.parse_plan("")


def test_plan_calls():
    # H: 2 calls per step; P: 1 per step (its first velocity is the previous step's second);
    # a P block opening the plan pays one extra call to start; R: refiner calls only
    assert flowturbo.plan_calls("H2P3") == (2 * 2 + 3, 0)
    assert flowturbo.plan_calls("P4") == (1 + 4, 0)
    assert flowturbo.plan_calls("H1P5R3") == (7, 6)
    # a P-only plan costs what the sampler's pseudo_heun reports on a grid not ending at 0
    assert flowturbo.plan_calls("P4")[0] == sampler.nfe_of(np.linspace(0.9, 0.1, 5), "pseudo_heun")
