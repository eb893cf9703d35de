# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The benchmark results, plotted
#
# The benchmarks in `benchmarks/` write JSON to `benchmarks/results/` (with the commit, machine
# and JAX version of the run). This notebook reads those files and plots them; it trains
# nothing. Every value printed or drawn below comes from the files.
#
# - **B1** (`benchmarks/toy2d.py`): W2 to the target per NFE budget on three 2-D toys, over
#   seeds × independent evaluation sets per method (counts printed below), with the floor of
#   two exact sample sets; the teacher and its ReFlow students (`toy2d_full.json`), and the
#   1-rectified flows trained with each coupling (`toy2d_couplings.json`).
# - **B2** (`benchmarks/ablate.py`, `ablate_b2.json`): each Simple ReFlow improvement on an
#   image-shaped Gaussian mixture whose teacher is exact — Fréchet distance to the exact moments
#   (FD) and the coupling error against the teacher's exact ODE solution — one at a time and
#   cumulatively, and the contenders at 1 and 2 NFE.
# - **Speed** (`cfm_vs_torchcfm.json`, `unet_speed.json`, `speed_report_cpu.json`): measured on
#   small CPUs (the files name the CPU and its core count).
#
# The write-ups with the significance tests are `benchmarks/results/toy2d_full.md`,
# `toy2d_couplings.md` and `ablate_b2.md`.

# %%
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

import simple_reflow

root = pathlib.Path(simple_reflow.__file__).resolve().parents[1]  # the checkout (editable install)
results = root / "benchmarks" / "results"


def load(name):
    with open(results / name) as f:
        return json.load(f)


b1 = load("toy2d_full.json")
b1_couplings = load("toy2d_couplings.json")
b2 = load("ablate_b2.json")
for name in ("toy2d_full", "toy2d_couplings", "ablate_b2"):
    meta = load(f"{name}.meta.json")
    print(f"{name}: commit {meta['git_commit'][:7]}, {meta['cpu']}, jax {meta['jax']}")
b1_sets = {len(r["w2_sets"]) for r in b1 if r["budget"] != "accurate"}
print(f"B1: seeds {sorted({r['seed'] for r in b1})}, evaluation sets per seed {sorted(b1_sets)}")
b2_config = load("ablate_b2.meta.json")["config"]
print(f"B2: {b2_config['size']}×{b2_config['size']}×3 images, seeds {b2_config['seeds']}")

# %% [markdown]
# ## B1: W2 per NFE on the toys
#
# Each point is the mean over seeds × evaluation sets, the bar their standard deviation;
# the grey band is the floor (W2 between two exact sample sets of the same size, mean ± std),
# the distance a perfect model would still show. The last column is the coupling error on
# `8gaussians` (mean squared distance of each sample to the teacher's exact ODE solution from
# the same noise), which has no floor.

# %%
TASKS = ("8gaussians", "moons", "checkerboard")
LABELS = {
    "teacher": "teacher",
    "2rf": "2-RF",
    "2rf++": "2-RF++",
    "simple_reflow": "Simple ReFlow",
    "ot-cfm": "OT-CFM",
    "loom-cfm": "LOOM-CFM",
    "w-cfm": "W-CFM",
}


def curves(records, task, key="w2_sets"):
    """{(method, solver): (budgets, means, stds)} over the numeric budgets."""
    out = {}
    for r in records:
        if r["task"] != task or r["budget"] == "accurate":
            continue
        vals = r[key] if isinstance(r[key], list) else [r[key]]
        out.setdefault((r["method"], r["solver"]), {}).setdefault(r["budget"], []).extend(vals)
    return {
        k: (
            sorted(v),
            [np.mean(v[b]) for b in sorted(v)],
            [np.std(v[b], ddof=1) for b in sorted(v)],
        )
        for k, v in out.items()
    }


