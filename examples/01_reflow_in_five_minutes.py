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
# # ReFlow in five minutes
#
# This notebook walks through ReFlow on the 2-D `8gaussians` target, using only the library's
# functions:
#
# 1. the **analytic teacher**: the target is a Gaussian mixture, so its flow's denoiser
#    `D(x_t, t) = E[x0 | x_t]` is known in closed form (`simple_reflow.data.toy.toy_mixture`);
# 2. its **backward pairs** (noise `x1` → the teacher's ODE solution `x̂0`);
# 3. two **students** trained on those pairs: **2-RF** (Rectified Flow's second round: squared
#    ℓ2, uniform t, Euler sampling) and **Simple ReFlow** (normalised loss, the 10^t time
#    distribution, DPM-Solver-2 on the sigmoid grid);
# 4. their **trajectories** (a reflowed student moves along nearly straight lines) and the
#    **W2 to the target per NFE budget** for the teacher and both students.
#
# Conventions: data at t = 0, noise at t = 1, `x_t = (1 − t) x0 + t x1`; every model is a
# denoiser `denoise_fn(x_t, t, cond=None)`.
#
# **Scale.** The sizes here are small so that the notebook runs quickly on a laptop CPU; the
# first code cell prints them beside those of the toy job
# (`python scripts/train.py --config configs/toy2d.py --workdir runs/toy2d`, which also mixes
# in forward pairs), read from `configs/toy2d.py`. The B1 benchmark (`benchmarks/toy2d.py`)
# repeats that job over several seeds and evaluation sets.

# %%
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from matplotlib.ticker import NullFormatter, ScalarFormatter

import simple_reflow
from simple_reflow import grids, losses, pairs, sampler, time_dist
from simple_reflow.data.toy import sample_toy, toy_mixture
from simple_reflow.metrics.transport import straightness, w2, w2_floor
from simple_reflow.models import build_model
from simple_reflow.train.step import init_state, make_multi_step, make_train_step, split_model

NUM_PAIRS = 8192
NUM_STEPS = 1500  # per student
STEPS_PER_CALL = 250  # steps fused in one compiled lax.scan
BATCH = 256
NUM_EVAL = 1500
BUDGETS = (1, 2, 4, 9)


# The toy job's sizes, from its config (configs/ is a package at the repository root).
root = pathlib.Path(simple_reflow.__file__).resolve().parents[1]  # the checkout (editable install)
sys.path.insert(0, str(root))
from configs.toy2d import get_config  # noqa: E402

job = get_config()
print(f"{'':>22} | this notebook | configs/toy2d.py")
print(f"{'backward pairs':>22} | {NUM_PAIRS:13,} | {job.pairs.num_backward:,}")
print(f"{'forward pairs':>22} | {0:13,} | {job.pairs.num_forward:,}")
print(f"{'steps per student':>22} | {NUM_STEPS:13,} | {job.training.num_steps:,}")
print(f"{'batch':>22} | {BATCH:13,} | {job.training.batch_size:,}")
print(f"{'evaluation samples':>22} | {NUM_EVAL:13,} | {job.eval.num_samples:,}")

# %% [markdown]
# ## The analytic teacher
#
# `toy_mixture()` is a mixture of equal Gaussians on a circle (printed below). Its denoiser is
# exact, so the only error of the teacher's samples is the ODE solver's: with few steps the curved
# flow is integrated badly.

# %%
teacher = toy_mixture()
radius = np.linalg.norm(np.asarray(teacher.means), axis=1)
print(f"{len(radius)} components, radius {radius.min():.3g}, std {float(teacher.stds[0]):.3g}")
x1_eval = jax.random.normal(jax.random.key(100), (NUM_EVAL, 2))
target = sample_toy("8gaussians", jax.random.key(101), NUM_EVAL)

for budget in (1, 4, 16):
    grid = grids.uniform_grid(budget)
    x0, nfe = sampler.sample(teacher, x1_eval, grid, solver="euler")
    print(f"teacher, Euler, {nfe:2d} NFE: W2 to the target = {w2(x0, target):.3f}")
