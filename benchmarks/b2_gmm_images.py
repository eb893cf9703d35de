"""B2 — ReFlow students on an image-shaped Gaussian mixture with the exact teacher (BENCHMARKS.md).

  python benchmarks/b2_gmm_images.py --out benchmarks/results/b2.json            # 3 seeds
  python benchmarks/b2_gmm_images.py --out /tmp/b2.json --quick                  # minutes
  python benchmarks/b2_gmm_images.py --out /tmp/b2m.json --quick \
      --methods 2rf meanflow splitmeanflow splitmeanflow_distill splitmeanflow_from_2rf

Data: 10 equally weighted components in 16×16×3 (``--size 32`` for 32×32×3), means smooth
random images (4×4 Gaussian noise upsampled bicubically, RMS 1), std 0.3. The teacher is the
analytic posterior mean (``teachers.GaussianMixture``), so its ODE solution, exact samples and
exact moments are known. Per seed:

1. a small DDPM++ (the library's SongUNet, 32 channels, levels 16/8, one block, no attention,
   EDM preconditioning with σ_data = 1) trained with EDM's loss on exact samples — the "teacher
   network" every student starts from, as the paper initialises from the EDM teacher;
2. teacher pairs from the **analytic** teacher, solved accurately (Dopri5, rtol = atol = 1e-5,
   from t_max·x1 with t_max = 80/81 as the image stages): backward pairs, and forward pairs of
   exact samples for ρ > 0;
3. each student method trained from that network with the same steps, batch and pairs;
4. metrics per NFE ∈ {1, 2, 4, 9} on 10,000 index-seeded noises x1 (the same for every model):
   ``fd`` — Fréchet distance of the samples to the mixture's **closed-form** mean and covariance;
   ``sw2`` — sliced W2 (256 directions) to 10,000 exact samples;
   ``coupling_error`` — mean ‖x̂0(x1) − x0*(x1)‖²/d against the teacher's exact ODE solution
   x0*(x1) (the accurate solve above), the map ReFlow learns.
   The analytic teacher is evaluated the same way with each solver, and the floors: FD and SW2
   of exact samples, and the coupling error of the accurate solve against a finer one.

Methods (same network, steps, batch, pairs; ``--methods``, by default the first three):
``2rf`` (uniform t, ℓ2 on the velocity, backward pairs, Euler on the uniform grid); ``2rf++``
(U-shaped t with a = 4, pseudo-Huber on the velocity, Euler); ``simple_reflow`` (normalised
loss, 10^t, HPF distance λ = 10, forward pairs ρ = 0.4, DPM-Solver-2 r = 0.4 on the sigmoid grid
κ = 20). Average-velocity models (METHOD.md §9; the same DDPM++ built two-time, steps and batch
as the students, sampled with the ``"mean"`` solver on the uniform grid at 1, 2, 4 NFE):

- ``meanflow`` — MeanFlow from scratch (random weights, learning rate 1e-3 as the pretraining)
  on exact mixture samples paired with independent noise; the settings of MeanFlow's CIFAR10
  U-Net run (``configs/image_stages.apply_image_mean``): logit-normal(−2, 2) times, r = t on
  25 % of the rows, adaptive weight p = 0.75, t ≤ 80/81, the JVP by transposition;
- ``splitmeanflow`` — SplitMeanFlow from scratch, the same data and times, boundary r = t on
  50 % of the rows, p = 0;
- ``splitmeanflow_distill`` — SplitMeanFlow distilled from the analytic teacher's velocity (it
  replaces x1 − x0), starting from the pretrained network's weights
  (``models.two_time.init_from_one_time``: at step 0 it is the pretrained network, Euler),
  learning rate 2e-4 as the students; batches as ``splitmeanflow`` (exact samples and
  independent noise: z_t has the teacher flow's marginal);
- ``splitmeanflow_from_2rf`` — SplitMeanFlow distilled from the ``2rf`` student (its velocity,
  its weights; trains ``2rf`` first if not selected), learning rate 2e-4, on 2rf's batches of
  backward teacher pairs (z_t on the straight paths 2rf was trained on, which its flow follows)
  [recon: which z_t to distil on is not fixed by the papers].

``--scratch-steps`` gives the from-scratch models another step count (by default the students':
they then train for fewer steps in all than a student, which also had the pretraining).
``--ema-rampup R`` gives the from-scratch models EDM's EMA ramp-up (``train.step.ema_decay_at``:
the EMA's half-life at most R times the steps taken). Without it their EMA (decay 0.999) still
holds 0.999^n of the random initial weights after n steps — 37 % at 1,000 — which a sampled
EMA pays for; the students start from the pretrained network, whose weights are no such
burden, and keep the constant decay.

Metrics per NFE as above, and ``avg_velocity_error`` at NFE 1, 2 and 4: on the uniform grid
t_max = t_0 > t_1 > … > t_K = 0 with K = NFE, the network's own "mean" path z_0 = t_max·x1,
z_{k+1} = z_k − (t_k − t_{k+1})·u_k with u_k = u_θ(z_k, t_{k+1}, t_k) (for a one-time network
u := v_θ(z_k, t_k): its Euler path), and

    avg_velocity_error = (1/(K·N·d))·Σ_k Σ_n ‖u_k − u*(z_k, t_{k+1}, t_k)‖²,

the mean over the K intervals and the N evaluation noises of the squared error per dimension,
u*(z, r, t) = (z − Φ_{t→r}(z))/(t − r) the analytic teacher's exact average velocity
(``average_velocity.exact_average_velocity``, Dopri5 at rtol = atol = 1e-5) from the state the
network reached. Zero at every interval means the network's K-step path is the exact flow
from t_max·x1. It is a property of the network, not of its reporting solver: the analytic
teacher gets it on its Euler rows, every student on its own rows.

``--curve S1 S2 …`` also evaluates each trained model's EMA at those step counts (budget curves:
records with ``"curve": true`` and ``train_steps``, a second table in the ``.md``).
``--workdir W`` keeps the pretrained networks, the students' checkpoints and EMA snapshots and
the compilation cache in W instead of a temporary folder: a rerun with the same W (a cut-short
run, or more ``--steps``: the learning rate is constant, so the run continues exactly) resumes
every training from its last checkpoint, and other runners can load the students
(``W/<method>_<seed>``).

FILE receives JSON records ``{"method", "seed", "solver", "budget", "nfe", "fd", "sw2",
"coupling_error", "avg_velocity_error", "train_steps"}`` (``nfe``: what the solver's largest grid
within ``budget`` spends; method ``teacher`` for the analytic teacher, ``init`` for the starting
network, ``floor`` for the floors), and FILE with ``.md`` in place of ``.json`` a table of
mean ± half-range over seeds; ``timings`` in the ``.meta.json`` has each model's training
seconds and ``*_sec_per_step`` (the median of the training loop's logged windows after the
first, which holds the compilation).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import run_metadata, write_json  # noqa: E402
from simple_reflow import (  # noqa: E402
    grids,
    losses,
    losses_mean,
    pair_mixing,
    paths,
    sampler,
    time_dist,
)
from simple_reflow.average_velocity import exact_average_velocity  # noqa: E402
from simple_reflow.losses_edm import edm_loss  # noqa: E402
from simple_reflow.metrics.frechet import frechet_distance_from_stats  # noqa: E402
from simple_reflow.metrics.transport import sliced_w2  # noqa: E402
from simple_reflow.models import build_model  # noqa: E402
from simple_reflow.models.two_time import init_from_one_time  # noqa: E402
from simple_reflow.pairs import forward_pairs, noise_for_indices  # noqa: E402
from simple_reflow.reference_solver import solve_adaptive  # noqa: E402
from simple_reflow.teachers import GaussianMixture  # noqa: E402
from simple_reflow.train import checkpoint  # noqa: E402
from simple_reflow.train.fit import DeviceBatches, fit  # noqa: E402
from simple_reflow.train.step import split_model  # noqa: E402
from simple_reflow.train.streams import stream_key  # noqa: E402

T_MAX = paths.EDM_T_MAX
T_MIN = 0.002 / 1.002
NFES = (1, 2, 4, 9)
EULER = {"solver": "euler", "grid": "uniform"}
HEUN = {"solver": "heun", "grid": "uniform"}
DPM2 = {"solver": "dpm2", "grid": "sigmoid", "kappa": 20.0, "r": 0.4}

METHODS = {
    "2rf": {
        "distance": "l2",
        "normalize": False,
        "space": "velocity",
        "time": {},
        "rho": 0.0,
        "solver": EULER,
    },
    "2rf++": {
        "distance": "pseudo_huber",
        "normalize": False,
        "space": "velocity",
        "time": {"dist": "u_shape", "a": 4.0},
        "rho": 0.0,
        "solver": EULER,
    },
    "simple_reflow": {
        "distance": "hpf",
        "normalize": True,
        "space": "denoiser",
        "time": {"dist": "exp10"},
        "rho": 0.4,
        "solver": DPM2,
    },
}

MEAN = {"solver": "mean", "grid": "uniform"}
MEAN_NFES = (1, 2, 4)  # the average-velocity models' budgets, and avg_velocity_error's
MEAN_TIME = functools.partial(time_dist.sample_time, dist="logit_normal", mean=-2.0, std=2.0)
# MeanFlow's CIFAR10 U-Net settings (configs/image_stages.apply_image_mean); SplitMeanFlow's own.
MEANFLOW_LOSS = dict(time_fn=MEAN_TIME, equal_fraction=0.25, norm_p=0.75, t_max=T_MAX)
SPLITMEANFLOW_LOSS = dict(time_fn=MEAN_TIME, boundary_fraction=0.5, norm_p=0.0, t_max=T_MAX)

# Average-velocity models (module docstring): objective, starting weights ("scratch": random;
# "init": the pretrained network; "2rf": the 2rf student), teacher of v (None: x1 − x0),
# batches ("exact": mixture samples and independent noise; "pairs": 2rf's backward pairs).
MEAN_METHODS = {
    "meanflow": {"loss": "meanflow", "start": "scratch", "teacher": None, "data": "exact"},
    "splitmeanflow": {
        "loss": "splitmeanflow",
        "start": "scratch",
        "teacher": None,
        "data": "exact",
    },
    "splitmeanflow_distill": {
        "loss": "splitmeanflow",
        "start": "init",
        "teacher": "analytic",
        "data": "exact",
    },
    "splitmeanflow_from_2rf": {
        "loss": "splitmeanflow",
        "start": "2rf",
        "teacher": "2rf",
        "data": "pairs",
    },
}
DEFAULT_METHODS = tuple(METHODS)
ALL_METHODS = (*METHODS, *MEAN_METHODS)

# Sizes: full run / --quick.
FULL = dict(
    pretrain_steps=3000,
    steps=2000,
    batch=64,
    pairs=16384,
    forward=8192,
    eval_samples=10_000,
    seeds=(0, 1, 2),
)
QUICK = dict(
    pretrain_steps=300, steps=200, batch=32, pairs=2048, forward=1024, eval_samples=2000, seeds=(0,)
)


def make_mixture(size=16, components=10, std=0.3, seed=0):
    """The B2 mixture: smooth random mean images (RMS 1), equal weights, isotropic std."""
    low = jax.random.normal(jax.random.key(seed), (components, size // 4, size // 4, 3))
    means = jax.image.resize(low, (components, size, size, 3), "cubic")
    means = means / jnp.sqrt(jnp.mean(means**2))
    return GaussianMixture(means, jnp.full((components,), std), jnp.ones((components,)))


def build_student(shape, seed, dropout=0.0, *, two_time=False):
    """The B2 student: DDPM++ at reduced width (module docstring) as ``(ModelDef, params)``;
    ``dropout`` is fixed in the module (the params do not depend on it); ``two_time``: the
    average-velocity network (zero-initialised second-time embedding, METHOD.md §9)."""
    model = build_model(
        "ddpmpp",
        data_shape=shape,
        rngs=nnx.Rngs(seed),
        model_channels=32,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
        dropout=dropout,
        sigma_data=1.0,
        two_time=two_time,
    )
    return split_model(model)


_SOLVES = {}


def exact_solution(gm, x1, *, rtol=1e-5, chunk=2048):
    """The teacher's ODE solution from t_max·x1 (Dopri5), in chunks; returns (x0, max NFE).

    The jitted solve is kept per (mixture, rtol), so later calls do not compile again."""
    key = (id(gm), rtol)
    if key not in _SOLVES:
        fn = functools.partial(solve_adaptive, gm, t_start=T_MAX, t_end=1e-4, rtol=rtol, atol=rtol)
        _SOLVES[key] = gm, jax.jit(fn)  # gm kept alive: its id stays unique
    solve = _SOLVES[key][1]
    outs, nfe = [], 0
    for i in range(0, len(x1), chunk):
        x0, n = solve(x1[i : i + chunk])
        outs.append(np.asarray(x0))
        nfe = max(nfe, int(n))
    return np.concatenate(outs), nfe


def _grid_fn(spec):
    return lambda n: grids.make_grid(spec["grid"], n, kappa=spec.get("kappa", 20.0), t_max=T_MAX)


def generate(denoise_fn, x1, spec, budget, chunk=2000):
    """Samples from noise ``x1`` with the solver ``spec`` at NFE ``budget`` (None: no grid)."""
    try:
        grid, nfe = sampler.grid_for_budget(budget, spec["solver"], _grid_fn(spec))
    except ValueError:
        return None, None
    run = jax.jit(
        lambda x: sampler.sample(denoise_fn, x, grid, solver=spec["solver"], r=spec.get("r", 0.4))[
            0
        ]
    )
    return np.concatenate(
        [np.asarray(run(x1[i : i + chunk])) for i in range(0, len(x1), chunk)]
    ), nfe


def metrics(x, gm, exact_samples, x_star, key):
    """FD to the closed-form moments, SW2 to exact samples, coupling error to x0*(x1)."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    fd = frechet_distance_from_stats(
        flat.mean(0), np.cov(flat, rowvar=False), gm.mean(), gm.covariance()
    )
    err = float(np.mean((flat - x_star.reshape(len(x), -1)) ** 2)) if x_star is not None else None
    return {"fd": float(fd), "sw2": sliced_w2(x, exact_samples, key), "coupling_error": err}


