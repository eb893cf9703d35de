"""B1's evaluation: several evaluation sets, the floor as often, the coupling error against the
analytic teacher's exact ODE solution, and the significance rule of the summary."""

import argparse
import math

import jax
import numpy as np
import pytest

from benchmarks import toy2d
from configs.toy2d import get_config
from simple_reflow import reference_solver
from simple_reflow.data.toy import toy_mixture
from simple_reflow.train.toy import build_mlp
from simple_reflow.train.toy_eval import (
    coupling_error,
    eval_sets,
    evaluate_model,
    evaluate_models,
    exact_solution_fn,
    w2_floors,
)


def _cfg(n=300):
    cfg = get_config()
    cfg.data.name = "8gaussians"
    cfg.eval.num_samples = n
    cfg.eval.nfe = (1, 4)
    cfg.eval.accurate_steps = 32
    return cfg


def test_exact_solution_agrees_with_a_finer_solve():
    x1 = jax.random.normal(jax.random.key(0), (256, 2))
    exact = exact_solution_fn("8gaussians")(x1)
    finer, _ = reference_solver.solve_adaptive(toy_mixture(), x1, t_end=1e-4, rtol=1e-8, atol=1e-8)
    assert coupling_error(exact, finer) < 1e-8
    # the solution lands on the mixture: each point within a few stds of a component mean
    d = np.linalg.norm(np.asarray(exact)[:, None] - np.asarray(toy_mixture().means)[None], axis=2)
    assert np.all(d.min(1) < 2.5)
    assert exact_solution_fn("moons") is None


def test_coupling_error_is_near_zero_for_the_teacher_and_large_untrained():
    cfg = _cfg()
    sets = eval_sets(cfg, num_sets=2, exact_fn=exact_solution_fn("8gaussians"))
    teacher = {r["budget"]: r for r in evaluate_model(toy_mixture(), cfg, sets=sets)}
    # the analytic teacher's own Heun solve matches its exact solution; at 1 Euler step it
    # lands every x1 on the data mean 0, ≈ 4² + 0.5²·2 away from its exact endpoint
    assert teacher["accurate"]["coupling_error"] < 1e-3
    assert teacher[1]["coupling_error"] == pytest.approx(16.5, rel=0.1)
    assert teacher[4]["coupling_error"] < teacher[1]["coupling_error"]
    model_def, params = build_mlp(cfg.model, 0)
    untrained = evaluate_model(model_def.denoiser(params), cfg, sets=sets, with_accurate=False)
    assert all(r["coupling_error"] > 5.0 for r in untrained)
    # no exact solution, no coupling error
    plain = evaluate_model(toy_mixture(), cfg, sets=eval_sets(cfg), with_accurate=False)
    assert all(r["coupling_error"] is None and r["w2_std"] is None for r in plain)


def test_evaluation_stage_reports_the_average_velocity_error_on_the_analytic_task():
    """The toy pipelines' evaluation (``evaluate_models``) on 8gaussians: at 1 NFE one step
    x̂0 = x1 − u, so the average-velocity error is the 1-NFE coupling error (two independent
    exact solves, tolerance 1e-6) — for the analytic teacher (u := v, Euler) and for an untrained
    two-time MLP sampled with the "mean" solver; more intervals follow the flow more closely
    for the teacher; no analytic teacher, no error."""
    cfg = _cfg()
    model_def, params = build_mlp(cfg.model, 0, two_time=True)
    models = {"teacher": toy_mixture(), "mlp": model_def.denoiser(params)}
    metrics = evaluate_models(models, cfg, solvers={"teacher": "euler", "mlp": "mean"})
    for name, recs in metrics["models"].items():
        by = {r["budget"]: r for r in recs}
        assert by[1]["avg_velocity_error"] == pytest.approx(by[1]["coupling_error"], rel=1e-4)
        assert by["accurate"]["avg_velocity_error"] is None, name
    teacher = {r["budget"]: r for r in metrics["models"]["teacher"]}
    assert teacher[1]["avg_velocity_error"] == pytest.approx(16.5, rel=0.1)
    assert teacher[4]["avg_velocity_error"] < teacher[1]["avg_velocity_error"]
    cfg.data.name = "moons"
    plain = evaluate_models({"teacher": toy_mixture()}, cfg)["models"]["teacher"]
    assert all(r["avg_velocity_error"] is None for r in plain)


