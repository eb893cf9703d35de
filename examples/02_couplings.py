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
# # Couplings: independent, OT-CFM, LOOM-CFM and W-CFM
#
# A flow model learns the paths between the noise and the data that it is trained on; a
# *coupling* decides which noise goes with which data point. This notebook builds four
# couplings with `simple_reflow.couplings.make_coupling`, shows how each pairs one batch of the
# `moons` toy with noise, trains a 1-rectified flow with each through the library's one fit
# loop (`simple_reflow.train.fit.fit`), and compares their **straightness** and **paths**:
#
# | coupling | pairs |
# |---|---|
# | `independent` (I-CFM) | each data point with fresh Gaussian noise |
# | `ot` (OT-CFM) | the exact optimal assignment within each minibatch |
# | `loom` (LOOM-CFM) | a persistent data → noise assignment over the data set, improved per batch |
# | `wcfm` (W-CFM) | independent pairs weighted by a Gibbs kernel `exp(−c/(κ√dim))` |
#
# A coupling is a pure function of a batch (`coupling.apply(key, batch, state)`); paths, losses
# and the train step never know which one was used. The train step applies it inside the
# compiled step, or, for exact OT-CFM and LOOM-CFM on 2-D points on a CPU, `fit` solves the
# assignment on the host ahead of the step (`couplings/host.py`).
#
# **Scale.** A short training of each model on a fixed set of points (the sizes are printed
# below); the B1 benchmark (`python benchmarks/toy2d.py --methods teacher ot-cfm loom-cfm
# w-cfm`) trains far longer on all three toys, over several seeds and evaluation sets
# (notebook 05 plots it).

# %%
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from simple_reflow import grids, losses, sampler
from simple_reflow.couplings import make_coupling
from simple_reflow.couplings.loom import loom_noise
from simple_reflow.data.toy import sample_toy
from simple_reflow.metrics.transport import straightness, w2, w2_floor
from simple_reflow.models import build_model
from simple_reflow.train.fit import DeviceBatches, fit
from simple_reflow.train.step import split_model

NUM_DATA = 4096
BATCH = 256
NUM_STEPS = 400
NUM_EVAL = 1000
workdir = tempfile.mkdtemp(prefix="couplings_")

couplings = {
    "independent": make_coupling("independent", data_shape=(2,)),
    "OT-CFM": make_coupling("ot", data_shape=(2,)),
    "LOOM-CFM": make_coupling("loom", data_shape=(2,), num_data=NUM_DATA, num_caches=1),
    "W-CFM": make_coupling("wcfm", data_shape=(2,), kappa=8.0),  # κ = 8: configs/toy2d.py's
}
print(f"{NUM_STEPS} steps per model at batch {BATCH} on {NUM_DATA} points; {NUM_EVAL} to evaluate")
for name, c in couplings.items():
    print(f"{name:>12}: solved {'on the host' if c.host else 'in the step'}")

# %% [markdown]
# ## One batch, four pairings
#
# Every coupling maps a batch `{"x0", "index"}` to the same batch with `"x1"` (and W-CFM a
# `"weight"`, mean 1). The mean squared distance of the pairs is what OT minimises: straighter,
# shorter, less crossing paths.

# %%
data = sample_toy("moons", jax.random.key(0), NUM_DATA)
batch = {"x0": data[:BATCH], "index": jnp.arange(BATCH, dtype=jnp.int32)}


def pair_one_batch(c, key, batch):
    """The batch as the coupling pairs it in the first training step."""
    state = c.init(key)
    if c.host is None:  # in the step: a pure, jit-able function
        return jax.tree.map(np.asarray, jax.jit(c.apply)(key, batch, state)[0])
    if c.host.sync is not None:  # on the host (NumPy): LOOM-CFM's host copy of its table
        c.host.sync(jax.device_get(state))
    return c.host.pair(key, 0, jax.tree.map(np.asarray, batch))