def as_two_time(denoise_fn):
    """A one-time denoiser as a two-time one with u(z, r, t) := v(z, t) (D_u = D): its "mean"
    steps are Euler steps."""
    return lambda x_t, t, cond=None, *, r=None: denoise_fn(x_t, t, cond)


_PROGRAMS = {}


def _cached(key, make):
    if key not in _PROGRAMS:
        _PROGRAMS[key] = make()
    return _PROGRAMS[key]


def _spec_key(spec):
    return tuple(sorted(spec.items()))


def student_generate(model_def, params, x1, spec, budget, *, two_time=False, chunk=2000):
    """:func:`generate` for a B2 network with its params as an argument: one compiled sampler
    per (architecture, solver, budget) for every model and seed of the run (the architecture is
    the data shape and ``two_time``: every network of a run comes from :func:`build_student`)."""
    arch = (x1.shape[1:], two_time)

    def make():
        try:
            grid, nfe = sampler.grid_for_budget(budget, spec["solver"], _grid_fn(spec))
        except ValueError:
            return None

        def run(p, x):
            fn = model_def.denoiser(p)
            return sampler.sample(fn, x, grid, solver=spec["solver"], r=spec.get("r", 0.4))[0]

        return jax.jit(run), nfe

    got = _cached(("sample", arch, _spec_key(spec), budget), make)
    if got is None:
        return None, None
    run, nfe = got
    return np.concatenate(
        [np.asarray(run(params, x1[i : i + chunk])) for i in range(0, len(x1), chunk)]
    ), nfe


