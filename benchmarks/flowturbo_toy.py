"""FlowTurbo on the toy (8gaussians, analytic teacher): plans against plain solvers at equal NFE.

  python benchmarks/flowturbo_toy.py --out benchmarks/results/flowturbo_toy.json

For each FlowTurbo plan (default: H1P1R2 at 3 NFE; H1P3R1, H1P3R2, H1P3R4 at 5 NFE, where the
R steps add intervals at no network cost; H1P5R3 at 7 NFE. A plan opening with P costs what
one opening with H1 does and gives the same samples: P's starting call is H's first) on the
``--grid`` grid with one interval per step, a light refiner
(:class:`~simple_reflow.models.refiner.MLPRefiner`, ``--hidden`` × 2: 1.6 % of the toy
backbone's parameters at 32) is trained for ``--steps`` on the teacher's trajectories along
that grid (:func:`simple_reflow.flowturbo.refiner_pairs` of ``--pairs`` noises, a fresh seed
per ``--seeds``). Rows, all on the analytic teacher (``toy_mixture``):

- ``flowturbo``: the plan with the trained refiner (its NFE counts network calls only; the
  refiner calls are in their own column);
- ``flowturbo-zero``: the same plan with no offset (R steps reuse the carried velocity);
- ``flowturbo-exact``: the refiner replaced by the teacher (r = v − v_prev): R steps are Heun
  steps of the teacher, the ceiling a refiner can reach (its R steps do cost network calls,
  counted in ``nfe_if_exact``);
- ``euler``, ``heun``, ``pseudo_heun``, ``dpm2`` at the same NFE budget on the same grid family
  (``sampler.grid_for_budget``).

Each is scored on ``--eval-sets`` sets of ``--num-samples`` points (fresh noise and exact target
samples per set, the same for every row): exact W2 to the target samples and the coupling
error mean ‖x̂0(x1) − x0*(x1)‖² to the exact ODE solution from the same noise (an adaptive
solve, ``toy_eval.exact_solution_fn``), plus the W2 floor (two exact sets). Wall time: median of
5 jitted samples of one set's noise after a warm-up (``flowturbo.time_plan``), with the analytic
teacher (cheaper than the refiner, so not indicative) and with the toy backbone (an MLP
3 × 256, random weights) in the teacher's place: the cost ratio a trained toy teacher has.

FILE receives ``{"records": [...], "w2_floor_sets", "backbone_parameters",
"refiner_parameters"}``, one record per row and seed (``w2_sets``, ``coupling_error_sets`` per
evaluation set; the refiner's held-out losses and training seconds), FILE with ``.meta.json``
the commit, machine and settings, and with ``.md`` the table (mean over seeds and sets; ± the
std over all of them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import run_metadata, write_json  # noqa: E402
from simple_reflow import flowturbo, grids, paths, sampler  # noqa: E402
from simple_reflow.data.toy import make_toy_sampler, toy_mixture  # noqa: E402
from simple_reflow.metrics.transport import w2  # noqa: E402
from simple_reflow.models import MLPDenoiser, count_parameters  # noqa: E402
from simple_reflow.models.refiner import MLPRefiner  # noqa: E402
from simple_reflow.train.refiner import refiner_fn, train_refiner  # noqa: E402
from simple_reflow.train.step import split_model  # noqa: E402
from simple_reflow.train.toy_eval import coupling_error, exact_solution_fn  # noqa: E402

SOLVERS = ("euler", "heun", "pseudo_heun", "dpm2")


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the JSON file (and .md, .meta.json beside it)")
    p.add_argument("--plans", default="H1P1R2,H1P3R1,H1P3R2,H1P3R4,H1P5R3")
    p.add_argument("--grid", default="uniform", choices=grids.GRIDS)
    p.add_argument("--hidden", type=int, default=32, help="the refiner's width (2 layers)")
    p.add_argument("--steps", type=int, default=500, help="refiner training steps")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--pairs", type=int, default=4096, help="noises of the training trajectories")
    p.add_argument("--seeds", type=int, default=2, help="refiners trained per plan")
    p.add_argument("--eval-sets", type=int, default=2)
    p.add_argument("--num-samples", type=int, default=2000)
    return p.parse_args(argv)


def _grid_fn(name):
    return lambda n: grids.make_grid(name, n)


def _teacher_velocity(teacher):
    def velocity(x, t):
        return paths.velocity_from_denoised(x, t, teacher(x, t))

    return velocity


def _scores(sample_fn, sets):
    x0s = [np.asarray(sample_fn(s["x1"])) for s in sets]
    w = [w2(x0, s["target"]) for x0, s in zip(x0s, sets, strict=True)]
    c = [coupling_error(x0, s["exact"]) for x0, s in zip(x0s, sets, strict=True)]
    return {"w2_sets": w, "coupling_error_sets": c}


def _train(teacher, plan, grid, args, seed, workdir, *, dim=2):
    """A refiner trained on the teacher's trajectories along the plan's grid (noises of
    ``dim`` features: 2 on the toys, 64 on the digits leaderboard); returns
    ``(refiner_fn, metrics)`` with its loss and v_prev's on fresh trajectories."""
    make_pairs = jax.jit(lambda x1: flowturbo.refiner_pairs(teacher, x1, plan, grid))
    key_train, key_test = jax.random.split(jax.random.key(1000 + seed))
    pairs = make_pairs(jax.random.normal(key_train, (args.pairs, dim)))
    model_def, params = split_model(MLPRefiner(dim, hidden=args.hidden, rngs=nnx.Rngs(seed)))
    start = time.perf_counter()
    state = train_refiner(
        model_def,
        params,
        pairs,
        optimizer=optax.adam(optax.cosine_decay_schedule(args.lr, args.steps)),
        num_steps=args.steps,
        batch_size=args.batch,
        workdir=workdir,
        seed=seed,
        ema_decay=0.99,
        log_every=args.steps,
        ckpt_every=args.steps,
    )
    seconds = time.perf_counter() - start
    held_out = make_pairs(jax.random.normal(key_test, (args.pairs, dim)))
    loss, m = flowturbo.refiner_loss(model_def.merge(state.ema), held_out)
    return refiner_fn(model_def, state.ema), {
        "refiner_loss": float(loss),
        "reuse_loss": float(m["train/reuse_distance"]),
        "train_seconds": seconds,
    }


