"""BOSS on the toy (8gaussians): the Bellman grid against the uniform and sigmoid grids, Euler.

  python benchmarks/boss_toy.py --out benchmarks/results/boss_toy.json

For each seed of ``--seeds`` and each model:

- ``teacher``: the analytic teacher (``toy_mixture``, METHOD.md §6);
- ``2rf``: a 2-rectified flow student of that teacher (the toy MLP, 2-RF's loss: uniform t,
  squared ℓ2 on the velocity, backward pairs only), trained once on seed 0 with the toy
  pipeline's functions (``--student-steps``; kept in ``--workdir``: a rerun resumes it at its
  last step, i.e. reuses it);
- ``2rf+straight``: that student straightened for each K along its own BOSS grid
  (:func:`simple_reflow.train.boss.straighten`, ``--straighten-steps``; ``--lora-rank`` > 0
  adds ``2rf+straight-lora``, adapters only),

the BOSS grid is chosen from ``--candidates`` uniform candidate times with the Euler cost
matrix on the model's own reference trajectories (fine Heun, ``--substeps`` per candidate
interval) of ``--fit-noises`` noises drawn for the seed; the student's grid is saved beside its
snapshot (``boss_grid.json``) and read back through :func:`simple_reflow.train.boss.grid_fn`
and :func:`simple_reflow.sampler.grid_for_budget`, as a sampler would. Each grid (uniform,
sigmoid κ = 20, BOSS) at each K of ``--budgets`` (K Euler steps = K NFE) is scored on the
seed's evaluation set (``--num-samples`` fresh noises, stream ``"eval"`` of the seed): the
coupling error mean ‖x̂0(x1) − x0*(x1)‖² against the exact ODE solution of the analytic teacher
(an adaptive solve, ``toy_eval.exact_solution_fn``) and the exact W2 to as many target samples
(on the first ``--w2-samples`` of both). The straightened students are sampled on the grid they
were straightened for. The seed's W2 floor (two exact target sets) is reported beside them.

FILE receives ``{"records": [...], "floors": {seed: W2}, "student": {...}}``; FILE with
``.meta.json`` the commit, machine and settings; with ``.md`` the tables (per seed, no averaging:
the must-show is "in every seed").
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import run_metadata, write_json  # noqa: E402
from configs.toy2d import get_config  # noqa: E402
from simple_reflow import boss, grids, sampler  # noqa: E402
from simple_reflow.data.toy import make_toy_sampler, toy_mixture  # noqa: E402
from simple_reflow.metrics.transport import w2  # noqa: E402
from simple_reflow.train import boss as train_boss  # noqa: E402
from simple_reflow.train import configure, stages  # noqa: E402
from simple_reflow.train.streams import stream_key, stream_seed  # noqa: E402
from simple_reflow.train.toy import generate_toy_pairs, pair_batch_fn, train_flow  # noqa: E402
from simple_reflow.train.toy_eval import coupling_error, exact_solution_fn  # noqa: E402

GRIDS = ("uniform", "sigmoid", "boss")
KAPPA = 20.0
_FIT = 0xB055  # the BOSS reference noises of a seed: fold_in(key(seed), _FIT) (+1: straightening)


def boss_parser(doc):
    """The options every BOSS benchmark takes (out, seeds, budgets, the cost's settings)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", required=True, help="the JSON file (and .md, .meta.json beside it)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budgets", default="2,4,6", help="K Euler steps (= NFE)")
    p.add_argument("--candidates", type=int, default=100, help="N uniform candidate intervals")
    p.add_argument("--fit-noises", type=int, default=1024, help="reference noises of the cost")
    p.add_argument("--substeps", type=int, default=4, help="Heun steps per candidate interval")
    return p


def straighten_options(p, *, steps, noises, substeps, lr, batch, budgets="2,4,6"):
    """Adds the straightening options of the image benchmarks (digits, B2) to parser ``p``:
    the budgets K and grids straightened along, and :func:`_straighten`'s settings."""
    p.add_argument("--straighten-budgets", default=budgets, help="K straightened ('' none)")
    p.add_argument(
        "--straighten-grids", default="boss,uniform", help="grids straightened along (control)"
    )
    p.add_argument("--straighten-steps", type=int, default=steps, help="a multiple of 50")
    p.add_argument("--straighten-noises", type=int, default=noises)
    p.add_argument(
        "--straighten-substeps", type=int, default=substeps, help="Heun per grid interval"
    )
    p.add_argument("--straighten-lr", type=float, default=lr)
    p.add_argument("--straighten-batch", type=int, default=batch)
    return p


def straighten_plan(args):
    """``(budgets, grids)`` of :func:`straighten_options`' arguments, the grids checked."""
    ks = [int(k) for k in args.straighten_budgets.split(",") if k]
    names = [g for g in args.straighten_grids.split(",") if g]
    if not set(names) <= set(GRIDS):
        raise ValueError(f"--straighten-grids={args.straighten_grids!r}: grids of {GRIDS}.")
    if args.straighten_steps % 50:
        raise ValueError(f"--straighten-steps={args.straighten_steps}: a multiple of 50.")
    return ks, names


def _args(argv=None):
    p = boss_parser(__doc__)
    p.add_argument("--num-samples", type=int, default=4000)
    p.add_argument("--w2-samples", type=int, default=2000)
    p.add_argument("--no-student", action="store_true", help="the analytic teacher only")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "boss_toy"))
    p.add_argument("--student-steps", type=int, default=3000)
    p.add_argument("--student-pairs", type=int, default=20_000)
    p.add_argument("--straighten-steps", type=int, default=1000, help="a multiple of 50")
    p.add_argument("--straighten-noises", type=int, default=4096)
    p.add_argument("--straighten-lr", type=float, default=1e-4)
    p.add_argument("--straighten-batch", type=int, default=512)
    p.add_argument("--lora-rank", type=int, default=0, help="> 0: also straighten adapters only")
    return p.parse_args(argv)