def _exact_u(gm, rtol=1e-5):
    """u*(z, r, t) of the analytic teacher, jitted once per mixture (its id)."""
    fn = functools.partial(exact_average_velocity, gm, rtol=rtol, atol=rtol)
    return _cached(("u*", id(gm), rtol), lambda: (gm, jax.jit(fn)))[1]


def avg_velocity_error(path_fn, gm, x1, budget, chunk=2000):
    """The average-velocity error at NFE ``budget`` (module docstring for the definition).

    Args:
      path_fn: ``path_fn(x1 chunk) -> states [K + 1, B, ...]``: the network's "mean" path on
        :func:`mean_grid` ``(budget)`` (one-time networks through :func:`as_two_time`).
      gm: the analytic teacher.
      x1: ``[N, ...]`` evaluation noises.
      budget: K, the number of intervals (= NFE).

    Returns:
      ``(error, x_end)``: the error and the path's last states ``[N, ...]`` (NumPy), which are
      the "mean" solver's samples (a one-time network's Euler samples) on that grid.
    """
    grid = mean_grid(budget)
    u_star, total, ends = _exact_u(gm), 0.0, []
    for i in range(0, len(x1), chunk):
        states = path_fn(x1[i : i + chunk])
        n = states.shape[1]
        for k in range(budget):
            t, r = float(grid[k]), float(grid[k + 1])
            u = (states[k] - states[k + 1]) / (t - r)  # = u_θ(z_k, t_{k+1}, t_k), the step's
            exact = u_star(states[k], jnp.full((n,), r), jnp.full((n,), t))
            total += float(jnp.sum(jnp.square(u - exact)))
        ends.append(np.asarray(states[-1]))
    return total / (budget * len(x1) * int(np.prod(x1.shape[1:]))), np.concatenate(ends)