def _record(method, budget, nfe, refiner_calls, intervals, scores, **extra):
    return {
        "method": method,
        "budget": budget,
        "nfe": nfe,
        "refiner_calls": refiner_calls,
        "intervals": intervals,
        **scores,
        **extra,
    }


def run(args):
    teacher = toy_mixture()
    velocity = _teacher_velocity(teacher)
    backbone = MLPDenoiser(2, hidden=256, depth=3, rngs=nnx.Rngs(0))  # speed only
    backbone_def, backbone_params = split_model(backbone)
    backbone_fn = backbone_def.denoiser(backbone_params)
    exact_fn = exact_solution_fn("8gaussians")
    sample_data = make_toy_sampler("8gaussians")
    key = jax.random.key(7)
    sets = []
    for i in range(args.eval_sets):
        key_noise, key_data = jax.random.split(jax.random.fold_in(key, i))
        x1 = jax.random.normal(key_noise, (args.num_samples, 2))
        sets.append({"x1": x1, "target": sample_data(key_data, args.num_samples)})
        sets[-1]["exact"] = np.asarray(exact_fn(x1))
    floors = []
    for i in range(args.eval_sets):
        key_a, key_b = jax.random.split(jax.random.fold_in(jax.random.key(8), i))
        floors.append(
            w2(sample_data(key_a, args.num_samples), sample_data(key_b, args.num_samples))
        )
    x1_time = sets[0]["x1"]
    grid_fn = _grid_fn(args.grid)
    records = []

    def exact_refiner(x, t, v_prev, cond=None):
        return velocity(x, t) - v_prev

    def zero_refiner(x, t, v_prev, cond=None):
        return jnp.zeros_like(x)

    refiner_size = count_parameters(MLPRefiner(2, hidden=args.hidden, rngs=nnx.Rngs(0)))
    budgets_done = set()
    for plan in args.plans.split(","):
        grid = flowturbo.plan_grid(plan, grid_fn)
        steps = len(grid) - 1
        budget, _ = flowturbo.plan_calls(plan, grid)
        for name, ref in [("flowturbo-zero", zero_refiner), ("flowturbo-exact", exact_refiner)]:
            fn, nfe, calls = flowturbo.make_plan_sampler(teacher, ref, plan, grid)
            exact_calls = (nfe + calls) if name == "flowturbo-exact" else None
            records.append(
                _record(
                    name,
                    budget,
                    nfe,
                    calls,
                    steps,
                    _scores(fn, sets),
                    plan=plan,
                    nfe_if_exact=exact_calls,
                    wall_s=flowturbo.time_plan(fn, x1_time),
                )
            )
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as workdir:
                ref, train_metrics = _train(teacher, plan, grid, args, seed, workdir)
            fn, nfe, calls = flowturbo.make_plan_sampler(teacher, ref, plan, grid)
            slow, _, _ = flowturbo.make_plan_sampler(backbone_fn, ref, plan, grid)
            records.append(
                _record(
                    "flowturbo",
                    budget,
                    nfe,
                    calls,
                    steps,
                    _scores(fn, sets),
                    plan=plan,
                    seed=seed,
                    refiner_parameters=refiner_size,
                    wall_s=flowturbo.time_plan(fn, x1_time),
                    wall_s_backbone=flowturbo.time_plan(slow, x1_time),
                    **train_metrics,
                )
            )
            print(plan, seed, records[-1]["coupling_error_sets"], train_metrics, flush=True)
        if budget in budgets_done:
            continue
        budgets_done.add(budget)
        for solver in SOLVERS:
            g, nfe = sampler.grid_for_budget(budget, solver, grid_fn)
            fn = jax.jit(lambda x1, g=g, s=solver: sampler.sample(teacher, x1, g, solver=s)[0])
            slow = jax.jit(
                lambda x1, g=g, s=solver: sampler.sample(backbone_fn, x1, g, solver=s)[0]
            )
            records.append(
                _record(
                    solver,
                    budget,
                    nfe,
                    0,
                    len(g) - 1,
                    _scores(fn, sets),
                    wall_s=flowturbo.time_plan(lambda x, c, f=fn: f(x), x1_time),
                    wall_s_backbone=flowturbo.time_plan(lambda x, c, f=slow: f(x), x1_time),
                )
            )
    return records, {
        "w2_floor_sets": floors,
        "backbone_parameters": count_parameters(backbone),
        "refiner_parameters": refiner_size,
    }


