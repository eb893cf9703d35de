"""B1 — toy-2D ReFlow quality per NFE (BENCHMARKS.md).

  python benchmarks/toy2d.py --out results/toy2d.json            # 3 seeds, 5,000 samples
  python benchmarks/toy2d.py --out /tmp/toy2d.json --quick       # 1 seed, fewer steps
  python benchmarks/toy2d.py --report results/toy2d.json [--old OLD.json]   # tables only

For each task and seed: one teacher (analytic for 8gaussians, else a 1-RF), one set of teacher
pairs, then every student trained with the same MLP, steps and initialisation. Methods:

- ``teacher``: evaluated with every solver, so a student can be compared at equal solver;
- ``2rf``: uniform t, squared ℓ2 on the velocity, backward pairs only, Euler, uniform grid;
- ``2rf++``: U-shaped t (a = 4), pseudo-Huber on the velocity, backward pairs, Euler;
- ``simple_reflow``: normalised loss, 10^t, forward pairs ρ = 0.4, DPM-Solver-2 (r = 0.4) on
  the sigmoid grid (κ = 20);
- ``simple_reflow+projection``: the same with 20% of each batch from projected pairs
  (balanced entropic OT of 4,096 teacher samples onto 4,096 target samples, METHOD.md §3);
- ``ot-cfm``, ``loom-cfm``, ``w-cfm``: a 1-RF trained from scratch (the teacher's steps) with
  minibatch OT, LOOM-CFM's persistent assignment (a fixed set of 16,384 samples) or W-CFM's
  Gibbs weights (ε = κ·√2, ``--wcfm-kappa``), sampled with Euler.

Each model is scored on ``--eval-sets`` independent evaluation sets (default 5 of 5,000
points; fresh noise x1 and fresh target samples per set, the same sets for every method of a
task and seed), and the floor, W2 between two independent exact sample sets, on as many
independent pairs: at 5,000 samples W2 on 8gaussians is dominated by how many points land in
each component (the floor ranges ≈ 0.2–0.35 across keys), so one set cannot rank methods. On
8gaussians the coupling error is also reported: for the same noise x1, mean ‖x̂0(x1) − x0*(x1)‖²
between the model's output and the analytic teacher's exact ODE solution (an adaptive
Dormand–Prince solve, ``toy_eval.exact_solution_fn``).

FILE receives a JSON list of records, one per task/method/seed/solver/NFE budget:
``{"task", "method", "seed", "solver", "budget", "nfe", "w2", "w2_sets", "w2_mean", "w2_std",
"w2_floor", "w2_floor_sets", "w2_floor_mean", "w2_floor_std", "coupling_error",
"coupling_error_std", "straightness"}``. ``w2`` and ``w2_floor`` keep their earlier meaning (one
evaluation set: the first; one pair of exact sets: the first), ``*_sets`` hold every set's value,
``*_mean``/``*_std`` their mean and sample std (ddof = 1) over the sets; ``coupling_error`` is
the mean over the sets (None except on 8gaussians); ``straightness`` is set on the accurate
solve's record (first set's noise). ``FILE`` with ``.meta.json`` in place of ``.json`` holds
the commit, machine and settings, and with ``.md`` the summary tables: per (task, method, solver,
budget) the mean over seeds and sets with the spread over seeds and over sets, and which
differences between methods at equal NFE budget are significant (see :func:`significance`).
``--report FILE [--old OLD]`` rewrites those tables from a finished FILE without training, and
compares its seed means with an earlier run's (``w2``, in units of the seed spread).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np
import scipy.stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import run_metadata, write_json  # noqa: E402
from configs.toy2d import COUPLINGS, LOOM_NUM_EXAMPLES, get_config  # noqa: E402
from simple_reflow.data.toy import TOY_DATASETS  # noqa: E402
from simple_reflow.train import configure, stages  # noqa: E402
from simple_reflow.train.streams import stream_key, stream_seed  # noqa: E402
from simple_reflow.train.toy import (  # noqa: E402
    ONE_RF_LOSS,
    TOY_SHAPE,
    generate_toy_pairs,
    make_data_batch_fn,
    pair_batch_fn,
    teacher_fn,
    toy_projected_pairs,
    train_flow,
)
from simple_reflow.train.toy_eval import (  # noqa: E402
    eval_sets,
    evaluate_model,
    exact_solution_fn,
    w2_floors,
)

EULER = {"solver": "euler", "grid": "uniform"}
DPM2 = {"solver": "dpm2", "grid": "sigmoid", "kappa": 20.0, "r": 0.4}
HEUN = {"solver": "heun", "grid": "uniform"}

WCFM_KAPPA = 8.0  # best mean W2 at 2 and 4 NFE of κ ∈ {2, 4, 8, 16, 64} (quick runs, seed 0)

METHODS = {
    "teacher": {"kind": "teacher", "solvers": [EULER, HEUN, DPM2]},
    "2rf": {
        "kind": "student",
        "solvers": [EULER],
        "rho": 0.0,
        "loss": {"distance": "l2", "normalize": False, "space": "velocity"},
        "time": {"dist": "uniform"},
    },
    "2rf++": {
        "kind": "student",
        "solvers": [EULER],
        "rho": 0.0,
        "loss": {"distance": "pseudo_huber", "normalize": False, "space": "velocity"},
        "time": {"dist": "u_shape", "u_shape_a": 4.0},
    },
    "simple_reflow": {
        "kind": "student",
        "solvers": [DPM2],
        "rho": 0.4,
        "loss": {"distance": "l2", "normalize": True, "space": "denoiser"},
        "time": {"dist": "exp10"},
    },
    # Simple ReFlow with 20% of the batch from projected pairs (METHOD.md §3, balanced OT).
    "simple_reflow+projection": {
        "kind": "student",
        "solvers": [DPM2],
        "rho": 0.4,
        "projection": 0.2,
        "loss": {"distance": "l2", "normalize": True, "space": "denoiser"},
        "time": {"dist": "exp10"},
    },
    # 1-RF from scratch with other couplings (teachers in their own right), Euler like 1-RF.
    # (configs/toy2d.py:<name> trains the same 1-RF as the toy pipeline's teacher.)
    **{
        name: {
            "kind": "coupling",
            "solvers": [EULER],
            "coupling": coupling,
            **({"num_data": LOOM_NUM_EXAMPLES} if name == "loom-cfm" else {}),
        }
        for name, coupling in COUPLINGS.items()
    },
}


def _override(section, values):
    section = copy.deepcopy(section)
    for k, v in values.items():
        setattr(section, k, v)
    return section


def _solver_cfg(cfg, values):
    return _override(cfg.sampler, {"t_max": 1.0, **values})


def _evaluate(name, fn, spec, cfg, task, seed, floor, sets):
    records = []
    for i, solver in enumerate(spec["solvers"]):
        for r in evaluate_model(
            fn, cfg, solver_cfg=_solver_cfg(cfg, solver), sets=sets, with_accurate=(i == 0)
        ):
            records.append({"task": task, "method": name, "seed": seed, **floor, **r})
    return records


def run_task(task, seed, args, workroot):
    cfg = get_config()
    cfg.data.name = task
    cfg.seed = seed
    cfg.eval.num_samples = args.num_samples
    cfg.training.num_steps = args.steps
    cfg.teacher.num_steps = args.teacher_steps
    cfg.pairs.num_backward = args.num_pairs
    cfg.pairs.num_forward = args.num_pairs // 4
    cfg.training.log_every = min(cfg.training.log_every, args.steps)
    cfg.training.ema_decay = args.ema_decay
    workdir = os.path.join(workroot, f"{task}_seed{seed}")
    floors = w2_floors(cfg, key=stream_key(seed, "eval_floor"), num_sets=args.eval_sets)
    floor = {
        "w2_floor": floors[0],
        "w2_floor_sets": floors,
        "w2_floor_mean": float(np.mean(floors)),
        "w2_floor_std": float(np.std(floors, ddof=1)) if len(floors) > 1 else None,
    }
    # the same noise, targets and (8gaussians) exact ODE solutions for every method
    sets = eval_sets(
        cfg, key=stream_key(seed, "eval"), num_sets=args.eval_sets, exact_fn=exact_solution_fn(task)
    )
    run = stages.resolve(cfg)
    teacher, teacher_params, _ = teacher_fn(run, workdir)
    stores = generate_toy_pairs(teacher, run, seed)  # backward, and forward (rho = 0.4)
    records = []
    for name in args.methods:
        spec = METHODS[name]
        start = time.perf_counter()
        if spec["kind"] == "teacher":
            fn = teacher
        elif spec["kind"] == "student":
            mcfg = copy.deepcopy(cfg)
            mcfg.loss = _override(cfg.loss, spec["loss"])
            mcfg.time = _override(cfg.time, spec["time"])
            mcfg.pairs.rho = spec["rho"]
            mcfg.pairs.projection.fraction = spec.get("projection", 0.0)
            mrun = stages.resolve(mcfg)
            data = {"backward": stores["backward"]}
            if mcfg.pairs.rho > 0:
                data["forward"] = stores["forward"]
            if mcfg.pairs.projection.fraction > 0:
                data["projected"] = toy_projected_pairs(teacher, mrun, seed, stores)
            batch_fn = pair_batch_fn(mrun, seed)
            model_def, state = train_flow(
                mcfg,
                os.path.join(workdir, name),
                batch_fn=batch_fn,
                data=data,
                loss_fn=configure.flow_loss_from_config(mcfg.loss, mcfg.time),
                init_params=teacher_params,
                num_steps=cfg.training.num_steps,
                seed=stream_seed(seed, "student_training", bits=31),
                desc=f"{task}/{name}",
            )
            fn = model_def.denoiser(state.ema)
        else:  # a 1-RF trained from scratch with another coupling
            mcfg = copy.deepcopy(cfg)
            mcfg.coupling = _override(cfg.coupling, spec["coupling"])
            if spec["coupling"]["name"] == "wcfm":
                mcfg.coupling.kappa = args.wcfm_kappa
            num_data = spec.get("num_data")
            coupling = configure.coupling_from_config(
                mcfg.coupling, data_shape=TOY_SHAPE, num_data=num_data
            )
            batch_fn, data = make_data_batch_fn(
                task,
                cfg.training.batch_size * coupling.batch_factor,
                stream_seed(seed, "teacher_batches", bits=31),
                num_data,
            )
            run_name = name
            if spec["coupling"]["name"] == "wcfm":  # a resumed run must match its κ
                run_name = f"{name}_kappa{args.wcfm_kappa:g}"
            model_def, state = train_flow(
                mcfg,
                os.path.join(workdir, run_name),
                batch_fn=batch_fn,
                data=data,
                loss_fn=ONE_RF_LOSS,
                coupling=coupling,
                num_steps=cfg.teacher.num_steps,
                seed=seed,
                desc=f"{task}/{name}",
            )
            fn = model_def.denoiser(state.ema)
        recs = _evaluate(name, fn, spec, cfg, task, seed, floor, sets)
        records.extend(recs)
        print(
            f"[{task} seed {seed}] {name}: "
            + ", ".join(f"{r['solver']}@{r['nfe']}={r['w2_mean']:.3f}" for r in recs)
            + f" (W2 mean over {len(sets)} sets; floor {floor['w2_floor_mean']:.3f}, "
            f"{time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return records


def _key(r):
    return (r["task"], r["method"], r["solver"], str(r["budget"]))


def _std(v):
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarize(records):
    """Per (task, method, solver, budget): ``{"nfe", "mean", "seed_std", "set_std", "pooled",
    "pooled_std", "by_seed", "coupling", "coupling_std", "straightness"}``.

    ``mean`` is over seeds and sets; ``seed_std`` the std over seeds of each seed's set mean;
    ``set_std`` the mean over seeds of the std over sets; ``pooled`` every (seed, set) value
    (keyed by (seed, set index), for paired comparisons) and ``pooled_std`` their std; the
    coupling error's mean and std over seeds (None where undefined).
    """
    groups = collections.defaultdict(list)
    for r in records:
        groups[_key(r)].append(r)
    out = {}
    for key, rs in groups.items():
        pooled = {(r["seed"], i): v for r in rs for i, v in enumerate(r["w2_sets"])}
        ce = [r["coupling_error"] for r in rs if r.get("coupling_error") is not None]
        st = [r["straightness"] for r in rs if r.get("straightness") is not None]
        out[key] = {
            "nfe": rs[0]["nfe"],
            "mean": float(np.mean(list(pooled.values()))),
            "seed_std": _std([r["w2_mean"] for r in rs]),
            "set_std": float(np.mean([r["w2_std"] or 0.0 for r in rs])),
            "pooled": pooled,
            "pooled_std": _std(list(pooled.values())),
            "by_seed": {r["seed"]: r["w2"] for r in rs},
            "coupling": float(np.mean(ce)) if ce else None,
            "coupling_std": _std(ce) if ce else None,
            "straightness": (float(np.mean(st)), _std(st)) if st else None,
        }
    return out


def significance(summary):
    """Pairs of (method, solver) entries of one task at one NFE budget, with their W2 means.

    A difference counts as significant when the difference of means exceeds the combined
    std √(s_a² + s_b²) of the two entries' (seed, set) values (the spread a single seed and
    evaluation set would show). The paired view compares the entries on equal seeds (the same
    teacher, pairs, noise and targets, so the sets' target composition cancels): ``seed_diffs``
    holds each seed's mean over sets of b − a, ``same_sign`` whether every seed agrees on the
    sign, ``paired_z`` their mean over its standard error (std over seeds / √seeds) and
    ``paired_t`` whether |paired_z| exceeds Student's t at 5% two-sided (seeds − 1 degrees of
    freedom: 4.30 for 3 seeds).
    """
    rows = []
    keys = sorted(k for k in summary if k[3] != "accurate")
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if a[0] != b[0] or a[3] != b[3]:
                continue
            sa, sb = summary[a], summary[b]
            diff = sb["mean"] - sa["mean"]
            combined = float(np.hypot(sa["pooled_std"], sb["pooled_std"]))
            by_seed = collections.defaultdict(list)
            for k in sorted(set(sa["pooled"]) & set(sb["pooled"])):
                by_seed[k[0]].append(sb["pooled"][k] - sa["pooled"][k])
            d = np.asarray([np.mean(v) for v in by_seed.values()])
            se = _std(d) / np.sqrt(len(d)) if len(d) > 1 else 0.0
            same = abs(diff) < 1e-6  # equal samplers up to rounding (1-NFE Heun is Euler)
            z = float(np.mean(d) / se) if se > 0 and not same else None
            rows.append(
                {
                    "task": a[0],
                    "budget": a[3],
                    "a": f"{a[1]}/{a[2]}",
                    "b": f"{b[1]}/{b[2]}",
                    "mean_a": sa["mean"],
                    "mean_b": sb["mean"],
                    "diff": diff,
                    "combined_std": combined,
                    "significant": abs(diff) > combined,
                    "seed_diffs": [float(x) for x in d],
                    "same_sign": not same and bool(np.all(d > 0) or np.all(d < 0)),
                    "paired_z": z,
                    "paired_t": z is not None and abs(z) > scipy.stats.t.ppf(0.975, len(d) - 1),
                }
            )
    return sorted(rows, key=lambda r: (r["task"], int(r["budget"]), r["a"], r["b"]))


def compare_runs(old, new):
    """Old vs new seed means of ``w2`` (one evaluation set per seed, the field both runs have)
    per (task, method, solver, budget) present in both: the difference in units of the seed
    spread √((s_old² + s_new²)/2) (std over seeds, ddof = 1); also the new ``w2_mean``'s."""
    so, sn = summarize_w2(old), summarize_w2(new)
    rows = []
    for key in sorted(set(so) & set(sn)):
        o, n = so[key], sn[key]
        spread = float(np.sqrt((_std(o["w2"]) ** 2 + _std(n["w2"]) ** 2) / 2))
        diff = float(np.mean(n["w2"]) - np.mean(o["w2"]))
        diff_sets = float(np.mean(n["w2_mean"]) - np.mean(o["w2"]))
        rows.append(
            {
                "key": key,
                "old": float(np.mean(o["w2"])),
                "old_std": _std(o["w2"]),
                "new": float(np.mean(n["w2"])),
                "new_std": _std(n["w2"]),
                "new_sets": float(np.mean(n["w2_mean"])),
                "diff": diff,
                "spread": spread,
                "units": diff / spread if spread > 0 else float("inf"),
                "units_sets": diff_sets / spread if spread > 0 else float("inf"),
            }
        )
    return rows