def mean_grid(budget):
    """The uniform grid of ``budget`` intervals from t_max (the "mean" solver's, 1 NFE each)."""
    return grids.make_grid("uniform", budget, t_max=T_MAX)


def mean_path(denoise_fn, x1, budget):
    """The states ``[K + 1, B, ...]`` of the "mean" solver from t_max·x1 on :func:`mean_grid`
    (K = ``budget``) for a two-time denoiser."""
    grid = mean_grid(budget)
    out = sampler.integrate(denoise_fn, x1 * float(grid[0]), grid, solver="mean", trajectory=True)
    return out[2]


def student_path_fn(model_def, params, budget, *, shape, two_time):
    """``path_fn`` of :func:`avg_velocity_error` for a B2 network (compiled once per
    architecture and budget, params an argument; one-time networks take Euler steps)."""

    def run(p, x):
        fn = model_def.denoiser(p)
        return mean_path(fn if two_time else as_two_time(fn), x, budget)

    compiled = _cached(("path", tuple(shape), two_time, budget), lambda: jax.jit(run))
    return lambda x: compiled(params, x)


def teacher_path_fn(gm, budget):
    """``path_fn`` of :func:`avg_velocity_error` for the analytic teacher (Euler: u := v)."""
    return jax.jit(lambda x: mean_path(as_two_time(gm), x, budget))


