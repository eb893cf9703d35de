"""B2's average-velocity rows (benchmarks/b2_gmm_images.py): the method order, the
average-velocity error against independently computed values, and the distilled student's
start."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import b2_gmm_images as b2
from simple_reflow import paths
from simple_reflow.average_velocity import exact_mean_denoiser
from simple_reflow.models.two_time import init_from_one_time
from simple_reflow.pairs import noise_for_indices
from simple_reflow.train.step import split_model


def test_selected_methods_put_2rf_before_its_distilled_student():
    assert b2.selected_methods(["splitmeanflow_from_2rf"]) == ("2rf", "splitmeanflow_from_2rf")
    assert b2.selected_methods(["splitmeanflow_from_2rf", "meanflow", "2rf"]) == (
        "2rf",
        "splitmeanflow_from_2rf",
        "meanflow",
    )
    assert b2.selected_methods(list(b2.DEFAULT_METHODS)) == ("2rf", "2rf++", "simple_reflow")
    with pytest.raises(ValueError, match="'mf'"):
        b2.selected_methods(["mf"])


@pytest.mark.slow
def test_avg_velocity_error_against_the_exact_solution_and_the_exact_two_time_model():
    gm = b2.make_mixture(16)
    x1 = np.asarray(noise_for_indices(jax.random.key(0), jnp.arange(32), gm.shape))
    # K = 1, the teacher's Euler step: u = v(z0, t_max) and u* = (z0 − x0*)/t_max, with x0*
    # from the reference solver (diffrax through solve_adaptive, not flow_map).
    got, x_end = b2.avg_velocity_error(b2.teacher_path_fn(gm, 1), gm, x1, 1)
    x_star, _ = b2.exact_solution(gm, x1)
    z0 = b2.T_MAX * x1
    t = jnp.full((len(x1),), b2.T_MAX)
    v = paths.velocity_from_denoised(z0, t, gm(z0, t))
    expected = float(np.mean((np.asarray(v) - (z0 - x_star) / b2.T_MAX) ** 2))
    assert expected > 0.1  # one Euler step is far from the flow
    assert abs(got - expected) < 1e-3 * expected
    # ... and its end is Euler's sample (float32: the step is written as (r/t)·z + (1 − r/t)·D)
    np.testing.assert_allclose(x_end, z0 - b2.T_MAX * np.asarray(v), atol=1e-4)
    # The exact two-time model's steps are the flow: zero error (to the solves' tolerance),
    # while the teacher's own two Euler steps are far off. A swapped (r, t) would not vanish.
    exact = exact_mean_denoiser(gm, rtol=1e-5, atol=1e-5)
    path = jax.jit(lambda x: b2.mean_path(exact, x, 2))
    assert b2.avg_velocity_error(path, gm, x1, 2)[0] < 1e-6
    assert b2.avg_velocity_error(b2.teacher_path_fn(gm, 2), gm, x1, 2)[0] > 0.05


@pytest.mark.slow
def test_the_distilled_student_starts_as_its_one_time_network_exactly():
    gm = b2.make_mixture(16)
    one_def, one = b2.build_student(gm.shape, 0)
    two_def, fresh = b2.build_student(gm.shape, 1, two_time=True)
    start = split_model(init_from_one_time(two_def.merge(fresh), one_def.merge(one)))[1]
    x1 = np.asarray(jax.random.normal(jax.random.key(0), (16, *gm.shape)))
    for budget in (1, 2):
        euler, _ = b2.student_generate(one_def, one, x1, b2.EULER, budget)
        mean, nfe = b2.student_generate(two_def, start, x1, b2.MEAN, budget, two_time=True)
        assert nfe == budget
        np.testing.assert_array_equal(mean, euler)


def test_budget_rule_compares_the_last_doubling_with_the_seed_spread():
    """B2's budget rule on hand-made curves: 2-RF's seed mean moves 10 over 500 → 1000 against
    a seed std of √2·1 (not flattened), MeanFlow's 0.5 against √2·2 (flattened); one seed has
    no spread, so no verdict."""

    def rec(method, seed, steps, fd, curve=True):
        return {
            "method": method,
            "seed": seed,
            "budget": 1,
            "train_steps": steps,
            "fd": fd,
            "curve": curve,
        }

    records = [
        rec("2rf", 0, 500, 60.0), rec("2rf", 1, 500, 62.0),
        rec("2rf", 0, 1000, 50.0, False), rec("2rf", 1, 1000, 52.0, False),
        rec("meanflow", 0, 500, 40.0), rec("meanflow", 1, 500, 44.0),
        rec("meanflow", 0, 1000, 40.5, False), rec("meanflow", 1, 1000, 44.5, False),
    ]  # fmt: skip
    got = b2.budget_rule(records, budgets=(1,))
    two, mf = got[("2rf", 1)], got[("meanflow", 1)]
    assert (two["from"], two["to"], two["change"]) == (500, 1000, -10.0)
    assert two["spread"] == pytest.approx(2**0.5) and two["flattened"] is False
    assert mf["change"] == pytest.approx(0.5) and mf["flattened"] is True
    one = b2.budget_rule([r for r in records if r["seed"] == 0], budgets=(1,))
    assert one[("2rf", 1)]["flattened"] is None
    assert "| 2rf | 1 | 500: 61; 1000: 51 | 500 → 1000 | -10 | 1.41 | no |" in b2.budget_rule_table(
        records, budgets=(1,)
    )
