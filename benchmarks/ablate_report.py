"""Tables, verdicts and figures of the ablation runner (``benchmarks/ablate.py``).

Records are ``{"variant", "seed", "budget", "nfe", "calls", "solver", "grid", "guidance",
"student", "sampler", "fd", "sw2", "coupling_error"}``, one per (variant, seed, NFE budget).

Verdict of a switch at a budget (``verdict``): the paired differences over seeds
``d_s = m(variant, s) − m(reference, s)`` (same seed: same pretrained network, pairs and
training noise; the same evaluation noises for all), for a metric where lower is better. It
**helps** (hurts) when the mean difference is negative (positive) under a two-sided paired
t-test at 5%, ``|mean(d)| > t_{0.975, n−1}·sd(d)/√n`` — with 3 seeds ``t = 4.30``, so every
seed must agree in sign and the mean must exceed 2.5 standard deviations of the differences;
otherwise "no effect within seed spread". One seed gives no verdict; equal numbers in every
seed (the same samples, e.g. the same grid) are reported as identical.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy import stats

__all__ = ["METRICS", "values", "verdict", "markdown", "figures"]

METRICS = ("coupling_error", "fd", "sw2")
NFES = (1, 2, 4, 9)


def values(records, variant, metric, budget):
    """``{seed: value}`` of a variant's metric at a budget."""
    return {
        r["seed"]: r[metric]
        for r in records
        if r["variant"] == variant and r["budget"] == budget and r[metric] is not None
    }


def _row(records, variant, budget):
    return next((r for r in records if r["variant"] == variant and r["budget"] == budget), None)


def verdict(var, ref):
    """``(label, relative change of the mean, seeds where the variant is lower, n)`` of paired
    values ``{seed: value}`` (module docstring); label is None with fewer than 2 seeds."""
    seeds = sorted(set(var) & set(ref))
    if not seeds:
        return None, math.nan, 0, 0
    d = np.array([var[s] - ref[s] for s in seeds])
    n, mean = len(d), float(np.mean(d))
    rel = mean / abs(float(np.mean([ref[s] for s in seeds])) or 1.0)
    wins = int(np.sum(d < 0))
    if not np.any(d):
        return "identical", 0.0, 0, n  # e.g. the sigmoid grid at 1 and 2 NFE is the uniform one
    if n < 2:
        return None, rel, wins, n
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    crit = float(stats.t.ppf(0.975, n - 1))
    label = "helps" if t < -crit else "hurts" if t > crit else "no effect"
    return label, rel, wins, n


def _cell(vals):
    v = list(vals.values())
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.4g}"
    return f"{statistics.mean(v):.4g} ± {(max(v) - min(v)) / 2:.2g}"


def _describe(cfg, base):
    diff = [f"{k}={v}" for k, v in cfg.items() if base.get(k) != v]
    return ", ".join(diff) or "base (2-RF)"


def _reference_table(reference):
    lines = ["| reference | solver | metric | " + " | ".join(f"NFE ≤ {n}" for n in NFES) + " |"]
    lines.append("|---|---|---|" + "---|" * len(NFES))
    for r0 in reference:
        if r0["method"] == "floor":
            for metric in METRICS:
                lines.append(
                    f"| floor (exact vs exact) | – | {metric} | "
                    + " | ".join(f"{r0[metric]:.4g}" for _ in NFES)
                    + " |"
                )
    solvers = []
    for r in reference:
        if r["method"] == "teacher" and r["solver"] not in solvers:
            solvers.append(r["solver"])
    for solver in solvers:
        for metric in METRICS:
            cells = []
            for n in NFES:
                r = next(
                    (
                        r
                        for r in reference
                        if r["method"] == "teacher" and r["solver"] == solver and r["budget"] == n
                    ),
                    None,
                )
                cells.append("–" if r is None else f"{r[metric]:.4g} (NFE {r['nfe']})")
            lines.append(f"| analytic teacher | {solver} | {metric} | " + " | ".join(cells) + " |")
    return lines


def _verdict_cell(records, name, ref, metric, budget):
    label, rel, wins, n = verdict(
        values(records, name, metric, budget), values(records, ref, metric, budget)
    )
    if n == 0:
        return "–"
    a, b = _row(records, name, budget), _row(records, ref, budget)
    spent = []
    if a["nfe"] != b["nfe"]:
        spent.append(f"NFE {a['nfe']} vs {b['nfe']}")
    if a["calls"] != b["calls"]:
        spent.append(f"network calls {a['calls']} vs {b['calls']}")
    spent = f" ({', '.join(spent)})" if spent else ""
    if label == "identical":
        return "identical samples" + spent
    head = "**" + label + "**" if label in ("helps", "hurts") else (label or "1 seed")
    return f"{head} {100 * rel:+.1f}% [{wins}/{n}]{spent}"