def log_axes(ax, ylabel):
    """Log-log axes over the NFE budgets, with plain numbers on the ticks."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([1, 2, 4, 9], ["1", "2", "4", "9"])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE budget")
    ax.set_ylabel(ylabel)


def floor(records, task):
    vals = {tuple(r["w2_floor_sets"]) for r in records if r["task"] == task}
    flat = [v for s in vals for v in s]
    return np.mean(flat), np.std(flat, ddof=1)


fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
for row, (records, title) in enumerate(
    ((b1, "teacher and ReFlow students"), (b1_couplings, "couplings (1-RF)"))
):
    for col, task in enumerate(TASKS):
        ax = axes[row, col]
        for (method, solver), (x, m, s) in curves(records, task).items():
            if method == "teacher" and solver == "heun":
                continue  # the teacher's Heun rows: NFE 1, 3, 9 (see the .md)
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=f"{LABELS[method]} ({solver})")
        mu, sd = floor(records, task)
        ax.axhspan(mu - sd, mu + sd, color="0.85", label="floor")
        log_axes(ax, "W2 to the target")
        ax.set_title(f"{task}: {title}")
    ax = axes[row, 3]
    for (method, solver), (x, m, s) in curves(records, "8gaussians", "coupling_error").items():
        if method == "teacher" and solver == "heun":
            continue
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=f"{LABELS[method]} ({solver})")
    log_axes(ax, "coupling error")
    ax.set_title("8gaussians: coupling error")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The same numbers at 1 and 2 NFE, as a table (mean W2 over seeds and sets):

# %%
for records in (b1, b1_couplings):
    for task in TASKS:
        c = curves(records, task)
        cells = [
            f"{LABELS[m]} ({s}) "
            + " / ".join(f"{v:.3f}" for b, v in zip(x, mean, strict=True) if b in (1, 2))
            for (m, s), (x, mean, _) in c.items()
            if not (m == "teacher" and s == "heun")
        ]
        print(f"{task:>12}, W2 at 1 / 2 NFE: " + "; ".join(cells))

# %% [markdown]
# ## B2: which Simple ReFlow improvements help
#
# Each cell is the change of the mean over the seeds, in percent, of a variant against its
# reference at one NFE budget: **one at a time** (2-RF plus that switch, against 2-RF) and
# **cumulative** (each switch added to all before it, in the paper's order, against the
# previous variant). Blue is better (lower), red worse (the colour saturates at ±`SATURATE`
# percent). At a
# budget of 2, DPM-Solver-2 and Heun can take only one step (1 NFE), hence their large cells
# there. Whether a change is beyond the seed
# spread (paired t-test) is in `ablate_b2.md`; B2's students are short of convergence, so the
# verdicts hold for this budget.

# %%
BUDGETS = (1, 2, 4, 9)
SATURATE = 60.0  # percent
by = {}
for r in b2:
    by.setdefault((r["variant"], r["budget"]), []).append(r)


def mean_of(variant, budget, metric):
    return float(np.mean([r[metric] for r in by[(variant, budget)]]))


chain = [
    "base",
    "+norm",
    "+exp10",
    "+hpf",
    "+dropout",
    "+forward",
    "+projection",
    "+sigmoid",
    "+dpm2",
    "+autoguidance",
]
single = [v for v in sorted({r["variant"] for r in b2}) if v.startswith("base+")]
comparisons = {
    "one at a time (vs 2-RF)": [(v, "base") for v in single],
    "cumulative (vs the previous)": list(zip(chain[1:], chain[:-1], strict=True)),
}
fig, axes = plt.subplots(2, 2, figsize=(14, 11))
for col, metric in enumerate(("fd", "coupling_error")):
    for row, (title, pairs) in enumerate(comparisons.items()):
        change = np.array(
            [
                [100.0 * (mean_of(v, b, metric) / mean_of(ref, b, metric) - 1.0) for b in BUDGETS]
                for v, ref in pairs
            ]
        )
        ax = axes[row, col]
        lim = min(SATURATE, np.max(np.abs(change)))
        ax.imshow(change, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        for i in range(change.shape[0]):
            for j in range(change.shape[1]):
                dark = abs(change[i, j]) > 0.6 * lim
                ax.text(
                    j,
                    i,
                    f"{change[i, j]:+.1f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(len(BUDGETS)), [f"NFE ≤ {b}" for b in BUDGETS])
        ax.set_yticks(range(len(pairs)), [v for v, _ in pairs])
        ax.set_title(f"{metric}: {title}\n% change of the mean over seeds")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### The contenders at 1 and 2 NFE
#
# Same network, steps and batch for every method; mean over seeds, the bar the half-range.

# %%
CONTENDERS = {
    "1rf_init": "pretrained network alone (1-RF)",
    "2rf": "2-RF (Euler)",
    "2rf++": "2-RF++ (Euler)",
    "simple_reflow": "Simple ReFlow (all switches)",
    "simple_reflow@euler": "Simple ReFlow's student, Euler",
    "ot_cfm": "OT-CFM (1-RF)",
    "loom_cfm": "LOOM-CFM (1-RF)",
}
fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
for ax, metric in zip(axes, ("fd", "coupling_error"), strict=True):
    width = 0.38
    for k, budget in enumerate((1, 2)):
        vals = [[r[metric] for r in by[(v, budget)]] for v in CONTENDERS]
        mean = [np.mean(v) for v in vals]
        half = [(max(v) - min(v)) / 2 for v in vals]
        ax.barh(
            np.arange(len(CONTENDERS)) + (k - 0.5) * width,
            mean,
            width,
            xerr=half,
            capsize=3,
            label=f"NFE ≤ {budget}",
        )
        for v, m in zip(CONTENDERS, mean, strict=True):
            print(f"{metric:>15}, NFE ≤ {budget}: {CONTENDERS[v]:<32} {m:.4g}")
    ax.set_yticks(range(len(CONTENDERS)), list(CONTENDERS.values()))
    ax.invert_yaxis()
    ax.set_xlabel(metric + " (lower is better)")
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Speed on a small CPU
#
# Left: one training step of I-CFM and OT-CFM against TorchCFM's (`cfm_vs_torchcfm.json`;
# "fused": many steps in one compiled `lax.scan`; "host": the OT assignment solved in the
# loader thread; "auction": in the step). Middle: EDM's CIFAR10 DDPM++ (parameters printed),
# training and forward images per second, this library against EDM's PyTorch code run before
# and after it (`unet_speed.json`). Right: model FLOP utilisation against the measured float32
# matmul peak (`speed_report_cpu.json`; where the CPU runs the 3×3 convolutions as Winograd,
# fewer FLOPs are executed than counted, so the figure can pass 100%).

# %%
cfm, unet, report = (
    load("cfm_vs_torchcfm.json"),
    load("unet_speed.json"),
    load("speed_report_cpu.json"),
)
print(f"CIFAR10 DDPM++: {unet['jax']['num_params']:,} parameters")
for name, d in (
    ("cfm_vs_torchcfm", cfm["meta"]),
    ("unet_speed", unet),
    ("speed_report", report["meta"]),
):
    print(f"{name}: {d['cpu']}, {d['cpu_count']} cores")
fig, axes = plt.subplots(1, 3, figsize=(20, 5))
ax = axes[0]
rows = [
    "torchcfm_icfm",
    "icfm_unfused",
    "icfm_fused",
    "torchcfm_otcfm",
    "otcfm_host_unfused",
    "otcfm_host_fused",
    "otcfm_device_auction",
    "loomcfm_host_fused",
    "loomcfm_device_auction",
]
ms = [cfm[r]["per_step_ms"] for r in rows]
ax.barh(
    range(len(rows)), ms, color=["tab:gray" if r.startswith("torch") else "tab:blue" for r in rows]
)
ax.set_yticks(range(len(rows)), rows)
ax.invert_yaxis()
ax.set_xlabel("ms per training step (batch 256, 2-D)")
for i, v in enumerate(ms):
    ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
ax = axes[1]
edm_runs = unet["edm_pytorch_runs"]
labels = ["train", "forward"]
ours = [unet["jax"]["train"]["images_per_s"], unet["jax"]["forward"]["images_per_s"]]
theirs = [
    [run["images_per_s"] for run in edm_runs],
    [run["forward"]["images_per_s"] for run in edm_runs],
]
x = np.arange(2)
ax.bar(x - 0.2, ours, 0.4, label="simple_reflow (JAX)")
ax.bar(
    x + 0.2,
    [np.mean(t) for t in theirs],
    0.4,
    color="tab:gray",
    label="EDM (PyTorch), mean of runs",
)
for i in range(2):
    ax.scatter([x[i] + 0.2] * len(theirs[i]), theirs[i], c="k", s=10, zorder=3)
    ax.text(x[i] - 0.2, ours[i], f"{ours[i]:.2f}", ha="center", va="bottom")
    ax.text(x[i] + 0.2, np.mean(theirs[i]), f"{np.mean(theirs[i]):.2f}", ha="center", va="bottom")
ax.set_xticks(x, labels)
ax.set_ylabel("images / s")
ax.set_title(f"CIFAR10 DDPM++, {unet['cpu']}")
ax.legend()
ax = axes[2]
names = list(report["results"])
for k, phase in enumerate(("train", "sample_step")):
    vals = [100.0 * report["results"][n][phase]["mfu"] for n in names]
    ax.bar(np.arange(len(names)) + (k - 0.5) * 0.4, vals, 0.4, label=phase)
ax.axhline(100, c="k", ls=":")
ax.set_xticks(range(len(names)), names, rotation=20)
ax.set_ylabel("% of the float32 matmul peak")
ax.set_title(f"model FLOP utilisation, {report['meta']['cpu']}")
ax.legend()
fig.tight_layout()
plt.show()