def seconds_per_step(workdir, batch):
    """The median seconds per step of the training loop's logged windows after the first
    (which holds the compilation), from ``workdir/metrics.jsonl``; None if fewer than two."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rates = [r["train/examples_per_sec"] for r in rows[1:] if "train/examples_per_sec" in r]
    return batch / statistics.median(rates) if rates else None


def train(
    model_def,
    params,
    batch_fn,
    data,
    loss_fn,
    *,
    steps,
    lr,
    ema,
    seed,
    workdir,
    coupling=None,
    snapshots=(),
    batch_size=None,
    ema_rampup=0.0,
):
    """Trains from ``params`` with the library's loop and step; returns the final EMA.

    Batches are drawn on the device from the step, ``batch_fn(step, data)``, through the
    library's one fit loop (``train.fit.fit``), one step per call: a ``lax.scan`` over UNet
    steps ran ~10× slower than separate calls on XLA:CPU. The run resumes from ``workdir``.
    ``coupling`` (``couplings.make_coupling``) pairs each batch inside the step. For each step
    in ``snapshots`` the EMA at that step is written to ``workdir/ema_<step>.npz`` (e.g.
    AutoGuidance's earlier model). ``batch_size`` makes the loop log
    ``train/examples_per_sec`` (:func:`seconds_per_step`). ``ema_rampup``: EDM's EMA ramp-up
    ratio (``train.step.ema_decay_at``; 0: none).
    """
    state = None
    for stop in sorted({*(int(k) for k in snapshots if 0 < k < steps), steps}):
        path = os.path.join(workdir, f"ema_{stop}.npz")
        if stop < steps and os.path.exists(path):
            continue  # the loop resumes from the newest checkpoint, past this snapshot
        state = fit(
            model_def,
            jax.tree.map(jnp.array, params),  # a copy: the step donates the state's buffers
            loss_fn=loss_fn,
            optimizer=optax.adam(lr),
            batches=DeviceBatches(batch_fn, data),
            coupling=coupling,
            num_steps=stop,
            workdir=workdir,
            seed=seed,
            ema_decay=ema,
            ema_rampup=ema_rampup,
            log_every=100,
            ckpt_every=10**9,
            batch_size=batch_size,
            desc=os.path.basename(workdir),
        )
        if stop < steps:
            checkpoint.save_params(path, state.ema)
    return state.ema


def pretrain(gm, model_def, params, seed, *, steps, batch, ema, workdir):
    """The "teacher network" every student starts from: EDM's loss on exact samples."""
    sample_key = jax.random.key_data(stream_key(seed, "teacher_batches"))  # an argument, not a
    # constant of the step: one compiled step for every seed (with a persistent cache)
    return train(
        model_def,
        params,
        lambda k, d: {"x0": gm.sample(jax.random.fold_in(jax.random.wrap_key_data(d), k), batch)},
        sample_key,
        functools.partial(edm_loss, sigma_data=1.0),
        steps=steps,
        lr=1e-3,
        ema=ema,
        seed=seed,
        workdir=workdir,
    )


def teacher_pairs(gm, seed, num_backward, num_forward):
    """Exact-teacher pairs: backward (Dopri5 from t_max·x1) and forward (Heun, 64 EDM steps,
    from exact samples), ``({"backward": {x0, x1}, "forward": {x0, x1}}, backward NFE)``."""
    pair_key = stream_key(seed, "pairs")
    x1 = np.asarray(noise_for_indices(pair_key, jnp.arange(num_backward), gm.shape))
    x0, pair_nfe = exact_solution(gm, x1)
    stores = {"backward": {"x0": jnp.asarray(x0), "x1": jnp.asarray(x1)}}
    real = gm.sample(stream_key(seed, "forward_data"), num_forward)
    grid_f = grids.forward_grid("edm", 64, t_min=T_MIN, t_max=T_MAX)
    fx0, fx1, _ = jax.jit(lambda x: forward_pairs(gm, x, grid_f, solver="heun"))(real)
    stores["forward"] = {"x0": fx0, "x1": fx1}
    return stores, pair_nfe


def student_loss(m):
    return functools.partial(
        losses.flow_loss,
        distance_fn=losses.make_distance(m["distance"], hpf_weight=10.0),
        time_fn=functools.partial(time_dist.sample_time, **m["time"]),
        normalize=m["normalize"],
        space=m["space"],
        t_max=T_MAX,
    )


def mean_loss(m, teacher_fn=None):
    """The objective of an average-velocity method (``MEAN_METHODS``), distilling
    ``teacher_fn``'s velocity if given."""
    if m["loss"] == "meanflow":
        return functools.partial(losses_mean.meanflow_loss, teacher_fn=teacher_fn, **MEANFLOW_LOSS)
    return functools.partial(
        losses_mean.splitmeanflow_loss, teacher_fn=teacher_fn, **SPLITMEANFLOW_LOSS
    )


def exact_batch_fn(gm, batch):
    """``batch_fn(step, key data)``: exact mixture samples x0 and independent noise x1."""

    def fn(k, d):
        key_x0, key_x1 = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(d), k))
        return {"x0": gm.sample(key_x0, batch), "x1": jax.random.normal(key_x1, (batch, *gm.shape))}

    return fn


def pair_batch_fn(seed, fractions, batch):
    """``batch_fn(step, stores)``: the students' mixed batches of teacher pairs."""
    key = stream_key(seed, "reflow_batches")

    def fn(k, d):
        return pair_mixing.mix_pairs(jax.random.fold_in(key, k), d, fractions, batch)

    return fn


def selected_methods(methods):
    """``methods`` in order without repeats, ``2rf`` added before ``splitmeanflow_from_2rf``
    (its teacher and starting weights) when missing or later."""
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"--methods: {unknown[0]!r} is not one of {ALL_METHODS}.")
    out = list(dict.fromkeys(methods))
    if "splitmeanflow_from_2rf" in out:
        if "2rf" in out:
            out.remove("2rf")
        out.insert(out.index("splitmeanflow_from_2rf"), "2rf")
    return tuple(out)