def markdown(records, plan, reference, sizes, seeds):
    """The report: budget, references, verdicts per mode and metric, then the tables."""
    base = plan["variants"].get("base", {})
    lines = [
        "# B2 ablation (benchmarks/ablate.py)",
        "",
        f"Budget per seed: pretraining {sizes['pretrain_steps']} steps, each student "
        f"{sizes['steps']} steps at batch {sizes['batch']} (lr {sizes['lr']}, EMA half-life "
        f"{sizes['ema_fraction']:.0%} of the steps), {sizes['pairs']} backward + "
        f"{sizes['forward']} forward exact-teacher pairs, {sizes['size']}×{sizes['size']}×3, "
        f"metrics on {sizes['eval_samples']} evaluation noises; seeds {list(seeds)}. "
        "Every student starts from the seed's pretrained network (`1rf_init`, which gets "
        "the pretraining alone); OT-CFM and LOOM-CFM get the students' steps, batch and "
        f"network, trained as 1-RF on {sizes['pairs']} exact mixture samples (no teacher).",
        "",
        "Cells of the tables: mean ± half-range over seeds. NFE ≤ n: the solver's largest "
        "grid within n network evaluations (DPM-Solver-2 and Heun spend 1, 1, 3, 9; a guided "
        "evaluation counts once and costs two network calls).",
        "",
        "## References",
        "",
        *_reference_table(reference),
        "",
        "## Verdicts",
        "",
        "Paired over seeds against the reference variant (the previous one in the cumulative "
        "chain, the base one-at-a-time, 2-RF for the contenders): **helps** / **hurts** when a "
        "two-sided paired t-test at 5% says so (3 seeds: same sign in every seed and mean "
        "difference > 2.5 sd of the differences), else *no effect* within seed spread. Cell: "
        "verdict, change of the mean, [seeds where the variant is lower / seeds]; (NFE a vs "
        "b) where the two spent different NFE.",
        "",
    ]
    for mode, names in plan["modes"].items():
        judged = [n for n in names if n in plan["refs"]]
        if not judged:
            continue
        for metric in METRICS:
            lines += [
                f"### {mode}: {metric}",
                "",
                "| variant | vs | " + " | ".join(f"NFE ≤ {n}" for n in NFES) + " |",
                "|---|---|" + "---|" * len(NFES),
            ]
            for name in judged:
                ref = plan["refs"][name][0]
                cells = [_verdict_cell(records, name, ref, metric, b) for b in NFES]
                lines.append(f"| {name} | {ref} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Tables", ""]
    for mode, names in plan["modes"].items():
        for metric in METRICS:
            lines += [
                f"### {mode}: {metric}",
                "",
                "| variant | config | " + " | ".join(f"NFE ≤ {n}" for n in NFES) + " |",
                "|---|---|" + "---|" * len(NFES),
            ]
            for name in names:
                cells = [_cell(values(records, name, metric, b)) for b in NFES]
                desc = _describe(plan["variants"][name], base)
                lines.append(f"| {name} | {desc} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def figures(records, plan, reference, stem):
    """``<stem>_<metric>.png`` per metric: metric vs NFE budget, one panel per mode, one line
    per variant (mean over seeds, bars from the lowest to the highest seed); the analytic
    teacher with DPM-Solver-2 dashed, the floor dotted. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    modes = list(plan["modes"].items())
    for metric in METRICS:
        fig, axes = plt.subplots(
            1, len(modes), figsize=(5.2 * len(modes), 6.0), squeeze=False, sharey=True
        )
        for ax, (mode, names) in zip(axes[0], modes, strict=True):
            colors = plt.cm.tab20(np.linspace(0, 1, max(len(names), 2)))
            for i, name in enumerate(names):
                xs, mid, lo, hi = [], [], [], []
                for b in NFES:
                    v = list(values(records, name, metric, b).values())
                    if v:
                        xs.append(b * 2 ** (0.012 * (i - len(names) / 2)))  # bars apart
                        mid.append(float(np.mean(v)))
                        lo.append(mid[-1] - min(v))
                        hi.append(max(v) - mid[-1])
                if xs:
                    ax.errorbar(
                        xs, mid, yerr=[lo, hi], label=name, color=colors[i], ms=3, capsize=2,
                        lw=1, marker="os^vD"[i % 5], ls=("-", "--")[i % 2],
                    )  # fmt: skip
            teacher = [r for r in reference if r["method"] == "teacher" and r["solver"] == "dpm2"]
            if teacher:
                ax.plot(
                    [r["budget"] for r in teacher],
                    [r[metric] for r in teacher],
                    "k--",
                    lw=0.8,
                    label="analytic teacher (dpm2)",
                )
            floor = [r for r in reference if r["method"] == "floor"]
            if floor and metric != "coupling_error":  # ~1e-8: off the scale of the students
                ax.axhline(floor[0][metric], color="k", ls=":", lw=0.8, label="floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(NFES, [str(n) for n in NFES])
            ax.set_xlabel("NFE budget")
            ax.set_title(mode)
            ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.13))
        axes[0][0].set_ylabel(metric)
        fig.tight_layout()
        path = f"{stem}_{metric}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
