"""Inference-time search on 8gaussians with the analytic teacher (issue 25, METHOD.md §9).

  python benchmarks/search_toy.py                       # -> benchmarks/results/search_toy.*
  python benchmarks/search_toy.py --quick --out /tmp/search_toy.json
  python benchmarks/search_toy.py --report                # redraw .md and .png from the JSON

Reward: r(x) = log N(x; μ₀, ρ²I) up to a constant, ρ = 1, μ₀ = (4, 0) the mode at angle 0 —
the log-density of one chosen mode region. Tilted target: p(x)·exp(λ·r(x))/Z with λ = 1, drawn
by importance resampling 400,000 exact mixture samples (weights exp(λ·r)); its mode-0 mass is
also closed form (the product of two Gaussians: component k keeps a weight ∝ π_k·N(μ_k; μ₀,
(s² + ρ²)I)), printed as a check of the resampling.

Samplers: N = 10 uniform steps (the paper's 10), Euler–Maruyama of :mod:`simple_reflow.sde`:
``linear-ODE`` (g = 0), ``linear-SDE`` and ``VP-SDE`` (g(s) = 3·s², the paper code's
"square" schedule with norm 3; VP: the ScoreSDE β ∈ [0.1, 20] path). Searches at NFE budgets
10·K, K = 1, 2, 4, 8, 16 (per sample): best-of-K, particle search with K particles (λ = 1,
systematic resampling; ``ps`` keeps the highest final reward, ``ps-sample`` draws the final
particle ∝ its weight, the SMC estimate of the tilted law) and RBF (budget 10·K, an initial
best-of-K at s = 1, quota (10K − K)/9 per step). K = 1 is plain sampling for every method
(run once, shared).

Per (sampler, method, budget, seed): mean reward of the returned samples, the fraction in mode
0's region (nearest mean), and W2 (exact OT, POT) between the n returned samples and n tilted
samples; the floor is W2 between two independent n-sets of tilted samples. Three seeds (the
same compiled program per configuration, another key).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

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
from simple_reflow.data import toy  # noqa: E402
from simple_reflow.metrics import transport  # noqa: E402

GM = toy.toy_mixture()
MU0 = GM.means[:1]
RHO = 1.0


def denoise(x, t, cond=None):
    return GM.denoise(x, t)


def reward(x0, cond=None):
    """log N(x0; μ₀, ρ²I) + const: the log-density of mode 0's region."""
    return -0.5 * jnp.sum((x0 - MU0) ** 2, axis=1) / RHO**2


def tilted_samples(key, n, pool=400_000):
    """n draws of p·exp(λr)/Z: importance resampling of ``pool`` exact mixture samples."""
    key_pool, key_pick = jax.random.split(key)
    x = GM.sample(key_pool, pool)
    w = jax.nn.softmax(LAM * reward(x))
    idx = jax.random.choice(key_pick, pool, (n,), p=w)
    return np.asarray(x[idx], np.float64)


def tilted_mode0_mass():
    """Closed form: component k of the tilted law keeps weight ∝ π_k·N(μ_k; μ₀, (s² + ρ²/λ)I)."""
    means = np.asarray(GM.means, np.float64)
    var = float(GM.stds[0]) ** 2 + RHO**2 / LAM
    logw = -0.5 * np.sum((means - means[:1]) ** 2, 1) / var
    w = np.exp(logw - logw.max())
    return float(w[0] / w.sum())


def mode0_fraction(x):
    means = np.asarray(GM.means, np.float64)
    return float(np.mean(np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1) == 0))


def run(ks, seeds, n):
    records = []
    targets = [tilted_samples(jax.random.key(1000 + s), n) for s in seeds]
    floors = [
        transport.w2(targets[i], tilted_samples(jax.random.key(2000 + s), n))
        for i, s in enumerate(seeds)
    ]
    for sampler in SAMPLERS:
        for method in METHODS:
            for k in ks:
                if k == 1 and method != METHODS[0]:  # K = 1 is plain sampling for every method
                    records += [
                        dict(r, method=method)
                        for r in records
                        if r["sampler"] == sampler and r["method"] == METHODS[0] and r["k"] == 1
                    ]
                    continue
                fn = jax.jit(search_fn(denoise, reward, sampler, method, k, (n, 2)))
                start = time.perf_counter()
                for i, s in enumerate(seeds):
                    x, r, nfe = fn(jax.random.key(s))
                    x = np.asarray(x, np.float64)
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
                            "mode0": mode0_fraction(x),
                            "w2_tilted": transport.w2(x, targets[i]),
                            "w2_floor": floors[i],
                        }
                    )
                took = time.perf_counter() - start
                last = records[-1]
                print(
                    f"{sampler:10s} {method:9s} K={k:2d} nfe={last['nfe']:3d} "
                    f"reward={last['reward']:.3f} mode0={last['mode0']:.3f} "
                    f"W2={last['w2_tilted']:.3f} ({took:.1f} s)",
                    flush=True,
                )
    return records


