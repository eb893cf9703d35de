"""The few-step leaderboard on scikit-learn's digits (issue 24 deliverable 5, issue 25's digits
rows): every few-step method of ``benchmarks/toy2d.py`` on the 8×8 digits, with one trained MLP
1-RF teacher as the ground truth.

  python benchmarks/digits_leaderboard.py --out benchmarks/results/digits_leaderboard.json
  python benchmarks/digits_leaderboard.py --out /tmp/dl.json --quick   # 1-2 min: the test
  python benchmarks/digits_leaderboard.py --report benchmarks/results/digits_leaderboard.json
  python benchmarks/digits_leaderboard.py --out benchmarks/results/digits_leaderboard_long.json \
      --workdir W --methods 2rf meanflow splitmeanflow --curve-methods 2rf meanflow \
      splitmeanflow --steps 16000 --curve 4000,8000,16000   # the curves past the budget

(the last resumes the first run's checkpoints kept in ``--workdir W``: the teacher and the
4,000-step students; its 4,000-step points must equal the first run's, a reproducibility check)

Data: ``digits_arrays("train")`` (1,500 images) flattened to 64 pixels in [−1, 1]; evaluation
against ``digits_arrays("test")`` (the 297 held-out images).

Ground truth: **the trained teacher's flow, not an analytic one.** The teacher is a 1-RF (flow
matching with independent noise, ``toy.ONE_RF_LOSS``) trained from scratch on the training
digits with the leaderboard's MLP (``MLPDenoiser`` over 64 pixels, ``--hidden`` × ``--depth``),
for ``--teacher-steps`` steps. It is trained ONCE (seed 0) and shared by every seed: to keep the
cost down, the seed changes the students (initialisation, batches, the teacher pairs' noises)
and the evaluation noises, not the teacher. Its accurate flow Φ is an adaptive Dormand–Prince
solve (``average_velocity.exact_average_velocity`` at ``toy_eval``'s tolerance 1e-6, through
``toy_eval.exact_mean_targets``).

Methods (``--methods``; names, losses, solvers and samplers as ``toy2d.METHODS`` defines them):
``teacher`` (Euler at each budget, and an ``accurate`` row: Heun on ``--accurate-steps``
uniform steps), ``2rf``, ``2rf++``, ``simple_reflow`` (forward pairs ρ = 0.4 of the 1,500
training digits), ``ot-cfm``, ``loom-cfm`` (a 1-RF from scratch with minibatch OT / LOOM-CFM's
persistent assignment over the 1,500 training digits), ``meanflow``, ``splitmeanflow`` (two-time
MLP from scratch on data and independent noise), ``splitmeanflow_distill`` (v from the teacher,
starting from its weights), ``splitmeanflow_from_2rf`` (v from the ``2rf`` student of the seed,
its weights), and the sampling-time rows ``<model>+boss`` for the teacher, ``2rf`` and
``simple_reflow`` (Euler on the model's BOSS grid: ``boss_toy._boss_cost`` on
``boss_toy._fit_noise(seed, 1024)``, 100 candidate intervals, 4 Heun substeps, computed once per
model; each record also keeps Euler on the uniform and, where it differs, the sigmoid (κ = 20)
grid of as many intervals), ``<model>+straight`` (the model fine-tuned along its BOSS grid of
each budget by ``boss_toy._straighten`` with ``toy2d.STRAIGHTEN``: 1,000 Adam steps at 1e-4,
batch 512, EMA 0.99, on its own reference trajectories of 4,096 fresh noises; Euler on that grid,
solver ``"euler-boss-straight"``, its own average-velocity error) and ``<model>+flowturbo``
(``toy2d.flowturbo_plan``: ``H1`` at 1 NFE, ``H1P{n−2}R1`` at n ≥ 2, with an ``MLPRefiner``
32 × 2 trained by ``flowturbo_toy._train`` — 500 steps, batch 512, Adam 3e-3 cosine, EMA
0.99, 4,096 noises — on 64-d data).

Same network, batch (``--batch``, 250: LOOM-CFM's epochs need a divisor of 1,500) and step
budget (``--steps``) for every trained method, the from-scratch ones (``ot-cfm``, ``loom-cfm``,
``meanflow``, ``splitmeanflow``) included; only the teacher gets ``--teacher-steps``. Students
start from the teacher's weights as in toy2d. The training loop is ``toy.train_flow`` (the
library's ``fit``) with a 64-pixel MLP (:func:`train_mlp`); the config sections, losses,
couplings, pair mixing and optimiser are toy2d's, from ``configs/toy2d.get_config``).

Metrics per (method, seed, solver, NFE budget) on ``--num-samples`` index-seeded noises x1 (the
same for every method of a seed: ``noise_for_indices(stream_key(seed, "eval"), …)``):

- ``fd``: pixel Fréchet distance of the samples (clipped to [−1, 1], as
  ``search_digits.teacher_fd``) to the 297 held-out digits; floor ``fd_floor``: the 1,500
  training digits against them;
- ``coupling_error``: mean ‖x̂0(x1) − x0_T(x1)‖²/64 against the teacher's accurate solution
  x0_T(x1) = Φ_{1→0}(x1) from the same noise (the map ReFlow learns);
- ``avg_velocity_error``: ``toy_eval.avg_velocity_errors`` divided by 64 — at budget n on the
  uniform grid 1 = t_0 > … > t_n = 0, at the teacher's exact points z*_k = Φ_{1→t_k}(x1),
  mean_k mean_i ‖u(z*_ik, t_{k+1}, t_k) − u*(z*_ik, t_{k+1}, t_k)‖²/64 with
  u*(z, r, t) = (z − Φ_{t→r}(z))/(t − r); one-time models use u := v(z, t_k). At n = 1 it
  equals the 1-NFE Euler coupling error. BOSS / FlowTurbo rows carry their base model's.

**Budget curves** (``--curve``, default 0,500,1000,2000,4000 of a 4,000-step budget):
``--curve-methods`` (2rf, meanflow, splitmeanflow, splitmeanflow_distill) are trained in chunks
that resume the previous chunk's checkpoint (as toy2d: bit-identical to one run) and each
listed step's EMA is scored at 1 and 2 NFE. **Rule** (toy2d / README): a curve has flattened at
S when the last doubling S/2 → S changes the seed mean by less than the seed std at S; the
budget is the smallest curve step at which 2-RF's and MeanFlow's FD curves have flattened at 1
and 2 NFE. **Significance** (README's rule, ``toy2d.significance``): a difference of seed means
is significant when it exceeds the combined std √(s_a² + s_b²) of the two entries' seed values
(one evaluation set per seed here), with the paired t-test on equal seeds beside it.

**Cost**: :data:`ESTIMATE` (estimated from a reduced run before the full one; the
``.meta.json`` has the real seconds per stage). The teacher: 16,000 steps (its FD at 32 Heun
steps had come down to 1.01 against a floor of 0.56; 1.12 at 8,000); the students 4,000. The
full run took 1,615 s of wall time (2026-12-07, niced, on the shared 2-core CPU); the
16,000-step extension of the curves (second command above) 928 s.

FILE receives the JSON records ``{"task", "method", "seed", "solver", "budget",
"nfe", "fd", "fd_floor", "coupling_error", "avg_velocity_error", …}`` (curve records add
``"curve": true, "step"``); FILE with ``.md`` the tables, ``.meta.json`` the commit, machine,
settings and seconds per stage; ``FILE_<metric>.png`` per metric and ``FILE_curves.png``.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import boss_toy, flowturbo_toy, toy2d, toy2d_leaderboard  # noqa: E402
from benchmarks.common import run_metadata, write_json  # noqa: E402
from configs.common import apply_mean_method  # noqa: E402
from configs.toy2d import get_config  # noqa: E402
from simple_reflow import boss, flowturbo, grids, pairs, sampler  # noqa: E402
from simple_reflow.data.digits import digits_arrays  # noqa: E402
from simple_reflow.metrics.frechet import frechet_distance  # noqa: E402
from simple_reflow.models.mlp import MLPDenoiser  # noqa: E402
from simple_reflow.models.two_time import init_from_one_time  # noqa: E402
from simple_reflow.train import configure, stages, toy_eval  # noqa: E402
from simple_reflow.train.step import split_model  # noqa: E402
from simple_reflow.train.streams import stream_key, stream_seed  # noqa: E402
from simple_reflow.train.toy import (  # noqa: E402
    ONE_RF_LOSS,
    make_data_batch_fn,
    pair_batch_fn,
    train_flow,
)
from simple_reflow.train.toy_eval import coupling_error, solver_grid_fn  # noqa: E402

TASK = "digits"
DIM = 64
SHAPE = (DIM,)
NAMES = (
    "teacher",
    "2rf",
    "2rf++",
    "simple_reflow",
    "ot-cfm",
    "loom-cfm",
    "meanflow",
    "splitmeanflow",
    "splitmeanflow_distill",
    "splitmeanflow_from_2rf",
    "teacher+boss",
    "2rf+boss",
    "simple_reflow+boss",
    "teacher+straight",
    "2rf+straight",
    "simple_reflow+straight",
    "teacher+flowturbo",
    "2rf+flowturbo",
    "simple_reflow+flowturbo",
)
METHODS = {name: toy2d.METHODS[name] for name in NAMES}
CURVE_METHODS = ("2rf", "meanflow", "splitmeanflow", "splitmeanflow_distill")
RULE_METHODS = ("2rf", "meanflow")  # the budget rule's curves
CURVE_BUDGETS = toy2d.CURVE_BUDGETS  # (1, 2)
SHORT = {"fd": "FD", "coupling_error": "coupling error", "avg_velocity_error": "avg-velocity error"}
METRICS = {  # record field -> label
    "fd": "pixel FD to the held-out digits",
    "coupling_error": "coupling error ‖x̂0 − x0_T‖²/64",
    "avg_velocity_error": "avg-velocity error ‖u − u*‖²/64",
}
# Full run / --quick. The full sizes were chosen from the quick and reduced runs' per-stage
# seconds (ESTIMATE).
FULL = dict(
    hidden=256,
    depth=3,
    batch=250,
    steps=4000,
    teacher_steps=16000,
    num_pairs=20000,
    num_samples=2000,
    accurate_steps=100,
    budgets=(1, 2, 4, 6),
    curve=(0, 500, 1000, 2000, 4000),
    seeds=(0, 1, 2),
    ema_decay=0.999,
)
QUICK = dict(
    hidden=32,
    depth=2,
    batch=250,
    steps=50,
    teacher_steps=100,
    num_pairs=500,
    num_samples=200,
    accurate_steps=16,
    budgets=(1, 2, 4),
    curve=(0, 50),
    seeds=(0,),
    ema_decay=0.9,
)
QUICK_SAMPLING = dict(
    straighten_steps=50,
    straighten_noises=256,
    straighten_batch=128,
    boss_candidates=10,
    boss_noises=64,
    boss_substeps=1,
    refiner_steps=50,
    refiner_pairs=256,
    refiner_batch=128,
)
ESTIMATE = (
    "Measured before the full run on the loaded 2-core CPU (the runner's own progress and "
    "per-stage seconds of a reduced run, 256 x 3 MLP, batch 250): a flow-matching / ReFlow step "
    "~10-12 ms, a MeanFlow / SplitMeanFlow step ~20 ms, the teacher ~6 ms/step alone (16,000 "
    "steps: FD at 32 Heun steps 2.8 / 1.3 / 1.12 / 1.01 after 2k / 4k / 8k / 16k steps). Per "
    "seed: 5 one-time models x 4,000 x 12 ms = 240 s, 4 two-time x 4,000 x 20 ms = 320 s, "
    "curve points ~40 s, evaluation ~45 s, exact targets and pairs ~20 s, BOSS ~30 s, "
    "refiners ~30 s: ~12 min; 3 seeds + teacher ~40 min."
)


def flat(x):
    """``[N, ...] -> [N, 64]`` float64."""
    return np.asarray(x, np.float64).reshape(len(x), -1)


def base_config(args, seed):
    """toy2d's config with the leaderboard's network, batch, steps, EMA and pairs."""
    cfg = get_config()
    cfg.seed = seed
    cfg.model.hidden, cfg.model.depth = args.hidden, args.depth
    cfg.training.batch_size = args.batch
    cfg.training.num_steps = args.steps
    cfg.teacher.num_steps = args.teacher_steps
    cfg.training.ema_decay = args.ema_decay
    cfg.training.steps_per_call = 50
    cfg.training.log_every = min(cfg.training.log_every, args.steps)
    cfg.training.ckpt_every = args.steps
    cfg.pairs.num_backward = args.num_pairs
    return cfg


def train_mlp(cfg, workdir, *, num_steps, **kw):
    """``toy.train_flow`` on the 64-pixel MLP: one compiled call of ``steps_per_call`` steps
    only where it divides ``num_steps`` (a curve's chunk may not), a checkpoint at the end.
    Returns ``(model_def, final state)``."""
    spc = configure.fit_options(cfg.training)["steps_per_call"]
    spc = spc if num_steps % spc == 0 else 1
    return train_flow(
        cfg,
        workdir,
        num_steps=num_steps,
        dim=DIM,
        steps_per_call=spc,
        ckpt_every=max(num_steps, spc),
        **kw,
    )


def digits_batch_fn(batch_size, seed, num_data):
    """``batch_fn(step, data) -> {"x0", "index"}``: epochs of the fixed training set in fresh
    permutations (``toy.make_data_batch_fn``'s finite branch: its toy sample is not used)."""
    return make_data_batch_fn("moons", batch_size, seed, num_data)[0]


def train_teacher(args, train, workdir):
    """The 1-RF teacher (seed 0) on the training digits: ``(denoise_fn, params, model_def)``."""
    cfg = base_config(args, 0)
    coupling = configure.coupling_from_config(cfg.coupling, data_shape=SHAPE, num_data=len(train))
    model_def, state = train_mlp(
        cfg,
        os.path.join(workdir, "teacher"),
        loss_fn=ONE_RF_LOSS,
        batch_fn=digits_batch_fn(
            args.batch, stream_seed(0, "teacher_batches", bits=31), len(train)
        ),
        data=jnp.asarray(train),
        coupling=coupling,
        num_steps=args.teacher_steps,
        seed=0,
        desc="teacher (1-RF, digits)",
    )
    return model_def.denoiser(state.ema), state.ema, model_def


def _sample(fn, x1, grid, solver, r=0.4):
    return np.asarray(jax.jit(lambda x: sampler.sample(fn, x, grid, solver=solver, r=r)[0])(x1))


class SeedRun:
    """One seed: the evaluation noises, the teacher's exact solution and average velocities,
    the pairs, and every method trained on demand (once), with its budget curve."""

    def __init__(self, seed, args, root, teacher, train, test):
        self.seed, self.args, self.teacher = seed, args, teacher
        self.train, self.test = train, test
        self.cfg = base_config(args, seed)
        self.run = stages.resolve(self.cfg)
        self.workdir = os.path.join(root, f"seed{seed}")
        self.seconds = collections.defaultdict(float)
        clock = time.perf_counter()
        idx = jnp.arange(args.num_samples, dtype=jnp.int32)
        self.x1 = pairs.noise_for_indices(stream_key(seed, "eval"), idx, SHAPE)
        budgets = sorted({*args.budgets, *CURVE_BUDGETS})
        self.targets = toy_eval.exact_mean_targets(teacher[0], [{"x1": self.x1}], budgets, _uniform)
        z, r, t, u = self.targets[0][1][0]  # one interval [0, 1]: Φ_{1→0}(x1) = x1 − u*
        self.exact = np.asarray(z - (t - r)[:, None] * u)
        self.seconds["exact_targets"] = time.perf_counter() - clock
        self._stores, self.trained, self._aves, self.curve = None, {}, {}, []
        self._boss_costs = {}  # base model -> (its BOSS cost matrix, candidate times)

    # -- data and training ------------------------------------------------------------------

    @property
    def stores(self):
        """The teacher's backward pairs (seed's noises) and forward pairs of the train digits."""
        if self._stores is None:
            clock, fn, p = time.perf_counter(), self.teacher[0], self.cfg.pairs
            idx = jnp.arange(p.num_backward, dtype=jnp.int32)
            key = stream_key(self.seed, "pairs")
            grid_b, grid_f = self.run.pair_grid, self.run.forward_grid
            x0b, x1b, _ = jax.jit(
                lambda i: pairs.backward_pairs(fn, key, i, SHAPE, grid_b, solver=p.solver)
            )(idx)
            x0f, x1f, _ = jax.jit(lambda x: pairs.forward_pairs(fn, x, grid_f, solver=p.solver))(
                jnp.asarray(self.train)
            )
            self._stores = jax.block_until_ready(
                {"backward": {"x0": x0b, "x1": x1b}, "forward": {"x0": x0f, "x1": x1f}}
            )
            self.seconds["pairs"] = time.perf_counter() - clock
        return self._stores

    def _trainer(self, name):
        """``train(num_steps) -> (model_def, state)`` of a trained method."""
        spec, cfg, seed = METHODS[name], self.cfg, self.seed
        workdir, desc = os.path.join(self.workdir, name), f"seed {seed}/{name}"
        train = jnp.asarray(self.train)
        if spec["kind"] == "student":
            mcfg = copy.deepcopy(cfg)
            mcfg.loss = toy2d._override(cfg.loss, spec["loss"])
            mcfg.time = toy2d._override(cfg.time, spec["time"])
            mcfg.pairs.rho = spec["rho"]
            mrun = stages.resolve(mcfg)
            data = {"backward": self.stores["backward"]}
            if spec["rho"] > 0:
                data["forward"] = self.stores["forward"]
            kw = dict(
                loss_fn=configure.flow_loss_from_config(mcfg.loss, mcfg.time),
                batch_fn=pair_batch_fn(mrun, seed),
                data=data,
                init_params=self.teacher[1],
                seed=stream_seed(seed, "student_training", bits=31),
            )
            return lambda n: train_mlp(mcfg, workdir, num_steps=n, desc=desc, **kw)
        if spec["kind"] == "mean":
            mcfg = copy.deepcopy(cfg)
            apply_mean_method(mcfg, spec["loss"], distill="teacher" in spec)
            fn, params, model_def = self.model(spec["teacher"]) if "teacher" in spec else [None] * 3
            student_seed = stream_seed(seed, "student_training", bits=31)
            init = None
            if params is not None:  # the teacher's weights in the two-time MLP (step 0 = it)
                sdef, sparams = split_model(
                    MLPDenoiser(
                        DIM,
                        hidden=cfg.model.hidden,
                        depth=cfg.model.depth,
                        two_time=True,
                        rngs=nnx.Rngs(student_seed),
                    )
                )
                student = init_from_one_time(sdef.merge(sparams), model_def.merge(params))
                init = split_model(student)[1]
            coupling = configure.coupling_from_config(
                mcfg.coupling, data_shape=SHAPE, num_data=len(train)
            )
            kw = dict(
                loss_fn=configure.loss_fn_from_config(mcfg.loss, mcfg.time, teacher_fn=fn),
                batch_fn=digits_batch_fn(
                    cfg.training.batch_size,
                    stream_seed(seed, "student_batches", bits=31),
                    len(train),
                ),
                data=train,
                coupling=coupling,
                init_params=init,
                two_time=True,
                seed=student_seed,
            )
            return lambda n: train_mlp(mcfg, workdir, num_steps=n, desc=desc, **kw)
        # a 1-RF from scratch with another coupling (OT-CFM, LOOM-CFM) over the training digits
        mcfg = copy.deepcopy(cfg)
        mcfg.coupling = toy2d._override(cfg.coupling, spec["coupling"])
        coupling = configure.coupling_from_config(
            mcfg.coupling, data_shape=SHAPE, num_data=len(train)
        )
        kw = dict(
            loss_fn=ONE_RF_LOSS,
            batch_fn=digits_batch_fn(
                cfg.training.batch_size * coupling.batch_factor,
                stream_seed(seed, "teacher_batches", bits=31),
                len(train),
            ),
            data=train,
            coupling=coupling,
            seed=seed,
        )
        return lambda n: train_mlp(mcfg, workdir, num_steps=n, desc=desc, **kw)

    def curve_steps(self, name):
        a = self.args
        return sorted(a.curve) if a.curve and name in a.curve_methods else []

    def model(self, name):
        """``(denoise_fn, EMA params, model_def)`` of ``name`` (trained once; its curve scored
        on the way, as ``toy2d.TaskRun.model``)."""
        if name == "teacher":
            return self.teacher
        if METHODS[name]["kind"] in toy2d.SAMPLER_KINDS:
            return self.model(METHODS[name]["base"])
        if name not in self.trained:
            train, final = self._trainer(name), self.args.steps
            curve = [s for s in self.curve_steps(name) if s <= final]
            start, scoring = time.perf_counter(), 0.0
            for n in [s for s in curve if s < final] + [final]:
                model_def, state = train(n)
                if n not in curve:
                    continue
                if int(state.step) != n:  # a run kept in --workdir is further along
                    print(f"{name}: no curve point at step {n} (run at {int(state.step)})")
                    continue
                clock = time.perf_counter()
                self.curve.extend(self.curve_records(name, model_def.denoiser(state.ema), n))
                scoring += time.perf_counter() - clock
            self.seconds[f"{name}/curve_eval"] += scoring
            self.seconds[f"{name}/train"] += time.perf_counter() - start - scoring
            self.trained[name] = (model_def.denoiser(state.ema), state.ema, model_def)
        return self.trained[name]

    # -- scoring ----------------------------------------------------------------------------

    def scores(self, x0):
        """``{"fd", "coupling_error"}`` of samples ``x0 [N, 64]`` from this seed's noises."""
        x0 = np.asarray(x0)
        return {
            "fd": frechet_distance(flat(np.clip(x0, -1.0, 1.0)), flat(self.test)),
            "coupling_error": coupling_error(x0, self.exact) / DIM,
        }

    def aves(self, fn, two_time, budgets=None):
        """``{budget: avg_velocity_error}``: ``toy_eval.avg_velocity_errors`` / 64 (the seed has
        one evaluation set), for ``budgets`` (default all)."""
        targets = [
            {b: steps for b, steps in self.targets[0].items() if budgets is None or b in budgets}
        ]
        errors = toy_eval.avg_velocity_errors(fn, targets, two_time=two_time)
        return {b: mean / DIM for b, (mean, _) in errors.items()}

    def _base_aves(self, base):
        if base not in self._aves:
            self._aves[base] = self.aves(self.model(base)[0], two_time=False)
        return self._aves[base]

    def record(self, name, solver, budget, nfe, x0, ave, **extra):
        return {
            "task": TASK,
            "method": name,
            "seed": self.seed,
            "solver": solver,
            "budget": budget,
            "nfe": nfe,
            "fd_floor": self.args.fd_floor,
            **self.scores(x0),
            "avg_velocity_error": ave,
            **extra,
        }

    def _solver_grid(self, spec, budget):
        scfg = toy2d._solver_cfg(self.cfg, spec)
        return sampler.grid_for_budget(budget, scfg.solver, solver_grid_fn(scfg)), scfg

    def curve_records(self, name, fn, step):
        spec, two_time = METHODS[name], METHODS[name]["kind"] == "mean"
        ave = self.aves(fn, two_time, CURVE_BUDGETS)
        out = []
        for b in CURVE_BUDGETS:
            (grid, nfe), scfg = self._solver_grid(spec["solvers"][0], b)
            x0 = _sample(fn, self.x1, grid, scfg.solver, scfg.r)
            out.append(self.record(name, scfg.solver, b, nfe, x0, ave[b], curve=True, step=step))
        print(
            f"[seed {self.seed}] {name} step {step}: "
            + ", ".join(
                f"FD@{r['nfe']}={r['fd']:.2f} CE@{r['nfe']}={r['coupling_error']:.4f}" for r in out
            ),
            flush=True,
        )
        return out

    def _boss_grid_fn(self, base):
        """``k -> base``'s BOSS grid of k steps (the cost matrix computed once per base)."""
        a = self.args
        if base not in self._boss_costs:
            clock = time.perf_counter()
            tau = grids.uniform_grid(a.boss_candidates)
            noise = boss_toy._fit_noise(self.seed, a.boss_noises, shape=SHAPE)
            cost = boss_toy._boss_cost(self.model(base)[0], noise, tau, a.boss_substeps)
            self._boss_costs[base] = (cost, tau)
            self.seconds[f"{base}/boss_cost"] += time.perf_counter() - clock
        cost, tau = self._boss_costs[base]
        return lambda k: boss.optimal_grid(cost, tau, k)

    def _boss_records(self, name):
        a, base = self.args, METHODS[name]["base"]
        fn, grid_fn = self.model(base)[0], self._boss_grid_fn(base)
        ave, records = self._base_aves(base), []
        for b in a.budgets:
            grid, nfe = sampler.grid_for_budget(
                b, "euler", grid_fn, max_intervals=a.boss_candidates
            )
            k = len(grid) - 1
            extra = {"grid": [float(t) for t in grid]}
            extra["uniform_grid"] = self.scores(
                _sample(fn, self.x1, grids.uniform_grid(k), "euler")
            )
            sig = grids.sigmoid_grid(k, boss_toy.KAPPA)
            if not np.allclose(sig, grids.uniform_grid(k)):
                extra["sigmoid_grid"] = self.scores(_sample(fn, self.x1, sig, "euler"))
            x0 = _sample(fn, self.x1, grid, "euler")
            records.append(self.record(name, "euler-boss", b, nfe, x0, ave.get(b), **extra))
        return records

    def _straight_records(self, name):
        """The base model straightened along its BOSS grid of each budget, Euler on that grid
        (``toy2d`` module docstring, ``toy2d.STRAIGHTEN``); its own average-velocity error."""
        a, base = self.args, METHODS[name]["base"]
        _, params, model_def = self.model(base)
        grid_fn, records = self._boss_grid_fn(base), []
        opts = argparse.Namespace(**{k: getattr(a, k) for k in toy2d.STRAIGHTEN})
        for b in a.budgets:
            grid, nfe = sampler.grid_for_budget(
                b, "euler", grid_fn, max_intervals=a.boss_candidates
            )
            clock = time.perf_counter()
            fn, seconds = boss_toy._straighten(
                model_def, params, grid, self.seed, opts, b, 0, shape=SHAPE
            )
            self.seconds[f"{name}/straighten"] += time.perf_counter() - clock
            extra = {
                "grid": [float(t) for t in grid],
                "straighten_steps": opts.straighten_steps,
                "straighten_seconds": seconds,
            }
            x0 = _sample(fn, self.x1, grid, "euler")
            ave = self.aves(fn, two_time=False, budgets=(b,))[b]
            records.append(self.record(name, "euler-boss-straight", b, nfe, x0, ave, **extra))
        return records

    def _flowturbo_records(self, name):
        a, base = self.args, METHODS[name]["base"]
        fn = self.model(base)[0]
        ave, records = self._base_aves(base), []
        settings = argparse.Namespace(
            **{k[len("refiner_") :]: getattr(a, k) for k in toy2d.REFINER}
        )
        for b in a.budgets:
            plan = toy2d.flowturbo_plan(b)
            grid = flowturbo.plan_grid(plan, grids.uniform_grid)
            ref, info = None, {}
            if "R" in plan:
                clock = time.perf_counter()
                workdir = os.path.join(self.workdir, name, f"refiner_{plan}")
                ref, info = flowturbo_toy._train(
                    fn, plan, grid, settings, self.seed, workdir, dim=DIM
                )
                info = {k: info[k] for k in ("refiner_loss", "reuse_loss")}
                self.seconds[f"{name}/refiner_train"] += time.perf_counter() - clock
            sample, nfe, calls = flowturbo.make_plan_sampler(fn, ref, plan, grid)
            extra = {"plan": plan, "refiner_calls": calls, "intervals": len(grid) - 1, **info}
            x0 = sample(self.x1)
            records.append(self.record(name, "flowturbo", b, nfe, x0, ave.get(b), **extra))
        return records

    def evaluate(self, name):
        """The records of ``name`` (trained first if need be)."""
        spec = METHODS[name]
        if spec["kind"] in toy2d.SAMPLER_KINDS:  # another method's model: _boss_records, …
            return getattr(self, f"_{spec['kind']}_records")(name)
        fn = self.model(name)[0]
        clock, two_time = time.perf_counter(), spec["kind"] == "mean"
        ave = self.aves(fn, two_time) if two_time else self._base_aves(name)
        solver = toy2d.EULER if name == "teacher" else spec["solvers"][0]
        records = []
        for b in self.args.budgets:
            (grid, nfe), scfg = self._solver_grid(solver, b)
            x0 = _sample(fn, self.x1, grid, scfg.solver, scfg.r)
            records.append(self.record(name, scfg.solver, b, nfe, x0, ave.get(b)))
        if name == "teacher":
            grid = grids.uniform_grid(self.args.accurate_steps)
            x0 = _sample(fn, self.x1, grid, "heun")
            nfe = sampler.nfe_of(grid, "heun")
            records.append(self.record(name, "heun", "accurate", nfe, x0, None))
        self.seconds[f"{name}/eval"] += time.perf_counter() - clock
        return records


def _uniform(n):
    return grids.uniform_grid(n)


# -- report -------------------------------------------------------------------------------------


def _as_toy(records, field="fd"):
    """The records in ``toy2d``'s format (``w2`` := ``field``, one evaluation set per seed), so
    that ``toy2d.summarize`` / ``significance`` and ``toy2d_leaderboard`` apply unchanged."""
    out = []
    for r in records:
        v = r[field]
        if v is None:
            continue
        out.append(
            {
                **r,
                "w2": v,
                "w2_sets": [v],
                "w2_mean": v,
                "w2_std": None,
                "straightness": None,
            }
        )
    return out


def _std(v):
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _ms(v, digits):
    return f"{np.mean(v):.{digits}f} ± {_std(v):.{digits}f}"


def leaderboard_rows(records, budgets):
    """Per metric: ``toy2d_leaderboard.leaderboard`` on that metric (rank, best, significant)."""
    out = {}
    for field in METRICS:
        toy = [r for r in _as_toy(records, field) if r["budget"] != "accurate"]
        board = toy2d_leaderboard.leaderboard(toy, budgets)
        out[field] = board.get(TASK, [])
    return out


def _cell(c, digits):
    text = f"{c['w2']:.{digits}f} ± {c['w2_std']:.{digits}f}"
    if c["best"]:
        return f"**{text}**"
    return text if c["significant"] else f"{text} ≈"


def significance_rows(records, budgets=(1, 2)):
    """``toy2d.significance`` on the FD at the leaderboard solvers, at ``budgets``."""
    keep = [
        r
        for r in _as_toy(records, "fd")
        if not r.get("curve")
        and r["budget"] in budgets
        and r["solver"] == toy2d_leaderboard.own_solver(r["method"])
    ]
    summary = toy2d.summarize(keep)
    rows = toy2d.significance(summary)
    # neighbours in the ranking only (each method against the next better one): the full
    # pairwise table has ~90 rows per budget
    out = []
    for b in budgets:
        ranked = sorted((k for k in summary if k[3] == str(b)), key=lambda k: summary[k]["mean"])
        names = [f"{k[1]}/{k[2]}" for k in ranked]
        for better, worse in zip(names[:-1], names[1:], strict=True):
            pair = {better, worse}
            out += [r for r in rows if r["budget"] == str(b) and {r["a"], r["b"]} == pair]
            if out and out[-1]["a"] != better:  # as "better → worse": b − a ≥ 0
                r = out[-1]
                out[-1] = {
                    **r,
                    "a": r["b"],
                    "b": r["a"],
                    "mean_a": r["mean_b"],
                    "mean_b": r["mean_a"],
                    "diff": -r["diff"],
                    "seed_diffs": [-x for x in r["seed_diffs"]],
                    "paired_z": None if r["paired_z"] is None else -r["paired_z"],
                }
    return out


def budget_rule(records, methods=RULE_METHODS, metric="fd"):
    """Per curve step S with S/2 also a curve step: whether every curve of ``methods`` at 1 and
    2 NFE has flattened (|mean(S) − mean(S/2)| < std over seeds at S); the chosen budget is the
    smallest such S (None if none)."""
    pts = collections.defaultdict(list)
    for r in records:
        if r.get("curve") and r["method"] in methods and r.get(metric) is not None:
            pts[(r["method"], r["budget"], r["step"])].append(r[metric])
    steps = sorted({k[2] for k in pts})
    rows, chosen = [], None
    for s in steps:
        if s == 0 or s // 2 not in steps or s % 2:
            continue
        verdicts = []
        for m in methods:
            for b in CURVE_BUDGETS:
                now, before = pts.get((m, b, s)), pts.get((m, b, s // 2))
                if not now or not before:
                    continue
                change = float(np.mean(now) - np.mean(before))
                spread = _std(now)
                verdicts.append((m, b, change, spread, abs(change) < spread))
        ok = bool(verdicts) and all(v[4] for v in verdicts)
        rows.append({"step": s, "verdicts": verdicts, "flattened": ok})
        if ok and chosen is None:
            chosen = s
    return rows, chosen


def boss_check(records, budget=4):
    """Per base (teacher, 2rf) and seed: BOSS's FD and coupling error at ``budget`` against
    the uniform and sigmoid grids' (Euler, as many intervals)."""
    out = []
    for r in records:
        if r["solver"] != "euler-boss" or r["budget"] != budget or r.get("curve"):
            continue
        row = {"method": r["method"], "seed": r["seed"]}
        for f in ("fd", "coupling_error"):
            others = [r["uniform_grid"][f]] + (
                [r["sigmoid_grid"][f]] if "sigmoid_grid" in r else []
            )
            row[f] = (r[f], r["uniform_grid"][f], r.get("sigmoid_grid", {}).get(f))
            row[f"{f}_wins"] = r[f] < min(others)
        out.append(row)
    return sorted(out, key=lambda x: (x["method"], x["seed"]))


def format_report(records, meta=None):
    main = [r for r in records if not r.get("curve")]
    budgets = sorted({r["budget"] for r in main if r["budget"] != "accurate"})
    seeds = sorted({r["seed"] for r in main})
    floor = main[0]["fd_floor"] if main else float("nan")
    lines = [
        f"## Few-step leaderboard on digits ({len(seeds)} seed{'s' * (len(seeds) > 1)})",
        "",
        "Ground truth: the trained 1-RF teacher's flow (one teacher, seed 0; the seed changes "
        "the students, pairs and evaluation noises). Each method at its own solver "
        "(`toy2d.METHODS`). Mean over seeds ± std over seeds; **bold**: the best at that NFE; "
        "≈: not significantly worse than the best (|difference| ≤ √(s_a² + s_b²), "
        "`toy2d.significance`); no mark: significantly worse. "
        f"FD floor (1,500 training digits vs the 297 held-out): {floor:.2f}.",
    ]
    boards = leaderboard_rows(records, budgets)
    digits = {"fd": 2, "coupling_error": 4, "avg_velocity_error": 4}
    for field, label in METRICS.items():
        rows = boards[field]
        if not rows:
            continue
        lines += [
            "",
            f"### {label}",
            "",
            "| method | solver | seeds | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
            "|---|---|---|" + "---|" * len(budgets),
        ]
        for r in rows:
            bb = r["by_budget"]
            cells = [_cell(bb[b], digits[field]) if b in bb else "–" for b in budgets]
            lines.append(f"| {r['method']} | {r['solver']} | {r['seeds']} | {' | '.join(cells)} |")
    acc = [r for r in main if r["budget"] == "accurate"]
    if acc:
        lines += [
            "",
            f"Teacher accurate (Heun, {acc[0]['nfe']} NFE): FD "
            f"{_ms([r['fd'] for r in acc], 2)}, coupling error "
            f"{np.mean([r['coupling_error'] for r in acc]):.2e} ± "
            f"{_std([r['coupling_error'] for r in acc]):.2e}.",
        ]
    plans = sorted({(r["budget"], r["plan"], r["refiner_calls"]) for r in main if "plan" in r})
    if plans:
        lines += [
            "",
            "FlowTurbo plans (NFE = network calls; refiner calls extra): "
            + ", ".join(f"@{b}: {p} ({c} refiner)" for b, p, c in plans),
        ]
    sig = significance_rows(records)
    if sig:
        lines += [
            "",
            "### FD: each method against the next better one at 1 and 2 NFE",
            "",
            "significant: |b − a| > the combined std √(s_a² + s_b²) of the two methods' seed "
            "values (README's rule, `toy2d.significance`); paired t: Student's t-test at 5% on "
            "the per-seed differences (equal seeds: same pairs and evaluation noises).",
            "",
            "| NFE | a | b | FD a | FD b | b − a | combined std | significant | per seed | "
            "paired t 5% |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in sig:
            per = ", ".join(f"{x:+.2f}" for x in s["seed_diffs"])
            lines.append(
                f"| {s['budget']} | {s['a']} | {s['b']} | {s['mean_a']:.2f} | {s['mean_b']:.2f} "
                f"| {s['diff']:+.2f} | {s['combined_std']:.2f} | "
                f"{'yes' if s['significant'] else 'no'} | {per} | "
                f"{'yes' if s['paired_t'] else 'no'} |"
            )
    checks = boss_check(records)
    if checks:
        lines += [
            "",
            "### BOSS against the uniform and sigmoid (κ = 20) grids at 4 NFE (Euler)",
            "",
            "| model | seed | FD BOSS / uniform / sigmoid | BOSS best | "
            "coupling BOSS / uniform / sigmoid | BOSS best |",
            "|---|---|---|---|---|---|",
        ]
        for c in checks:
            fd = " / ".join("–" if v is None else f"{v:.2f}" for v in c["fd"])
            ce = " / ".join("–" if v is None else f"{v:.4f}" for v in c["coupling_error"])
            lines.append(
                f"| {c['method']} | {c['seed']} | {fd} | {'yes' if c['fd_wins'] else 'no'} | "
                f"{ce} | {'yes' if c['coupling_error_wins'] else 'no'} |"
            )
        for m in sorted({c["method"] for c in checks}):
            cs = [c for c in checks if c["method"] == m]
            lines.append(
                f"\n- {m}: BOSS best in FD in {sum(c['fd_wins'] for c in cs)}/{len(cs)} seeds, "
                f"in coupling error in {sum(c['coupling_error_wins'] for c in cs)}/{len(cs)}."
            )
    lines += format_curves(records)
    if meta:
        added = [m.get("wall_seconds", 0) for m in meta.get("added_runs", [])]
        more = "".join(f" + {w:.0f} s (rows added by a later run)" for w in added)
        lines += ["", f"Wall time: {meta.get('wall_seconds', 0):.0f} s{more}."]
    return "\n".join(lines) + "\n"


def format_curves(records):
    curve = [r for r in records if r.get("curve")]
    if not curve:
        return []
    pts = collections.defaultdict(list)
    for r in curve:
        pts[(r["method"], r["budget"], r["step"])].append(r)
    lines = [
        "",
        "### Budget curves (EMA at each step; mean ± std over seeds)",
        "",
        "| method | NFE | step | FD | coupling error | avg-velocity error |",
        "|---|---|---|---|---|---|",
    ]
    for (m, b, s), rs in sorted(pts.items()):
        cells = [_ms([r[f] for r in rs], 2 if f == "fd" else 4) for f in METRICS]
        lines.append(f"| {m} | {b} | {s} | " + " | ".join(cells) + " |")
    rows, chosen = budget_rule(records)
    lines += [
        "",
        "Budget rule (2-RF and MeanFlow, FD at 1 and 2 NFE): flattened at S when "
        "|mean(S) − mean(S/2)| < std over seeds at S.",
        "",
    ]
    for row in rows:
        v = "; ".join(
            f"{m}@{b}: {c:+.2f} (std {sp:.2f}) {'yes' if ok else 'no'}"
            for m, b, c, sp, ok in row["verdicts"]
        )
        lines.append(
            f"- S = {row['step']}: {'flattened' if row['flattened'] else 'not flat'} — {v}"
        )
    lines.append(
        f"\nChosen budget: {chosen if chosen is not None else 'none of the curve steps'} "
        "(the smallest S at which every one of these curves has flattened)."
    )
    return lines


def figures(records, stem):
    """``{stem}_{metric}.png`` (metric vs NFE per method, seed-std bars, log y) and
    ``{stem}_curves.png`` (FD and coupling error vs training step at 1 and 2 NFE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    main = [r for r in records if not r.get("curve") and r["budget"] != "accurate"]
    names = list(dict.fromkeys(r["method"] for r in records))
    cmap = plt.get_cmap("tab20")
    style = {
        m: {
            "color": cmap(i % 20),
            "marker": "os^Dv<>"[i % 7],
            "linestyle": "--" if METHODS[m]["kind"] == "mean" else "-",
        }
        for i, m in enumerate(names)
    }
    out = []
    for field, label in METRICS.items():
        fig, ax = plt.subplots(figsize=(8, 5))
        for m in names:
            by = collections.defaultdict(list)
            for r in main:
                if r["method"] == m and r[field] is not None:
                    by[r["budget"]].append(r[field])
            if not by:
                continue
            bs = sorted(by)
            y = [np.mean(by[b]) for b in bs]
            e = [_std(by[b]) for b in bs]
            ax.errorbar(bs, y, yerr=e, capsize=3, label=m, **style[m])
        if field == "fd" and main:
            ax.axhline(main[0]["fd_floor"], color="k", lw=0.8, ls=":", label="floor")
        ax.set(title=f"digits: {label}", xlabel="NFE", ylabel=label, yscale="log")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout()
        path = f"{stem}_{field}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    curve = [r for r in records if r.get("curve")]
    if curve:
        panels = [(f, b) for f in ("fd", "coupling_error") for b in CURVE_BUDGETS]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2, 3.6))
        for ax, (field, b) in zip(axes, panels, strict=True):
            for m in names:
                by = collections.defaultdict(list)
                for r in curve:
                    if r["method"] == m and r["budget"] == b:
                        by[r["step"]].append(r[field])
                if not by:
                    continue
                steps = sorted(by)
                y = [np.mean(by[s]) for s in steps]
                e = [_std(by[s]) for s in steps]
                ax.errorbar(steps, y, yerr=e, capsize=3, label=m, **style[m])
            positive = sorted({r["step"] for r in curve if r["step"] > 0})
            ax.set(title=f"{SHORT[field]} @ {b} NFE", xlabel="training steps")
            ax.set_yscale("log")
            if positive:
                ax.set_xscale("symlog", linthresh=positive[0])
            ticks = sorted({r["step"] for r in curve})
            ax.set_xticks(ticks, [str(s) for s in ticks], minor=False, rotation=45)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=7)
        fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
        path = f"{stem}_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def report(records, stem, meta=None):
    text = format_report(records, meta)
    paths = figures(records, stem)
    text += "\nFigures: " + ", ".join(f"`{os.path.basename(p)}`" for p in paths) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(text)
    return text


# -- main ---------------------------------------------------------------------------------------


def _steps_list(text):
    return toy2d._steps_list(text)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON file for the records (.md, .meta.json, .png beside it).")
    p.add_argument("--report", help="Only rewrite FILE's .md and figures from its records.")
    p.add_argument("--quick", action="store_true", help="1 seed, a tiny network (the test)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=list(NAMES), choices=list(NAMES))
    p.add_argument("--steps", type=int, default=None, help="every trained method's steps")
    p.add_argument("--teacher-steps", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=None, help="evaluation noises per seed")
    p.add_argument("--num-pairs", type=int, default=None, help="backward teacher pairs per seed")
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="NFE budgets")
    p.add_argument("--accurate-steps", type=int, default=None)
    p.add_argument("--curve", type=_steps_list, default=None, help="e.g. 0,500,1000,2000,4000")
    p.add_argument("--curve-methods", nargs="+", default=list(CURVE_METHODS), choices=list(NAMES))
    p.add_argument("--workdir", default=None, help="keep the runs (and the teacher) here")
    args = p.parse_args(argv)
    if args.report:
        return args
    if not args.out:
        p.error("--out is required (or --report FILE)")
    size = QUICK if args.quick else FULL
    for k, v in size.items():
        if getattr(args, k, None) is None:
            setattr(args, k, list(v) if isinstance(v, tuple) else v)
    sampling = {
        **toy2d.BOSS,
        **toy2d.STRAIGHTEN,
        **toy2d.REFINER,
        **(QUICK_SAMPLING if args.quick else {}),
    }
    for k, v in sampling.items():
        setattr(args, k, v)
    for flag, v in (("--steps", args.steps), ("--teacher-steps", args.teacher_steps)):
        if v <= 0 or v % 50:
            p.error(f"{flag}={v} must be a positive multiple of 50 (steps per call)")
    if args.curve and max(args.curve) > args.steps:
        p.error(f"--curve {max(args.curve)} is past --steps={args.steps}")
    if any(s % 50 for s in args.curve or ()):
        p.error(f"--curve steps {args.curve} must be multiples of 50")
    if 1500 % args.batch:
        p.error(f"--batch={args.batch} must divide the 1,500 training digits (LOOM-CFM epochs)")
    if any(b < 1 for b in args.budgets):
        p.error(f"--budgets={args.budgets} must be >= 1")
    for m in args.curve_methods:
        if METHODS[m]["kind"] in toy2d.SAMPLER_KINDS or m == "teacher":
            p.error(f"--curve-methods: {m!r} trains nothing here")
    return args


def main(argv=None):
    args = parse(argv)
    if args.report:
        with open(args.report) as f:
            records = json.load(f)
        meta_path = os.path.splitext(args.report)[0] + ".meta.json"
        meta = None
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        print(report(records, os.path.splitext(args.report)[0], meta))
        return records
    start = time.perf_counter()
    stem = os.path.splitext(args.out)[0]
    train, _ = digits_arrays("train")
    test, _ = digits_arrays("test")
    train, test = flat(train).astype(np.float32), flat(test)
    args.fd_floor = frechet_distance(flat(train), test)
    records, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        clock = time.perf_counter()
        teacher = train_teacher(args, train, root)
        seconds["teacher/train"] = time.perf_counter() - clock
        print(f"teacher trained ({seconds['teacher/train']:.0f}s)", flush=True)
        for seed in args.seeds:
            clock = time.perf_counter()
            run = SeedRun(seed, args, root, teacher, train, test)
            for name in args.methods:
                t0 = time.perf_counter()
                recs = run.evaluate(name)
                records.extend(recs)
                print(
                    f"[seed {seed}] {name}: "
                    + ", ".join(f"{r['solver']}@{r['nfe']} FD={r['fd']:.2f}" for r in recs)
                    + f" (floor {args.fd_floor:.2f}; {time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
            records.extend(run.curve)
            seconds[f"seed{seed}"] = {"total": time.perf_counter() - clock, **run.seconds}
            write_json(args.out, records)  # so far, in case the run is cut short
            print(f"seed {seed} done ({seconds[f'seed{seed}']['total']:.0f}s)", flush=True)
    write_json(args.out, records)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "report")}
    meta = run_metadata(settings)
    meta["wall_seconds"] = time.perf_counter() - start
    meta["seconds"] = seconds
    meta["estimate"] = ESTIMATE
    write_json(stem + ".meta.json", meta)
    print(report(records, stem, meta))
    print(f"wrote {args.out} ({len(records)} records) in {meta['wall_seconds']:.0f}s")
    return records


if __name__ == "__main__":
    main()