def run_seed(seed, gm, sizes, eval_set, work, methods=DEFAULT_METHODS, curve=()):
    """Every record of one seed (pretraining, pairs, the ``methods``, evaluation); with
    ``curve`` each model's EMA is also evaluated at those step counts."""
    shape = gm.shape
    x1_eval, x_star, exact_samples = eval_set
    model_def, params = build_student(shape, seed)
    t = time.perf_counter()
    init = pretrain(
        gm,
        model_def,
        params,
        seed,
        steps=sizes["pretrain_steps"],
        batch=sizes["batch"],
        ema=0.999,
        workdir=os.path.join(work, f"init_{seed}"),
    )
    timings = {"pretrain_s": time.perf_counter() - t}
    print(f"seed {seed}: network pretrained in {timings['pretrain_s']:.0f} s", flush=True)
    t = time.perf_counter()
    stores, pair_nfe = teacher_pairs(gm, seed, sizes["pairs"], sizes["forward"])
    timings["pairs_s"] = time.perf_counter() - t
    print(
        f"seed {seed}: {sizes['pairs']} backward + {sizes['forward']} forward exact-teacher "
        f"pairs in {timings['pairs_s']:.0f} s",
        flush=True,
    )
    records = []

    def evaluate(method, net_def, net_params, spec, *, two_time, steps, is_curve=False):
        for budget in MEAN_NFES if two_time else NFES:
            ave = None
            if budget in MEAN_NFES:
                path = student_path_fn(net_def, net_params, budget, shape=shape, two_time=two_time)
                ave, x = avg_velocity_error(path, gm, x1_eval, budget)
            if budget in MEAN_NFES and _spec_key(spec) in (_spec_key(EULER), _spec_key(MEAN)):
                nfe = budget  # the path's end is this solver's sample (uniform grid, 1 NFE/step)
            else:
                x, nfe = student_generate(
                    net_def, net_params, x1_eval, spec, budget, two_time=two_time
                )
            if x is None:
                continue
            records.append(
                {
                    "method": method,
                    "seed": seed,
                    "solver": spec["solver"],
                    "budget": budget,
                    "nfe": nfe,
                    **metrics(x, gm, exact_samples, x_star, jax.random.key(7)),
                    "avg_velocity_error": ave,
                    "train_steps": steps,
                    **({"curve": True} if is_curve else {}),
                }
            )

    evaluate("init", model_def, init, EULER, two_time=False, steps=0)
    trained = {}
    for name in selected_methods(methods):
        t = time.perf_counter()
        workdir = os.path.join(work, f"{name}_{seed}")
        if name in METHODS:
            m = METHODS[name]
            net_def, start, two_time, spec = model_def, init, False, m["solver"]
            steps, lr, loss_fn = sizes["steps"], 2e-4, student_loss(m)
            rampup = 0.0
            data = {k: v for k, v in stores.items() if k == "backward" or m["rho"] > 0}
            batch_fn = pair_batch_fn(seed, pair_mixing.pair_fractions(m["rho"]), sizes["batch"])
        else:
            m = MEAN_METHODS[name]
            net_def, fresh = build_student(shape, seed, two_time=True)
            two_time, spec = True, MEAN
            if m["start"] == "scratch":
                start, lr = fresh, 1e-3
                steps = sizes.get("scratch_steps") or sizes["steps"]
                rampup = sizes.get("ema_rampup") or 0.0
            else:  # the one-time network's weights, the r-embedding zero (u = v at step 0)
                one_time = model_def.merge(init if m["start"] == "init" else trained["2rf"])
                start = split_model(init_from_one_time(net_def.merge(fresh), one_time))[1]
                steps, lr, rampup = sizes["steps"], 2e-4, 0.0
            teacher = None
            if m["teacher"] == "analytic":
                teacher = gm
            elif m["teacher"] == "2rf":
                teacher = model_def.denoiser(trained["2rf"])
            loss_fn = mean_loss(m, teacher)
            if m["data"] == "exact":
                batch_fn = exact_batch_fn(gm, sizes["batch"])
                data = jax.random.key_data(stream_key(seed, "student_batches"))
            else:  # 2rf's batches
                batch_fn = pair_batch_fn(seed, pair_mixing.pair_fractions(0.0), sizes["batch"])
                data = {"backward": stores["backward"]}
        ema = train(
            net_def,
            start,
            batch_fn,
            data,
            loss_fn,
            steps=steps,
            lr=lr,
            ema=0.999,
            seed=seed,
            workdir=workdir,
            snapshots=curve,
            batch_size=sizes["batch"],
            ema_rampup=rampup,
        )
        trained[name] = ema
        timings[f"{name}_train_s"] = time.perf_counter() - t
        timings[f"{name}_sec_per_step"] = seconds_per_step(workdir, sizes["batch"])
        evaluate(name, net_def, ema, spec, two_time=two_time, steps=steps)
        for c in sorted(int(c) for c in curve if 0 < int(c) < steps):
            snap = checkpoint.load_params(os.path.join(workdir, f"ema_{c}.npz"), ema)
            evaluate(name, net_def, snap, spec, two_time=two_time, steps=c, is_curve=True)
        per_step = timings[f"{name}_sec_per_step"]
        print(
            f"seed {seed}: {name} trained in {timings[f'{name}_train_s']:.0f} s"
            + (f" ({per_step:.3f} s/step)" if per_step else "")
            + ", evaluated",
            flush=True,
        )
    return records, {**timings, "pair_nfe": pair_nfe}


