"""B1's few-step leaderboard: the average-velocity error against the analytic teacher, the
merge of earlier result files with its reproducibility check, the marks against the best, and
the budget curves' flattening rule."""

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import toy2d, toy2d_leaderboard
from configs.toy2d import get_config
from simple_reflow import sampler
from simple_reflow.data.toy import toy_mixture
from simple_reflow.train import toy_eval
from simple_reflow.train.toy import build_mlp
from simple_reflow.train.toy_eval import (
    coupling_error,
    eval_sets,
    evaluate_model,
    exact_solution_fn,
    solver_grid_fn,
)


def test_avg_velocity_error_of_a_two_time_network_at_initialisation_is_exact():
    """A two-time MLP as ``init_from_one_time`` leaves it (its interval embedding exactly zero),
    closed over by the denoiser as the leaderboards do, against u computed with the parameters
    as an argument and the error in float64. With jaxlib 0.10.2's XLA:CPU the former fused
    error (network and sum in one program) failed this test (inf), and a standalone script
    got inf or NaN in 7-8 of 8 fresh compilations: YNNPACK's fusion of a dot with a constant
    all-zero weight and a reduction reads memory it never wrote (with the un-copied params of
    ``split_model`` the same program happened to pass, so the bug shows only when that memory
    holds something else)."""
    from flax import nnx

    from simple_reflow.average_velocity import average_velocity
    from simple_reflow.models.mlp import MLPDenoiser
    from simple_reflow.models.two_time import init_from_one_time
    from simple_reflow.train.step import split_model

    tdef, tparams = split_model(MLPDenoiser(2, hidden=256, depth=3, rngs=nnx.Rngs(0)))
    leaves, tree = jax.tree.flatten(tparams)  # a "trained" teacher: no zero weight matrix
    keys = jax.random.split(jax.random.key(7), len(leaves))
    tparams = jax.tree.unflatten(
        tree, [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    two = MLPDenoiser(2, hidden=256, depth=3, two_time=True, rngs=nnx.Rngs(0))
    model_def, params = split_model(init_from_one_time(two, tdef.merge(tparams)))
    params = jax.tree.map(jnp.array, params)  # as the leaderboards' training starts from them
    n, steps, times = 5000, [], [(1.0, 0.5), (0.5, 0.25), (0.25, 0.0)]
    for k, (t, r) in zip(jax.random.split(jax.random.key(3), 3), times, strict=True):
        z = jax.random.normal(k, (n, 2))
        steps.append((z, jnp.full((n,), r), jnp.full((n,), t), jnp.ones((n, 2))))
    u_ref = jax.jit(lambda p, z, r, t: average_velocity(model_def.denoiser(p), z, r, t))
    want = np.mean(
        [
            np.mean(np.sum((np.asarray(u_ref(params, z, r, t), np.float64) - 1.0) ** 2, -1))
            for z, r, t, _ in steps
        ]
    )
    for _ in range(3):  # a fresh compilation each call
        got = toy_eval.avg_velocity_errors(model_def.denoiser(params), [{3: steps}], two_time=True)
        assert got[3][0] == pytest.approx(want, rel=1e-6)  # float32 u, float64 sums


def _ave_setup(n=256, budgets=(1, 2)):
    cfg = get_config()
    cfg.eval.num_samples = n
    sets = eval_sets(cfg, num_sets=1, exact_fn=exact_solution_fn("8gaussians"))
    grid_fn = solver_grid_fn(toy2d._solver_cfg(cfg, toy2d.MEAN))
    return cfg, sets, toy_eval.exact_mean_targets(toy_mixture(), sets, budgets, grid_fn)


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
        ave = toy_eval.avg_velocity_errors(fn, targets, two_time=two_time)
        solver = "mean" if two_time else "euler"
        x0, _ = jax.jit(lambda x, fn=fn, s=solver: sampler.sample(fn, x, grid, solver=s))(
            sets[0]["x1"]
        )
        assert ave[1][0] == pytest.approx(coupling_error(x0, exact), rel=1e-4)
        assert ave[1][1] is None  # one set: no std
    teacher = toy_eval.avg_velocity_errors(toy_mixture(), targets, two_time=False)
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


def test_join_keeps_each_method_and_its_curves_from_the_first_file_that_has_it():
    """One run per task plus a sampling-time run that retrains 2rf: ``join`` keeps every
    task's records and curves once, and checks the repeated 2rf against its first run."""
    gauss = _runs({"teacher": 1.0, "2rf": 0.3}) + _curve("2rf", {0: 2.0, 1000: 0.5})
    moons = [dict(r, task="moons") for r in _runs({"teacher": 0.9, "2rf": 0.2})]
    moons += [dict(r, task="moons") for r in _curve("2rf", {0: 1.0})]
    boss = [r for r in gauss if r["method"] == "2rf" and not r.get("curve")]
    boss += [dict(r, method="2rf+boss", solver="euler-boss") for r in boss]
    joined, checks = toy2d_leaderboard.join([gauss, moons, boss])
    assert len(joined) == len(gauss) + len(moons) + 3  # 2rf+boss's records, 2rf's once
    assert sum(r.get("curve", False) for r in joined) == 6 + 3
    assert [(c["task"], c["method"], c["records"], c["equal"]) for c in checks] == [
        ("8gaussians", "2rf", 3, True)
    ]
    changed = [dict(r, w2_sets=[v + 0.01 for v in r["w2_sets"]]) for r in boss]
    assert not toy2d_leaderboard.join([gauss, changed])[1][0]["equal"]


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


def _sampling_args(**overrides):
    """A tiny B1 run's arguments (8gaussians, one evaluation set, 16 BOSS candidates)."""
    return argparse.Namespace(
        **{
            "eval_sets": 1,
            "steps": 100,
            "teacher_steps": 100,
            "num_pairs": 256,
            "num_samples": 128,
            "ema_decay": 0.9,
            "wcfm_kappa": 8.0,
            "no_accurate": True,
            "boss_candidates": 16,
            "boss_noises": 32,
            **overrides,
        }
    )


def test_boss_and_flowturbo_rows_reuse_the_model_and_reduce_to_euler_and_the_pseudo_corrector(
    tmp_path,
):
    """The teacher's BOSS and FlowTurbo rows: records in the leaderboard's format, and exact
    identities — one BOSS step is Euler's, the 1-NFE plan "H1" is Euler, and with a zero
    refiner "H1R1" / "H1P2R1" are the pseudo-corrector on the uniform grid of 2 / 4 steps (up
    to float32 rounding)."""
    args = _sampling_args(
        methods=["teacher", "teacher+boss", "teacher+flowturbo"],
        budgets=[1, 2, 4],
        teacher_solvers=["euler"],
        refiner_steps=0,  # the zero offset
    )
    t = toy2d.TaskRun("8gaussians", 0, args, str(tmp_path))
    teacher = {r["budget"]: r for r in t.evaluate("teacher")}
    boss = {r["budget"]: r for r in t.evaluate("teacher+boss")}
    turbo = {r["budget"]: r for r in t.evaluate("teacher+flowturbo")}
    assert toy2d_leaderboard.own_solver("2rf+boss") == "euler-boss"
    assert toy2d_leaderboard.own_solver("2rf+flowturbo") == "flowturbo"
    for rows, solver in ((boss, "euler-boss"), (turbo, "flowturbo")):
        assert sorted(rows) == [1, 2, 4]
        for b, r in rows.items():
            assert set(teacher[b]) <= set(r)  # every field of the teacher's records
            assert (r["solver"], r["nfe"], r["w2_floor_sets"]) == (
                solver,
                b,
                teacher[b]["w2_floor_sets"],
            )
            assert r["avg_velocity_error"] == teacher[b]["avg_velocity_error"]  # u := v
    for b, r in boss.items():  # K Euler steps on candidate times (multiples of 1/16)
        g = np.asarray(r["grid"])
        assert len(g) == b + 1 and g[0] == 1.0 and g[-1] == 0.0
        np.testing.assert_array_equal(g * 16, np.round(g * 16))
    assert "sigmoid_grid" in boss[4] and "sigmoid_grid" not in boss[2]  # κ = 20: 2 is uniform
    same = ("w2_sets", "coupling_error")
    assert [boss[1][k] for k in same] == [teacher[1][k] for k in same]
    assert [turbo[1][k] for k in same] == [teacher[1][k] for k in same]
    assert [(turbo[b]["plan"], turbo[b]["refiner_calls"]) for b in (1, 2, 4)] == [
        ("H1", 0),
        ("H1R1", 1),
        ("H1P2R1", 1),
    ]
    cfg = t.cfg
    cfg.eval.nfe = (2, 4)
    pseudo = toy2d._solver_cfg(cfg, {"solver": "pseudo_heun", "grid": "uniform"})
    for r in evaluate_model(t.teacher[0], cfg, solver_cfg=pseudo, sets=t.sets, with_accurate=False):
        assert r["nfe"] == r["budget"]
        got = turbo[r["budget"]]  # the same steps up to float32 rounding (other XLA fusions)
        np.testing.assert_allclose(got["w2_sets"], r["w2_sets"], rtol=1e-5)
        assert got["coupling_error"] == pytest.approx(r["coupling_error"], rel=1e-5)
    board = toy2d_leaderboard.leaderboard(
        list(teacher.values()) + list(boss.values()) + list(turbo.values())
    )
    table = toy2d_leaderboard.format_leaderboard(board)
    assert "| teacher+boss | euler-boss | 1 |" in table
    assert "teacher+flowturbo @2: H1R1 (1 refiner call)" in table


def test_straightened_rows_with_a_zero_learning_rate_are_the_boss_rows(tmp_path):
    """``<student>+straight``: the student fine-tuned along its BOSS grid of each budget, Euler
    on that grid. With a learning rate of 0 the fine-tune leaves the weights (and their EMA)
    unchanged, so every record equals the ``<student>+boss`` one: same grid, same samples, same
    average-velocity error (the straightened model's own, here the student's)."""
    args = _sampling_args(
        methods=["2rf+boss", "2rf+straight"],
        budgets=[1, 2],
        straighten_steps=50,
        straighten_noises=64,
        straighten_batch=32,
        straighten_lr=0.0,
    )
    t = toy2d.TaskRun("8gaussians", 0, args, str(tmp_path))
    boss = {r["budget"]: r for r in t.evaluate("2rf+boss")}
    straight = {r["budget"]: r for r in t.evaluate("2rf+straight")}
    assert toy2d_leaderboard.own_solver("simple_reflow+straight") == "euler-boss-straight"
    assert sorted(straight) == [1, 2]
    for b, r in straight.items():
        assert (r["solver"], r["nfe"], r["straighten_steps"]) == ("euler-boss-straight", b, 50)
        assert r["grid"] == boss[b]["grid"]
        np.testing.assert_allclose(r["w2_sets"], boss[b]["w2_sets"], rtol=1e-6)
        assert r["coupling_error"] == pytest.approx(boss[b]["coupling_error"], rel=1e-6)
        assert r["avg_velocity_error"] == pytest.approx(boss[b]["avg_velocity_error"], rel=1e-6)
