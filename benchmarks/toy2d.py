"""B1 — toy-2D ReFlow quality per NFE (BENCHMARKS.md), and the few-step leaderboard (issue 24).

  python benchmarks/toy2d.py --out results/toy2d.json            # 3 seeds, 5,000 samples
  python benchmarks/toy2d.py --out /tmp/toy2d.json --quick       # 1 seed, fewer steps
  python benchmarks/toy2d.py --report results/toy2d.json [--old OLD.json] [--merge A.json ...]
  python benchmarks/toy2d.py --out results/toy2d_mean.json --budgets 1 2 4 \
      --methods teacher 2rf meanflow splitmeanflow splitmeanflow_distill splitmeanflow_from_2rf \
      --curve 500,1000,2000,4000 \
      --merge benchmarks/results/toy2d_full.json benchmarks/results/toy2d_couplings.json

For each task and seed: one teacher (analytic for 8gaussians, else a 1-RF), one set of teacher
pairs, then every student trained with the same MLP, steps (``--steps``) and initialisation.
Methods:

- ``teacher``: evaluated with every solver (``--teacher-solvers``), so a student can be
  compared at equal solver;
- ``2rf``: uniform t, squared ℓ2 on the velocity, backward pairs only, Euler, uniform grid;
- ``2rf++``: U-shaped t (a = 4), pseudo-Huber on the velocity, backward pairs, Euler;
- ``simple_reflow``: normalised loss, 10^t, forward pairs ρ = 0.4, DPM-Solver-2 (r = 0.4) on
  the sigmoid grid (κ = 20);
- ``simple_reflow+projection``: the same with 20% of each batch from projected pairs
  (balanced entropic OT of 4,096 teacher samples onto 4,096 target samples, METHOD.md §3);
- ``ot-cfm``, ``loom-cfm``, ``w-cfm``: a 1-RF trained from scratch (the teacher's steps) with
  minibatch OT, LOOM-CFM's persistent assignment (a fixed set of 16,384 samples) or W-CFM's
  Gibbs weights (ε = κ·√2, ``--wcfm-kappa``), sampled with Euler;
- ``meanflow``, ``splitmeanflow``: the same MLP with the second time (two-time, METHOD.md §9)
  trained from scratch on data with independent noise for ``--steps`` steps, as
  ``configs/toy2d.py:meanflow`` / ``:splitmeanflow`` (logit-normal(−0.4, 1) times, MeanFlow:
  r = t on 75 % of the rows, adaptive weight p = 1; SplitMeanFlow: boundary 50 %, p = 0);
- ``imeanflow``: MeanFlow with improved MeanFlow's v-loss (``--config.loss.mean_tangent=model``:
  the JVP along the model's own u(z, t, t) instead of x1 − x0,
  :mod:`simple_reflow.losses_mean`), everything else as ``meanflow``;
- ``splitmeanflow_distill``: SplitMeanFlow with v from the task's teacher (analytic on
  8gaussians, from scratch; elsewhere the 1-RF, whose weights it starts from);
- ``splitmeanflow_from_2rf``: SplitMeanFlow with v from the ``2rf`` student of the same task
  and seed, starting from its weights (ReFlow, then average velocity). The 2rf student is
  trained (once, as the ``2rf`` method) even when ``2rf`` is not asked for, and then not
  recorded.

- ``teacher+boss``, ``2rf+boss``, ``simple_reflow+boss``: the task's teacher / the ``2rf`` or
  ``simple_reflow`` student of the same seed (no new training) with Euler on its BOSS grid
  (METHOD.md §9): the Bellman-optimal K-step grid of that model's Euler cost matrix, computed
  once per model and seed as in
  ``benchmarks/boss_toy.py`` (``boss_toy._boss_cost`` on ``boss_toy._fit_noise(seed, 1024)``:
  100 uniform candidate intervals, 1,024 reference noises, 4 Heun substeps per candidate
  interval); at budget K, K Euler steps (K = 1: the grid [1, 0], i.e. plain Euler). Solver label
  ``"euler-boss"``; each record keeps its grid (``"grid"``) and, where the sigmoid grid
  (κ = 20) of K intervals differs from the uniform one (K ≥ 3), Euler on the sigmoid grid on
  the same sets (``"sigmoid_grid"``: ``w2_sets``, ``w2_mean``, ``coupling_error``), so BOSS can
  be compared with both grids per seed (the uniform grid's is the base model's Euler record);
- ``teacher+straight``, ``2rf+straight``, ``simple_reflow+straight``: that model straightened
  along its BOSS grid of each budget K (the same cost matrix and grid as its ``+boss`` row) by
  a short fine-tune, ``boss_toy._straighten`` (:func:`simple_reflow.train.boss.straighten`:
  1,000 Adam steps at 1e-4, batch 512, EMA 0.99, on the model's own reference trajectories of
  4,096 fresh noises along that grid, 64 Heun substeps per interval: :data:`STRAIGHTEN`), then
  Euler on that grid; one fine-tune per budget (K = 1: one interval, the model distilled into
  one step of its own flow). Solver label ``"euler-boss-straight"``; the record keeps ``"grid"``,
  ``"straighten_steps"`` and ``"straighten_seconds"``, and its average-velocity error is the
  straightened model's. (The analytic teacher of 8gaussians has no weights to fine-tune: no
  records.)
- ``teacher+flowturbo``, ``2rf+flowturbo``, ``simple_reflow+flowturbo``: the same models with a
  FlowTurbo plan
  (:func:`flowturbo_plan`, ``simple_reflow.flowturbo``) of as many network calls as the
  budget, on the uniform grid of one interval per step: 1 NFE ``"H1"`` (one Euler step: a
  refiner step needs a velocity from an earlier H or P step, which costs two calls unless it
  is the last), n ≥ 2 NFE ``"H1P{n−2}R1"`` (n intervals: a Heun step, pseudo-corrector steps,
  and the last network call replaced by one light-refiner call). The refiner
  (:class:`~simple_reflow.models.refiner.MLPRefiner` 32 × 2) is trained per model, seed and
  plan exactly as ``benchmarks/flowturbo_toy.py`` does (``flowturbo_toy._train``: 500 steps,
  batch 512, Adam 3e-3 cosine, EMA 0.99, on :func:`~simple_reflow.flowturbo.refiner_pairs` of
  4,096 noises of that model along the plan's grid). Solver label ``"flowturbo"``; ``nfe``
  counts network calls only, the refiner calls are in ``"refiner_calls"`` (with ``"plan"``,
  ``"intervals"`` and the refiner's held-out losses). With a zero refiner (``refiner_steps``
  = 0 in the arguments) a plan ``H1P{n−2}R1`` is the pseudo-corrector (``pseudo_heun``) on the
  uniform grid of n intervals.

The BOSS and FlowTurbo rows' average-velocity error is their base model's (u := v on the uniform
grid, as for every one-time model). The two-time models are sampled with the ``"mean"``
solver (one average-velocity step per interval) on the uniform grid: at budget n, n intervals
and n NFE, as Euler.

Each model is scored on ``--eval-sets`` independent evaluation sets (default 5 of 5,000
points; fresh noise x1 and fresh target samples per set, the same sets for every method of a
task and seed), and the floor, W2 between two independent exact sample sets, on as many
independent pairs: at 5,000 samples W2 on 8gaussians is dominated by how many points land in
each component (the floor ranges ≈ 0.2–0.35 across keys), so one set cannot rank methods. On
8gaussians the coupling error is also reported: for the same noise x1, mean ‖x̂0(x1) − x0*(x1)‖²
between the model's output and the analytic teacher's exact ODE solution (an adaptive
Dormand–Prince solve, ``toy_eval.exact_solution_fn``).

**Average-velocity error** (8gaussians; None elsewhere, where no teacher is analytic). At NFE
budget n, on the uniform grid 1 = t_0 > … > t_n = 0, at the analytic teacher's *exact* ODE
points z*_k = Φ_{1→t_k}(x1) of each evaluation set's noise (not the points the model's own
trajectory visits: so the value is a property of the model alone, the same points for every
method, and the u* are computed once per task and seed; the accumulated effect of the errors
along the model's own trajectory is the coupling error),

    avg_velocity_error = mean_k mean_i ‖u(z*_ik, t_{k+1}, t_k) − u*(z*_ik, t_{k+1}, t_k)‖²,

with u* = (z − Φ_{t→r}(z))/(t − r) from ``average_velocity.exact_average_velocity`` of
``toy_mixture()`` (adaptive solves at toy_eval's tolerance 1e-6, ``toy_eval.exact_mean_targets``),
u the two-time model's average velocity, or for a one-time model (the teacher, 2-RF, …) its
instantaneous velocity v(z, t_k), which is what one Euler step uses — so the column is
comparable across methods, and is the squared error of the step's displacement divided by
(t_k − t_{k+1})². It depends on the budget, not on the record's solver (the teacher's Heun and
DPM-Solver-2 records carry the Euler grid's value). At n = 1, z*_0 = x1 and x̂0 = x1 − u, so
it equals the 1-NFE coupling error (up to the two exact solves' tolerance).

**Budget curves** (``--curve 0,500,1000,2000,4000``): the methods of ``--curve-methods``
(default 2rf, meanflow, splitmeanflow) on ``--curve-tasks`` are trained once to ``--steps`` in
chunks — each chunk resumes the previous one's checkpoint, which gives bit-identical
parameters, EMA and optimiser state to one run (checked: every batch and key is a function of
the step, the learning rate is constant after an optional warm-up of fixed length and the EMA
decay is constant, neither depends on the step count) — and the EMA snapshot at each listed
step is scored at 1 and 2 NFE (:data:`CURVE_BUDGETS`): W2 over the first ``--curve-eval-sets``
sets (their first ``--curve-samples`` points; default all), the coupling and average-velocity
errors on 8gaussians. Step 0 scores the initial weights (a student initialised from its
teacher, e.g. ``splitmeanflow_from_2rf``, then has its teacher's metrics exactly). **Budget
rule:** a curve has flattened at S when the last doubling (S/2 → S) changes the metric's mean
over seeds by less than its seed spread (std over seeds at S); the leaderboard's budget is the
smallest S at which 2-RF's and MeanFlow's curves have flattened at 1 and 2 NFE
(``toy2d_leaderboard.curve_summary``).

FILE receives a JSON list of records, one per task/method/seed/solver/NFE budget:
``{"task", "method", "seed", "solver", "budget", "nfe", "w2", "w2_sets", "w2_mean", "w2_std",
"w2_floor", "w2_floor_sets", "w2_floor_mean", "w2_floor_std", "coupling_error",
"coupling_error_std", "avg_velocity_error", "avg_velocity_error_std", "straightness"}``.
``w2`` and ``w2_floor`` keep their earlier meaning (one evaluation set: the first; one pair of
exact sets: the first), ``*_sets`` hold every set's value, ``*_mean``/``*_std`` their mean and
sample std (ddof = 1) over the sets; ``coupling_error`` and ``avg_velocity_error`` are the mean
over the sets (None except on 8gaussians); ``straightness`` is set on the accurate solve's
record (first set's noise). Budget-curve records add ``"curve": true, "step", "num_samples"``
(no floor fields) and are left out of every table but the curves'. ``FILE`` with
``.meta.json`` in place of ``.json`` holds the commit, machine, settings and the seconds spent
per stage and method (also in ``.timings.json`` while running), and with ``.md`` the summary
tables: per (task, method, solver, budget) the mean over seeds and sets with the spread over
seeds and over sets, which differences between methods at equal NFE budget are significant
(see :func:`significance`), the few-step leaderboard (``benchmarks/toy2d_leaderboard.py``: at
1, 2 and 4 NFE, each method at its own solver, merged with the records of ``--merge`` files,
and whether records found in both are equal) and the budget curves; the figures
``FILE_w2.png``, ``FILE_coupling_error.png``, ``FILE_avg_velocity_error.png`` and
``FILE_curves.png`` lie beside it. ``--report FILE [--old OLD] [--merge ...]`` rewrites those
from a finished FILE without training, and compares its seed means with an earlier run's
(``w2``, in units of the seed spread).
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import boss_toy, flowturbo_toy  # noqa: E402
from benchmarks.common import run_metadata, write_json  # noqa: E402
from configs.common import apply_mean_method  # noqa: E402
from configs.toy2d import COUPLINGS, LOOM_NUM_EXAMPLES, get_config  # noqa: E402
from simple_reflow import boss, flowturbo, grids, sampler  # noqa: E402
from simple_reflow.data.toy import TOY_DATASETS, toy_mixture  # noqa: E402
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
    train_mean_student,
)
from simple_reflow.train.toy_eval import (  # noqa: E402
    _scores,
    avg_velocity_errors,
    eval_sets,
    evaluate_model,
    exact_mean_targets,
    exact_solution_fn,
    solver_grid_fn,
    w2_floors,
)

EULER = {"solver": "euler", "grid": "uniform"}
DPM2 = {"solver": "dpm2", "grid": "sigmoid", "kappa": 20.0, "r": 0.4}
HEUN = {"solver": "heun", "grid": "uniform"}
MEAN = {"solver": "mean", "grid": "uniform"}  # one average-velocity step per interval
SOLVERS = {"euler": EULER, "heun": HEUN, "dpm2": DPM2}  # the teacher's (--teacher-solvers)
CURVE_BUDGETS = (1, 2)  # the NFE budgets of the budget curves
# The BOSS and FlowTurbo rows: labels (the sampler runs Euler on the BOSS grid / the plan).
EULER_BOSS = {"solver": "euler-boss"}
EULER_STRAIGHT = {"solver": "euler-boss-straight"}
FLOWTURBO = {"solver": "flowturbo"}
# BOSS settings of benchmarks/boss_toy.py (its defaults); FlowTurbo's refiner as
# benchmarks/flowturbo_toy.py's. Arguments of the same names (``args.boss_candidates``, …)
# override them (the tests).
BOSS = {"boss_candidates": 100, "boss_noises": 1024, "boss_substeps": 4}
# BOSS straightening as benchmarks/boss_toy.py's defaults (full fine-tune, no LoRA).
STRAIGHTEN = {
    "straighten_steps": 1000,
    "straighten_noises": 4096,
    "straighten_lr": 1e-4,
    "straighten_batch": 512,
}
REFINER = {
    "refiner_steps": 500,
    "refiner_hidden": 32,
    "refiner_batch": 512,
    "refiner_lr": 3e-3,
    "refiner_pairs": 4096,
}

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
    # Two-time MLPs (METHOD.md §9) with the "mean" solver on the uniform grid: from scratch on
    # data with independent noise (configs/toy2d.py:meanflow, :splitmeanflow), or distilled
    # (v from "teacher": the task's teacher, or the 2rf student; the student starts from its
    # weights when it has them, toy._mean_student_init).
    "meanflow": {"kind": "mean", "solvers": [MEAN], "loss": "meanflow"},
    # improved MeanFlow's v-loss: the JVP along the model's own u(z, t, t) (losses_mean)
    "imeanflow": {"kind": "mean", "solvers": [MEAN], "loss": "meanflow", "tangent": "model"},
    "splitmeanflow": {"kind": "mean", "solvers": [MEAN], "loss": "splitmeanflow"},
    "splitmeanflow_distill": {
        "kind": "mean",
        "solvers": [MEAN],
        "loss": "splitmeanflow",
        "teacher": "teacher",
    },
    "splitmeanflow_from_2rf": {
        "kind": "mean",
        "solvers": [MEAN],
        "loss": "splitmeanflow",
        "teacher": "2rf",
    },
    # A trained model of the run (no new training) with another sampler: Euler on its BOSS
    # grid, or a FlowTurbo plan with a light refiner (module docstring).
    **{
        f"{base}+{kind}": {"kind": kind, "base": base, "solvers": [solver]}
        for kind, solver in (("boss", EULER_BOSS), ("flowturbo", FLOWTURBO))
        for base in ("teacher", "2rf", "simple_reflow")
    },
    # A trained model straightened along its BOSS grid of each budget (a short fine-tune),
    # Euler on that grid; an analytic teacher (8gaussians) has no weights and no such rows.
    **{
        f"{base}+straight": {"kind": "straight", "base": base, "solvers": [EULER_STRAIGHT]}
        for base in ("teacher", "2rf", "simple_reflow")
    },
}
CURVE_METHODS = ("2rf", "meanflow", "splitmeanflow")  # --curve-methods' default
# methods that re-sample (or, "straight", fine-tune briefly) another method's model
SAMPLER_KINDS = ("boss", "flowturbo", "straight")


def flowturbo_plan(budget):
    """The FlowTurbo plan of ``budget`` network calls on a grid ending at 0 (one interval per
    step): ``"H1"`` at 1 (one Euler step), else ``"H1P{budget − 2}R1"`` (``"H1R1"`` at 2)."""
    if budget < 1:
        raise ValueError(f"budget={budget!r} must be >= 1.")
    return "H1" if budget == 1 else "H1" + (f"P{budget - 2}" if budget > 2 else "") + "R1"


def _override(section, values):
    section = copy.deepcopy(section)
    for k, v in values.items():
        setattr(section, k, v)
    return section


def _solver_cfg(cfg, values):
    return _override(cfg.sampler, {"t_max": 1.0, **values})


def _opt(args, name, default):
    """``args.<name>``, or ``default`` where it is missing or None (a caller's Namespace may
    predate the option)."""
    value = getattr(args, name, None)
    return default if value is None else value


def _ave_fields(ave, budget):
    mean, std = (ave or {}).get(budget, (None, None))
    return {"avg_velocity_error": mean, "avg_velocity_error_std": std}


def _evaluate(name, fn, spec, cfg, task, seed, floor, sets, *, targets=None, accurate=True):
    ave = None
    if targets is not None:
        ave = avg_velocity_errors(fn, targets, two_time=spec["kind"] == "mean")
    records = []
    for i, solver in enumerate(spec["solvers"]):
        for r in evaluate_model(
            fn,
            cfg,
            solver_cfg=_solver_cfg(cfg, solver),
            sets=sets,
            with_accurate=accurate and i == 0,
        ):
            records.append(
                {
                    "task": task,
                    "method": name,
                    "seed": seed,
                    **floor,
                    **r,
                    **_ave_fields(ave, r["budget"]),
                }
            )
    return records


def _head(sets, targets, num_sets, num_samples):
    """The first ``num_samples`` points of the first ``num_sets`` sets (and their targets)."""
    sets = [{k: v[:num_samples] for k, v in s.items()} for s in sets[:num_sets]]
    if targets is not None:
        targets = [
            {b: [tuple(a[:num_samples] for a in step) for step in per[b]] for b in CURVE_BUDGETS}
            for per in targets[:num_sets]
        ]
    return sets, targets


class TaskRun:
    """One task and seed: the teacher, the evaluation sets (and, on 8gaussians, the exact
    average velocities) shared by every method; :meth:`model` trains a method on demand (once),
    with its budget curve when ``args.curve`` asks for it."""

    def __init__(self, task, seed, args, workroot):
        cfg = get_config()
        cfg.data.name = task
        cfg.seed = seed
        cfg.eval.num_samples = args.num_samples
        cfg.eval.nfe = tuple(_opt(args, "budgets", cfg.eval.nfe))
        cfg.training.num_steps = args.steps
        cfg.teacher.num_steps = args.teacher_steps
        cfg.pairs.num_backward = args.num_pairs
        cfg.pairs.num_forward = args.num_pairs // 4
        cfg.training.log_every = min(cfg.training.log_every, args.steps)
        cfg.training.ema_decay = args.ema_decay
        self.cfg, self.task, self.seed, self.args = cfg, task, seed, args
        self.workdir = os.path.join(workroot, f"{task}_seed{seed}")
        self.seconds = collections.defaultdict(float)  # "<name>/train", "<name>/eval", ...
        clock = time.perf_counter()
        floors = w2_floors(cfg, key=stream_key(seed, "eval_floor"), num_sets=args.eval_sets)
        self.floor = {
            "w2_floor": floors[0],
            "w2_floor_sets": floors,
            "w2_floor_mean": float(np.mean(floors)),
            "w2_floor_std": float(np.std(floors, ddof=1)) if len(floors) > 1 else None,
        }
        # the same noise, targets and (8gaussians) exact ODE solutions for every method
        exact_fn = exact_solution_fn(task)
        self.sets = eval_sets(
            cfg, key=stream_key(seed, "eval"), num_sets=args.eval_sets, exact_fn=exact_fn
        )
        self.seconds["eval_sets"] = time.perf_counter() - clock
        self.targets = None
        if exact_fn is not None:  # the analytic teacher's average velocities (8gaussians)
            clock = time.perf_counter()
            budgets = sorted({*cfg.eval.nfe, *CURVE_BUDGETS})
            grid_fn = solver_grid_fn(_solver_cfg(cfg, MEAN))
            self.targets = exact_mean_targets(toy_mixture(), self.sets, budgets, grid_fn)
            self.seconds["exact_targets"] = time.perf_counter() - clock
        self.run = stages.resolve(cfg)
        clock = time.perf_counter()
        self.teacher = teacher_fn(self.run, self.workdir)  # (denoise_fn, params, model_def)
        self.seconds["teacher/train"] = time.perf_counter() - clock
        self._stores = None
        self.trained = {}  # name -> (denoise_fn, EMA params, model_def)
        self._aves = {}  # base model -> its average-velocity errors (BOSS / FlowTurbo rows)
        self._boss_costs = {}  # base model -> (its BOSS cost matrix, candidate times)
        self.curve = []  # curve records of every method trained with its curve

    @property
    def stores(self):
        """The teacher's pair stores (generated on first use)."""
        if self._stores is None:
            clock = time.perf_counter()
            self._stores = jax.block_until_ready(
                generate_toy_pairs(self.teacher[0], self.run, self.seed)
            )
            self.seconds["pairs"] = time.perf_counter() - clock
        return self._stores

    def _trainer(self, name):
        """``(train(num_steps) -> (model_def, state), final step count)`` of a method."""
        spec, cfg = METHODS[name], self.cfg
        workdir, desc = os.path.join(self.workdir, name), f"{self.task}/{name}"
        if spec["kind"] == "student":
            mcfg = copy.deepcopy(cfg)
            mcfg.loss = _override(cfg.loss, spec["loss"])
            mcfg.time = _override(cfg.time, spec["time"])
            mcfg.pairs.rho = spec["rho"]
            mcfg.pairs.projection.fraction = spec.get("projection", 0.0)
            mrun = stages.resolve(mcfg)
            data = {"backward": self.stores["backward"]}
            if mcfg.pairs.rho > 0:
                data["forward"] = self.stores["forward"]
            if mcfg.pairs.projection.fraction > 0:
                data["projected"] = toy_projected_pairs(
                    self.teacher[0], mrun, self.seed, self.stores
                )
            batch_fn = pair_batch_fn(mrun, self.seed)
            loss_fn = configure.flow_loss_from_config(mcfg.loss, mcfg.time)

            def train(n):
                return train_flow(
                    mcfg,
                    workdir,
                    batch_fn=batch_fn,
                    data=data,
                    loss_fn=loss_fn,
                    init_params=self.teacher[1],
                    num_steps=n,
                    seed=stream_seed(self.seed, "student_training", bits=31),
                    desc=desc,
                )

            return train, cfg.training.num_steps
        if spec["kind"] == "mean":
            mcfg = copy.deepcopy(cfg)
            apply_mean_method(mcfg, spec["loss"], distill="teacher" in spec)
            mcfg.loss.mean_tangent = spec.get("tangent", "target")
            mrun = stages.resolve(mcfg)
            teacher, params, model_def = (
                self.model(spec["teacher"]) if "teacher" in spec else (None,) * 3
            )

            def train(n):
                return train_mean_student(
                    mrun,
                    workdir,
                    teacher=teacher,
                    teacher_params=params,
                    teacher_def=model_def,
                    num_steps=n,
                    desc=desc,
                )

            return train, cfg.training.num_steps
        # a 1-RF trained from scratch with another coupling
        mcfg = copy.deepcopy(cfg)
        mcfg.coupling = _override(cfg.coupling, spec["coupling"])
        if spec["coupling"]["name"] == "wcfm":
            mcfg.coupling.kappa = self.args.wcfm_kappa
            workdir = f"{workdir}_kappa{self.args.wcfm_kappa:g}"  # a resumed run must match its κ
        num_data = spec.get("num_data")
        coupling = configure.coupling_from_config(
            mcfg.coupling, data_shape=TOY_SHAPE, num_data=num_data
        )
        batch_fn, data = make_data_batch_fn(
            self.task,
            cfg.training.batch_size * coupling.batch_factor,
            stream_seed(self.seed, "teacher_batches", bits=31),
            num_data,
        )

        def train(n):
            return train_flow(
                mcfg,
                workdir,
                batch_fn=batch_fn,
                data=data,
                loss_fn=ONE_RF_LOSS,
                coupling=coupling,
                num_steps=n,
                seed=self.seed,
                desc=desc,
            )

        return train, cfg.teacher.num_steps

    def curve_steps(self, name):
        """The steps at which ``name`` is scored for its budget curve here (none if not asked)."""
        a = self.args
        if not _opt(a, "curve", None) or name not in _opt(a, "curve_methods", CURVE_METHODS):
            return []
        if self.task not in _opt(a, "curve_tasks", TOY_DATASETS):
            return []
        return sorted(a.curve)

    def model(self, name):
        """``(denoise_fn, EMA params, model_def)`` of ``name`` trained to its budget (once).

        With a budget curve the run trains in chunks, each resuming the previous one's
        checkpoint (bit-identical to one run: every batch and key is a function of the step,
        and the learning rate and EMA decay do not depend on the step count), and each chunk's
        EMA snapshot is scored (:meth:`curve_records`)."""
        if name == "teacher":
            return self.teacher
        if METHODS[name]["kind"] in SAMPLER_KINDS:  # another method's model, sampled otherwise
            return self.model(METHODS[name]["base"])
        if name not in self.trained:
            train, final = self._trainer(name)
            curve = [s for s in self.curve_steps(name) if s <= final]
            start, scoring = time.perf_counter(), 0.0
            for n in [s for s in curve if s < final] + [final]:
                model_def, state = train(n)
                if n not in curve:
                    continue
                if int(state.step) != n:  # a run kept in --workdir is further along
                    print(
                        f"{self.task}/{name}: no curve point at step {n} (the run in "
                        f"{self.workdir} is at step {int(state.step)})",
                        flush=True,
                    )
                    continue
                clock = time.perf_counter()
                self.curve.extend(self.curve_records(name, model_def.denoiser(state.ema), n))
                scoring += time.perf_counter() - clock
            if curve:
                self.seconds[f"{name}/curve_eval"] += scoring
            self.seconds[f"{name}/train"] += time.perf_counter() - start - scoring
            self.trained[name] = (model_def.denoiser(state.ema), state.ema, model_def)
        return self.trained[name]

    def curve_records(self, name, fn, step):
        """W2 (and the coupling and average-velocity errors where defined) at the NFE budgets
        :data:`CURVE_BUDGETS`, on the first ``--curve-samples`` points of the first
        ``--curve-eval-sets`` evaluation sets, with ``"curve": True, "step": step``."""
        a, spec = self.args, METHODS[name]
        num_sets = _opt(a, "curve_eval_sets", a.eval_sets)
        num_samples = _opt(a, "curve_samples", a.num_samples)
        sets, targets = _head(self.sets, self.targets, num_sets, num_samples)
        cfg = copy.deepcopy(self.cfg)
        cfg.eval.nfe = CURVE_BUDGETS
        ave = None
        if targets is not None:
            ave = avg_velocity_errors(fn, targets, two_time=spec["kind"] == "mean")
        recs = evaluate_model(
            fn, cfg, solver_cfg=_solver_cfg(cfg, spec["solvers"][0]), sets=sets, with_accurate=False
        )
        out = []
        for r in recs:
            out.append(
                {
                    "task": self.task,
                    "method": name,
                    "seed": self.seed,
                    "curve": True,
                    "step": step,
                    "num_samples": num_samples,
                    **r,
                    **_ave_fields(ave, r["budget"]),
                }
            )
        print(
            f"[{self.task} seed {self.seed}] {name} step {step}: "
            + ", ".join(f"W2@{r['nfe']}={r['w2_mean']:.3f}" for r in out),
            flush=True,
        )
        return out

    def _ave(self, base):
        """The average-velocity errors of the one-time model ``base`` (once per base), None
        without exact targets."""
        if self.targets is None:
            return None
        if base not in self._aves:
            fn = self.model(base)[0]
            self._aves[base] = avg_velocity_errors(fn, self.targets, two_time=False)
        return self._aves[base]

    def _record(self, name, budget, nfe, solver, x0s, ave=None, **extra):
        """A record of ``name`` in :func:`toy_eval.evaluate_model`'s format (+ ``extra``); the
        average-velocity error is ``ave``'s (``{budget: (mean, std)}``), by default its base
        model's."""
        return {
            "task": self.task,
            "method": name,
            "seed": self.seed,
            **self.floor,
            "solver": solver,
            "budget": budget,
            "nfe": nfe,
            **_scores(x0s, self.sets),
            "straightness": None,
            **_ave_fields(ave or self._ave(METHODS[name]["base"]), budget),
            **extra,
        }

    def _boss_grid_fn(self, base):
        """``(k -> base's BOSS grid of k steps, number of candidate intervals)``; the cost
        matrix is computed once per base model (module docstring)."""
        a = self.args
        n, noises, substeps = (_opt(a, k, v) for k, v in BOSS.items())
        if base not in self._boss_costs:
            clock = time.perf_counter()
            fn = self.model(base)[0]
            tau = grids.uniform_grid(n)
            cost = boss_toy._boss_cost(fn, boss_toy._fit_noise(self.seed, noises), tau, substeps)
            self._boss_costs[base] = (cost, tau)
            self.seconds[f"{base}/boss_cost"] += time.perf_counter() - clock
        cost, tau = self._boss_costs[base]
        return (lambda k: boss.optimal_grid(cost, tau, k)), n

    def _euler(self, fn, grid):
        """Euler on ``grid`` from each evaluation set's noise: the samples, one per set."""
        sample = jax.jit(lambda x1: sampler.sample(fn, x1, grid, solver="euler")[0])
        return [sample(s["x1"]) for s in self.sets]

    def _boss_records(self, name):
        """Euler on the base model's BOSS grid at each budget (module docstring)."""
        fn = self.model(METHODS[name]["base"])[0]
        grid_fn, n = self._boss_grid_fn(METHODS[name]["base"])
        clock, records = time.perf_counter(), []
        for b in self.cfg.eval.nfe:
            grid, nfe = sampler.grid_for_budget(b, "euler", grid_fn, max_intervals=n)
            extra = {"grid": [float(t) for t in grid]}
            sig = grids.sigmoid_grid(len(grid) - 1, boss_toy.KAPPA)
            if not np.allclose(sig, grids.uniform_grid(len(grid) - 1)):
                sc = _scores(self._euler(fn, sig), self.sets)
                extra["sigmoid_grid"] = {
                    "w2_sets": sc["w2_sets"],
                    "w2_mean": sc["w2_mean"],
                    "coupling_error": sc["coupling_error"],
                }
            x0s = self._euler(fn, grid)
            records.append(self._record(name, b, nfe, EULER_BOSS["solver"], x0s, **extra))
        self.seconds[f"{name}/eval"] += time.perf_counter() - clock
        return records

    def _straight_records(self, name):
        """The base student straightened along its BOSS grid of each budget K
        (``boss_toy._straighten``: :func:`simple_reflow.train.boss.straighten` on the model's
        own reference trajectories, :data:`STRAIGHTEN`), Euler on that grid; the
        average-velocity error is the straightened model's."""
        base = METHODS[name]["base"]
        _, params, model_def = self.model(base)
        if params is None:
            print(f"[{self.task} seed {self.seed}] {name}: the analytic teacher has no weights")
            return []
        grid_fn, n = self._boss_grid_fn(base)
        opts = argparse.Namespace(**{k: _opt(self.args, k, v) for k, v in STRAIGHTEN.items()})
        records = []
        for b in self.cfg.eval.nfe:
            grid, nfe = sampler.grid_for_budget(b, "euler", grid_fn, max_intervals=n)
            clock = time.perf_counter()
            fn, seconds = boss_toy._straighten(model_def, params, grid, self.seed, opts, b, 0)
            self.seconds[f"{name}/straighten"] += time.perf_counter() - clock
            clock = time.perf_counter()
            ave = None
            if self.targets is not None:
                targets = [{b: per[b]} for per in self.targets]
                ave = avg_velocity_errors(fn, targets, two_time=False)
            extra = {
                "grid": [float(t) for t in grid],
                "straighten_steps": opts.straighten_steps,
                "straighten_seconds": seconds,
            }
            x0s = self._euler(fn, grid)
            records.append(
                self._record(name, b, nfe, EULER_STRAIGHT["solver"], x0s, ave=ave, **extra)
            )
            self.seconds[f"{name}/eval"] += time.perf_counter() - clock
        return records

    def _refiner(self, name, fn, plan, grid):
        """``(refiner_fn, info)`` of ``plan``: trained as ``flowturbo_toy._train`` does, or
        the zero offset with ``refiner_steps`` = 0."""
        a = self.args
        opts = {k: _opt(a, k, v) for k, v in REFINER.items()}
        if opts["refiner_steps"] == 0:
            return (lambda x, t, v, cond=None: jnp.zeros_like(x)), {"refiner_steps": 0}
        settings = argparse.Namespace(**{k[len("refiner_") :]: v for k, v in opts.items()})
        workdir = os.path.join(self.workdir, name, f"refiner_{plan}")
        clock = time.perf_counter()
        ref, info = flowturbo_toy._train(fn, plan, grid, settings, self.seed, workdir)
        self.seconds[f"{name}/refiner_train"] += time.perf_counter() - clock
        info = {
            "refiner_steps": opts["refiner_steps"],
            "refiner_loss": info["refiner_loss"],
            "reuse_loss": info["reuse_loss"],
            "refiner_train_seconds": info["train_seconds"],
        }
        return ref, info

    def _flowturbo_records(self, name):
        """The base model with :func:`flowturbo_plan` at each budget (module docstring)."""
        fn = self.model(METHODS[name]["base"])[0]
        records = []
        for b in self.cfg.eval.nfe:
            plan = flowturbo_plan(b)
            grid = flowturbo.plan_grid(plan, grids.uniform_grid)
            ref, info = None, {}
            if "R" in plan:
                ref, info = self._refiner(name, fn, plan, grid)
            clock = time.perf_counter()
            sample, nfe, calls = flowturbo.make_plan_sampler(fn, ref, plan, grid)
            x0s = [sample(s["x1"]) for s in self.sets]
            extra = {"plan": plan, "refiner_calls": calls, "intervals": len(grid) - 1, **info}
            records.append(self._record(name, b, nfe, FLOWTURBO["solver"], x0s, **extra))
            self.seconds[f"{name}/eval"] += time.perf_counter() - clock
        return records

    def evaluate(self, name):
        """The records of ``name`` (trained first if need be)."""
        spec = METHODS[name]
        if spec["kind"] in SAMPLER_KINDS:  # another method's model: _boss_records, …
            return getattr(self, f"_{spec['kind']}_records")(name)
        fn = self.model(name)[0]
        if name == "teacher":
            solvers = _opt(self.args, "teacher_solvers", list(SOLVERS))
            spec = {**spec, "solvers": [SOLVERS[s] for s in solvers]}
        clock = time.perf_counter()
        recs = _evaluate(
            name,
            fn,
            spec,
            self.cfg,
            self.task,
            self.seed,
            self.floor,
            self.sets,
            targets=self.targets,
            accurate=not _opt(self.args, "no_accurate", False),
        )
        self.seconds[f"{name}/eval"] += time.perf_counter() - clock
        return recs