def test_evaluation_sets_are_independent_and_shared():
    cfg = _cfg()
    sets = eval_sets(cfg, num_sets=3)
    assert len(sets) == 3
    assert not np.allclose(sets[0]["x1"], sets[1]["x1"])
    assert not np.allclose(sets[0]["target"], sets[1]["target"])
    again = eval_sets(cfg, num_sets=3)
    np.testing.assert_array_equal(again[2]["target"], sets[2]["target"])
    recs = evaluate_model(toy_mixture(), cfg, sets=sets, with_accurate=False)
    for r in recs:
        assert len(r["w2_sets"]) == 3 and r["w2"] == r["w2_sets"][0]
        assert r["w2_mean"] == pytest.approx(np.mean(r["w2_sets"]))
        assert r["w2_std"] > 0
    floors = w2_floors(cfg, num_sets=3)
    assert len(set(floors)) == 3 and np.std(floors) > 0


def _records(means, seeds=(0, 1, 2), sets=5, spread=0.05):
    rng = np.random.default_rng(0)
    out = []
    for method, mean in means.items():
        for seed in seeds:
            w = list(mean + spread * rng.standard_normal(sets))
            out.append(
                {
                    "task": "8gaussians",
                    "method": method,
                    "seed": seed,
                    "solver": "euler",
                    "budget": 2,
                    "nfe": 2,
                    "w2": w[0],
                    "w2_sets": w,
                    "w2_mean": float(np.mean(w)),
                    "w2_std": float(np.std(w, ddof=1)),
                    "w2_floor": 0.2,
                    "w2_floor_sets": [0.2] * sets,
                    "coupling_error": None,
                    "straightness": None,
                }
            )
    return out


def test_significance_separates_far_means_from_near_ones():
    rows = toy2d.significance(toy2d.summarize(_records({"a": 0.5, "b": 0.7, "c": 0.52})))
    verdict = {(r["a"], r["b"]): r["significant"] for r in rows}
    assert verdict[("a/euler", "b/euler")] and verdict[("b/euler", "c/euler")]
    assert not verdict[("a/euler", "c/euler")]
    paired = {(r["a"], r["b"]): r for r in rows}[("a/euler", "b/euler")]
    assert paired["same_sign"] and paired["paired_t"] and len(paired["seed_diffs"]) == 3
    table = toy2d.format_table(_records({"a": 0.5, "b": 0.7}), old=_records({"a": 0.5, "b": 0.7}))
    assert "| 8gaussians | 2 | a/euler | b/euler |" in table
    old = _records({"a": 0.5})
    rows = toy2d.compare_runs(old, _records({"a": 0.55}))  # the same draws shifted by 0.05
    spread = np.std([r["w2"] for r in old], ddof=1)
    assert rows[0]["units"] == pytest.approx(0.05 / spread)


@pytest.mark.slow
def test_b1_task_writes_set_statistics_and_floor_below_a_trained_model(tmp_path):
    args = argparse.Namespace(
        methods=["teacher", "2rf"],
        eval_sets=2,
        steps=200,
        teacher_steps=200,
        num_pairs=1024,
        num_samples=300,
        ema_decay=0.9,
        wcfm_kappa=8.0,
    )
    records = toy2d.run_task("8gaussians", 0, args, str(tmp_path))
    keys = [(r["method"], r["solver"], r["budget"]) for r in records]
    assert len(keys) == len(set(keys)) == 13 + 5  # 4 budgets × (3 | 1) solvers + accurate
    student = [r for r in records if r["method"] == "2rf"]
    for r in records:
        assert len(r["w2_sets"]) == len(r["w2_floor_sets"]) == 2
        assert r["w2_std"] > 0 and r["w2_floor_std"] > 0
        assert r["coupling_error"] is not None and math.isfinite(r["coupling_error"])
    # at 300 samples the floor is as large as a good model's W2 (a perfect model's W2 is a
    # floor draw) and varies a lot (0.67–1.11 over six pairs of sets), yet its mean is below a
    # briefly trained student's and the teacher's W2 at 1 NFE
    floor = records[0]["w2_floor_mean"]
    worse = [r for r in records if r["budget"] == 1]
    assert len(worse) == 3 + 1 and all(floor < r["w2_mean"] for r in worse)
    # the coupling error falls with the NFE budget for the student
    ce = {r["budget"]: r["coupling_error"] for r in student}
    assert ce[9] < ce[1]