floor = w2_floor(functools.partial(sample_toy, "8gaussians"), jax.random.key(102), NUM_EVAL)
print(f"W2 floor (two independent exact {NUM_EVAL}-point samples) = {floor:.3f}")

# %% [markdown]
# ## Backward pairs
#
# Each pair is seeded by its global index, so pairs can be generated in any order, on any
# number of devices or hosts, and resumed. Heun on a fine uniform grid solves the teacher's
# ODE accurately; the pair `(x̂0, x1)` is a deterministic coupling of noise and data.

# %%
pair_grid = grids.uniform_grid(32)
x0_pairs, x1_pairs, pair_nfe = jax.jit(
    lambda idx: pairs.backward_pairs(
        teacher, jax.random.key(0), idx, (2,), pair_grid, solver="heun"
    )
)(jnp.arange(NUM_PAIRS))
print(f"{NUM_PAIRS} backward pairs, {pair_nfe} teacher evaluations each")

# %% [markdown]
# ## Two students
#
# Both students are the same MLP denoiser, trained with the functional train step
# (`make_train_step`: a pure `step(state, batch) -> (state, metrics)`) with
# `STEPS_PER_CALL` steps fused into one `lax.scan` (`make_multi_step`); every batch is drawn
# inside the compiled step from `fold_in(key, step)`. They differ only in the loss:
#
# - **2-RF**: `flow_loss` with its defaults, squared ℓ2 and t ~ U[0, 1];
# - **Simple ReFlow**: `normalize=True` (mean_i d_i / sg(d_i + δ): every pair's gradient is
#   `∇ log d_i`, so the loss value is ≈ 1 by construction; the raw distance is reported as
#   `train/raw_distance`) and `dist="exp10"` (p(t) ∝ 10^t, more weight near the noise end).

# %%
stores = {"x0": x0_pairs, "x1": x1_pairs}