paired = {}
for name, c in couplings.items():
    out = pair_one_batch(c, jax.random.key(2), batch)
    paired[name] = out
    cost = np.sum((out["x0"] - out["x1"]) ** 2, axis=1)
    weight = out.get("weight", np.ones_like(cost))
    weighted = (weight * cost).mean()
    print(f"{name:>12}: mean pair cost {cost.mean():.3f}; weighted by the weights {weighted:.3f}")

# %% [markdown]
# ## A 1-rectified flow with each coupling
#
# The same MLP denoiser, loss (squared ℓ2 on the velocity, t ~ U[0, 1]: Liu et al.'s 1-RF),
# optimiser and batches for all four; only the coupling changes. `DeviceBatches` draws each
# batch inside the compiled step (an epoch permutation of the fixed data set, which LOOM-CFM's
# per-example state needs); `fit` resumes, logs to `metrics.jsonl`, checkpoints and writes the
# EMA weights.

# %%
per_epoch = NUM_DATA // BATCH
perm_key = jax.random.key(3)


def batch_fn(step, data):
    perm = jax.random.permutation(jax.random.fold_in(perm_key, step // per_epoch), NUM_DATA)
    idx = jax.lax.dynamic_slice_in_dim(perm, (step % per_epoch) * BATCH, BATCH)
    return {"x0": data[idx], "index": idx.astype(jnp.int32)}


one_rf_loss = lambda model, batch, key: losses.flow_loss(model, batch, key, space="velocity")
models, states = {}, {}
for name, c in couplings.items():
    model_def, params = split_model(build_model("mlp", data_shape=(2,), rngs=nnx.Rngs(0)))
    state = fit(
        model_def,
        params,
        loss_fn=one_rf_loss,
        optimizer=optax.adam(1e-3),
        batches=DeviceBatches(batch_fn, data),
        coupling=c,
        num_steps=NUM_STEPS,
        workdir=os.path.join(workdir, name),
        seed=0,
        ema_decay=0.99,
        steps_per_call=100,
        log_every=200,
        ckpt_every=NUM_STEPS,
        batch_size=BATCH,
        desc=name,
    )
    models[name], states[name] = model_def.denoiser(state.ema), state

# %% [markdown]
# What the couplings did, from each run's `metrics.jsonl`: the mean pair cost of the last
# batch the step trained on (`coupling/cost_after`; W-CFM's weighted by its pair weights).
# LOOM-CFM's assignment lives in the train state (`state.coupling`), so its cost can also be
# measured over the whole data set, against the assignment it started from.

# %%
for name in couplings:
    with open(os.path.join(workdir, name, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    print(f"{name:>12}: pair cost {last['coupling/cost_after']:.3f} at step {last['step']}")

loom = jax.device_get(states["LOOM-CFM"].coupling)  # the persistent assignment, in the state
start_cost = jnp.mean(jnp.sum((data - loom_noise(loom, jnp.arange(NUM_DATA), (2,))) ** 2, 1))
learnt_cost = jnp.mean(jnp.sum((data - loom_noise(loom, loom["seeds"][:, 0], (2,))) ** 2, 1))
print(
    f"LOOM-CFM over all {NUM_DATA} points: mean pair cost {float(start_cost):.3f} for its initial "
    f"assignment, {float(learnt_cost):.3f} for the one learnt in {NUM_STEPS} steps"
)
# the picture below shows LOOM-CFM's learnt assignment of the batch's points
first = jnp.arange(BATCH)
paired["LOOM-CFM"] = {
    "x0": np.asarray(data[first]),
    "x1": np.asarray(loom_noise(loom, loom["seeds"][first, 0], (2,))),
}

# %% [markdown]
# ## Straightness and W2 per NFE
#
# Straightness S = E ∫ ‖v(x_t, t) − (x1 − x0)‖² dt along each model's own trajectory (0 for
# straight, constant-speed paths; an accurate Heun solve), and the exact W2 to fresh target
# samples with 1, 2 and 4 Euler steps.

# %%
x1_eval = jax.random.normal(jax.random.key(10), (NUM_EVAL, 2))
target = sample_toy("moons", jax.random.key(11), NUM_EVAL)
floor = w2_floor(lambda k, n: sample_toy("moons", k, n), jax.random.key(12), NUM_EVAL)
fine = grids.uniform_grid(32)
NFES = (1, 2, 4)


def evaluate(fn, x1):
    """Straightness, the accurate paths of the first 40 points, and Euler samples per NFE."""
    s = straightness(fn, x1[:500], fine, solver="heun")
    _, _, traj = sampler.integrate(fn, x1[:40], fine, solver="heun", trajectory=True)
    return s, traj, [sampler.sample(fn, x1, grids.uniform_grid(n), solver="euler")[0] for n in NFES]


scores, paths_of = {}, {}
for name, fn in models.items():
    s, traj, samples = jax.jit(lambda x, fn=fn: evaluate(fn, x))(x1_eval)
    row = {n: w2(x0, target) for n, x0 in zip(NFES, samples, strict=True)}
    scores[name], paths_of[name] = (float(s), row), np.asarray(traj)
    print(
        f"{name:>12}: straightness {s:.3f}; W2 "
        + ", ".join(f"{v:.3f} at {n} NFE" for n, v in row.items())
    )
print(f"{'floor':>12}: W2 {floor:.3f}")

# %% [markdown]
# The top row shows the first pairs of the batch above as segments from the noise (grey) to
# the data (blue), the straight lines along which each coupling trains (W-CFM's opacity is the
# pair's weight); for LOOM-CFM, the same points with the noise its learnt assignment gives
# them. The bottom row shows each trained model's own paths from a few noise points (accurate
# Heun solve) over the target. The last column plots the numbers printed above.

# %%
fig, axes = plt.subplots(2, 5, figsize=(22, 8.5))
for j, name in enumerate(couplings):
    ax = axes[0, j]
    p = paired[name]
    w = p.get("weight", np.ones(BATCH))
    alpha = np.clip(w / w.max(), 0.05, 1.0)
    for i in range(64):
        ax.plot(
            [p["x1"][i, 0], p["x0"][i, 0]],
            [p["x1"][i, 1], p["x0"][i, 1]],
            c="tab:blue",
            alpha=alpha[i],
            lw=0.8,
        )
    ax.scatter(*p["x1"][:64].T, s=6, c="0.5")
    ax.scatter(*p["x0"][:64].T, s=6, c="tab:blue")
    ax.set_title(
        f"{name}: " + ("learnt assignment" if name == "LOOM-CFM" else "pairs of one batch")
    )
    ax = axes[1, j]
    traj = paths_of[name]
    ax.scatter(*np.asarray(target).T, s=2, c="0.85")
    for i in range(traj.shape[1]):
        ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.7, c="tab:orange")
    ax.scatter(*traj[-1].T, s=6, c="tab:red", zorder=3)
    ax.set_title(f"{name}: paths (straightness {scores[name][0]:.2f})")
for ax in axes[:, :4].ravel():
    ax.set_aspect("equal")
    ax.set_xlim(-4, 4)
    ax.set_ylim(-4, 4)
ax = axes[0, 4]
ax.bar(
    list(scores),
    [s for s, _ in scores.values()],
    color=["tab:gray", "tab:blue", "tab:green", "tab:purple"],
)
ax.set_ylabel("straightness")
ax.set_title("straightness (lower: straighter)")
ax = axes[1, 4]
for name, (_, row) in scores.items():
    ax.plot(list(row), list(row.values()), "o-", label=name)
ax.axhline(floor, c="k", ls=":", label="floor")
ax.set_xlabel("Euler NFE")
ax.set_ylabel("W2 to the target")
ax.set_xticks(NFES)
ax.legend()
ax.set_title("W2 per NFE")
fig.tight_layout()
plt.show()