def run_task(task, seed, args, workroot, timings=None):
    """Every method of ``args.methods`` on one task and seed: the records (budget-curve
    records of the requested methods last); ``timings`` (a list) receives the seconds spent
    training, scoring curve points and evaluating, per method."""
    t = TaskRun(task, seed, args, workroot)
    records = []
    for name in args.methods:
        start = time.perf_counter()
        recs = t.evaluate(name)
        records.extend(recs)
        print(
            f"[{task} seed {seed}] {name}: "
            + ", ".join(f"{r['solver']}@{r['nfe']}={r['w2_mean']:.3f}" for r in recs)
            + f" (W2 mean over {len(t.sets)} sets; floor {t.floor['w2_floor_mean']:.3f}, "
            f"{time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    records.extend(r for r in t.curve if r["method"] in args.methods)
    if timings is not None:
        timings.append({"task": task, "seed": seed, **t.seconds})
    return records


def _key(r):
    return (r["task"], r["method"], r["solver"], str(r["budget"]))


def _std(v):
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarize(records):
    """Per (task, method, solver, budget): ``{"nfe", "mean", "seed_std", "set_std", "pooled",
    "pooled_std", "by_seed", "coupling", "coupling_std", "ave", "ave_std", "straightness"}``.

    ``mean`` is over seeds and sets; ``seed_std`` the std over seeds of each seed's set mean;
    ``set_std`` the mean over seeds of the std over sets; ``pooled`` every (seed, set) value
    (keyed by (seed, set index), for paired comparisons) and ``pooled_std`` their std; the
    coupling error's and the average-velocity error's (``ave``) mean and std over seeds (None
    where undefined). Budget-curve records (``"curve": True``) are left out.
    """
    groups = collections.defaultdict(list)
    for r in records:
        if not r.get("curve"):
            groups[_key(r)].append(r)
    out = {}
    for key, rs in groups.items():
        pooled = {(r["seed"], i): v for r in rs for i, v in enumerate(r["w2_sets"])}
        ce = [r["coupling_error"] for r in rs if r.get("coupling_error") is not None]
        st = [r["straightness"] for r in rs if r.get("straightness") is not None]
        ave = [r["avg_velocity_error"] for r in rs if r.get("avg_velocity_error") is not None]
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
            "ave": float(np.mean(ave)) if ave else None,
            "ave_std": _std(ave) if ave else None,
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
    records = [r for r in records if not r.get("curve")]
    summary = summarize(records)
    n_sets = len(records[0]["w2_sets"])
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"## B1: W2 over {len(seeds)} seeds × {n_sets} evaluation sets",
        "",
        "mean over seeds and sets; ± seeds: std over seeds of each seed's set mean; ± sets: "
        "mean over seeds of the std over sets; coupling error (8gaussians): mean over seeds "
        "± std over seeds of mean ‖x̂0(x1) − x0*(x1)‖²; average-velocity error (8gaussians, "
        "module docstring): the same over seeds.",
        "",
        "| task | method | solver | budget | NFE | W2 | ± seeds | ± sets | coupling error | "
        "avg-velocity error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, method, solver, budget), v in summary.items():
        ce = "–" if v["coupling"] is None else f"{v['coupling']:.4f} ± {v['coupling_std']:.4f}"
        ave = "–" if v["ave"] is None else f"{v['ave']:.4f} ± {v['ave_std']:.4f}"
        lines.append(
            f"| {task} | {method} | {solver} | {budget} | {v['nfe']} | {v['mean']:.4f} | "
            f"{v['seed_std']:.4f} | {v['set_std']:.4f} | {ce} | {ave} |"
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


def _steps_list(text):
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of step counts, e.g. 500,1000,2000,4000"
        ) from None


def _report(records, stem, args, old=None, checks=None):
    from benchmarks.toy2d_leaderboard import report

    earlier = [read_json(p) for p in args.merge or ()]
    text = report(records, stem, earlier=earlier, old=old, checks=checks)
    _write_text(stem + ".md", text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="JSON file for the records.")
    parser.add_argument("--report", help="Only write FILE's tables (FILE.md) from its records.")
    parser.add_argument("--old", help="With --report: an earlier run's records to compare.")
    parser.add_argument(
        "--join",
        nargs="+",
        metavar="FILE",
        help="OUT FILE FILE...: join the runs' records into OUT (each task and method from the "
        "first file that has it, checked against the others: toy2d_leaderboard.join), then "
        "write OUT's report.",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="Earlier result files whose records join the leaderboard (e.g. "
        "benchmarks/results/toy2d_full.json benchmarks/results/toy2d_couplings.json).",
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer steps and samples.")
    parser.add_argument("--tasks", nargs="+", default=list(TOY_DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--eval-sets", type=int, default=None, help="Evaluation sets (5; quick 3).")
    parser.add_argument(
        "--steps", type=int, default=None, help="Training steps of the students (4000; quick 2000)."
    )
    parser.add_argument(
        "--teacher-steps",
        type=int,
        default=None,
        help="Training steps of the 1-RF teacher and of the coupling methods (4000; quick 2000).",
    )
    parser.add_argument(
        "--budgets", type=int, nargs="+", default=[1, 2, 4, 9], help="NFE budgets scored."
    )
    parser.add_argument(
        "--teacher-solvers",
        nargs="+",
        choices=list(SOLVERS),
        default=list(SOLVERS),
        help="Solvers the teacher is scored with (the leaderboard uses Euler's).",
    )
    parser.add_argument(
        "--no-accurate", action="store_true", help="Skip the accurate solve (100 Heun steps)."
    )
    parser.add_argument(
        "--curve",
        type=_steps_list,
        default=None,
        help="Budget curves: score the EMA snapshots at these steps, e.g. 0,500,1000,2000,4000 "
        "(0: the initial weights).",
    )
    parser.add_argument("--curve-methods", nargs="+", default=list(CURVE_METHODS))
    parser.add_argument("--curve-tasks", nargs="+", default=list(TOY_DATASETS))
    parser.add_argument(
        "--curve-eval-sets", type=int, default=None, help="Sets per curve point (all)."
    )
    parser.add_argument(
        "--curve-samples", type=int, default=None, help="Points per set at a curve point (all)."
    )
    parser.add_argument("--workdir", default=None, help="Keep the runs here (default: temp).")
    parser.add_argument(
        "--wcfm-kappa", type=float, default=WCFM_KAPPA, help="W-CFM temperature ε = κ·√dim."
    )
    args = parser.parse_args(argv)
    if args.join:
        from benchmarks.toy2d_leaderboard import join

        if len(args.join) < 3:
            parser.error("--join OUT FILE FILE...: at least two files to join")
        records, checks = join([read_json(p) for p in args.join[1:]])
        for c in checks:
            print(c)
        write_json(args.join[0], records)
        print(_report(records, os.path.splitext(args.join[0])[0], args, checks=checks))
        return
    if args.report:
        records = read_json(args.report)
        old = read_json(args.old) if args.old else None
        print(_report(records, os.path.splitext(args.report)[0], args, old))
        return
    if not args.out:
        parser.error("--out is required (or --report FILE)")
    if args.wcfm_kappa <= 0:
        parser.error(f"--wcfm-kappa={args.wcfm_kappa} must be > 0")
    for flag, names, valid in (
        ("--methods", args.methods, METHODS),
        ("--curve-methods", args.curve_methods, METHODS),
        ("--tasks", args.tasks, TOY_DATASETS),
        ("--curve-tasks", args.curve_tasks, TOY_DATASETS),
    ):
        for m in names:
            if m not in valid:
                parser.error(f"{flag}: {m!r} is not one of {sorted(valid)}")
    for m in args.curve_methods if args.curve else ():
        if METHODS[m]["kind"] in SAMPLER_KINDS:
            parser.error(f"--curve-methods: {m!r} trains nothing (its curve is its base's)")
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.eval_sets = args.eval_sets or (3 if args.quick else 5)
    if args.eval_sets < 1:
        parser.error(f"--eval-sets={args.eval_sets} must be >= 1")
    args.steps = args.steps or (2000 if args.quick else 4000)
    args.ema_decay = 0.995 if args.quick else 0.999  # EMA horizon ≈ 200 / 1000 steps
    args.teacher_steps = args.teacher_steps or (2000 if args.quick else 4000)
    args.num_pairs = 10_000 if args.quick else 20_000
    args.num_samples = 2000 if args.quick else 5000
    per_call = get_config().training.steps_per_call
    if args.steps <= 0 or args.steps % per_call:
        parser.error(f"--steps={args.steps} must be a positive multiple of {per_call} (steps/call)")
    for s in args.curve or ():
        if s < 0 or s % per_call:
            parser.error(f"--curve step {s} must be 0 or a positive multiple of {per_call}")
    if args.curve and max(args.curve) > args.steps:
        parser.error(f"--curve {max(args.curve)} is past --steps={args.steps}")
    if not 1 <= (args.curve_eval_sets or 1) <= args.eval_sets:
        parser.error(f"--curve-eval-sets={args.curve_eval_sets} must lie in [1, --eval-sets]")
    if not 1 <= (args.curve_samples or 1) <= args.num_samples:
        parser.error(f"--curve-samples={args.curve_samples} must lie in [1, {args.num_samples}]")
    if any(b < 1 for b in args.budgets):
        parser.error(f"--budgets={args.budgets} must be >= 1")
    start = time.perf_counter()
    records, timings = [], []
    stem = os.path.splitext(args.out)[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        for task in args.tasks:
            for seed in args.seeds:
                records.extend(run_task(task, seed, args, root, timings))
                write_json(args.out, records)  # so far, in case the run is cut short
                write_json(stem + ".timings.json", timings)
    table = _report(records, stem, args)
    print(table)
    write_json(args.out, records)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "report", "old")}
    meta = run_metadata(settings)
    meta["wall_seconds"] = time.perf_counter() - start
    meta["seconds"] = timings
    write_json(stem + ".meta.json", meta)
    print(f"wrote {args.out} ({len(records)} records) in {meta['wall_seconds']:.0f}s")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
