"""Inference-time search on scikit-learn's digits with a trained flow teacher (issue 25,
METHOD.md §9).

  python benchmarks/search_digits.py                       # -> benchmarks/results/search_digits.*
  python benchmarks/search_digits.py --quick --out /tmp/search_digits.json
  python benchmarks/search_digits.py --report              # redraw .md and .png from the JSON

Teacher: an unconditional MLP denoiser over the 64 pixels (``build_model("mlp")``, EDM's loss,
the library's ``fit`` loop) on the digits' train split (1,500 images), cached in ``--workdir``
(a folder named after its size: a rerun loads it). Its pixel Fréchet distance (FD) to the 297
held-out digits is printed and recorded for each sampler, beside the floor (297 training
digits vs the held-out ones).

Reward: r(x0) = log p_clf(c | clip(x0, −1, 1)) for one class c (``--digit``, default 3), with
p_clf a small MLP classifier (optax) trained on the same train split; its held-out accuracy is
recorded. With λ = 1 the tilted law p(x)·exp(λ·r(x))/Z = p(x)·p_clf(c | x)/Z is the teacher's
class-c conditional, as far as p_clf is the teacher's own posterior.

Samplers and searches exactly as benchmarks/search_toy.py: N = 10 uniform steps, ``linear-ODE``
(g = 0), ``linear-SDE`` and ``VP-SDE`` (g(s) = 3·s²); NFE budgets 10·K, K = 1, 2, 4, 8, 16 (per
sample): best-of-K, particle search with K particles (λ = 1, systematic resampling; ``ps`` keeps
the highest final reward, ``ps-sample`` draws the final particle by weight) and RBF (an initial
best-of-K, quota (10K − K)/9 per step). K = 1 is plain sampling for every method (run once).

Per (sampler, method, budget, seed), n = 256 samples: the mean reward (± its s.e. over the
samples), the fraction the classifier assigns to c, and the pixel FD of the returned samples to
the held-out digits of class c (22 images for c = 3, so the FD is noisy and biased upwards; the
floor is the training split's class-c digits against the same set) and to the training split's
class-c digits (161 for c = 3): a search that found adversarial noise would raise the reward
without lowering these FDs. Three seeds (the same compiled program per configuration, another
key); on a 2-core CPU the full run takes 5–6 min once the teacher (1.5 min) is cached.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import run_metadata, write_json  # noqa: E402
from benchmarks.search_common import (  # noqa: E402
    LAM,
    METHODS,
    SAMPLERS,
    STEPS,
    agg,
    parse_args,
    read_run,
    search_fn,
)
from simple_reflow import grids, search  # noqa: E402
from simple_reflow.data.digits import digits_arrays  # noqa: E402
from simple_reflow.losses_edm import edm_loss  # noqa: E402
from simple_reflow.metrics.frechet import frechet_distance  # noqa: E402
from simple_reflow.models import build_model, count_parameters  # noqa: E402
from simple_reflow.train.fit import DeviceBatches, fit  # noqa: E402
from simple_reflow.train.step import split_model  # noqa: E402
from simple_reflow.viz import to_uint8  # noqa: E402

SHAPE = (8, 8, 1)
TEACHER = dict(hidden=512, depth=3, steps=8000, batch=128, lr=1e-3, ema_decay=0.999)
CLASSIFIER = dict(hidden=256, steps=2000, batch=128, lr=1e-3, weight_decay=1e-4)
SHOWN = 8  # samples per method kept for the figure (seed 0, the largest budget; uint8 hex)


def flat(x):
    return np.asarray(x, np.float64).reshape(len(x), -1)


def train_teacher(workdir, train):
    """The teacher's ``(model_def, ema params)``: trained with ``fit`` or resumed from its
    workdir (``fit`` restores the last checkpoint and returns at once when it is complete)."""
    t = TEACHER
    model_def, params = split_model(
        build_model("mlp", data_shape=SHAPE, rngs=nnx.Rngs(0), hidden=t["hidden"], depth=t["depth"])
    )
    print(f"teacher: {count_parameters(model_def.merge(params)):,} parameters")
    batch_key = jax.random.key(1)

    def digits_batch(step, data):
        idx = jax.random.randint(jax.random.fold_in(batch_key, step), (t["batch"],), 0, len(data))
        return {"x0": data[idx]}

    state = fit(
        model_def,
        params,
        loss_fn=edm_loss,
        optimizer=optax.adam(t["lr"]),
        batches=DeviceBatches(digits_batch, jnp.asarray(train)),
        num_steps=t["steps"],
        workdir=os.path.join(workdir, "teacher_h{hidden}_d{depth}_s{steps}".format(**t)),
        seed=0,
        ema_decay=t["ema_decay"],
        steps_per_call=250,
        log_every=1000,
        ckpt_every=t["steps"],
        batch_size=t["batch"],
        desc="teacher (EDM loss)",
    )
    return model_def, state.ema


def logits_fn(params, x):
    """The classifier's logits ``[B, 10]`` of images ``[B, 8, 8, 1]`` (clipped to [−1, 1])."""
    h = jnp.clip(x, -1.0, 1.0).reshape(x.shape[0], -1)
    for layer in params[:-1]:
        h = jax.nn.silu(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def train_classifier(train, labels):
    """An MLP 64 → 256 → 256 → 10 trained with AdamW on the train split (one jitted scan)."""
    c = CLASSIFIER
    sizes = (64, c["hidden"], c["hidden"], 10)
    keys = jax.random.split(jax.random.key(5), len(sizes))
    params = [
        {"w": jax.random.normal(k, (a, b)) * math.sqrt(1.0 / a), "b": jnp.zeros((b,))}
        for k, a, b in zip(keys[1:], sizes[:-1], sizes[1:], strict=True)
    ]
    opt = optax.adamw(c["lr"], weight_decay=c["weight_decay"])
    x, y = jnp.asarray(train), jnp.asarray(labels)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, xb), yb).mean()

    def step(carry, s):
        p, o = carry
        idx = jax.random.randint(jax.random.fold_in(keys[0], s), (c["batch"],), 0, len(x))
        g = jax.grad(loss)(p, x[idx], y[idx])
        updates, o = opt.update(g, o, p)
        return (optax.apply_updates(p, updates), o), None

    (params, _), _ = jax.jit(
        lambda p: jax.lax.scan(step, (p, opt.init(p)), jnp.arange(c["steps"]))
    )(params)
    return params


