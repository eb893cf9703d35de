"""BOSS and FlowTurbo on B2 (the 16×16×3 Gaussian mixture, exact teacher) at 2, 4 and 6 NFE.

  python benchmarks/boss_b2.py --out benchmarks/results/boss_b2.json
  python benchmarks/boss_b2.py --out benchmarks/results/boss_b2_student.json --seeds '' \
      --student 1:/path/to/2rf_1/ema.npz

Models:

- ``teacher``: B2's analytic teacher (``b2_gmm_images.make_mixture``, METHOD.md §6);
- ``2rf`` (``--student SEED:EMA_NPZ``, repeatable): a B2 2-RF student, the EMA weights a
  ``b2_gmm_images.py`` run trained for that seed (its DDPM++, ``build_student(shape, seed)``);
  its rows carry that seed;
- ``2rf+straight``: that student straightened along its grid of each K of
  ``--straighten-budgets`` (default 4) for each grid of ``--straighten-grids`` (BOSS, and the
  uniform grid as a control: what straightening gains without BOSS's grid) —
  ``boss_toy._straighten``: :func:`simple_reflow.train.boss.straighten`, ``--straighten-steps``
  of Adam at ``--straighten-lr`` (batch ``--straighten-batch``, EMA 0.99) on the student's own
  reference trajectories of ``--straighten-noises`` noises along that grid (Heun,
  ``--straighten-substeps`` per interval) — and sampled with K Euler steps on that grid.
  The analytic teacher has no weights: no such rows.

For each seed of ``--seeds`` (the teacher; ``''``: no teacher rows) or of ``--student`` (a
student), the BOSS grid for each K of ``--budgets`` is chosen from ``--candidates`` uniform
candidate times on [0, t_max = 80/81] with the Euler cost matrix on the model's own reference
trajectories (Heun, ``--substeps`` per candidate interval) of ``--fit-noises`` noises drawn for
the seed (``boss_toy._boss_cost``). Each grid (uniform, sigmoid κ = 20, BOSS; all from t_max, as
B2 samples) with K Euler steps (K NFE), and FlowTurbo's pseudo-corrector plans without refiner
(``--plans``; the last step, into t = 0, is first order: H1P1 is 2 NFE on 2 intervals, H1P3 4 on
4, H1P5 6 on 6, :func:`simple_reflow.flowturbo.plan_calls`) on those grids, are scored on B2's
evaluation set (``b2_gmm_images.evaluation_noises``: the same ``--num-samples`` index-seeded
noises every B2 model is scored on; the seed changes only the BOSS reference noises) with B2's
metrics: FD to the closed-form moments, sliced W2 to exact samples, and the coupling error mean
‖x̂0(x1) − x0*(x1)‖²/d against the exact ODE solution.

FILE receives ``{"records": [...], "floors": {...}}``; FILE with ``.meta.json`` the commit,
machine, settings and seconds; with ``.md`` the tables (per seed, no averaging: the must-show is
"in every seed").
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import b2_gmm_images as b2  # noqa: E402
from benchmarks import boss_toy  # noqa: E402
from benchmarks.boss_digits import _cells  # noqa: E402
from benchmarks.boss_toy import (  # noqa: E402
    GRIDS,
    KAPPA,
    _boss_cost,
    _find,
    _fit_noise,
    _straighten,
)
from simple_reflow import boss, flowturbo, grids, sampler  # noqa: E402
from simple_reflow.train import checkpoint  # noqa: E402

METRICS = (
    ("fd", "FD to the exact moments", 1),
    ("sw2", "sliced W2 to exact samples", 4),
    ("coupling_error", "coupling error ‖x̂0 − x0*‖²/d", 4),
)


def _args(argv=None):
    p = boss_toy.boss_parser(__doc__)
    p.add_argument("--num-samples", type=int, default=2000, help="B2's --quick eval set size")
    p.add_argument("--plans", default="H1P1,H1P3,H1P5", help="FlowTurbo plans, no R blocks")
    p.add_argument(
        "--student",
        action="append",
        default=[],
        metavar="SEED:EMA_NPZ",
        help="a B2 2-RF student's EMA weights and the seed that built it (repeatable)",
    )
    p.add_argument("--chunk", type=int, default=1000, help="noises per compiled sampling call")
    boss_toy.straighten_options(
        p, steps=500, noises=512, substeps=8, lr=1e-4, batch=32, budgets="4"
    )
    return p.parse_args(argv)


def _grid_fns(t_max):
    return {
        "uniform": lambda k: grids.make_grid("uniform", k, t_max=t_max),
        "sigmoid": lambda k: grids.make_grid("sigmoid", k, kappa=KAPPA, t_max=t_max),
    }


def _chunked(run, x1, chunk):
    return np.concatenate([np.asarray(run(x1[i : i + chunk])) for i in range(0, len(x1), chunk)])


def _load_students(specs, shape):
    """``[(seed, model_def, params)]`` of the ``--student SEED:EMA_NPZ`` arguments."""
    out = []
    for spec in specs:
        seed, _, path = spec.partition(":")
        if not path or not os.path.exists(path):
            raise ValueError(f"--student {spec!r}: expected SEED:EMA_NPZ of an existing file.")
        model_def, params = b2.build_student(shape, int(seed))
        out.append((int(seed), model_def, checkpoint.load_params(path, params)))
    return out


def run(args):
    seeds = [int(s) for s in args.seeds.split(",") if s]  # '' : the students' rows only
    budgets = [int(k) for k in args.budgets.split(",")]
    plans = [p for p in args.plans.split(",") if p]
    gm = b2.make_mixture(16)
    clock = time.perf_counter()
    x1, x_star, exact, _ = b2.evaluation_noises(gm, args.num_samples)
    extra = {"eval_set_seconds": time.perf_counter() - clock}
    other = np.asarray(gm.sample(jax.random.key(101), args.num_samples))
    extra["floors"] = b2.metrics(other, gm, exact, None, jax.random.key(7))
    straight_ks, straight_grids = boss_toy.straighten_plan(args)
    models = [("teacher", s, gm, None) for s in seeds]  # analytic: no weights to straighten
    models += [
        ("2rf", s, d.denoiser(p), (d, p)) for s, d, p in _load_students(args.student, gm.shape)
    ]
    tau = grids.make_grid("uniform", args.candidates, t_max=b2.T_MAX)
    records = []

    def score(x):
        return b2.metrics(x, gm, exact, x_star, jax.random.key(7))

    def add(rec):
        records.append(rec)
        print({k: v for k, v in rec.items() if k != "times"}, flush=True)

    for name, seed, fn, weights in models:
        clock = time.perf_counter()
        z = _fit_noise(seed, args.fit_noises, shape=gm.shape)
        cost = _boss_cost(fn, z, tau, args.substeps)
        fit_s = time.perf_counter() - clock
        fns = dict(_grid_fns(b2.T_MAX), boss=lambda k, c=cost: boss.optimal_grid(c, tau, k))
        for k in budgets:
            for g in GRIDS:
                grid, nfe = sampler.grid_for_budget(k, "euler", fns[g])
                run_fn = jax.jit(
                    lambda x, fn=fn, grid=grid: sampler.sample(fn, x, grid, solver="euler")[0]
                )
                rec = {"model": name, "seed": seed, "grid": g, "nfe": nfe}
                rec |= {
                    "times": [float(t) for t in grid],
                    **score(_chunked(run_fn, x1, args.chunk)),
                }
                if g == "boss":
                    rec["boss_fit_seconds"] = fit_s
                add(rec)
        for plan in plans:
            for g in GRIDS:
                grid = flowturbo.plan_grid(plan, fns[g])
                sample_fn, nfe, refiner_calls = flowturbo.make_plan_sampler(fn, None, plan, grid)
                if refiner_calls:
                    raise ValueError(f"--plans: {plan!r} has refiner blocks (none here).")
                rec = {"model": f"{name}+flowturbo", "plan": plan, "seed": seed, "grid": g}
                rec |= {"nfe": nfe, "times": [float(t) for t in grid]}
                rec |= score(_chunked(sample_fn, x1, args.chunk))
                add(rec)
        for k in straight_ks if weights else ():
            for g in straight_grids:
                grid, nfe = sampler.grid_for_budget(k, "euler", fns[g])
                clock = time.perf_counter()
                fn_s, seconds = _straighten(
                    *weights, grid, seed, args, k, 0, gm.shape, args.straighten_substeps, 1
                )
                run_fn = jax.jit(
                    lambda x, fn=fn_s, grid=grid: sampler.sample(fn, x, grid, solver="euler")[0]
                )
                rec = {"model": f"{name}+straight", "seed": seed, "grid": g, "nfe": nfe}
                rec |= {
                    "times": [float(t) for t in grid],
                    **score(_chunked(run_fn, x1, args.chunk)),
                }
                rec |= {"straighten_seconds": seconds, "seconds": time.perf_counter() - clock}
                add(rec)
    return records, extra


def format_table(records, extra, args):
    f = extra["floors"]
    nfes = sorted({r["nfe"] for r in records})
    at = " and ".join(filter(None, [", ".join(map(str, nfes[:-1])), str(nfes[-1])]))
    lines = [
        f"## BOSS and FlowTurbo on B2 (16×16×3 mixture) at {at} NFE",
        "",
        f"BOSS: {args.candidates} uniform candidate intervals on [0, 80/81], Euler cost on "
        f"{args.fit_noises} reference noises per seed (Heun, {args.substeps} substeps per "
        f"candidate interval). Sigmoid grid κ = {KAPPA:g}. Every grid starts at t_max = 80/81 as "
        f"B2 samples. {args.num_samples} B2 evaluation noises (the same for every row and seed: "
        "the seed changes the BOSS reference noises; a student's seed is the B2 seed that "
        "trained it). FlowTurbo: pseudo-corrector plans, no refiner, one grid interval per step. "
        "Per seed, no averaging; **bold**: the best grid of the cell. "
        f"Straightened: {args.straighten_steps} Adam steps (lr {args.straighten_lr:g}, batch "
        f"{args.straighten_batch}, EMA 0.99) on {args.straighten_noises} own reference "
        f"trajectories along the grid (Heun, {args.straighten_substeps} substeps per interval), "
        "Euler on that grid. "
        f"Floors (exact vs exact samples): FD {f['fd']:.2f}, SW2 {f['sw2']:.4f}.",
        "",
    ]
    groups = list(dict.fromkeys(r["model"] for r in records))
    for metric, label, digits in METRICS:
        lines += [f"### {label}", ""]
        for model in groups:
            seeds = sorted({r["seed"] for r in records if r["model"] == model})
            lines += [
                f"| {model} | NFE | "
                + " | ".join(f"seed {s}: uniform / sigmoid / BOSS" for s in seeds)
                + " |",
                "|---|---|" + "---|" * len(seeds),
            ]
            if model.endswith("+flowturbo"):
                for plan in dict.fromkeys(r["plan"] for r in records if r["model"] == model):
                    nfe = _find(records, model=model, plan=plan)["nfe"]
                    cells = _cells(records, seeds, metric, digits, model=model, plan=plan)
                    lines.append(f"| {plan} | {nfe} | " + " | ".join(cells) + " |")
            else:
                label = "Euler, straightened on that grid" if "+straight" in model else "Euler"
                for k in sorted({r["nfe"] for r in records if r["model"] == model}):
                    cells = _cells(records, seeds, metric, digits, model=model, nfe=k)
                    lines.append(f"| {label} | {k} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["### Does BOSS beat uniform and sigmoid in every seed (Euler)?", ""]
    for model in (m for m in groups if "+" not in m):
        seeds = sorted({r["seed"] for r in records if r["model"] == model})
        for k in sorted({r["nfe"] for r in records if r["model"] == model}):
            for metric, label, _ in METRICS:
                wins = []
                for s in seeds:
                    v = {g: _find(records, model=model, seed=s, grid=g, nfe=k) for g in GRIDS}
                    wins.append(v["boss"][metric] < min(v["uniform"][metric], v["sigmoid"][metric]))
                lines.append(
                    f"- {model}, {k} NFE, {label}: BOSS best in {sum(wins)}/{len(wins)} seeds"
                )
    for model in (m for m in groups if m.endswith("+straight")):
        base = model.removesuffix("+straight")
        lines += ["", f"### Does straightening along the grid help {base} (Euler)?", ""]
        for r in (r for r in records if r["model"] == model):
            plain = _find(records, model=base, seed=r["seed"], grid=r["grid"], nfe=r["nfe"])
            change = "; ".join(
                f"{m} {plain[m]:.{d}f} → {r[m]:.{d}f}" for m, _, d in METRICS if plain
            )
            lines.append(f"- seed {r['seed']}, {r['nfe']} NFE, {r['grid']} grid: {change}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    boss_toy.main(argv, parse=_args, run_fn=run, table_fn=format_table)


if __name__ == "__main__":
    main()