def _eval_set(seed, n, exact_fn):
    key_noise, key_data = jax.random.split(stream_key(seed, "eval"))
    x1 = jax.random.normal(key_noise, (n, 2))
    sample_data = make_toy_sampler("8gaussians")
    key_a, key_b = jax.random.split(stream_key(seed, "eval_floor"))
    return {
        "x1": x1,
        "target": np.asarray(sample_data(key_data, n)),
        "exact": np.asarray(exact_fn(x1)),
        "floor_pair": (sample_data(key_a, n), sample_data(key_b, n)),
    }


def _fit_noise(seed, n, which=0, shape=(2,)):
    return jax.random.normal(jax.random.fold_in(jax.random.key(seed), _FIT + which), (n, *shape))


def _boss_cost(fn, z, tau, substeps):
    boss_fn = train_boss.make_boss_fn(lambda _: fn, tau, substeps=substeps)
    return train_boss.mean_cost(boss_fn, None, [(z, None)])


def _score(fn, grid, es, m):
    x0 = np.asarray(jax.jit(lambda x1: sampler.sample(fn, x1, grid, solver="euler")[0])(es["x1"]))
    return {
        "coupling_error": coupling_error(x0, es["exact"]),
        "w2": w2(x0[:m], es["target"][:m]),
    }


def _train_student(args):
    """The 2-RF student of the analytic teacher on seed 0 (toy pipeline functions)."""
    cfg = get_config()
    cfg.seed = 0
    cfg.teacher.kind = "analytic"
    cfg.loss.distance, cfg.loss.normalize, cfg.loss.space = "l2", False, "velocity"
    cfg.time.dist = "uniform"
    cfg.pairs.rho, cfg.pairs.num_forward = 0.0, 0
    cfg.pairs.num_backward = args.student_pairs
    cfg.training.num_steps = args.student_steps
    cfg.training.log_every = min(cfg.training.log_every, args.student_steps)
    cfg.training.ckpt_every = args.student_steps
    run = stages.resolve(cfg)
    stores = jax.block_until_ready(generate_toy_pairs(toy_mixture(), run, cfg.seed))
    workdir = os.path.join(args.workdir, "2rf")
    model_def, state = train_flow(
        cfg,
        workdir,
        batch_fn=pair_batch_fn(run, cfg.seed),
        data={"backward": stores["backward"]},
        loss_fn=configure.flow_loss_from_config(cfg.loss, cfg.time),
        num_steps=args.student_steps,
        seed=stream_seed(cfg.seed, "student_training", bits=31),
        desc="2-RF student",
    )
    return model_def, state.ema, workdir