def make_reward(clf_params, digit):
    def reward(x0, cond=None):
        """log p_clf(c | x0) ``[B]``."""
        return jax.nn.log_softmax(logits_fn(clf_params, x0), axis=-1)[:, digit]

    return reward


def make_run(model_def, sampler, method, k, n, digit):
    """``run(key, teacher_params, clf_params) -> (x0, reward, nfe)`` for one configuration."""

    def run(key, teacher_params, clf_params):
        denoise = model_def.denoiser(teacher_params)
        reward = make_reward(clf_params, digit)
        return search_fn(denoise, reward, sampler, method, k, (n,) + SHAPE)(key)

    return run


def teacher_fd(model_def, teacher_params, test):
    """Pixel FD of len(test) plain samples (N = 10 steps) of each sampler to the held-out set."""
    out = {}
    for sampler, (path, g) in SAMPLERS.items():

        def sample(key, params, path=path, g=g):
            shape, grid = (len(test),) + SHAPE, grids.uniform_grid(STEPS)
            denoise = model_def.denoiser(params)
            return search.sde_sample_fn(denoise, shape, grid, diffusion=g, path=path)(key)[0]

        x = jax.jit(sample)(jax.random.key(7), teacher_params)
        out[sampler] = frechet_distance(flat(np.clip(x, -1.0, 1.0)), flat(test))
    return out


def run(model_def, teacher_params, clf_params, ref_c, train_c, digit, ks, seeds, n):
    records, examples = [], {}
    for sampler in SAMPLERS:
        examples[sampler] = {}
        for method in METHODS:
            for k in ks:
                if k == 1 and method != METHODS[0]:  # K = 1 is plain sampling for every method
                    records += [
                        dict(r, method=method)
                        for r in records
                        if r["sampler"] == sampler and r["method"] == METHODS[0] and r["k"] == 1
                    ]
                    continue
                fn = jax.jit(make_run(model_def, sampler, method, k, n, digit))
                start = time.perf_counter()
                for s in seeds:
                    x, r, nfe = fn(jax.random.key(s), teacher_params, clf_params)
                    x = np.clip(np.asarray(x, np.float64), -1.0, 1.0)
                    pred = np.asarray(jnp.argmax(logits_fn(clf_params, jnp.asarray(x)), -1))
                    records.append(
                        {
                            "sampler": sampler,
                            "method": method,
                            "k": k,
                            "budget": STEPS * k,
                            "nfe": int(nfe),
                            "seed": s,
                            "reward": float(jnp.mean(r)),
                            "reward_se": float(jnp.std(r) / math.sqrt(n)),
                            "fraction_c": float(np.mean(pred == digit)),
                            "fd_c": frechet_distance(flat(x), ref_c),
                            "fd_c_train": frechet_distance(flat(x), train_c),
                        }
                    )
                    if s == seeds[0] and k == max(ks):
                        examples[sampler][method] = [
                            im.tobytes().hex() for im in to_uint8(x[:SHOWN])
                        ]
                took = time.perf_counter() - start
                last = records[-1]
                print(
                    f"{sampler:10s} {method:9s} K={k:2d} nfe={last['nfe']:3d} "
                    f"reward={last['reward']:.3f} frac_c={last['fraction_c']:.3f} "
                    f"FD_c={last['fd_c']:.2f} FD_c_train={last['fd_c_train']:.2f} ({took:.1f} s)",
                    flush=True,
                )
    return records, examples


