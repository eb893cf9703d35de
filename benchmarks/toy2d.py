"""B1 — toy-2D ReFlow quality per NFE (BENCHMARKS.md).

  python benchmarks/toy2d.py --out results/toy2d.json            # 3 seeds, 5,000 samples
  python benchmarks/toy2d.py --out /tmp/toy2d.json --quick       # 1 seed, fewer steps

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

FILE receives a JSON list of records ``{"task", "method", "seed", "solver", "nfe", "w2",
"w2_floor", "straightness"}`` (plus ``budget``), one per task/method/seed/solver/NFE budget;
``FILE`` with ``.meta.json`` in place of ``.json`` holds the commit, machine and settings.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import run_metadata, write_json  # noqa: E402
from configs.toy2d import COUPLINGS, LOOM_NUM_EXAMPLES, get_config  # noqa: E402
from simple_reflow.data.toy import TOY_DATASETS, make_toy_sampler  # noqa: E402
from simple_reflow.metrics.transport import w2  # noqa: E402
from simple_reflow.train import configure  # noqa: E402
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
from simple_reflow.train.toy_eval import evaluate_model  # noqa: E402

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


def _evaluate(name, fn, spec, cfg, task, seed, floor, key):
    records = []
    for i, solver in enumerate(spec["solvers"]):
        for r in evaluate_model(
            fn, cfg, solver_cfg=_solver_cfg(cfg, solver), key=key, with_accurate=(i == 0)
        ):
            records.append({"task": task, "method": name, "seed": seed, "w2_floor": floor, **r})
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
    sample_data = make_toy_sampler(task)
    n = cfg.eval.num_samples
    key_a, key_b = jax.random.split(stream_key(seed, "eval_floor"))
    floor = w2(sample_data(key_a, n), sample_data(key_b, n))
    eval_key = stream_key(seed, "eval")  # same noise and target for every method
    teacher, teacher_params, _ = teacher_fn(cfg, workdir)
    stores = generate_toy_pairs(teacher, cfg, seed)  # backward, and forward (rho = 0.4)
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
            data = {"backward": stores["backward"]}
            if mcfg.pairs.rho > 0:
                data["forward"] = stores["forward"]
            if mcfg.pairs.projection.fraction > 0:
                data["projected"] = toy_projected_pairs(teacher, mcfg, seed, stores)
            batch_fn = pair_batch_fn(mcfg, seed)
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
        recs = _evaluate(name, fn, spec, cfg, task, seed, floor, eval_key)
        records.extend(recs)
        print(
            f"[{task} seed {seed}] {name}: "
            + ", ".join(f"{r['solver']}@{r['nfe']}={r['w2']:.3f}" for r in recs)
            + f" (floor {floor:.3f}, {time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return records


def format_table(records):
    """Mean ± std over seeds of W2 per (task, method, solver, NFE budget)."""
    groups = collections.defaultdict(list)
    straight = collections.defaultdict(list)
    for r in records:
        groups[(r["task"], r["method"], r["solver"], str(r["budget"]), r["nfe"])].append(r["w2"])
        if r["straightness"] is not None:
            straight[(r["task"], r["method"])].append(r["straightness"])
    lines = [
        f"{'task':<13}{'method':<16}{'solver':<7}{'budget':>9}{'nfe':>5}{'W2 mean':>10}{'± std':>8}"
    ]
    for (task, method, solver, budget, nfe), v in groups.items():
        lines.append(
            f"{task:<13}{method:<16}{solver:<7}{budget:>9}{nfe:>5}"
            f"{np.mean(v):>10.4f}{np.std(v):>8.4f}"
        )
    lines.append("straightness (accurate solve), mean ± std over seeds:")
    for (task, method), v in straight.items():
        lines.append(f"  {task:<13}{method:<16}{np.mean(v):.4f} ± {np.std(v):.4f}")
    floors = collections.defaultdict(set)
    for r in records:
        floors[r["task"]].add((r["seed"], r["w2_floor"]))
    for task, f in floors.items():
        vals = [v for _, v in f]
        lines.append(f"W2 floor {task}: {np.mean(vals):.4f} ± {np.std(vals):.4f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the records.")
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer steps and samples.")
    parser.add_argument("--tasks", nargs="+", default=list(TOY_DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--workdir", default=None, help="Keep the runs here (default: temp).")
    parser.add_argument(
        "--wcfm-kappa", type=float, default=WCFM_KAPPA, help="W-CFM temperature ε = κ·√dim."
    )
    args = parser.parse_args(argv)
    if args.wcfm_kappa <= 0:
        parser.error(f"--wcfm-kappa={args.wcfm_kappa} must be > 0")
    for m in args.methods:
        if m not in METHODS:
            parser.error(f"--methods: {m!r} is not one of {sorted(METHODS)}")
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
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
    print(format_table(records))
    write_json(args.out, records)
    meta = run_metadata({k: v for k, v in vars(args).items() if k != "out"})
    meta["wall_seconds"] = time.perf_counter() - start
    write_json(os.path.splitext(args.out)[0] + ".meta.json", meta)
    print(f"wrote {args.out} ({len(records)} records) in {meta['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
