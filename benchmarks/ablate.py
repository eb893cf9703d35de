"""Ablation runner on B2: each of Simple ReFlow's improvements judged against the exact teacher.

  python benchmarks/ablate.py --out benchmarks/results/ablate_b2.json                 # ≈ 2 h
  python benchmarks/ablate.py --out /tmp/ablate.json --quick                          # minutes
  python benchmarks/ablate.py --out benchmarks/results/ablate_b2.json --estimate      # measure

Benchmark: B2 (``b2_gmm_images.py``: 10-component mixture in 16×16×3, analytic teacher, exact
backward pairs by Dopri5, forward pairs, the reduced DDPM++ student). A *variant* is the base
config (2-RF) with named switches applied, each a small dict delta (``ablate_plan.SWITCHES``);
its training keys decide the *student* it trains, its sampler keys how that student is sampled, so
every student is trained once per seed and evaluated with every sampler its variants name.

Modes (``--mode``, default ``all``):

- ``cumulative``: base, then each variant adds one switch to the previous, in the order of
  METHOD.md §3–§5 (``ablate_plan.PAPER_ORDER``: loss normalisation, 10^t, HPF, dropout
  0.13 → 0.09, forward pairs ρ = 0.4, coupling projection, sigmoid grid κ = 20,
  DPM-Solver-2 r = 0.4, AutoGuidance w = 0.6);
- ``one-at-a-time``: base + one switch, including the alternatives U-shaped t (a = 4),
  pseudo-Huber and Heun (``ablate_plan.ALTERNATIVES``);
- ``contenders``: the pretrained network alone (``1rf_init``: the 1-RF teacher network),
  ``2rf`` (= base), ``2rf++`` (U-shaped t, pseudo-Huber), ``simple_reflow`` (every switch of
  the cumulative chain), ``ot_cfm`` and ``loom_cfm`` (1-RF from the same init with the base
  loss on a fixed set of exact mixture samples as many as the backward pairs, with
  ``couplings.make_coupling("ot" | "loom")``: the same network, steps, batch and data count as
  the ReFlow students, but no teacher). Each is also evaluated with the other family's sampler
  (``@dpm2``: sigmoid grid + DPM-Solver-2, unguided; ``simple_reflow`` also ``@euler``:
  uniform Euler), so that training and sampler are never confounded.

Choices (ours; the paper gives none for this benchmark): base dropout is EDM's CIFAR10 0.13 (the
pretraining uses it too), the switch the paper's 0.09. The EMA half-life is 10% of a run's
steps (a fixed 0.999 would leave most of a short run's EMA at its initial weights).
AutoGuidance's weaker model (METHOD.md §5: "an earlier student") is the same student's EMA at
half its steps. The projection (METHOD.md §3, balanced λ, ε = 0.05 of the mean cost, the
library's defaults) re-pairs the backward pairs with as many fresh exact samples and makes 20%
of each batch; on the exact teacher's pairs x̂0 already has the data marginal, so it can only
add noise — a control. Every record at NFE budget n (1, 2, 4, 9) uses the solver's largest grid
within n (``nfe``: what it spent; ``calls``: network calls, 2 per guided evaluation).

Default budget (``FULL``): pretraining 800 steps (EDM loss, Adam 1e-3) and each student 350
steps (Adam 2e-4) at batch 32, 2048 backward + 1024 forward exact-teacher pairs per seed (and
as many exact samples for the projection and for OT-CFM / LOOM-CFM), metrics on 768
evaluation noises; 17 students and 30 (student, sampler) evaluations (482 NFE) per seed.
Chosen for ≈ 2 h for all modes over 3 seeds at 16×16×3 on a 2-core CPU running at 0.15–0.2 s
per student step and 2–2.5 s per NFE on 1000 noises (an NFE on the evaluation set costs about
ten training steps). ``--estimate`` measures the machine and prints the projection; while
other jobs shared the two cores it measured 0.22–0.34 s per step and 2–5 s per NFE, i.e.
3–4.5 h.

Pretraining and pairs are cached per seed in the work directory (``--workdir``, default under
the system's temp folder, one folder per budget), each student's training resumes from its
checkpoints, compiled steps persist there across seeds and reruns (the CLI turns on JAX's
compilation cache), and the records of each finished (variant, seed) are appended to
``records.jsonl`` there, so a rerun continues and skips done work. Outputs: FILE (records),
FILE's ``.meta.json``, ``.md`` (tables and verdicts) and ``_<metric>.png``
(:mod:`benchmarks.ablate_report`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import ablate_report  # noqa: E402
from benchmarks import b2_gmm_images as b2  # noqa: E402
from benchmarks.ablate_plan import (  # noqa: E402
    BASE,
    FULL,
    MODES,
    QUICK,
    RUN_KEYS,
    SWITCHES,
    plan,
    sampler_id,
    student_id,
)
from benchmarks.common import run_metadata, write_json  # noqa: E402
from simple_reflow import guidance, pair_mixing, sampler  # noqa: E402
from simple_reflow.couplings import make_coupling  # noqa: E402
from simple_reflow.models import build_model  # noqa: E402
from simple_reflow.pairs import projected_pairs  # noqa: E402
from simple_reflow.train import checkpoint  # noqa: E402
from simple_reflow.train.step import split_model  # noqa: E402
from simple_reflow.train.streams import stream_key  # noqa: E402

__all__ = ["run", "estimate"]  # the plan (variants, budgets): benchmarks/ablate_plan.py


def build_network(shape, seed, dropout, network="ddpmpp"):
    """``(ModelDef, params)`` of the student network (B2's DDPM++, or a small MLP)."""
    if network == "ddpmpp":
        return b2.build_student(shape, seed, dropout)
    if network != "mlp":
        raise ValueError(f"network={network!r} is not one of ('ddpmpp', 'mlp').")
    model = build_model(
        "mlp", data_shape=shape, rngs=nnx.Rngs(seed), hidden=64, depth=2, dropout=dropout
    )
    return split_model(model)


def _ema_decay(steps, fraction):
    return 0.5 ** (1.0 / max(1.0, fraction * steps))


_SAMPLERS = {}


def _sampler(model_def, solver, grid_name, budget, guided):
    """A jitted ``f(params, bad_params, w, x1) -> x0``, its NFE and grid, or None if no grid
    fits; cached per model definition, so each (solver, grid, budget) compiles once."""
    key = (id(model_def), solver, grid_name, budget, guided)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = model_def, _make_sampler(model_def, solver, grid_name, budget, guided)
    return _SAMPLERS[key][1]


def _make_sampler(model_def, solver, grid_name, budget, guided):
    spec = {"solver": solver, "grid": grid_name, "kappa": 20.0}
    try:
        grid, nfe = sampler.grid_for_budget(budget, solver, b2._grid_fn(spec))
    except ValueError:
        return None

    def run(params, bad, w, x1):
        fn = model_def.denoiser(params)
        if guided:
            fn = guidance.autoguidance(fn, model_def.denoiser(bad), w)
        return sampler.sample(fn, x1, grid, solver=solver, r=0.4)[0]

    return jax.jit(run), nfe, tuple(np.round(grid, 12))


class _Seed:
    """One seed's shared work, created on first use and cached on disk: the pretrained
    network, the exact-teacher pairs, and the students."""

    def __init__(self, seed, gm, sizes, work, log):
        self.seed, self.gm, self.sizes, self.log = seed, gm, sizes, log
        self.dir = os.path.join(work, f"seed_{seed}")
        os.makedirs(self.dir, exist_ok=True)
        net = sizes["network"]
        self.model_def, self.params0 = build_network(gm.shape, seed, BASE["dropout"], net)
        self._init = self._pairs = None
        self.trained = []  # students trained in this process

    def _timing(self, what, seconds):
        with open(os.path.join(self.dir, "timings.jsonl"), "a") as f:
            f.write(json.dumps({"what": what, "seconds": seconds}) + "\n")

    def init(self):
        if self._init is None:
            path = os.path.join(self.dir, "init", "ema.npz")
            if not os.path.exists(path):
                t = time.perf_counter()
                b2.pretrain(
                    self.gm,
                    self.model_def,
                    self.params0,
                    self.seed,
                    steps=self.sizes["pretrain_steps"],
                    batch=self.sizes["batch"],
                    ema=_ema_decay(self.sizes["pretrain_steps"], self.sizes["ema_fraction"]),
                    workdir=os.path.join(self.dir, "init"),
                )
                self._timing("pretrain", time.perf_counter() - t)
            self._init = checkpoint.load_params(path, self.params0)
        return self._init

    def pairs(self):
        """``{"backward", "forward", "projected", "data": {"x0"}}`` on the device."""
        if self._pairs is None:
            path = os.path.join(self.dir, "pairs.npz")
            if not os.path.exists(path):
                t = time.perf_counter()
                s = self.sizes
                stores, _ = b2.teacher_pairs(self.gm, self.seed, s["pairs"], s["forward"])
                real = self.gm.sample(stream_key(self.seed, "projection_data"), s["pairs"])
                proj, m = projected_pairs(
                    stream_key(self.seed, "projection_plan"), stores["backward"], real
                )
                data = self.gm.sample(stream_key(self.seed, "coupling_data"), s["pairs"])
                arrays = {f"{k}/{a}": v[a] for k, v in stores.items() for a in ("x0", "x1")}
                arrays.update({f"projected/{a}": proj[a] for a in ("x0", "x1")})
                arrays["data/x0"] = data
                tmp = path + ".tmp.npz"
                np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
                os.replace(tmp, path)
                self._timing("pairs", time.perf_counter() - t)
                info = {k: float(v) for k, v in m.items()}
                write_json(os.path.join(self.dir, "projection.json"), info)
            out = {}
            with np.load(path) as z:
                for k in z.files:
                    src, a = k.split("/")
                    out.setdefault(src, {})[a] = jnp.asarray(z[k])
            self._pairs = out
        return self._pairs

    def _batch_fn(self, cfg):
        """``(batch_fn(step, data), data)``; the seed's key travels in ``data`` (an argument of
        the compiled step, not a constant), so every seed runs the same compiled step."""
        b = self.sizes["batch"]
        key = jax.random.key_data(stream_key(self.seed, "reflow_batches"))
        if cfg["coupling"] == "teacher":
            fractions = pair_mixing.pair_fractions(cfg["rho"], cfg["projection"])
            pairs = {k: v for k, v in self.pairs().items() if fractions.get(k, 0) > 0}
            pairs.setdefault("backward", self.pairs()["backward"])

            def batch_fn(k, d):
                step_key = jax.random.fold_in(jax.random.wrap_key_data(d["key"]), k)
                return pair_mixing.mix_pairs(step_key, d["pairs"], fractions, b)

            return batch_fn, {"key": key, "pairs": pairs}
        n = self.sizes["pairs"]
        if n % b:
            raise ValueError(f"pairs={n} must be a multiple of batch={b} for {cfg['coupling']}.")

        def batch_fn(k, d):  # epochs without replacement: distinct indices in a batch (LOOM)
            epoch_key = jax.random.fold_in(jax.random.wrap_key_data(d["key"]), (k * b) // n)
            idx = jax.random.permutation(epoch_key, n)[(k * b + jnp.arange(b)) % n]
            idx = idx.astype(jnp.int32)
            return {"x0": d["x0"][idx], "index": idx}

        return batch_fn, {"key": key, "x0": self.pairs()["data"]["x0"]}

    def student(self, cfg):
        """``(final EMA, EMA at half the steps)`` of the variant's student (trained if new)."""
        if cfg["coupling"] == "init":
            return self.init(), None
        sid = student_id(cfg)
        wd = os.path.join(self.dir, "students", hashlib.sha1(sid.encode()).hexdigest()[:12])
        half = self.sizes["steps"] // 2
        if not os.path.exists(os.path.join(wd, "done.json")):
            t = time.perf_counter()
            model_def, _ = build_network(
                self.gm.shape, self.seed, cfg["dropout"], self.sizes["network"]
            )
            batch_fn, data = self._batch_fn(cfg)
            coupling = None
            if cfg["coupling"] in ("ot", "loom"):
                coupling = make_coupling(  # the pairing inside the jitted step
                    cfg["coupling"],
                    data_shape=self.gm.shape,
                    num_data=self.sizes["pairs"],
                    solver="device",
                )
            loss = b2.student_loss(
                {
                    "distance": cfg["distance"],
                    "normalize": cfg["normalize"],
                    "space": "velocity",
                    "time": {} if cfg["time"] == "uniform" else {"dist": cfg["time"]},
                }
            )
            self.log(f"seed {self.seed}: training student {sid}")
            b2.train(
                model_def,
                self.init(),
                batch_fn,
                data,
                loss,
                steps=self.sizes["steps"],
                lr=self.sizes["lr"],
                ema=_ema_decay(self.sizes["steps"], self.sizes["ema_fraction"]),
                seed=self.seed,
                workdir=wd,
                coupling=coupling,
                snapshots=(half,),
            )
            seconds = time.perf_counter() - t
            write_json(os.path.join(wd, "done.json"), {"student": sid, "train_s": seconds})
            self._timing(f"student:{sid}", seconds)
            self.trained.append(sid)
        load = lambda p: checkpoint.load_params(os.path.join(wd, p), self.params0)
        return load("ema.npz"), (load(f"ema_{half}.npz") if half > 0 else None)


def _evaluate(ctx, cfg, eval_set, eval_def):
    """Records (without the variant's name) of a student sampled as ``cfg`` says, per budget;
    ``eval_def`` is the one model definition every seed's samplers are compiled for."""
    x1, x_star, exact = eval_set
    params, half = ctx.student(cfg)
    guided = cfg["guidance"] > 0
    if guided and half is None:
        raise ValueError(f"guidance needs a trained student, not {student_id(cfg)!r}.")
    out, done = [], {}
    for budget in b2.NFES:
        got = _sampler(eval_def, cfg["solver"], cfg["grid"], budget, guided)
        if got is None:
            continue
        run, nfe, grid = got
        if grid not in done:  # budgets whose largest grid is the same share the samples
            x = np.concatenate(
                [
                    np.asarray(run(params, half if guided else params, cfg["guidance"], c))
                    for c in np.array_split(x1, max(1, len(x1) // 1000))
                ]
            )
            done[grid] = b2.metrics(x, ctx.gm, exact, x_star, jax.random.key(7))
        out.append(
            {
                "seed": ctx.seed,
                "budget": budget,
                "nfe": nfe,
                "calls": nfe * (2 if guided else 1),
                "solver": cfg["solver"],
                "grid": cfg["grid"],
                "guidance": cfg["guidance"],
                "student": student_id(cfg),
                "sampler": sampler_id(cfg),
                **done[grid],
            }
        )
    return out


def work_dir(sizes, root=None):
    """The cache folder of a budget: ``root/<hash of the sizes that the work depends on>``."""
    key = json.dumps({k: sizes[k] for k in RUN_KEYS}, sort_keys=True)
    root = root or os.path.join(tempfile.gettempdir(), "simple_reflow_ablate")
    return os.path.join(root, hashlib.sha1(key.encode()).hexdigest()[:12])


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _eval_set(gm, sizes, work, log):
    """Evaluation noises, their exact solutions, exact samples, and reference records (cached)."""
    path, ref_path = os.path.join(work, "eval_set.npz"), os.path.join(work, "reference.json")
    if not os.path.exists(path):
        log(f"B2 {gm.shape}: exact solutions and references on {sizes['eval_samples']} noises")
        (x1, x_star, exact), refs, _ = b2.evaluation_set(gm, sizes["eval_samples"])
        write_json(ref_path, refs)
        np.savez(path + ".tmp.npz", x1=x1, x_star=x_star, exact=exact)
        os.replace(path + ".tmp.npz", path)
    with np.load(path) as z, open(ref_path) as f:
        return (z["x1"], z["x_star"], z["exact"]), json.load(f)


def run(out, *, modes=MODES, seeds=None, sizes=None, switches=None, workdir=None, log=print):
    """Runs (or continues) the ablation and writes FILE, .meta.json, .md and the figures.

    Returns ``{"trained": [(seed, student)], "evaluated": [(variant, seed)]}`` of this call.
    """
    sizes = dict(FULL if sizes is None else sizes)
    seeds = tuple(sizes["seeds"] if seeds is None else seeds)
    p = plan(modes, switches)
    work = workdir or work_dir(sizes)
    os.makedirs(work, exist_ok=True)
    write_json(os.path.join(work, "sizes.json"), {k: sizes[k] for k in RUN_KEYS})
    gm = b2.make_mixture(sizes["size"])
    start = time.perf_counter()
    eval_set, reference = _eval_set(gm, sizes, work, log)
    eval_def = build_network(gm.shape, 0, 0.0, sizes["network"])[0]
    rec_path = os.path.join(work, "records.jsonl")
    records = _read_jsonl(rec_path)  # a student and a sampler determine a record's numbers
    done = {(r["variant"], r["seed"]) for r in records if _current(r, p)}
    stats = {"trained": [], "evaluated": []}
    for seed in seeds:
        ctx = None
        for name, cfg in p["variants"].items():
            if (name, seed) in done:
                continue
            ctx = ctx or _Seed(seed, gm, sizes, work, log)
            t = time.perf_counter()
            same = [
                r
                for r in records
                if r["seed"] == seed
                and r["student"] == student_id(cfg)
                and r["sampler"] == sampler_id(cfg)
            ]
            if same:  # another variant's name for the same student and sampler
                first = same[0]["variant"]
                new = [{**r, "variant": name} for r in same if r["variant"] == first]
            else:
                new = [{"variant": name, **r} for r in _evaluate(ctx, cfg, eval_set, eval_def)]
            with open(rec_path, "a") as f:  # one write per finished (variant, seed)
                f.write("".join(json.dumps(r) + "\n" for r in new))
            records += new
            done.add((name, seed))
            stats["evaluated"].append((name, seed))
            log(f"seed {seed}: {name} done in {time.perf_counter() - t:.0f} s")
        if ctx is not None:
            stats["trained"] += [(seed, s) for s in ctx.trained]
        _write(out, p, records, reference, seeds, sizes, work, time.perf_counter() - start)
    return stats


def _current(record, p):
    """Whether a stored record belongs to a variant of the plan as it is defined now."""
    cfg = p["variants"].get(record["variant"])
    return cfg is not None and (record["student"], record["sampler"]) == (
        student_id(cfg),
        sampler_id(cfg),
    )


def _write(out, p, records, reference, seeds, sizes, work, seconds):
    """FILE (the plan's records of these seeds), .meta.json, .md and the figures."""
    keep = [r for r in records if _current(r, p) and r["seed"] in seeds]
    keep.sort(key=lambda r: (list(p["variants"]).index(r["variant"]), r["seed"], r["budget"]))
    timings = {}
    for seed in seeds:
        for row in _read_jsonl(os.path.join(work, f"seed_{seed}", "timings.jsonl")):
            timings.setdefault(f"seed_{seed}", {})[row["what"]] = row["seconds"]
    meta = run_metadata(
        {
            **sizes,
            "seeds": list(seeds),
            "workdir": work,
            "this_call_s": seconds,
            "timings": timings,
            "modes": p["modes"],
            "variants": p["variants"],
            "refs": p["refs"],
            "reference": reference,
        }
    )
    write_json(out, keep)
    stem = out[: -len(".json")] if out.endswith(".json") else out
    write_json(stem + ".meta.json", meta)
    with open(stem + ".md", "w") as f:
        f.write(ablate_report.markdown(keep, p, reference, sizes, seeds))
    ablate_report.figures(keep, p, reference, stem)


def estimate(sizes=None, modes=MODES, switches=None, seeds=None, log=print):
    """Measures one pretraining step, one student step, their compile times and one sampling
    NFE on the evaluation noises at ``sizes``, and extrapolates the run's wall time (s)."""
    sizes = dict(FULL if sizes is None else sizes)
    seeds = tuple(sizes["seeds"] if seeds is None else seeds)
    p = plan(modes, switches)
    gm = b2.make_mixture(sizes["size"])
    model_def, params = build_network(gm.shape, 0, BASE["dropout"], sizes["network"])
    b, n = sizes["batch"], sizes["pairs"]
    x = gm.sample(jax.random.key(0), n)
    data = {"backward": {"x0": x, "x1": jax.random.normal(jax.random.key(1), x.shape)}}
    loss = b2.student_loss(
        {"distance": "hpf", "normalize": True, "space": "velocity", "time": {"dist": "exp10"}}
    )
    fractions = pair_mixing.pair_fractions(0.0)
    timed = {}
    with tempfile.TemporaryDirectory() as tmp:
        for what, steps in (("pre+1", 1), ("pre", 21)):
            t = time.perf_counter()
            b2.pretrain(
                gm,
                model_def,
                params,
                0,
                steps=steps,
                batch=b,
                ema=0.9,
                workdir=os.path.join(tmp, what),
            )
            timed[what] = time.perf_counter() - t
        for what, steps in (("compile+1", 1), ("step", 21)):
            t = time.perf_counter()
            b2.train(
                model_def,
                params,
                lambda k, d: pair_mixing.mix_pairs(jax.random.key(k), d, fractions, b),
                data,
                loss,
                steps=steps,
                lr=2e-4,
                ema=0.9,
                seed=0,
                workdir=os.path.join(tmp, what),
            )
            timed[what] = time.perf_counter() - t
    # each call compiles its step once: the difference of 21 and 1 steps is 20 steps
    step_s = (timed["step"] - timed["compile+1"]) / 20
    pre_s = (timed["pre"] - timed["pre+1"]) / 20
    compile_s = max(0.0, timed["compile+1"] - step_s)
    run_nfe, nfe, _ = _sampler(model_def, "euler", "uniform", 1, False)
    x1 = np.asarray(jax.random.normal(jax.random.key(2), (sizes["eval_samples"], *gm.shape)))
    jax.block_until_ready(run_nfe(params, params, 0.0, x1))
    t = time.perf_counter()
    jax.block_until_ready(run_nfe(params, params, 0.0, x1))
    nfe_s = time.perf_counter() - t
    students = {student_id(c) for c in p["variants"].values() if c["coupling"] != "init"}
    calls, pairs_seen = 0, set()
    for c in p["variants"].values():
        key = (student_id(c), sampler_id(c))
        if key in pairs_seen:
            continue
        pairs_seen.add(key)
        grids_seen = set()
        for budget in b2.NFES:
            got = _sampler(model_def, c["solver"], c["grid"], budget, c["guidance"] > 0)
            if got and got[2] not in grids_seen:
                grids_seen.add(got[2])
                calls += got[1] * (2 if c["guidance"] > 0 else 1)
    per_seed = (
        sizes["pretrain_steps"] * pre_s
        + len(students) * sizes["steps"] * step_s
        + calls * nfe_s
        + len(pairs_seen) * 3.5 * 1.5  # FD/SW2 per evaluated grid (≈ 1.5 s at 768 dims)
    )
    # steps compile once (later seeds and reruns hit the persistent cache); + evaluation set
    total = len(seeds) * per_seed + len(students) * compile_s + 60
    info = {
        "pretrain_step_s": pre_s,
        "step_s": step_s,
        "compile_s": compile_s,
        "nfe_s": nfe_s,
        "students_per_seed": len(students),
        "evaluations_per_seed": len(pairs_seen),
        "network_calls_per_seed": calls,
        "per_seed_s": per_seed,
        "total_s": total,
    }
    log(
        f"estimate at {sizes['size']}² ×3, {len(seeds)} seeds: {len(students)} students and "
        f"{len(pairs_seen)} evaluations ({calls} NFE on {sizes['eval_samples']} noises) per "
        f"seed; step {step_s:.3f} s, compile {compile_s:.0f} s, 1 NFE {nfe_s:.2f} s → "
        f"{per_seed / 60:.0f} min per seed, {total / 3600:.2f} h in all"
    )
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="FILE.json (records)")
    parser.add_argument("--mode", default="all", choices=(*MODES, "all"))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="student steps")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--eval-samples", type=int, default=None, help="evaluation noises")
    parser.add_argument("--switches", nargs="+", default=None, choices=sorted(SWITCHES))
    parser.add_argument("--quick", action="store_true", help="8×8×3, tiny budget (minutes)")
    parser.add_argument("--workdir", default=None, help="cache (default: per budget, in tmp)")
    parser.add_argument("--estimate", action="store_true", help="measure, print, exit")
    args = parser.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        sizes["steps"] = args.steps
    if args.pretrain_steps is not None:
        sizes["pretrain_steps"] = args.pretrain_steps
    if args.eval_samples is not None:
        sizes["eval_samples"] = args.eval_samples
    modes = MODES if args.mode == "all" else (args.mode,)
    if args.estimate:
        estimate(sizes, modes, args.switches, args.seeds)
        return
    log = lambda msg: print(msg, flush=True)
    work = args.workdir or work_dir(sizes)
    # Compiled steps and samplers persist across seeds and reruns (the seed is an argument).
    jax.config.update("jax_compilation_cache_dir", os.path.join(work, "jax_cache"))
    stats = run(
        args.out,
        modes=modes,
        seeds=args.seeds,
        sizes=sizes,
        switches=args.switches,
        workdir=work,
        log=log,
    )
    log(
        f"wrote {args.out}: {len(stats['evaluated'])} (variant, seed) evaluated, "
        f"{len(stats['trained'])} students trained in this call"
    )


if __name__ == "__main__":
    main()