def train_student(loss_fn, seed):
    model_def, params = split_model(build_model("mlp", data_shape=(2,), rngs=nnx.Rngs(seed)))
    optimizer = optax.adam(1e-3)
    step = make_train_step(model_def, loss_fn, optimizer, ema_decay=0.995)
    batch_key = jax.random.key(seed + 1)

    def batch_fn(s):
        idx = jax.random.randint(jax.random.fold_in(batch_key, s), (BATCH,), 0, NUM_PAIRS)
        return {"x0": stores["x0"][idx], "x1": stores["x1"][idx]}

    multi = jax.jit(make_multi_step(step, batch_fn, STEPS_PER_CALL))
    state = init_state(params, optimizer, seed=seed)
    history = []
    for _ in range(NUM_STEPS // STEPS_PER_CALL):
        state, metrics = multi(state)
        history.append(
            (int(state.step), float(metrics["train/loss"]), float(metrics["train/raw_distance"]))
        )
    return model_def.denoiser(state.ema), history


two_rf, hist_2rf = train_student(losses.flow_loss, seed=1)
simple_reflow_loss = functools.partial(
    losses.flow_loss,
    normalize=True,
    time_fn=functools.partial(time_dist.sample_time, dist="exp10"),
)
simple_rf, hist_srf = train_student(simple_reflow_loss, seed=1)

print(" step | 2-RF loss | Simple ReFlow loss (normalised) | its raw distance")
for (s, l2rf, _), (_, lsrf, dsrf) in zip(hist_2rf, hist_srf, strict=True):
    print(f"{s:5d} | {l2rf:9.4f} | {lsrf:31.4f} | {dsrf:.4f}")

# %% [markdown]
# ## Trajectories and straightness
#
# The teacher's flow bends: each noise point first heads for the mixture's mean, then turns
# towards a component. A student trained on the teacher's pairs learns the flow of the
# *coupling* `(x̂0, x1)`, whose paths cross much less, so they are nearly straight.
# `straightness` is S = E ∫ ‖v(x_t, t) − (x1 − x0)‖² dt along the model's own trajectory
# (0 for straight, constant-speed paths), here along an accurate Heun solve (`fine` grid).

# %%
fine = grids.uniform_grid(64)
models = {"teacher": teacher, "2-RF": two_rf, "Simple ReFlow": simple_rf}
trajectories, straight = {}, {}
for name, fn in models.items():
    _, _, states = jax.jit(
        lambda x, fn=fn: sampler.integrate(fn, x, fine, solver="heun", trajectory=True)
    )(x1_eval[:40])
    trajectories[name] = np.asarray(states)
    straight[name] = float(
        jax.jit(lambda x, fn=fn: straightness(fn, x, fine, solver="heun"))(x1_eval[:500])
    )
    print(f"{name:>14}: straightness {straight[name]:.3f}")

# %% [markdown]
# ## W2 per NFE budget
#
# For each NFE budget, `sampler.grid_for_budget` picks the grid with the most steps that fits
# (DPM-Solver-2 spends two evaluations per step, except on its first step from t = 1 and its
# last into t = 0, which take one each; the NFE actually spent is printed). W2 is the exact
# 2-Wasserstein distance between `NUM_EVAL` samples and as many exact target samples (POT's
# network simplex).

# %%
setups = {
    "teacher, Euler": (teacher, "euler", grids.uniform_grid),
    "teacher, DPM-Solver-2": (teacher, "dpm2", grids.sigmoid_grid),
    "2-RF, Euler": (two_rf, "euler", grids.uniform_grid),
    "Simple ReFlow, DPM-Solver-2": (simple_rf, "dpm2", grids.sigmoid_grid),
}
results = {}
for name, (fn, solver, grid_fn) in setups.items():
    rows = []
    for budget in BUDGETS:
        grid, nfe = sampler.grid_for_budget(budget, solver, grid_fn)
        x0 = jax.jit(lambda x, fn=fn, g=grid, s=solver: sampler.sample(fn, x, g, solver=s)[0])(
            x1_eval
        )
        rows.append((nfe, w2(x0, target)))
    results[name] = rows
    print(f"{name:>28}: " + ", ".join(f"W2 {v:.3f} at {n} NFE" for n, v in rows))
print(f"{'floor':>28}: {floor:.3f}")
for i, budget in enumerate(BUDGETS[:2]):
    t = results["teacher, Euler"][i][1]
    for name in ("2-RF, Euler", "Simple ReFlow, DPM-Solver-2"):
        print(
            f"budget {budget}: {name} has {t / results[name][i][1]:.1f}× lower W2 than the teacher"
        )

# %% [markdown]
# At 1 and 2 NFE the students are far closer to the target than the teacher (the ratios
# above): the reflowed flow is straight enough that one Euler step lands near the data. At a
# few NFE every model is near the floor (two exact samples of this size differ by that much),
# so one short run on one evaluation set cannot rank the two students; the B1 benchmark,
# several seeds and evaluation sets of the full-size job, does (notebook 05 plots it).

# %%
fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
for ax, (name, traj) in zip(axes[:3], trajectories.items(), strict=True):
    ax.scatter(*np.asarray(target[:1000]).T, s=2, c="0.8")
    for i in range(traj.shape[1]):
        ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.7, c="tab:blue")
    ax.scatter(*traj[-1].T, s=6, c="tab:red", zorder=3)
    ax.set_title(f"{name}: paths (straightness {straight[name]:.2f})")
    ax.set_aspect("equal")
    ax.set_xlim(-6.5, 6.5)
    ax.set_ylim(-6.5, 6.5)
ax = axes[3]
for name, rows in results.items():
    nfe, vals = zip(*rows, strict=True)
    ax.plot(nfe, vals, "o-", label=name)
ax.axhline(floor, c="k", ls=":", label="floor (exact vs exact)")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
ax.yaxis.set_major_formatter(ScalarFormatter())
ax.yaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel("NFE")
ax.set_ylabel("W2 to the target")
ax.legend(fontsize=8)
ax.set_title("W2 per NFE")
fig.tight_layout()
plt.show()
