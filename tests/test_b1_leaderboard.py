"""B1's few-step leaderboard: the average-velocity error against the analytic teacher, the
merge of earlier result files with its reproducibility check, the marks against the best, and
the budget curves' flattening rule."""

import re

import jax
import numpy as np
import pytest

from benchmarks import toy2d, toy2d_leaderboard
from configs.toy2d import get_config
from simple_reflow import sampler
from simple_reflow.data.toy import toy_mixture
from simple_reflow.train.toy import build_mlp
from simple_reflow.train.toy_eval import (
    coupling_error,
    eval_sets,
    exact_solution_fn,
    solver_grid_fn,
)


def _ave_setup(n=256, budgets=(1, 2)):
    cfg = get_config()
    cfg.eval.num_samples = n
    sets = eval_sets(cfg, num_sets=1, exact_fn=exact_solution_fn("8gaussians"))
    grid_fn = solver_grid_fn(toy2d._solver_cfg(cfg, toy2d.MEAN))
    return cfg, sets, toy2d.exact_mean_targets(toy_mixture(), sets, budgets, grid_fn)


def test_avg_velocity_error_is_the_one_nfe_coupling_error_and_follows_the_exact_flow():
    cfg, sets, targets = _ave_setup()
    exact = sets[0]["exact"]
    # the chained exact points end on the exact ODE solution (toy_eval's independent solve)
    for b, steps in targets[0].items():
        z, r, t, u = steps[-1]
        assert float(t[0] - r[0]) == pytest.approx(1.0 / b)
        assert coupling_error(z - (t - r)[:, None] * u, exact) < 1e-6
    # at 1 NFE x̂0 = x1 − u, so ‖u − u*‖² = ‖x̂0 − x0*‖²: an untrained two-time MLP and the
    # analytic teacher (u := v, one Euler step lands on the data mean 0: ≈ 4² + 2·0.5²)
    model_def, params = build_mlp(cfg.model, 0, two_time=True)
    models = {
        "mlp": (model_def.denoiser(params), True),
        "teacher": (toy_mixture(), False),
    }
    grid = np.array([1.0, 0.0])
    for fn, two_time in models.values():
        ave = toy2d.avg_velocity_errors(fn, targets, two_time=two_time)
        solver = "mean" if two_time else "euler"
        x0, _ = jax.jit(lambda x, fn=fn, s=solver: sampler.sample(fn, x, grid, solver=s))(
            sets[0]["x1"]
        )
        assert ave[1][0] == pytest.approx(coupling_error(x0, exact), rel=1e-4)
        assert ave[1][1] is None  # one set: no std
    teacher = toy2d.avg_velocity_errors(toy_mixture(), targets, two_time=False)
    assert teacher[1][0] == pytest.approx(16.5, rel=0.1)
    assert teacher[2][0] < teacher[1][0]


def _rec(method, seed, w2_sets, *, budget=1, solver="euler", floor=0.2, **extra):
    return {
        "task": "8gaussians",
        "method": method,
        "seed": seed,
        "solver": solver,
        "budget": budget,
        "nfe": budget,
        "w2": w2_sets[0],
        "w2_sets": list(w2_sets),
        "w2_mean": float(np.mean(w2_sets)),
        "w2_std": float(np.std(w2_sets, ddof=1)),
        "w2_floor": floor,
        "w2_floor_sets": [floor] * len(w2_sets),
        "coupling_error": None,
        "straightness": None,
        **extra,
    }


def _runs(means, spread=0.02, seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    return [
        _rec(m, s, mean + spread * rng.standard_normal(4), solver=toy2d_leaderboard.own_solver(m))
        for m, mean in means.items()
        for s in seeds
    ]


def test_merge_keeps_the_new_run_per_method_and_checks_equal_records():
    new = _runs({"teacher": 1.0, "meanflow": 0.50})
    old = _runs({"teacher": 1.0, "2rf": 0.51, "ot-cfm": 0.8})
    old += [_rec("2rf", 0, [9.0] * 4, solver="heun")]  # not 2rf's own solver: left out
    other = [dict(r, method="2rf", w2_sets=[0.1] * 4) for r in new if r["seed"] == 0]
    merged, checks = toy2d_leaderboard.merge(new, [old, other])
    assert checks == [
        {
            "task": "8gaussians",
            "method": "teacher",
            "records": 3,
            "same_sets": True,
            "max_w2_diff": 0.0,
            "max_coupling_diff": 0.0,
            "equal": True,
        }
    ]
    board = toy2d_leaderboard.leaderboard(merged, budgets=(1,))["8gaussians"]
    assert [r["method"] for r in board] == ["meanflow", "2rf", "ot-cfm", "teacher"]
    assert [r["seeds"] for r in board] == [3, 3, 3, 3]  # 2rf: the first file's, not `other`'s
    cells = [r["by_budget"][1] for r in board]
    assert cells[0]["best"] and not cells[1]["significant"] and cells[2]["significant"]
    table = toy2d_leaderboard.format_leaderboard({"8gaussians": board}, checks, budgets=(1,))
    assert "| meanflow | mean | 3 | **0." in table
    assert re.search(r"\| 2rf \| euler \| 3 \| 0\.\d+ ± 0\.\d+ ≈ \|", table)
    assert re.search(r"\| ot-cfm \| euler \| 3 \| 0\.\d+ ± 0\.\d+ \|", table)
    assert "| 8gaussians | teacher | 3 | yes | 0 | 0 | yes |" in table
    # a changed record, or other evaluation sets, fail the check
    changed = [dict(r, w2_sets=[v + 0.01 for v in r["w2_sets"]]) for r in old]
    _, checks = toy2d_leaderboard.merge(new, [changed])
    assert not checks[0]["equal"] and checks[0]["max_w2_diff"] == pytest.approx(0.01)
    moved = [dict(r, w2_floor_sets=[0.3] * 4) for r in old]
    assert not toy2d_leaderboard.merge(new, [moved])[1][0]["same_sets"]


def _curve(method, values):
    return [
        {**_rec(method, seed, [v + 0.01 * seed] * 2, budget=1), "curve": True, "step": step}
        for step, v in values.items()
        for seed in range(3)
    ]


def test_a_curve_has_flattened_when_the_last_doubling_moves_less_than_the_seed_spread():
    # seed spread 0.01 (values v, v + 0.01, v + 0.02)
    records = _curve("2rf", {500: 0.9, 1000: 0.6, 2000: 0.595})
    records += _curve("meanflow", {500: 0.9, 1000: 0.8, 2000: 0.7})
    _, verdicts = toy2d_leaderboard.curve_summary(records)
    flat = {v["method"]: v for v in verdicts if v["metric"] == "w2"}
    assert flat["2rf"]["flattened"] and (flat["2rf"]["from"], flat["2rf"]["to"]) == (1000, 2000)
    assert flat["2rf"]["spread"] == pytest.approx(0.01)
    assert not flat["meanflow"]["flattened"]
    # curve records never enter the main tables
    assert toy2d.summarize(records) == {}
