"""Evaluation of toy-2D models: W2 per NFE budget, an accurate solve, straightness, and the
coupling error against an exact ODE solution where one is known (with ``boss.enabled``, the
BOSS rows of :func:`simple_reflow.train.boss_stage.toy_boss` in the table and the metrics).

Shared by the toy pipeline (``scripts/train.py``) and the B1 benchmark
(``benchmarks/toy2d.py``), so both report the same figures the same way.

W2 at 5,000 samples on 8gaussians is dominated by how many points land in each component, so
a model is scored on ``num_sets`` independent evaluation sets (fresh noise x1 and fresh target
samples each, set i from ``fold_in(key, i)``) and the floor (exact vs exact samples) on as many
independent pairs of exact sets: :func:`eval_sets`, :func:`w2_floors`. The coupling error is
mean_i ‖x̂0(x1_i) − x0*(x1_i)‖² for the same noise x1_i, where x0* is the analytic teacher's
exact ODE solution (:func:`exact_solution_fn`, an adaptive diffrax solve); its square root
bounds W2 between the model's and the teacher's output laws. (B2's coupling error is the same
mean divided by the dimension.) The average-velocity error (:func:`avg_velocity_errors`) scores
a model's step on each interval of a budget's grid against the analytic teacher's exact
average velocity u*(z, r, t) = (z − Φ_{t→r}(z))/(t − r) (METHOD.md §9) at the teacher's own
trajectory points (:func:`exact_mean_targets`); the evaluation stage reports both beside W2 on
8gaussians (:func:`evaluate_models`).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simple_reflow import grids, paths, reference_solver, sampler
from simple_reflow.average_velocity import average_velocity, exact_average_velocity
from simple_reflow.data.toy import make_toy_sampler, toy_mixture
from simple_reflow.metrics.transport import straightness, w2
from simple_reflow.train.streams import stream_key

__all__ = [
    "solver_grid_fn",
    "exact_solution_fn",
    "eval_sets",
    "w2_floors",
    "coupling_error",
    "exact_mean_targets",
    "avg_velocity_errors",
    "evaluate_model",
    "evaluate_models",
    "format_table",
    "write_outputs",
]

# The analytic teacher's exact ODE solution: Dormand–Prince with step-size control (~90 NFE);
# it differs from a solve at rtol = atol = 1e-8, t_end = 1e-4 by ~5e-10 in mean squared
# distance (measured on 5,000 points; the test bounds it by 1e-8).
EXACT_RTOL = EXACT_ATOL = 1e-6
EXACT_T_END = 1e-3


def solver_grid_fn(solver_cfg):
    """``n -> grid`` for the configured grid (sigmoid-κ, EDM-ρ or uniform) and t_max."""
    return lambda n: grids.make_grid(
        solver_cfg.grid, n, kappa=solver_cfg.kappa, rho=solver_cfg.rho, t_max=solver_cfg.t_max
    )


def _sample_fn(denoise_fn, grid, solver, r):
    return jax.jit(lambda x1: sampler.sample(denoise_fn, x1, grid, solver=solver, r=r)[0])


def exact_solution_fn(name, *, rtol=EXACT_RTOL, atol=EXACT_ATOL, t_end=EXACT_T_END):
    """``x1 [n, 2] -> x0* [n, 2]``, the analytic teacher's exact ODE solution from noise x1 (an
    adaptive solve of :func:`toy_mixture`), for ``8gaussians``; None for targets without an
    analytic teacher."""
    if name != "8gaussians":
        return None
    teacher = toy_mixture()

    def solve(x1):
        return reference_solver.solve_adaptive(teacher, x1, t_end=t_end, rtol=rtol, atol=atol)[0]

    return jax.jit(solve)


def eval_sets(cfg, *, key=None, num_sets=1, exact_fn=None):
    """``num_sets`` independent evaluation sets of ``eval.num_samples`` points each.

    Set i is drawn from ``fold_in(key, i)`` (key: the run's ``"eval"`` stream by default), so
    every model scored with the same key sees the same noise and targets.

    Returns:
      A list of dicts ``{"x1": [n, 2] noise, "target": [n, 2] exact target samples}``, plus
      ``"exact": exact_fn(x1)`` (the reference solution for the coupling error) when given.
    """
    n = cfg.eval.num_samples
    key = stream_key(cfg.seed, "eval") if key is None else key
    sample_data = make_toy_sampler(cfg.data.name)
    sets = []
    for i in range(num_sets):
        key_noise, key_data = jax.random.split(jax.random.fold_in(key, i))
        x1 = jax.random.normal(key_noise, (n, 2))
        s = {"x1": x1, "target": sample_data(key_data, n)}
        if exact_fn is not None:
            s["exact"] = exact_fn(x1)
        sets.append(s)
    return sets


def w2_floors(cfg, *, key=None, num_sets=1):
    """W2 between two independent ``eval.num_samples``-point exact sets of the target, for
    ``num_sets`` independent pairs (pair i from ``fold_in(key, i)``; key: the ``"eval_floor"``
    stream by default): the metric's noise floor, a list of floats."""
    n = cfg.eval.num_samples
    key = stream_key(cfg.seed, "eval_floor") if key is None else key
    sample_data = make_toy_sampler(cfg.data.name)
    floors = []
    for i in range(num_sets):
        key_a, key_b = jax.random.split(jax.random.fold_in(key, i))
        floors.append(w2(sample_data(key_a, n), sample_data(key_b, n)))
    return floors


def coupling_error(x0, exact):
    """mean_i ‖x0_i − exact_i‖² over paired rows ``[n, ...]`` (float, computed in float64)."""
    d = np.asarray(x0, np.float64) - np.asarray(exact, np.float64)
    return float(np.mean(np.sum(d.reshape(len(d), -1) ** 2, axis=1)))


def _std(values):
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _scores(x0s, sets):
    """W2 per set (and the coupling error per set where the sets carry ``exact``)."""
    w = [w2(x0, s["target"]) for x0, s in zip(x0s, sets, strict=True)]
    out = {"w2": w[0], "w2_sets": w, "w2_mean": float(np.mean(w)), "w2_std": _std(w)}
    if "exact" in sets[0]:
        c = [coupling_error(x0, s["exact"]) for x0, s in zip(x0s, sets, strict=True)]
        out |= {"coupling_error": float(np.mean(c)), "coupling_error_std": _std(c)}
    else:
        out |= {"coupling_error": None, "coupling_error_std": None}
    return out


def exact_mean_targets(teacher, sets, budgets, grid_fn):
    """The analytic teacher's exact average velocities along its own ODE trajectories.

    For each evaluation set and budget n: the ``"mean"`` solver's grid of n intervals
    t_0 > … > t_n = 0 (``grid_fn``; t_0 = 1 on the toys), the exact points z*_0 = t_0·x1,
    z*_{k+1} = z*_k − (t_k − t_{k+1})·u*_k = Φ_{t_k→t_{k+1}}(z*_k), and
    u*_k = u*(z*_k, t_{k+1}, t_k) from :func:`~simple_reflow.average_velocity.
    exact_average_velocity` (an adaptive solve at toy_eval's tolerances, 1e-6).

    Returns:
      ``[{budget: [(z [N, 2], r [N], t [N], u* [N, 2]) per interval]} per set]``.
    """
    solve = jax.jit(
        functools.partial(exact_average_velocity, teacher, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    )
    out = []
    for s in sets:
        per = {}
        for b in budgets:
            grid, _ = sampler.grid_for_budget(b, "mean", grid_fn)
            z = s["x1"] * float(grid[0])
            steps = []
            for t, r in zip(grid[:-1], grid[1:], strict=True):
                tb, rb = (jnp.full(z.shape[:1], v, z.dtype) for v in (t, r))
                u = solve(z, rb, tb)
                steps.append((z, rb, tb, u))
                z = z - float(t - r) * u
            per[b] = steps
        out.append(per)
    return out


def avg_velocity_errors(denoise_fn, targets, *, two_time):
    """``{budget: (mean, std)}`` over the sets of mean_k mean_i ‖u(z*_ik, t_{k+1}, t_k) − u*_ik‖²
    (:func:`exact_mean_targets`); u is the two-time model's average velocity, or a one-time
    model's v(z, t_k) (what one Euler step uses). std: None for one set."""

    def u_of(z, r, t):
        if two_time:
            return average_velocity(denoise_fn, z, r, t)
        return paths.velocity_from_denoised(z, t, denoise_fn(z, t, None))

    # u in its own program and the error in NumPy (float64): XLA:CPU of jaxlib 0.10.2 computes
    # a fused network-then-sum wrongly (inf, NaN, 1e8: another value per compilation) when a
    # weight matrix closed over as a constant has all-equal entries, as a zero-initialised layer
    # does at step 0 (the two-time embedding, MLPDenoiser's output layer): its YNNPACK fusion of
    # the dot and the reduction (tests/test_b1_leaderboard.py checks this function against a
    # float64 reference on such a network).
    u_fn = jax.jit(u_of)

    def err(z, r, t, u_star):
        d = np.asarray(u_fn(z, r, t), np.float64) - np.asarray(u_star, np.float64)
        return float(np.mean(np.sum(d * d, axis=-1)))

    out = {}
    for b in targets[0]:
        per_set = [float(np.mean([err(*step) for step in per[b]])) for per in targets]
        out[b] = (float(np.mean(per_set)), _std(per_set))
    return out


def evaluate_model(denoise_fn, cfg, *, solver_cfg=None, key=None, sets=None, with_accurate=True):
    """W2 at each budget of ``cfg.eval.nfe``, and on an accurate solve with straightness.

    Args:
      denoise_fn: the model ``denoise_fn(x_t, t, cond) -> D``.
      cfg: the config (``eval``, ``sampler``, ``data``, ``seed`` are read).
      solver_cfg: the sampler section to use (default ``cfg.sampler``).
      key: the evaluation key when ``sets`` is None (one set from it, :func:`eval_sets`).
      sets: evaluation sets from :func:`eval_sets` (shared by the models being compared).
      with_accurate: also score the accurate solve and the straightness.

    Returns:
      A list of records ``{"solver", "nfe", "budget", "w2", "w2_sets", "w2_mean", "w2_std",
      "coupling_error", "coupling_error_std", "straightness"}``: ``w2`` on the first set,
      ``w2_sets`` on each, their mean and sample std (ddof = 1; None for one set), the
      coupling error's mean and std over the sets (None without an exact solution); the
      accurate solve has ``budget = "accurate"`` (Heun on a uniform grid of
      ``eval.accurate_steps``) and the straightness on the first set's noise.
    """
    solver_cfg = solver_cfg or cfg.sampler
    sets = eval_sets(cfg, key=key) if sets is None else sets
    records = []
    for budget in cfg.eval.nfe:
        grid, nfe = sampler.grid_for_budget(budget, solver_cfg.solver, solver_grid_fn(solver_cfg))
        fn = _sample_fn(denoise_fn, grid, solver_cfg.solver, solver_cfg.r)
        records.append(
            {
                "solver": solver_cfg.solver,
                "budget": budget,
                "nfe": nfe,
                **_scores([fn(s["x1"]) for s in sets], sets),
                "straightness": None,
            }
        )
    if with_accurate:
        grid = grids.uniform_grid(cfg.eval.accurate_steps)
        fn = _sample_fn(denoise_fn, grid, "heun", 0.5)
        straight = jax.jit(lambda x: straightness(denoise_fn, x, grid, solver="heun"))(
            sets[0]["x1"]
        )
        records.append(
            {
                "solver": "heun",
                "budget": "accurate",
                "nfe": sampler.nfe_of(grid, "heun"),
                **_scores([fn(s["x1"]) for s in sets], sets),
                "straightness": float(straight),
            }
        )
    return records


def _solver_cfg(cfg, solvers, name):
    """``cfg.sampler`` with the solver ``solvers[name]`` (when given) in place of its own."""
    if not solvers or name not in solvers:
        return cfg.sampler
    s = ml_collections.ConfigDict(cfg.sampler.to_dict())
    s.solver = solvers[name]
    return s


def evaluate_models(models, cfg, *, solvers=None):
    """Evaluates each named model with the configured sampler on one evaluation set; adds the
    W2 floor (one pair of exact sets). ``solvers``: ``{name: solver}`` for models sampled
    with another solver than ``sampler.solver`` on the same grid (a one-time teacher beside a
    two-time student).

    On a target with an analytic teacher (8gaussians: :func:`exact_solution_fn`) each budget's
    record also carries the coupling error and ``"avg_velocity_error"``: at budget n on the
    uniform grid of n intervals from ``sampler.t_max``, :func:`avg_velocity_errors` of the
    model against the exact average velocities along the analytic teacher's own trajectories
    (:func:`exact_mean_targets`), u the average velocity of a model sampled with the
    ``"mean"`` solver, else v (what an Euler step uses); None elsewhere.
    """
    exact_fn = exact_solution_fn(cfg.data.name)
    sets = eval_sets(cfg, exact_fn=exact_fn)
    targets = None
    if exact_fn is not None:
        uniform = ml_collections.ConfigDict({**cfg.sampler.to_dict(), "grid": "uniform"})
        targets = exact_mean_targets(toy_mixture(), sets, cfg.eval.nfe, solver_grid_fn(uniform))
    out = {}
    for k, f in models.items():
        solver_cfg = _solver_cfg(cfg, solvers, k)
        recs = evaluate_model(f, cfg, solver_cfg=solver_cfg, sets=sets)
        ave = {}
        if targets is not None:
            ave = avg_velocity_errors(f, targets, two_time=solver_cfg.solver == "mean")
        for r in recs:
            r["avg_velocity_error"] = ave.get(r["budget"], (None,))[0]
        out[k] = recs
    return {"w2_floor": w2_floors(cfg)[0], "models": out}


def format_table(metrics):
    """A plain-text table: one row per model, one column per NFE budget, plus accurate."""
    names = list(metrics["models"])
    recs = metrics["models"][names[0]]
    header = (
        ["model"]
        + [
            f"NFE {r['nfe']}" if r["budget"] != "accurate" else f"accurate ({r['nfe']})"
            for r in recs
        ]
        + ["straightness"]
    )
    lines = [
        "W2 to the target (floor {:.4f})".format(metrics["w2_floor"]),
        " | ".join(f"{h:>14}" for h in header),
    ]
    for name in names:
        rs = metrics["models"][name]
        s = [r["straightness"] for r in rs if r["straightness"] is not None]
        cells = [name] + [f"{r['w2']:.4f}" for r in rs] + [f"{s[0]:.4f}" if s else "-"]
        lines.append(" | ".join(f"{c:>14}" for c in cells))
    if any(r.get("avg_velocity_error") is not None for r in recs):
        lines += ["", "Average-velocity error (uniform grid of n intervals)"]
        lines.append(" | ".join(f"{h:>14}" for h in header[:-2]))
        for name in names:
            rs = [r for r in metrics["models"][name] if r["budget"] != "accurate"]
            cells = [name] + [f"{r['avg_velocity_error']:.4f}" for r in rs]
            lines.append(" | ".join(f"{c:>14}" for c in cells))
    if metrics.get("boss"):
        lines += _boss_table(metrics["boss"])
    if metrics.get("flowturbo"):
        lines += _flowturbo_table(metrics["flowturbo"])
    return "\n".join(lines)


def _boss_table(result):
    """The BOSS rows (:func:`simple_reflow.train.boss_stage.toy_boss`): W2 of K Euler steps on
    the uniform / sigmoid / BOSS grids, one row per model, one column per K."""
    recs = result["records"]
    ks = sorted({r["nfe"] for r in recs})
    k = result.get("straighten_k")
    lines = [
        "",
        "W2 with K Euler steps, grids uniform / sigmoid / BOSS"
        + (f" (student_straightened: along its K = {k} BOSS grid)" if k else ""),
        " | ".join(f"{h:>24}" for h in ["model"] + [f"NFE {n}" for n in ks]),
    ]
    for name in dict.fromkeys(r["model"] for r in recs):
        cells = [name]
        for n in ks:
            vals = [r["w2"] for r in recs if r["model"] == name and r["nfe"] == n]
            cells.append(" / ".join(f"{v:.4f}" for v in vals))
        lines.append(" | ".join(f"{c:>24}" for c in cells))
    return lines


def _flowturbo_table(result):
    """The FlowTurbo rows (:func:`simple_reflow.train.flowturbo_stage.toy_flowturbo`): W2 of
    the plan with its trained refiner, with a zero refiner, and of the pseudo-corrector and
    Heun at the plan's NFE, one row per model."""
    recs = result["records"]
    order = dict.fromkeys(r["sampler"] for r in recs)
    head = {
        s: f"{s} ({next(r['nfe'] for r in recs if r['sampler'] == s)} NFE)"
        for s in order
        if s not in ("refiner", "reuse")
    }
    head["refiner"] = f"{result['plan']} refiner"
    head["reuse"] = f"{result['plan']} zero refiner"
    lines = [
        "",
        f"W2 of the FlowTurbo plan {result['plan']} ({result['nfe']} NFE + "
        f"{result['refiner_calls']} refiner calls) and of the samplers at its NFE",
        " | ".join(f"{h:>22}" for h in ["model"] + [head[s] for s in order]),
    ]
    for name in dict.fromkeys(r["model"] for r in recs):
        vals = {r["sampler"]: r["w2"] for r in recs if r["model"] == name}
        lines.append(" | ".join(f"{c:>22}" for c in [name] + [f"{vals[s]:.4f}" for s in order]))
    return lines


def _flat(metrics):
    out = {"eval/w2_floor": metrics["w2_floor"]}
    for name, rs in metrics["models"].items():
        for r in rs:
            tag = "accurate" if r["budget"] == "accurate" else f"nfe={r['nfe']}"
            out[f"eval/{name}/w2@{tag}"] = r["w2"]
            for m in ("coupling_error", "avg_velocity_error"):
                if r.get(m) is not None:
                    out[f"eval/{name}/{m}@{tag}"] = r[m]
            if r["straightness"] is not None:
                out[f"eval/{name}/straightness"] = r["straightness"]
    for r in metrics.get("boss", {}).get("records", []):  # e.g. eval/student/euler_boss/w2@nfe=4
        out[f"eval/{r['model']}/euler_{r['grid']}/w2@nfe={r['nfe']}"] = r["w2"]
    for r in metrics.get("flowturbo", {}).get("records", []):  # e.g. .../flowturbo_refiner/...
        tag = f"flowturbo_{r['sampler']}" if r["sampler"] in ("refiner", "reuse") else r["sampler"]
        out[f"eval/{r['model']}/{tag}/w2@nfe={r['nfe']}"] = r["w2"]
    return out


def write_outputs(workdir, cfg, metrics, models, *, solvers=None):
    """Writes ``eval_metrics.json`` (the image eval stage's name too) and ``samples.png``
    (samples at the largest budget, trajectories); ``solvers`` as :func:`evaluate_models`."""
    from simple_reflow.viz import save_toy_figure

    with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
        extra = {k: metrics[k] for k in ("boss", "flowturbo") if metrics.get(k)}
        json.dump({**_flat(metrics), "records": metrics["models"], **extra}, f, indent=1)
    key_noise, key_data = jax.random.split(stream_key(cfg.seed, "eval_figure"))
    x1 = jax.random.normal(key_noise, (2000, 2))
    budget = max(cfg.eval.nfe)
    samples = {"target": np.asarray(make_toy_sampler(cfg.data.name)(key_data, 2000))}
    trajectories = {}
    fine = grids.uniform_grid(64)
    for name, fn in models.items():
        s = _solver_cfg(cfg, solvers, name)
        grid, nfe = sampler.grid_for_budget(budget, s.solver, solver_grid_fn(s))
        label = f"{name} ({nfe} NFE, {s.solver}; paths: accurate)"
        samples[label] = np.asarray(_sample_fn(fn, grid, s.solver, s.r)(x1))
        traj = jax.jit(
            lambda x, fn=fn: sampler.integrate(fn, x, fine, solver="heun", trajectory=True)[2]
        )(x1[:24])
        trajectories[label] = np.asarray(traj)
    save_toy_figure(os.path.join(workdir, "samples.png"), samples, trajectories)