def summarize_w2(records):
    out = collections.defaultdict(lambda: {"w2": [], "w2_mean": []})
    for r in records:
        out[_key(r)]["w2"].append(r["w2"])
        out[_key(r)]["w2_mean"].append(r.get("w2_mean", r["w2"]))
    return dict(out)


def format_table(records, old=None):
    """Markdown: W2 and coupling error per (task, method, solver, NFE budget), the floors, the
    significance of differences between methods, and (``old`` records) old vs new."""
    summary = summarize(records)
    n_sets = len(records[0]["w2_sets"])
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"## B1: W2 over {len(seeds)} seeds × {n_sets} evaluation sets",
        "",
        "mean over seeds and sets; ± seeds: std over seeds of each seed's set mean; ± sets: "
        "mean over seeds of the std over sets; coupling error (8gaussians): mean over seeds "
        "± std over seeds of mean ‖x̂0(x1) − x0*(x1)‖².",
        "",
        "| task | method | solver | budget | NFE | W2 | ± seeds | ± sets | coupling error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, method, solver, budget), v in summary.items():
        ce = "–" if v["coupling"] is None else f"{v['coupling']:.4f} ± {v['coupling_std']:.4f}"
        lines.append(
            f"| {task} | {method} | {solver} | {budget} | {v['nfe']} | {v['mean']:.4f} | "
            f"{v['seed_std']:.4f} | {v['set_std']:.4f} | {ce} |"
        )
    lines += ["", "straightness (accurate solve), mean ± std over seeds:", ""]
    for (task, method, _, _), v in summary.items():
        if v["straightness"] is not None:
            lines.append(
                f"- {task} {method}: {v['straightness'][0]:.4f} ± {v['straightness'][1]:.4f}"
            )
    lines += ["", "W2 floor (exact vs exact), mean ± std over seeds × pairs of sets:", ""]
    floors = collections.defaultdict(dict)
    for r in records:
        for i, f in enumerate(r.get("w2_floor_sets", [r["w2_floor"]])):
            floors[r["task"]][(r["seed"], i)] = f
    for task, f in floors.items():
        vals = list(f.values())
        lines.append(
            f"- {task}: {np.mean(vals):.4f} ± {_std(vals):.4f} "
            f"(range {min(vals):.4f}–{max(vals):.4f}, {len(vals)} pairs)"
        )
    lines += [
        "",
        "## Differences between methods at equal NFE budget",
        "",
        "significant: |difference of means| > combined std √(s_a² + s_b²) of the (seed, set) "
        "values; paired, on equal seeds (same teacher, pairs, noise and targets): each seed's "
        "mean over sets of b − a, whether all seeds agree in sign, their mean over its "
        "standard error (z), and whether |z| passes Student's t-test at 5% (seeds − 1 degrees "
        "of freedom; 4.30 for 3 seeds).",
        "",
        "| task | budget | a | b | W2 a | W2 b | b − a | combined std | significant | "
        "b − a per seed | all seeds agree | paired z | t-test 5% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in significance(summary):
        z = "–" if row["paired_z"] is None else f"{row['paired_z']:.1f}"
        per_seed = ", ".join(f"{x:+.3f}" for x in row["seed_diffs"])
        lines.append(
            f"| {row['task']} | {row['budget']} | {row['a']} | {row['b']} | {row['mean_a']:.4f} | "
            f"{row['mean_b']:.4f} | {row['diff']:+.4f} | {row['combined_std']:.4f} | "
            f"{'yes' if row['significant'] else 'no'} | {per_seed} | "
            f"{'yes' if row['same_sign'] else 'no'} | {z} | "
            f"{'yes' if row['paired_t'] else 'no'} |"
        )
    if old is not None:
        rows = compare_runs(old, records)
        lines += [
            "",
            "## Against the earlier run",
            "",
            "seed means of `w2` (first evaluation set), difference in units of the seed spread "
            "√((s_old² + s_new²)/2); `w2_mean` column: the new mean over sets.",
            "",
            "| task | method | solver | budget | old | new | new w2_mean | new − old | units | "
            "units (w2_mean) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in sorted(rows, key=lambda r: -abs(r["units"])):
            lines.append(
                "| " + " | ".join(row["key"]) + f" | {row['old']:.4f} ± {row['old_std']:.4f} | "
                f"{row['new']:.4f} ± {row['new_std']:.4f} | {row['new_sets']:.4f} | "
                f"{row['diff']:+.4f} | {row['units']:+.2f} | {row['units_sets']:+.2f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="JSON file for the records.")
    parser.add_argument("--report", help="Only write FILE's tables (FILE.md) from its records.")
    parser.add_argument("--old", help="With --report: an earlier run's records to compare.")
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer steps and samples.")
    parser.add_argument("--tasks", nargs="+", default=list(TOY_DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--eval-sets", type=int, default=None, help="Evaluation sets (5; quick 3).")
    parser.add_argument("--workdir", default=None, help="Keep the runs here (default: temp).")
    parser.add_argument(
        "--wcfm-kappa", type=float, default=WCFM_KAPPA, help="W-CFM temperature ε = κ·√dim."
    )
    args = parser.parse_args(argv)
    if args.report:
        records = read_json(args.report)
        old = read_json(args.old) if args.old else None
        table = format_table(records, old)
        print(table)
        _write_text(os.path.splitext(args.report)[0] + ".md", table)
        return
    if not args.out:
        parser.error("--out is required (or --report FILE)")
    if args.wcfm_kappa <= 0:
        parser.error(f"--wcfm-kappa={args.wcfm_kappa} must be > 0")
    for m in args.methods:
        if m not in METHODS:
            parser.error(f"--methods: {m!r} is not one of {sorted(METHODS)}")
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.eval_sets = args.eval_sets or (3 if args.quick else 5)
    if args.eval_sets < 1:
        parser.error(f"--eval-sets={args.eval_sets} must be >= 1")
    args.steps = 2000 if args.quick else 4000
    args.ema_decay = 0.995 if args.quick else 0.999  # EMA horizon ≈ 200 / 1000 steps
    args.teacher_steps = 2000 if args.quick else 4000
    args.num_pairs = 10_000 if args.quick else 20_000
    args.num_samples = 2000 if args.quick else 5000
    start = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        for task in args.tasks:
            for seed in args.seeds:
                records.extend(run_task(task, seed, args, root))
                write_json(args.out, records)  # so far, in case the run is cut short
    table = format_table(records)
    print(table)
    write_json(args.out, records)
    _write_text(os.path.splitext(args.out)[0] + ".md", table)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "report", "old")}
    meta = run_metadata(settings)
    meta["wall_seconds"] = time.perf_counter() - start
    write_json(os.path.splitext(args.out)[0] + ".meta.json", meta)
    print(f"wrote {args.out} ({len(records)} records) in {meta['wall_seconds']:.0f}s")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
