"""BOSS and FlowTurbo on digits: the trained MLP teacher at 2, 4 and 6 NFE (issue 25).

  python benchmarks/boss_digits.py --out benchmarks/results/boss_digits.json

Teacher: the unconditional MLP denoiser of ``benchmarks/search_digits.py`` (608k parameters,
8,000 steps of EDM's loss on the 1,500 training digits), loaded from its cache in
``--teacher-dir`` (trained there first if absent, ~1.5 min). For each seed of ``--seeds`` (the
seed picks the BOSS reference noises and the evaluation noises):

- the BOSS grid for each K of ``--budgets``, chosen from ``--candidates`` uniform candidate
  times with the Euler cost matrix on the teacher's reference trajectories (fine Heun,
  ``--substeps`` per candidate interval) of ``--fit-noises`` noises
  (``boss_toy._boss_cost``: :func:`simple_reflow.train.boss.make_boss_fn`, ``mean_cost``);
- ``teacher``: K Euler steps (K NFE) on the uniform, sigmoid (κ = 20, the configs' value) and
  BOSS grids;
- ``teacher+straight``: the teacher straightened along its BOSS grid of each K of
  ``--straighten-budgets`` (``boss_toy._straighten``: :func:`simple_reflow.train.boss.straighten`,
  ``--straighten-steps`` of Adam on ``--straighten-noises`` own reference trajectories of that
  grid), sampled with Euler on that grid; and, as a control (``--straighten-grids``), along the
  uniform grid of the same K: what straightening gains without BOSS's grid;
- ``flowturbo``: FlowTurbo's pseudo-corrector plans without refiner (``--plans``; a grid ending
  at t = 0 makes the last step first order, so H1P1 is 2 NFE on 2 intervals, H1P3 4 NFE on 4,
  H1P5 6 NFE on 6: :func:`simple_reflow.flowturbo.plan_calls`, the NFE recorded is the
  library's count) on the uniform, sigmoid and BOSS grids of as many intervals;
- ``teacher`` ``accurate``: Heun on ``--accurate-steps`` uniform steps, what a grid can reach.

Metric: the pixel Fréchet distance (``frechet_distance`` on flattened images clipped to
[−1, 1], as ``search_digits.teacher_fd``) of ``--num-samples`` samples to the 297 held-out
digits; floors: the 1,500 training digits, and the first 297 of them, against the held-out set.

FILE receives ``{"records": [...], "floors": {...}}``; FILE with ``.meta.json`` the commit,
machine, settings and seconds; with ``.md`` the table (per seed, no averaging).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import boss_toy  # noqa: E402
from benchmarks.boss_toy import GRIDS, KAPPA, _boss_cost, _find, _fit_noise, _straighten  # noqa: E402
from benchmarks.search_digits import SHAPE, flat, train_teacher  # noqa: E402
from simple_reflow import boss, flowturbo, grids, sampler  # noqa: E402
from simple_reflow.data.digits import digits_arrays  # noqa: E402
from simple_reflow.metrics.frechet import frechet_distance  # noqa: E402
from simple_reflow.train.streams import stream_key  # noqa: E402
from simple_reflow.train.toy_eval import coupling_error  # noqa: E402


def _args(argv=None):
    p = boss_toy.boss_parser(__doc__)
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--plans", default="H1P1,H1P3,H1P5", help="FlowTurbo plans, no R blocks")
    p.add_argument("--accurate-steps", type=int, default=50, help="Heun steps of the ceiling")
    p.add_argument("--teacher-dir", default="/tmp/search_digits", help="the cached teacher")
    boss_toy.straighten_options(p, steps=500, noises=2048, substeps=16, lr=1e-4, batch=256)
    return p.parse_args(argv)


def _solve(fn, grid, x1, solver="euler"):
    return jax.jit(lambda x: sampler.sample(fn, x, grid, solver=solver)[0])(x1)


def _scores(x0, test, accurate):
    """Pixel FD to the held-out digits and the error mean ‖x̂0(x1) − x0_acc(x1)‖² against the
    teacher's accurate solve from the same noise (the global error BOSS's local costs sum)."""
    x0 = np.asarray(x0)
    return {
        "fd": frechet_distance(flat(np.clip(x0, -1.0, 1.0)), flat(test)),
        "error": coupling_error(x0, accurate),
    }


def run(args):
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [int(k) for k in args.budgets.split(",")]
    straight_ks, straight_grids = boss_toy.straighten_plan(args)
    train, _ = digits_arrays("train")
    test, _ = digits_arrays("test")
    floors = {
        "train_all": frechet_distance(flat(train), flat(test)),
        "train_297": frechet_distance(flat(train[: len(test)]), flat(test)),
    }
    clock = time.perf_counter()
    model_def, params = train_teacher(args.teacher_dir, train)
    fn = model_def.denoiser(params)
    extra = {"floors": floors, "teacher_load_seconds": time.perf_counter() - clock}
    tau = grids.uniform_grid(args.candidates)
    grid_fns = {
        "uniform": grids.uniform_grid,
        "sigmoid": lambda k: grids.sigmoid_grid(k, KAPPA),
    }
    records = []

    def add(rec):
        records.append(rec)
        print({k: v for k, v in rec.items() if k != "times"}, flush=True)

    for seed in seeds:
        x1 = jax.random.normal(stream_key(seed, "eval"), (args.num_samples, *SHAPE))
        acc = grids.uniform_grid(args.accurate_steps)
        accurate = np.asarray(_solve(fn, acc, x1, "heun"))
        rec = {"model": "teacher", "seed": seed, "grid": "accurate"}
        add(rec | {"nfe": sampler.nfe_of(acc, "heun"), **_scores(accurate, test, accurate)})
        clock = time.perf_counter()
        cost = _boss_cost(fn, _fit_noise(seed, args.fit_noises, shape=SHAPE), tau, args.substeps)
        fit_s = time.perf_counter() - clock
        fns = dict(grid_fns, boss=lambda k, c=cost: boss.optimal_grid(c, tau, k))
        for k in budgets:
            for g in GRIDS:
                grid, nfe = sampler.grid_for_budget(k, "euler", fns[g])
                rec = {"model": "teacher", "seed": seed, "grid": g, "nfe": nfe}
                rec |= {
                    "times": [float(t) for t in grid],
                    **_scores(_solve(fn, grid, x1), test, accurate),
                }
                if g == "boss":
                    rec["boss_fit_seconds"] = fit_s
                add(rec)
        for plan in args.plans.split(","):
            for g in GRIDS:
                grid = flowturbo.plan_grid(plan, fns[g])
                sample_fn, nfe, refiner_calls = flowturbo.make_plan_sampler(fn, None, plan, grid)
                assert refiner_calls == 0, plan
                rec = {"model": "flowturbo", "plan": plan, "seed": seed, "grid": g, "nfe": nfe}
                rec |= {"times": [float(t) for t in grid], **_scores(sample_fn(x1), test, accurate)}
                add(rec)
        for k in straight_ks:
            for g in straight_grids:
                grid = fns[g](k)
                clock = time.perf_counter()
                fn_s, seconds = _straighten(
                    model_def, params, grid, seed, args, k, 0, SHAPE, args.straighten_substeps
                )
                rec = {"model": "teacher+straight", "seed": seed, "grid": g, "nfe": k}
                rec |= {
                    "times": [float(t) for t in grid],
                    **_scores(_solve(fn_s, grid, x1), test, accurate),
                }
                rec |= {"straighten_seconds": seconds, "seconds": time.perf_counter() - clock}
                add(rec)
    return records, extra


METRICS = (
    ("fd", "pixel FD to the held-out digits", 2),
    ("error", "error to the accurate solve", 3),
)


def _cells(records, seeds, metric, digits, **kw):
    """Per seed: 'uniform / sigmoid / BOSS' with the best in bold."""
    cells = []
    for s in seeds:
        vals = [_find(records, seed=s, grid=g, **kw) for g in GRIDS]
        if vals == [None] * len(GRIDS):
            cells.append("–")
            continue
        best = min(r[metric] for r in vals if r is not None)
        text = [None if r is None else f"{r[metric]:.{digits}f}" for r in vals]
        cells.append(
            " / ".join(
                "–" if r is None else f"**{t}**" if r[metric] == best else t
                for r, t in zip(vals, text, strict=True)
            )
        )
    return cells


def format_table(records, extra, args):
    seeds = sorted({r["seed"] for r in records})
    budgets = sorted({r["nfe"] for r in records if r["model"] == "teacher" and r["grid"] == "boss"})
    plans = list(dict.fromkeys(r["plan"] for r in records if r["model"] == "flowturbo"))
    f = extra["floors"]
    lines = [
        "## BOSS and FlowTurbo on digits (trained MLP teacher) at 2, 4 and 6 NFE",
        "",
        "Teacher: search_digits.py's MLP denoiser (608k parameters, 8,000 steps of EDM's loss). "
        f"BOSS: {args.candidates} uniform candidate intervals, Euler cost on {args.fit_noises} "
        f"reference noises per seed (Heun, {args.substeps} substeps per candidate interval). "
        f"Sigmoid grid κ = {KAPPA:g}. Pixel FD of {args.num_samples} samples (clipped to "
        "[−1, 1]) to the 297 held-out digits, and the error mean ‖x̂0(x1) − x0_acc(x1)‖² "
        "(64 pixels, unclipped) against the teacher's accurate solve (Heun, "
        f"{args.accurate_steps} uniform steps) from the same noise; the seed picks the reference "
        "and evaluation noises. Per seed, no averaging; **bold**: the best grid of the cell. "
        "FlowTurbo: pseudo-corrector plans, no refiner, one grid interval per step (the last "
        "step, into t = 0, first order: no call). Straightened: "
        f"{args.straighten_steps} Adam steps (lr {args.straighten_lr:g}, batch "
        f"{args.straighten_batch}) on {args.straighten_noises} own reference trajectories along "
        "the grid of that K (BOSS, and uniform as a control; Heun, "
        f"{args.straighten_substeps} substeps per interval), sampled with Euler on that grid; "
        "its error is still against the unstraightened teacher's solve. "
        "At 2 NFE the uniform and sigmoid grids coincide (both 1, ½, 0).",
        "",
    ]
    for metric, label, digits in METRICS:
        lines += [
            f"### {label}",
            "",
            "| model | NFE | "
            + " | ".join(f"seed {s}: uniform / sigmoid / BOSS" for s in seeds)
            + " |",
            "|---|---|" + "---|" * len(seeds),
        ]
        for k in budgets:
            cells = _cells(records, seeds, metric, digits, model="teacher", nfe=k)
            lines.append(f"| teacher, Euler | {k} | " + " | ".join(cells) + " |")
        for plan in plans:
            r0 = _find(records, model="flowturbo", plan=plan)
            cells = _cells(records, seeds, metric, digits, model="flowturbo", plan=plan)
            lines.append(f"| FlowTurbo {plan} | {r0['nfe']} | " + " | ".join(cells) + " |")
        for k in budgets:
            cells = _cells(records, seeds, metric, digits, model="teacher+straight", nfe=k)
            if set(cells) != {"–"}:
                lines.append(
                    f"| teacher straightened on that grid, Euler | {k} | {' | '.join(cells)} |"
                )
        acc = [_find(records, model="teacher", seed=s, grid="accurate") for s in seeds]
        if metric == "fd" and all(acc):
            lines.append(
                f"| teacher accurate (Heun, {acc[0]['nfe']} NFE) | – | "
                + " | ".join(f"{r['fd']:.2f}" for r in acc)
                + " |"
            )
        lines.append("")
    lines += [
        f"FD floor: the 1,500 training digits vs the 297 held-out ones {f['train_all']:.2f}; "
        f"the first 297 training digits {f['train_297']:.2f}.",
        "",
        "### Does BOSS beat uniform and sigmoid in every seed (teacher, Euler)?",
        "",
    ]
    for k in budgets:
        for metric, label, _ in METRICS:
            wins = []
            for s in seeds:
                v = {g: _find(records, model="teacher", seed=s, grid=g, nfe=k) for g in GRIDS}
                wins.append(v["boss"][metric] < min(v["uniform"][metric], v["sigmoid"][metric]))
            lines.append(f"- {k} NFE, {label}: BOSS best in {sum(wins)}/{len(wins)} seeds")
    return "\n".join(lines) + "\n"


def main(argv=None):
    boss_toy.main(argv, parse=_args, run_fn=run, table_fn=format_table)


if __name__ == "__main__":
    main()