def _straighten(
    model_def, params, grid, seed, args, k, lora_rank, shape=(2,), substeps=64, steps_per_call=50
):
    """The model straightened along ``grid`` on its own reference trajectories (fine Heun,
    ``substeps`` per interval of the grid) of fresh noises ``[n, *shape]``. ``steps_per_call``
    steps run in one ``lax.scan`` (MLPs); a U-Net wants 1 (its scan runs ~10× slower on
    XLA:CPU, ``b2_gmm_images.train``)."""
    fn = model_def.denoiser(params)
    z = _fit_noise(seed, args.straighten_noises, which=1, shape=shape)
    traj = jax.jit(lambda z: boss.reference_trajectories(fn, z, grid, substeps=substeps))(z)
    pairs = boss.straightening_pairs(traj, grid, np.arange(len(grid)))
    with tempfile.TemporaryDirectory() as workdir:
        clock = time.perf_counter()
        straight, state = train_boss.straighten(
            model_def,
            params,
            pairs,
            optimizer=optax.adam(args.straighten_lr),
            num_steps=args.straighten_steps,
            batch_size=args.straighten_batch,
            workdir=workdir,
            seed=seed,
            ema_decay=0.99,
            lora_rank=lora_rank,
            steps_per_call=steps_per_call,
            log_every=args.straighten_steps,
            ckpt_every=args.straighten_steps,
            desc=f"straighten K={k} seed {seed}" + (f" LoRA r={lora_rank}" if lora_rank else ""),
        )
        seconds = time.perf_counter() - clock
    return model_def.denoiser(straight), seconds


def run(args):
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [int(k) for k in args.budgets.split(",")]
    tau = grids.uniform_grid(args.candidates)
    exact_fn = exact_solution_fn("8gaussians")
    models = {"teacher": toy_mixture()}
    student = {}
    if not args.no_student:
        clock = time.perf_counter()
        model_def, params, workdir = _train_student(args)
        student = {"seconds": time.perf_counter() - clock, "workdir": workdir}
        models["2rf"] = model_def.denoiser(params)
    records, floors = [], {}
    for seed in seeds:
        es = _eval_set(seed, args.num_samples, exact_fn)
        m = args.w2_samples
        floors[seed] = w2(*(np.asarray(x)[:m] for x in es["floor_pair"]))
        z = _fit_noise(seed, args.fit_noises)
        for name, fn in models.items():
            clock = time.perf_counter()
            cost = _boss_cost(fn, z, tau, args.substeps)
            info = {"seed": seed, "fit_noises": args.fit_noises, "substeps": args.substeps}
            if name == "2rf":  # saved beside the snapshot, read back as a sampler would
                train_boss.save_grid(student["workdir"], cost, tau, budgets, info=info)
                boss_fn = train_boss.grid_fn(student["workdir"])
            else:
                boss_fn = lambda k, c=cost: boss.optimal_grid(c, tau, k)  # noqa: E731
            fit_s = time.perf_counter() - clock
            grid_fns = {
                "uniform": grids.uniform_grid,
                "sigmoid": lambda k: grids.sigmoid_grid(k, KAPPA),
                "boss": boss_fn,
            }
            for k in budgets:
                for g in GRIDS:
                    grid, nfe = sampler.grid_for_budget(k, "euler", grid_fns[g])
                    rec = {"model": name, "seed": seed, "grid": g, "nfe": nfe}
                    rec |= {"times": [float(t) for t in grid], **_score(fn, grid, es, m)}
                    if g == "boss":
                        rec["boss_fit_seconds"] = fit_s
                    records.append(rec)
                    print(rec, flush=True)
                if name != "2rf":
                    continue
                grid = grid_fns["boss"](k)
                for rank in [0] + ([args.lora_rank] if args.lora_rank else []):
                    fn_s, seconds = _straighten(model_def, params, grid, seed, args, k, rank)
                    label = "2rf+straight" + ("-lora" if rank else "")
                    rec = {"model": label, "seed": seed, "grid": "boss", "nfe": k}
                    rec |= {"times": [float(t) for t in grid], **_score(fn_s, grid, es, m)}
                    rec |= {"straighten_seconds": seconds, "lora_rank": rank}
                    records.append(rec)
                    print(rec, flush=True)
        if "2rf" in models:  # the student's own accurate solve: the floor a grid can reach
            x0 = jax.jit(
                lambda x1: sampler.sample(models["2rf"], x1, grids.uniform_grid(200), solver="heun")
            )(es["x1"])[0]
            records.append(
                {
                    "model": "2rf",
                    "seed": seed,
                    "grid": "accurate",
                    "nfe": sampler.nfe_of(grids.uniform_grid(200), "heun"),
                    "coupling_error": coupling_error(np.asarray(x0), es["exact"]),
                    "w2": w2(np.asarray(x0)[:m], es["target"][:m]),
                }
            )
    return records, {"floors": floors, "student": student}


def _find(records, **kw):
    out = [r for r in records if all(r.get(k) == v for k, v in kw.items())]
    return out[0] if out else None