def markdown(records, meta):
    ks = sorted({r["k"] for r in records})
    floor = statistics.mean({r["seed"]: r["w2_floor"] for r in records}.values())
    plain = {
        s: agg(records, s, "best-of-n", 1, "reward")[0] for s in SAMPLERS
    }  # K = 1: plain sampling
    lines = [
        "## Inference-time search on 8gaussians (analytic teacher)",
        "",
        f"Reward r(x) = log N(x; μ₀, ρ²I) + const (ρ = {RHO}, μ₀ = (4, 0)); tilted target "
        f"p·exp({LAM}·r)/Z by importance resampling (mode-0 mass {meta['tilted_mode0_iw']:.4f}, "
        f"closed form {meta['tilted_mode0_exact']:.4f}). N = {STEPS} uniform steps; NFE per "
        f"sample; mean ± std over {len(meta['seeds'])} seeds of n = {meta['n']} samples. "
        f"W2 to the tilted law (exact OT); floor (two tilted n-sets): {floor:.3f}. "
        f"Plain sampling (K = 1) mean reward: "
        + ", ".join(f"{s} {v:.3f}" for s, v in plain.items())
        + ".",
        "",
        "| sampler | method | " + " | ".join(f"NFE {STEPS * k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for key, title in (
        ("reward", "mean reward"),
        ("mode0", "mode-0 fraction"),
        ("w2_tilted", "W2 to the tilted law"),
    ):
        lines.append(f"| **{title}** | | " + " | ".join("" for _ in ks) + " |")
        for sampler in SAMPLERS:
            for method in METHODS:
                cells = []
                for k in ks:
                    m, sd = agg(records, sampler, method, k, key)
                    cells.append(f"{m:.3f} ± {sd:.3f}")
                lines.append(f"| {sampler} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"best-of-n": "C0", "ps": "C1", "ps-sample": "C2", "rbf": "C3"}
    styles = {"linear-ODE": ":", "linear-SDE": "--", "VP-SDE": "-"}
    for sampler in SAMPLERS:
        for method in METHODS:
            for ax, key, sign in zip(axes, ("reward", "w2_tilted"), (-1.0, 1.0), strict=True):
                m = [agg(records, sampler, method, k, key) for k in ks]
                ax.errorbar(
                    [STEPS * k for k in ks],
                    [sign * a for a, _ in m],
                    yerr=[b for _, b in m],
                    color=colours[method],
                    linestyle=styles[sampler],
                    marker="o",
                    ms=3,
                    label=f"{method}, {sampler}",
                )
    floor = statistics.mean({r["seed"]: r["w2_floor"] for r in records}.values())
    axes[1].axhline(floor, color="k", lw=0.8, label="floor (tilted vs tilted)")
    titles = ("−reward = mean ½‖x − μ₀‖² ↓", "W2 to p·exp(λr)/Z ↓")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([STEPS * k for k in ks], [str(STEPS * k) for k in ks])
        ax.set_xlabel("NFE per sample")
        ax.set_title(title)
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv=None):
    default = os.path.join(os.path.dirname(__file__), "results", "search_toy.json")
    args = parse_args(__doc__, default, argv)
    base = os.path.splitext(args.out)[0]
    if args.report:
        records, meta = read_run(args.out)
        with open(base + ".md", "w") as f:
            f.write(markdown(records, meta))
        figure(records, base + ".png")
        return
    ks, seeds, n = ((1, 4), (0,), 256) if args.quick else ((1, 2, 4, 8, 16), (0, 1, 2), 1000)
    start = time.perf_counter()
    records = run(ks, seeds, n)
    meta = run_metadata(
        {"ks": list(ks), "seeds": list(seeds), "n": n, "steps": STEPS, "rho": RHO, "lam": LAM}
    )
    meta.update(
        seeds=list(seeds),
        n=n,
        tilted_mode0_exact=tilted_mode0_mass(),
        tilted_mode0_iw=mode0_fraction(tilted_samples(jax.random.key(3000), 100_000)),
        seconds=time.perf_counter() - start,
    )
    write_json(args.out, records)
    with open(base + ".meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(records, meta))
    figure(records, base + ".png")
    print(f"wrote {args.out} (+ .md, .meta.json, .png) in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
