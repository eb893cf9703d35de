"""The digits few-step leaderboard (benchmarks/digits_leaderboard.py) end to end on a tiny
setting: every record present, the ground truth consistent, the report and figures written."""

import json
import os

import numpy as np
import pytest

from benchmarks import digits_leaderboard as dl

SLOW = pytest.mark.slow  # the end-to-end run: each method below trained once (~40 s)
# One method of each kind the runner handles (a teacher, a ReFlow student, an average-velocity
# student with its step-0 curve point, BOSS, BOSS-straightened and FlowTurbo rows on another
# method's model); the other methods differ from these only in toy2d.METHODS' settings, tested
# with toy2d's runner.
METHODS = (
    "teacher",
    "2rf",
    "splitmeanflow_distill",
    "teacher+boss",
    "teacher+straight",
    "2rf+flowturbo",
)
# One pytest-xdist worker runs the module (``--dist loadgroup``): the run is made once.
pytestmark = pytest.mark.xdist_group("digits_leaderboard")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("digits_lb") / "lb.json")
    args = ["--out", out, "--quick", "--curve-methods", "splitmeanflow_distill"]
    records = dl.main([*args, "--methods", *METHODS])
    return out, records


@SLOW
def test_every_method_seed_and_budget_has_a_record(run):
    out, records = run
    with open(out) as f:
        assert json.load(f) == json.loads(json.dumps(records))
    main = [r for r in records if not r.get("curve")]
    have = {(r["method"], r["seed"], r["budget"]) for r in main}
    for name in METHODS:
        for b in dl.QUICK["budgets"]:
            assert (name, 0, b) in have, (name, b)
    assert ("teacher", 0, "accurate") in have
    for r in main:  # each at the solver toy2d's leaderboard ranks it by, within its budget
        if r["budget"] != "accurate":
            assert r["solver"] == dl.toy2d_leaderboard.own_solver(r["method"])
            assert r["nfe"] <= r["budget"]
        assert np.isfinite(r["fd"]) and r["fd"] > r["fd_floor"] > 0


def _get(records, **kw):
    (r,) = [r for r in records if all(r.get(k) == v for k, v in kw.items())]
    return r


@SLOW
def test_ground_truth_is_the_teachers_flow(run):
    _, records = run
    acc = _get(records, method="teacher", budget="accurate", curve=None)
    euler1 = _get(records, method="teacher", budget=1, curve=None)
    # the accurate Heun solve is the teacher's own map: its coupling error is its solver error,
    # orders of magnitude below one Euler step's
    assert acc["coupling_error"] < 1e-2 * euler1["coupling_error"]
    # at 1 NFE the average-velocity error is the 1-NFE Euler coupling error (u* over [0, 1])
    assert euler1["avg_velocity_error"] == pytest.approx(euler1["coupling_error"], rel=1e-3)
    # BOSS at 1 NFE is plain Euler: the grid [1, 0]
    boss1 = _get(records, method="teacher+boss", budget=1, curve=None)
    assert boss1["grid"] == [1.0, 0.0] and boss1["fd"] == euler1["fd"]
    # the straightened teacher is fine-tuned along the same grid, and is another model
    for b in dl.QUICK["budgets"]:
        boss = _get(records, method="teacher+boss", budget=b, curve=None)
        straight = _get(records, method="teacher+straight", budget=b, curve=None)
        assert straight["grid"] == boss["grid"] and straight["straighten_steps"] == 50
        assert straight["coupling_error"] != boss["coupling_error"]


@SLOW
def test_distilled_student_starts_as_its_teacher(run):
    _, records = run
    for b in dl.CURVE_BUDGETS:
        step0 = _get(records, method="splitmeanflow_distill", budget=b, curve=True, step=0)
        euler = _get(records, method="teacher", budget=b, curve=None)
        for field in ("fd", "coupling_error", "avg_velocity_error"):
            assert step0[field] == pytest.approx(euler[field], rel=1e-5, abs=1e-7), (b, field)
        trained = _get(records, method="splitmeanflow_distill", budget=b, curve=True, step=50)
        assert trained["coupling_error"] != euler["coupling_error"]


@SLOW
def test_report_and_figures_are_written(run):
    out, _ = run
    stem = os.path.splitext(out)[0]
    with open(stem + ".md") as f:
        text = f.read()
    for name in METHODS:
        assert f"| {name} |" in text
    assert "Budget rule" in text and "BOSS against the uniform and sigmoid" in text
    for metric in dl.METRICS:
        assert os.path.getsize(f"{stem}_{metric}.png") > 1000
    assert os.path.getsize(f"{stem}_curves.png") > 1000
    with open(stem + ".meta.json") as f:
        meta = json.load(f)
    assert meta["wall_seconds"] > 0 and "seed0" in meta["seconds"]


def _curve(method, budget, step, fd):
    return {"method": method, "budget": budget, "step": step, "fd": fd, "curve": True}


@pytest.mark.fast
def test_budget_rule_picks_the_first_doubling_inside_the_seed_spread():
    # 2rf and meanflow at 1 and 2 NFE, 3 seeds: 500 → 1000 moves by 2 (spread 0.1: not flat),
    # 1000 → 2000 by 0.05 (spread 0.1: flat), 2000 → 4000 by 0.5 (spread 0.1: not flat)
    means = {500: 10.0, 1000: 8.0, 2000: 7.95, 4000: 7.45}
    records = [
        _curve(m, b, s, mean + d)
        for m in dl.RULE_METHODS
        for b in dl.CURVE_BUDGETS
        for s, mean in means.items()
        for d in (-0.1, 0.0, 0.1)
    ]
    rows, chosen = dl.budget_rule(records)
    assert [(r["step"], r["flattened"]) for r in rows] == [
        (1000, False),
        (2000, True),
        (4000, False),
    ]
    assert chosen == 2000
    # one curve that has not flattened at 2000 holds the budget back
    records = [
        dict(r, fd=r["fd"] + 1.0)
        if (r["method"], r["budget"], r["step"]) == ("meanflow", 2, 2000)
        else r
        for r in records
    ]
    assert dl.budget_rule(records)[1] is None


@pytest.mark.fast
def test_boss_check_compares_with_both_grids():
    r = {
        "method": "teacher+boss",
        "seed": 0,
        "solver": "euler-boss",
        "budget": 4,
        "fd": 5.0,
        "coupling_error": 0.02,
        "uniform_grid": {"fd": 6.0, "coupling_error": 0.01},
        "sigmoid_grid": {"fd": 4.0, "coupling_error": 0.03},
    }
    (row,) = dl.boss_check([r])
    assert not row["fd_wins"] and not row["coupling_error_wins"]
    (row,) = dl.boss_check([dict(r, fd=3.0, coupling_error=0.005)])
    assert row["fd_wins"] and row["coupling_error_wins"]