def format_table(records, extra, args):
    seeds = sorted({r["seed"] for r in records})
    budgets = sorted({r["nfe"] for r in records if r["grid"] != "accurate"})
    models = list(dict.fromkeys(r["model"] for r in records))
    base = [m for m in models if "+" not in m]
    lines = [
        "## BOSS on 8gaussians: Bellman grid against uniform and sigmoid (κ = 20), Euler",
        "",
        f"Candidates: {args.candidates} uniform intervals; cost on {args.fit_noises} reference "
        f"noises per seed (fine Heun, {args.substeps} substeps per candidate interval). "
        f"Evaluation per seed: {args.num_samples} fresh noises; coupling error = mean "
        "‖x̂0(x1) − x0*(x1)‖² against the analytic teacher's exact ODE solution; W2 exact on "
        f"the first {args.w2_samples} points against as many target samples. "
        "Per seed, no averaging. **bold**: the best grid of the row.",
        "",
    ]
    if extra["student"]:
        lines += [
            f"2-RF student: toy MLP 256 × 3, {args.student_steps} steps on "
            f"{args.student_pairs} backward pairs of the analytic teacher (seed 0). "
            f"Straightened: {args.straighten_steps} steps, Adam {args.straighten_lr:g}, batch "
            f"{args.straighten_batch}, on {args.straighten_noises} own reference trajectories "
            "per seed along the grid of that K; sampled on that grid.",
            "",
        ]
    for metric, label in [("coupling_error", "coupling error"), ("w2", "W2")]:
        head = "| model | NFE | " + " | ".join(f"seed {s}: uniform / sigmoid / BOSS" for s in seeds)
        lines += [f"### {label}", "", head + " |", "|---|---|" + "---|" * len(seeds)]
        for name in base:
            for k in budgets:
                cells = []
                for s in seeds:
                    vals = [_find(records, model=name, seed=s, grid=g, nfe=k) for g in GRIDS]
                    if None in vals:
                        cells.append("–")
                        continue
                    v = [r[metric] for r in vals]
                    best = int(np.argmin(v))
                    cells.append(
                        " / ".join(
                            f"**{x:.4f}**" if i == best else f"{x:.4f}" for i, x in enumerate(v)
                        )
                    )
                lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
            for straight in [m for m in models if m.startswith(name + "+")]:
                for k in budgets:
                    cells = []
                    for s in seeds:
                        r = _find(records, model=straight, seed=s, nfe=k)
                        cells.append("–" if r is None else f"BOSS {r[metric]:.4f}")
                    lines.append(f"| {straight} | {k} | " + " | ".join(cells) + " |")
            acc = [_find(records, model=name, seed=s, grid="accurate") for s in seeds]
            if all(acc):
                lines.append(
                    f"| {name} accurate (Heun, {acc[0]['nfe']} NFE) | – | "
                    + " | ".join(f"{r[metric]:.4f}" for r in acc)
                    + " |"
                )
        if metric == "w2":
            lines.append(
                "| W2 floor (exact vs exact) | – | "
                + " | ".join(f"{extra['floors'][s]:.4f}" for s in seeds)
                + " |"
            )
        lines.append("")
    lines += ["### Does BOSS beat uniform and sigmoid in every seed?", ""]
    for name in base:
        for k in budgets:
            for metric in ("coupling_error", "w2"):
                wins = []
                for s in seeds:
                    v = {g: _find(records, model=name, seed=s, grid=g, nfe=k) for g in GRIDS}
                    if None in v.values():
                        continue
                    wins.append(v["boss"][metric] < min(v["uniform"][metric], v["sigmoid"][metric]))
                if wins:
                    lines.append(
                        f"- {name}, {k} NFE, {metric}: BOSS best in {sum(wins)}/{len(wins)} seeds"
                    )
    return "\n".join(lines) + "\n"


def main(argv=None, *, parse=_args, run_fn=None, table_fn=None):
    """Runs, then writes FILE, its ``.meta.json`` and ``.md``; ``parse``, ``run_fn`` and
    ``table_fn`` (default: this module's) serve the other BOSS benchmarks (boss_digits.py)."""
    run_fn, table_fn = run_fn or run, table_fn or format_table
    args = parse(argv)
    start = time.perf_counter()
    records, extra = run_fn(args)
    out = os.path.abspath(args.out)
    write_json(out, {"records": records, **copy.deepcopy(extra)})
    meta = run_metadata(vars(args))
    meta["seconds"] = time.perf_counter() - start
    write_json(out[: -len(".json")] + ".meta.json", meta)
    table = table_fn(records, extra, args)
    with open(out[: -len(".json")] + ".md", "w") as f:
        f.write(table)
    print(table)
    print(f"{meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