def _mean_std(values):
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def format_table(records, extra, args):
    rows = {}
    for r in records:
        rows.setdefault((r["budget"], r["method"], r.get("plan", "")), []).append(r)
    floor, floor_std = _mean_std(extra["w2_floor_sets"])
    lines = [
        "## FlowTurbo on 8gaussians (analytic teacher), equal NFE",
        "",
        f"{args.eval_sets} evaluation sets of {args.num_samples} points, {args.grid} grid; "
        f"refiner: MLP {args.hidden} × 2 ({extra['refiner_parameters']} parameters, "
        f"{100 * extra['refiner_parameters'] / extra['backbone_parameters']:.1f} % of the toy "
        f"backbone's {extra['backbone_parameters']}), {args.steps} steps, {args.seeds} seeds. "
        "Mean ± std over seeds × sets. W2 floor (exact vs exact): "
        f"{floor:.4f} ± {floor_std:.4f}. Coupling error: mean ‖x̂0(x1) − x0*(x1)‖² against the "
        "exact ODE solution. Wall: ms per jitted sample of the set, with the analytic teacher / "
        "with the toy backbone (MLP 3 × 256, random weights) as the network.",
        "",
        "| NFE budget | method | plan / solver | NFE | refiner calls | intervals | W2 | "
        "coupling error | wall ms (analytic / backbone) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (budget, method, plan), rs in sorted(rows.items(), key=lambda kv: kv[0][0]):
        w, w_std = _mean_std([x for r in rs for x in r["w2_sets"]])
        c, c_std = _mean_std([x for r in rs for x in r["coupling_error_sets"]])
        wall = np.median([r["wall_s"] for r in rs]) * 1e3
        slow = [r["wall_s_backbone"] for r in rs if "wall_s_backbone" in r]
        wall_txt = f"{wall:.2f}" + (f" / {np.median(slow) * 1e3:.2f}" if slow else "")
        label = plan if plan else method
        lines.append(
            f"| {budget} | {method} | {label} | {rs[0]['nfe']} | {rs[0]['refiner_calls']} | "
            f"{rs[0]['intervals']} | {w:.4f} ± {w_std:.4f} | {c:.4f} ± {c_std:.4f} | {wall_txt} |"
        )
    trained = [r for r in records if r["method"] == "flowturbo"]
    lines += ["", "Refiner training (held-out trajectories, mean over seeds):", ""]
    lines += ["| plan | loss (refined) | loss (v_prev reused) | train s |", "|---|---|---|---|"]
    for plan in dict.fromkeys(r["plan"] for r in trained):
        rs = [r for r in trained if r["plan"] == plan]
        lines.append(
            f"| {plan} | {np.mean([r['refiner_loss'] for r in rs]):.5f} | "
            f"{np.mean([r['reuse_loss'] for r in rs]):.5f} | "
            f"{np.mean([r['train_seconds'] for r in rs]):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = _args(argv)
    start = time.perf_counter()
    records, extra = run(args)
    out = os.path.abspath(args.out)
    write_json(out, {"records": records, **extra})
    meta = run_metadata(vars(args))
    meta["seconds"] = time.perf_counter() - start
    write_json(out[: -len(".json")] + ".meta.json", meta)
    table = format_table(records, extra, args)
    with open(out[: -len(".json")] + ".md", "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
