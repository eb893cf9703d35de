"""B2 — ReFlow students on an image-shaped Gaussian mixture with the exact teacher (BENCHMARKS.md).

  python benchmarks/b2_gmm_images.py --out benchmarks/results/b2.json            # 3 seeds
  python benchmarks/b2_gmm_images.py --out /tmp/b2.json --quick                  # minutes

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

Methods (same network, steps, batch, pairs): ``2rf`` (uniform t, ℓ2 on the velocity, backward
pairs, Euler on the uniform grid); ``2rf++`` (U-shaped t with a = 4, pseudo-Huber on the
velocity, Euler); ``simple_reflow`` (normalised loss, 10^t, HPF distance λ = 10, forward pairs
ρ = 0.4, DPM-Solver-2 r = 0.4 on the sigmoid grid κ = 20).

FILE receives JSON records ``{"method", "seed", "solver", "budget", "nfe", "fd", "sw2",
"coupling_error"}`` (``nfe``: what the solver's largest grid within ``budget`` spends; method
``teacher`` for the analytic teacher, ``init`` for the starting network, ``floor`` for the
floors), and FILE with ``.md`` in place of ``.json`` a table of mean ± half-range over seeds.
"""

from __future__ import annotations

import argparse
import functools
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
from simple_reflow import grids, losses, pair_mixing, paths, sampler, time_dist  # noqa: E402
from simple_reflow.losses_edm import edm_loss  # noqa: E402
from simple_reflow.metrics.frechet import frechet_distance_from_stats  # noqa: E402
from simple_reflow.metrics.transport import sliced_w2  # noqa: E402
from simple_reflow.models import build_model  # noqa: E402
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


def build_student(shape, seed, dropout=0.0):
    """The B2 student: DDPM++ at reduced width (module docstring) as ``(ModelDef, params)``;
    ``dropout`` is fixed in the module (the params do not depend on it)."""
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
):
    """Trains from ``params`` with the library's loop and step; returns the final EMA.

    Batches are drawn on the device from the step, ``batch_fn(step, data)``, through the
    library's one fit loop (``train.fit.fit``), one step per call: a ``lax.scan`` over UNet
    steps ran ~10× slower than separate calls on XLA:CPU. The run resumes from ``workdir``.
    ``coupling`` (``couplings.make_coupling``) pairs each batch inside the step. For each step
    in ``snapshots`` the EMA at that step is written to ``workdir/ema_<step>.npz`` (e.g.
    AutoGuidance's earlier model).
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
            log_every=100,
            ckpt_every=10**9,
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


def run_seed(seed, gm, sizes, eval_set, work):
    """Every record of one seed (pretraining, pairs, students, evaluation)."""
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

    def evaluate(method, denoise_fn, spec):
        for budget in NFES:
            x, nfe = generate(denoise_fn, x1_eval, spec, budget)
            if x is not None:
                records.append(
                    {
                        "method": method,
                        "seed": seed,
                        "solver": spec["solver"],
                        "budget": budget,
                        "nfe": nfe,
                        **metrics(x, gm, exact_samples, x_star, jax.random.key(7)),
                    }
                )

    evaluate("init", model_def.denoiser(init), EULER)
    for name, m in METHODS.items():
        t = time.perf_counter()
        fractions = pair_mixing.pair_fractions(m["rho"])
        data = {k: v for k, v in stores.items() if k == "backward" or m["rho"] > 0}
        key = stream_key(seed, "reflow_batches")

        def batch_fn(k, d, fractions=fractions, key=key):
            return pair_mixing.mix_pairs(jax.random.fold_in(key, k), d, fractions, sizes["batch"])

        ema = train(
            model_def,
            init,
            batch_fn,
            data,
            student_loss(m),
            steps=sizes["steps"],
            lr=2e-4,
            ema=0.999,
            seed=seed,
            workdir=os.path.join(work, f"{name}_{seed}"),
        )
        timings[f"{name}_train_s"] = time.perf_counter() - t
        evaluate(name, model_def.denoiser(ema), m["solver"])
        print(
            f"seed {seed}: {name} trained in {timings[f'{name}_train_s']:.0f} s, evaluated",
            flush=True,
        )
    return records, {**timings, "pair_nfe": pair_nfe}


def evaluation_set(gm, n):
    """Eval noises, their exact ODE solutions, exact samples, and the floors' records."""
    x1 = np.asarray(noise_for_indices(jax.random.key(99), jnp.arange(n), gm.shape))
    x_star, nfe = exact_solution(gm, x1)
    finer, _ = exact_solution(gm, x1[:1000], rtol=1e-7)
    exact = np.asarray(gm.sample(jax.random.key(100), n))
    other = np.asarray(gm.sample(jax.random.key(101), n))
    floor = metrics(other, gm, exact, None, jax.random.key(7))
    floor["coupling_error"] = float(np.mean((finer - x_star[:1000]) ** 2))
    records = [
        {"method": "floor", "seed": None, "solver": "exact", "budget": None, "nfe": None, **floor}
    ]
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
                    }
                )
    return (x1, x_star, exact), records, nfe


def table(records):
    """Markdown: one row per (method, solver), one column per NFE budget (the solver's largest
    grid within it; DPM-Solver-2 spends odd NFE, so its "2" and "4" are 1 and 3 NFE), mean ±
    half-range over seeds."""
    lines = []
    for metric in ("fd", "sw2", "coupling_error"):
        lines += [
            f"### {metric}",
            "",
            "| method | solver | " + " | ".join(f"NFE ≤ {n}" for n in NFES) + " |",
            "|---|---|" + "---|" * len(NFES),
        ]
        keys = []
        for r in records:
            if (r["method"], r["solver"]) not in keys:
                keys.append((r["method"], r["solver"]))
        for method, solver in keys:
            cells = []
            for n in NFES:
                v = [
                    r[metric]
                    for r in records
                    if (r["method"], r["solver"]) == (method, solver)
                    and r["budget"] in (n, None)
                    and r[metric] is not None
                ]
                if not v:
                    cells.append("–")
                elif len(v) == 1:
                    cells.append(f"{v[0]:.4g}")
                else:
                    cells.append(f"{statistics.mean(v):.4g} ± {(max(v) - min(v)) / 2:.2g}")
            lines.append(f"| {method} | {solver} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=16, choices=(16, 32))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="student steps")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    args = parser.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    for k in ("seeds", "steps", "pretrain_steps"):
        if getattr(args, k) is not None:
            sizes[k] = tuple(getattr(args, k)) if k == "seeds" else getattr(args, k)
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
    with tempfile.TemporaryDirectory() as work:
        for seed in sizes["seeds"]:
            recs, t = run_seed(seed, gm, sizes, eval_set, work)
            records += recs
            timings[f"seed_{seed}"] = t
            print(table(records), flush=True)
    timings["total_s"] = time.perf_counter() - start
    meta = run_metadata({**sizes, "size": args.size, "timings": timings})
    write_json(args.out, records)
    write_json(args.out.replace(".json", ".meta.json"), meta)
    with open(args.out.replace(".json", ".md"), "w") as f:
        f.write(table(records))
    print(f"wrote {args.out} ({len(records)} records) in {timings['total_s']:.0f} s")


if __name__ == "__main__":
    main()