def evaluation_noises(gm, n):
    """The ``n`` index-seeded eval noises x1, their exact ODE solutions x0*(x1), ``n`` exact
    samples (what every B2 model is scored on), and the solve's largest NFE."""
    x1 = np.asarray(noise_for_indices(jax.random.key(99), jnp.arange(n), gm.shape))
    x_star, nfe = exact_solution(gm, x1)
    return x1, x_star, np.asarray(gm.sample(jax.random.key(100), n)), nfe


def evaluation_set(gm, n):
    """Eval noises, their exact ODE solutions, exact samples, and the floors' records."""
    x1, x_star, exact, nfe = evaluation_noises(gm, n)
    finer, _ = exact_solution(gm, x1[:1000], rtol=1e-7)
    other = np.asarray(gm.sample(jax.random.key(101), n))
    floor = metrics(other, gm, exact, None, jax.random.key(7))
    floor["coupling_error"] = float(np.mean((finer - x_star[:1000]) ** 2))
    records = [
        {"method": "floor", "seed": None, "solver": "exact", "budget": None, "nfe": None, **floor}
    ]
    # The teacher's average-velocity error is that of its Euler path (u := v): on its Euler rows.
    ave = {b: avg_velocity_error(teacher_path_fn(gm, b), gm, x1, b)[0] for b in MEAN_NFES}
    for spec in (EULER, HEUN, DPM2):
        for budget in NFES:
            x, got = generate(gm, x1, spec, budget)
            if x is not None:
                records.append(
                    {
                        "method": "teacher",
                        "seed": None,
                        "solver": spec["solver"],
                        "budget": budget,
                        "nfe": got,
                        **metrics(x, gm, exact, x_star, jax.random.key(7)),
                        "avg_velocity_error": ave.get(budget) if spec is EULER else None,
                    }
                )
    return (x1, x_star, exact), records, nfe


TABLE_METRICS = ("fd", "sw2", "coupling_error", "avg_velocity_error")