def _wins(records, sampler, method, k):
    """(seeds where ``method``'s mean reward beats best-of-N's at budget 10·K, seeds)."""
    ref = {
        r["seed"]: r["reward"]
        for r in records
        if (r["sampler"], r["method"], r["k"]) == (sampler, "best-of-n", k)
    }
    got = [
        r["reward"] > ref[r["seed"]]
        for r in records
        if (r["sampler"], r["method"], r["k"]) == (sampler, method, k)
    ]
    return sum(got), len(got)


def markdown(records, meta):
    ks = sorted({r["k"] for r in records})
    c = meta["digit"]
    fds = ", ".join(f"{s} {v:.2f}" for s, v in meta["teacher_fd"].items())
    lines = [
        f"## Inference-time search on digits (trained MLP teacher, reward log p(c = {c} | x))",
        "",
        f"Teacher: MLP denoiser ({meta['teacher_parameters']:,} parameters, "
        f"{meta['teacher']['steps']} steps of EDM's loss on the 1,500 training digits); pixel "
        f"FD of {STEPS}-step samples to the 297 held-out digits: {fds} (floor "
        f"{meta['fd_floor']:.2f}). Classifier: MLP, held-out accuracy "
        f"{meta['classifier_accuracy']:.3f}. Reward r(x) = log p_clf({c} | x), λ = {LAM}. "
        f"N = {STEPS} uniform steps; NFE per sample; mean ± std over "
        f"{len(meta['seeds'])} seeds of n = {meta['n']} samples. FD to the "
        f"{meta['num_ref_c']} held-out digits of class {c}; floor (the "
        f"{meta['num_train_c']} training digits of class {c}): {meta['fd_c_floor']:.2f}.",
        "",
        "| sampler | method | " + " | ".join(f"NFE {STEPS * k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for key, title, fmt in (
        ("reward", "mean reward", "{:.3f} ± {:.3f}"),
        ("fraction_c", f"fraction classified {c}", "{:.3f} ± {:.3f}"),
        ("fd_c", f"FD to held-out {c}s", "{:.2f} ± {:.2f}"),
        ("fd_c_train", f"FD to training {c}s", "{:.2f} ± {:.2f}"),
    ):
        lines.append(f"| **{title}** | | " + " | ".join("" for _ in ks) + " |")
        for sampler in SAMPLERS:
            for method in METHODS:
                cells = [fmt.format(*agg(records, sampler, method, k, key)) for k in ks]
                lines.append(f"| {sampler} | {method} | " + " | ".join(cells) + " |")
    lines.append("| **seeds beating best-of-N** | | " + " | ".join("" for _ in ks) + " |")
    for sampler in SAMPLERS:
        for method in METHODS[1:]:
            cells = ["–"] + ["{}/{}".format(*_wins(records, sampler, method, k)) for k in ks[1:]]
            lines.append(f"| {sampler} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(records, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in records})
    budgets = [STEPS * k for k in ks]
    colours = {"best-of-n": "C0", "ps": "C1", "ps-sample": "C2", "rbf": "C3"}
    fig, axes = plt.subplots(
        3, len(SAMPLERS), figsize=(4.2 * len(SAMPLERS), 9.5), height_ratios=(1, 1, 0.6)
    )
    c = meta["digit"]
    for col, sampler in enumerate(SAMPLERS):
        for row, key in enumerate(("reward", "fd_c")):
            ax = axes[row, col]
            for method in METHODS:
                m = [agg(records, sampler, method, k, key) for k in ks]
                ax.errorbar(
                    budgets,
                    [a for a, _ in m],
                    yerr=[b for _, b in m],
                    color=colours[method],
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=method,
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.set_xlabel("NFE per sample")
            if key == "reward":
                ax.set_title(f"{sampler}: mean log p({c} | x) ↑")
            else:
                ax.axhline(meta["fd_c_floor"], color="k", lw=0.8, label="floor")
                ax.set_title(f"{sampler}: pixel FD to held-out {c}s ↓")
            ax.legend(fontsize=7)
        ax = axes[2, col]
        shown = meta["examples"].get(sampler, {})
        rows = [
            np.stack([np.frombuffer(bytes.fromhex(h), np.uint8).reshape(8, 8) for h in shown[m]])
            for m in METHODS
            if m in shown
        ]
        if rows:
            tiles = np.concatenate(
                [np.concatenate(list(np.pad(r, ((0, 0), (1, 1), (1, 1)))), 1) for r in rows],
                0,
            )
            ax.imshow(tiles, cmap="gray", vmin=0, vmax=255)
            ax.set_yticks(
                [10 * i + 5 for i in range(len(rows))], [m for m in METHODS if m in shown]
            )
        ax.set_xticks([])
        ax.set_title(f"{sampler}: samples at NFE {max(budgets)} (seed {meta['seeds'][0]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    default = os.path.join(os.path.dirname(__file__), "results", "search_digits.json")
    extra = (
        ("--workdir", dict(default="/tmp/search_digits", help="the cached teacher")),
        ("--digit", dict(type=int, default=3, help="the class c of the reward")),
    )
    args = parse_args(__doc__, default, argv, extra)
    base = os.path.splitext(args.out)[0]
    if args.report:
        records, meta = read_run(args.out)
        with open(base + ".md", "w") as f:
            f.write(markdown(records, meta))
        figure(records, meta, base + ".png")
        return
    if not 0 <= args.digit <= 9:
        raise ValueError(f"--digit={args.digit} is not a digit class 0..9.")
    ks, seeds, n = ((1, 4), (0,), 256) if args.quick else ((1, 2, 4, 8, 16), (0, 1, 2), 256)
    start = time.perf_counter()
    train, train_labels = digits_arrays("train")
    test, test_labels = digits_arrays("test")
    fd_floor = frechet_distance(flat(train[: len(test)]), flat(test))
    ref_c, train_c = flat(test[test_labels == args.digit]), flat(train[train_labels == args.digit])
    fd_c_floor = frechet_distance(train_c, ref_c)

    t0 = time.perf_counter()
    model_def, teacher_params = train_teacher(args.workdir, train)
    teacher_seconds = time.perf_counter() - t0
    fds = teacher_fd(model_def, teacher_params, test)
    print(
        f"teacher ({teacher_seconds:.0f} s): FD of {STEPS}-step samples to the held-out digits "
        + ", ".join(f"{s} {v:.2f}" for s, v in fds.items())
        + f" (floor {fd_floor:.2f})"
    )
    t0 = time.perf_counter()
    clf_params = train_classifier(train, train_labels)
    pred = np.asarray(jnp.argmax(logits_fn(clf_params, jnp.asarray(test)), -1))
    accuracy = float(np.mean(pred == test_labels))
    print(f"classifier ({time.perf_counter() - t0:.0f} s): held-out accuracy {accuracy:.3f}")
    print(f"FD floor for class {args.digit} ({len(train_c)} vs {len(ref_c)}): {fd_c_floor:.2f}")

    records, examples = run(
        model_def, teacher_params, clf_params, ref_c, train_c, args.digit, ks, seeds, n
    )
    meta = run_metadata(
        {
            "ks": list(ks),
            "seeds": list(seeds),
            "n": n,
            "steps": STEPS,
            "lam": LAM,
            "digit": args.digit,
            "teacher": TEACHER,
            "classifier": CLASSIFIER,
        }
    )
    meta.update(
        seeds=list(seeds),
        n=n,
        digit=args.digit,
        teacher=TEACHER,
        teacher_parameters=count_parameters(model_def.merge(teacher_params)),
        teacher_seconds=teacher_seconds,
        teacher_fd=fds,
        fd_floor=fd_floor,
        classifier_accuracy=accuracy,
        num_ref_c=len(ref_c),
        num_train_c=len(train_c),
        fd_c_floor=fd_c_floor,
        examples=examples,
        seconds=time.perf_counter() - start,
    )
    write_json(args.out, records)
    with open(base + ".meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(records, meta))
    figure(records, meta, base + ".png")
    print(f"wrote {args.out} (+ .md, .meta.json, .png) in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