def _cell(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {(max(values) - min(values)) / 2:.2g}"


def _row_keys(records):
    keys = []
    for r in records:
        if (r["method"], r["solver"]) not in keys:
            keys.append((r["method"], r["solver"]))
    return keys


def table(records):
    """Markdown: one row per (method, solver), one column per NFE budget (the solver's largest
    grid within it; DPM-Solver-2 spends odd NFE, so its "2" and "4" are 1 and 3 NFE), mean ±
    half-range over seeds; the final models only (no budget-curve records)."""
    records = [r for r in records if not r.get("curve")]
    lines = []
    for metric in TABLE_METRICS:
        if all(r.get(metric) is None for r in records):
            continue
        lines += [
            f"### {metric}",
            "",
            "| method | solver | " + " | ".join(f"NFE ≤ {n}" for n in NFES) + " |",
            "|---|---|" + "---|" * len(NFES),
        ]
        for method, solver in _row_keys(records):
            cells = [
                _cell(
                    [
                        r[metric]
                        for r in records
                        if (r["method"], r["solver"]) == (method, solver)
                        and r["budget"] in (n, None)
                        and r.get(metric) is not None
                    ]
                )
                for n in NFES
            ]
            lines.append(f"| {method} | {solver} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def curve_table(records, budgets=(1, 2), metrics_=("fd", "coupling_error", "avg_velocity_error")):
    """Markdown budget curves: per metric and NFE budget, one row per (method, solver), one
    column per training step count evaluated (``--curve`` and the final), mean ± half-range;
    empty if there are no curve records."""
    if not any(r.get("curve") for r in records):
        return ""
    rows = [r for r in records if r.get("train_steps") and r["method"] != "init"]
    steps = sorted({r["train_steps"] for r in rows})
    lines = ["## Budget curves", ""]
    for metric in metrics_:
        for n in budgets:
            lines += [
                f"### {metric} at NFE ≤ {n} against training steps",
                "",
                "| method | solver | " + " | ".join(str(s) for s in steps) + " |",
                "|---|---|" + "---|" * len(steps),
            ]
            for method, solver in _row_keys(rows):
                cells = [
                    _cell(
                        [
                            r[metric]
                            for r in rows
                            if (r["method"], r["solver"], r["budget"], r["train_steps"])
                            == (method, solver, n, s)
                            and r.get(metric) is not None
                        ]
                    )
                    for s in steps
                ]
                lines.append(f"| {method} | {solver} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def budget_rule(records, methods=("2rf", "meanflow"), budgets=(1, 2), metric="fd"):
    """The leaderboards' budget rule on B2's curves: ``{(method, budget): verdict}``.

    Per method and NFE budget, the seed mean and the std over seeds (ddof = 1) of ``metric`` at
    each training step count (curve points and the final model); the curve has flattened at the
    last step S when the last doubling S/2 → S changes the seed mean by less than the std at S
    (``toy2d`` module docstring). A verdict is ``{"means": {step: mean}, "from", "to",
    "change", "spread", "flattened"}``; ``flattened`` is None with fewer than two seeds or
    without the point at S/2.
    """
    out = {}
    for method in methods:
        for n in budgets:
            by_step = collections.defaultdict(list)
            for r in records:
                if (r["method"], r["budget"]) == (method, n) and r.get(metric) is not None:
                    by_step[r["train_steps"]].append(r[metric])
            if not by_step:
                continue
            means = {k: statistics.mean(v) for k, v in sorted(by_step.items())}
            last = max(means)
            prev, seeds = last // 2, by_step[last]
            spread = statistics.stdev(seeds) if len(seeds) > 1 else None
            change = means[last] - means[prev] if prev in means else None
            ok = None if spread is None or change is None else abs(change) < spread
            out[(method, n)] = {
                "means": means,
                "from": prev,
                "to": last,
                "change": change,
                "spread": spread,
                "flattened": ok,
            }
    return out


def budget_rule_table(records, **kw):
    """Markdown lines of :func:`budget_rule` (empty without curve records)."""
    if not any(r.get("curve") for r in records):
        return ""
    lines = [
        "## Budget rule (FD)",
        "",
        "Flattened at S: the last doubling S/2 → S changes the seed mean by less than the std "
        "over seeds at S.",
        "",
        "| method | NFE | seed mean per step | last doubling | change | seed std | flattened |",
        "|---|---|---|---|---|---|---|",
    ]
    for (method, n), v in budget_rule(records, **kw).items():
        means = "; ".join(f"{k}: {m:.4g}" for k, m in v["means"].items())
        change = "–" if v["change"] is None else f"{v['change']:+.4g}"
        spread = "–" if v["spread"] is None else f"{v['spread']:.3g}"
        verdict = {True: "yes", False: "no", None: "–"}[v["flattened"]]
        lines.append(
            f"| {method} | {n} | {means} | {v['from']} → {v['to']} | {change} | {spread} | "
            f"{verdict} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=16, choices=(16, 32))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="student steps")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument(
        "--scratch-steps", type=int, default=None, help="from-scratch models' steps (--steps)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=ALL_METHODS,
        help=f"default: {' '.join(DEFAULT_METHODS)}",
    )
    parser.add_argument(
        "--curve", type=int, nargs="+", default=[], help="also evaluate at these step counts"
    )
    parser.add_argument(
        "--ema-rampup",
        type=float,
        default=None,
        help="EDM's EMA ramp-up ratio for the from-scratch models (e.g. 0.05; default none)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="keep checkpoints, snapshots and the compilation cache here (default: a temporary "
        "folder); a rerun with the same folder resumes every training from it",
    )
    args = parser.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    for k in ("seeds", "steps", "pretrain_steps", "scratch_steps", "ema_rampup"):
        if getattr(args, k) is not None:
            sizes[k] = tuple(getattr(args, k)) if k == "seeds" else getattr(args, k)
    methods = selected_methods(args.methods)
    curve = tuple(sorted(set(args.curve)))
    with contextlib.ExitStack() as stack:
        work = args.workdir or stack.enter_context(tempfile.TemporaryDirectory())
        # Compiled steps and samplers persist across seeds (the seed is an argument); set
        # before anything compiles (JAX reads it once).
        jax.config.update("jax_compilation_cache_dir", os.path.join(work, "jax_cache"))
        gm = make_mixture(args.size)
        start = time.perf_counter()
        print(
            f"B2 {gm.shape}: exact solutions, floors and the analytic teacher on "
            f"{sizes['eval_samples']} noises",
            flush=True,
        )
        eval_set, records, eval_nfe = evaluation_set(gm, sizes["eval_samples"])
        timings = {"eval_set_s": time.perf_counter() - start, "exact_solution_nfe": eval_nfe}
        print(f"  done in {timings['eval_set_s']:.0f} s", flush=True)
        for seed in sizes["seeds"]:
            recs, t = run_seed(seed, gm, sizes, eval_set, work, methods=methods, curve=curve)
            records += recs
            timings[f"seed_{seed}"] = t
            write_json(args.out, records)  # the seeds so far, in case the run is cut short
            print(table(records), flush=True)
    timings["total_s"] = time.perf_counter() - start
    meta = run_metadata(
        {**sizes, "size": args.size, "methods": methods, "curve": curve, "timings": timings}
    )
    write_json(args.out, records)
    write_json(args.out.replace(".json", ".meta.json"), meta)
    with open(args.out.replace(".json", ".md"), "w") as f:
        f.write(table(records) + "\n" + curve_table(records) + "\n" + budget_rule_table(records))
    print(f"wrote {args.out} ({len(records)} records) in {timings['total_s']:.0f} s")


if __name__ == "__main__":
    main()
