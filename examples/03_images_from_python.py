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
# # Images from Python: teacher → pair store → reflow → samples
#
# The image pipeline of `configs/digits.py`, run from Python with the library's functions and
# no config file, on scikit-learn's bundled digits (8×8 grey images, nothing downloaded):
#
# 1. a **teacher** trained with EDM's loss (`simple_reflow.losses_edm.edm_loss`) through the
#    one fit loop (`simple_reflow.train.fit.fit`), which writes its EMA snapshot `ema.npz`;
# 2. a **pair store** on disk (`simple_reflow.pair_store`): `write_store` generates the
#    teacher's backward pairs shard by shard (each pair seeded by its global index; resumable,
#    splittable over hosts), `finalize_store` records the checksums, `PairStore` reads them by
#    index;
# 3. a **reflow student**, initialised from the teacher, trained with Simple ReFlow's loss on
#    batches streamed from the store as the `reflow` stage streams them
#    (`pair_mixing.stream_indices` + `read_mixed`, read ahead of the step by a thread);
# 4. **sample grids** at several NFE and the pixel-space Fréchet distance (FD) to the held-out
#    digits, the figure the `eval` stage reports when no Inception weights are given.
#
# **Scale.** To run in about a minute on a laptop CPU the denoiser here is an MLP over the
# pixels (`build_model("mlp", ...)`), trained briefly on few pairs (the sizes are printed
# below). The `digits` stages (`python scripts/train.py --config configs/digits.py:teacher`,
# then `:pairs`, `:reflow` and `:eval`, a few minutes) train the same way with EDM's DDPM++ UNet
# (`build_model("ddpmpp", ...)` with the options of `configs/digits.py:digits_model`), and the
# CIFAR10 / ImageNet configs with the published architectures.

# %%
import functools
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from simple_reflow import grids, losses, pair_mixing, pair_store, pairs, sampler, time_dist
from simple_reflow.data.digits import digits_arrays
from simple_reflow.losses_edm import edm_loss
from simple_reflow.metrics.frechet import frechet_distance
from simple_reflow.models import build_model, count_parameters
from simple_reflow.train.fit import DeviceBatches, HostBatches, fit
from simple_reflow.train.step import split_model
from simple_reflow.viz import image_grid

SHAPE = (8, 8, 1)
TEACHER_STEPS, STUDENT_STEPS, BATCH = 1500, 800, 128
NUM_PAIRS, CHUNK = 4096, 1024
PAIR_GRID = grids.uniform_grid(18)  # Heun, 18 steps: 35 teacher evaluations per pair
workdir = tempfile.mkdtemp(prefix="digits_")

train, _ = digits_arrays("train")  # [1500, 8, 8, 1] in [-1, 1]
test, _ = digits_arrays("test")  # [297, 8, 8, 1], held out
flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)
floor = frechet_distance(flat(train[: len(test)]), flat(test))
print(f"{len(train)} training and {len(test)} held-out digits of shape {train.shape[1:]}")
print(f"teacher {TEACHER_STEPS} steps, {NUM_PAIRS} pairs, student {STUDENT_STEPS} steps")
print(f"FD floor ({len(test)} training digits vs the {len(test)} held-out ones): {floor:.3f}")

# %% [markdown]
# ## The teacher
#
# `edm_loss` is EDM's denoising loss written for a flow-time denoiser (EDM's log-normal noise
# levels and loss weight λ(σ)). `DeviceBatches` draws each batch inside
# the compiled step; `fit` resumes from `workdir`, logs, checkpoints and writes `ema.npz`.

# %%
teacher_def, params = split_model(
    build_model("mlp", data_shape=SHAPE, rngs=nnx.Rngs(0), hidden=512, depth=2)
)
print(f"teacher: {count_parameters(teacher_def.merge(params)):,} parameters")
batch_key = jax.random.key(1)


def digits_batch(step, data):
    idx = jax.random.randint(jax.random.fold_in(batch_key, step), (BATCH,), 0, len(data))
    return {"x0": data[idx]}


teacher_state = fit(
    teacher_def,
    params,
    loss_fn=edm_loss,
    optimizer=optax.adam(1e-3),
    batches=DeviceBatches(digits_batch, jnp.asarray(train)),
    num_steps=TEACHER_STEPS,
    workdir=os.path.join(workdir, "teacher"),
    seed=0,
    ema_decay=0.995,
    steps_per_call=250,
    log_every=500,
    ckpt_every=TEACHER_STEPS,
    batch_size=BATCH,
    desc="teacher (EDM loss)",
)
teacher = teacher_def.denoiser(teacher_state.ema)
print(sorted(os.listdir(os.path.join(workdir, "teacher"))))

# %% [markdown]
# ## The pair store
#
# `write_store(generate_fn, path, num=..., chunk=..., arrays=...)` calls
# `generate_fn(indices)` once per shard of `chunk` pairs and writes each shard atomically (a
# killed job reruns and makes only the missing shards; with several hosts, chunk c belongs to
# host c mod hosts). The provenance says what made the pairs; a reader that asks for other
# pairs is refused.

# %%
pair_key = jax.random.key(2)


@jax.jit
def generate(indices):
    """``generate_fn(indices) -> {name: array}``: the pairs of these global indices."""
    x0, x1, _ = pairs.backward_pairs(teacher, pair_key, indices, SHAPE, PAIR_GRID, solver="heun")
    return {"x0": x0, "x1": x1}


store_path = os.path.join(workdir, "pairs", "backward")
spec = dict(
    num=NUM_PAIRS,
    chunk=CHUNK,
    arrays={"x0": (SHAPE, "float32"), "x1": (SHAPE, "float32")},
    provenance={
        "teacher": "digits MLP, EDM loss",
        "solver": "heun",
        "steps": len(PAIR_GRID) - 1,
        "nfe": sampler.nfe_of(PAIR_GRID, "heun"),
    },
)
made = pair_store.write_store(generate, store_path, **spec)
print(f"generated {made} pairs; store complete: {pair_store.finalize_store(store_path)}")
again = pair_store.write_store(generate, store_path, **spec)
print(f"writing again generates {again} pairs (every shard exists)")
print(sorted(os.listdir(store_path)))
report = pair_store.verify_store(store_path)
print("verify_store:", report.summary())

# %% [markdown]
# ## The reflow student
#
# The student starts from the teacher's weights (as the paper's and the `reflow` stage do) and
# trains with Simple ReFlow's normalised loss and 10^t time distribution. Its batches come from
# the store: `stream_indices(seed, step, ...)` picks every slot's pair from an epoch
# permutation (a function of the seed and the step only, so a resumed run continues exactly,
# and each host computes only its slice), `read_mixed` reads them, and `HostBatches` has `fit`
# read the next batches in a thread while the current step runs. With forward pairs in a
# second store, `pair_fractions(rho=0.4)` would mix them in with probability ρ.

# %%
store = pair_store.PairStore(store_path)
fractions = pair_mixing.pair_fractions(0.0)
print(f"store: {len(store)} pairs, arrays {list(store.arrays)}, provenance {store.provenance}")


def pair_batch(step):
    source, index = pair_mixing.stream_indices(3, step, BATCH, {"backward": len(store)}, fractions)
    return pair_mixing.read_mixed({"backward": store}, source, index)


student_loss = functools.partial(
    losses.flow_loss, normalize=True, time_fn=functools.partial(time_dist.sample_time, dist="exp10")
)
student_state = fit(
    teacher_def,
    jax.tree.map(jnp.array, teacher_state.ema),  # a copy: fit donates the params it is given
    loss_fn=student_loss,
    optimizer=optax.adam(5e-4),
    batches=HostBatches(pair_batch),
    num_steps=STUDENT_STEPS,
    workdir=os.path.join(workdir, "student"),
    seed=1,
    ema_decay=0.99,
    steps_per_call=50,
    log_every=400,
    ckpt_every=STUDENT_STEPS,
    batch_size=BATCH,
    desc="student (ReFlow)",
)
store.close()
student = teacher_def.denoiser(student_state.ema)

# %% [markdown]
# ## Samples and the Fréchet distance per NFE
#
# Sample i is drawn from noise seeded by its index (`pairs.noise_for_indices`), so every model
# and every NFE start from the same noise. The FD is computed on the pixels against the
# held-out digits (the `eval` stage scores FID with the Inception network instead when it has
# the weights: notebook 04).

# %%
noise = pairs.noise_for_indices(jax.random.key(4), jnp.arange(len(test)), SHAPE)
runs = {
    "teacher, Euler": (teacher, "euler", (1, 2, 4)),
    "teacher, Heun": (teacher, "heun", (35,)),
    "student, Euler": (student, "euler", (1, 2, 4)),
}
samples, fd = {}, {}
for name, (fn, solver, budgets) in runs.items():
    for budget in budgets:
        grid, nfe = sampler.grid_for_budget(budget, solver, grids.uniform_grid)
        x = np.asarray(
            jax.jit(lambda z, fn=fn, g=grid, s=solver: sampler.sample(fn, z, g, solver=s)[0])(noise)
        )
        samples[(name, nfe)] = np.clip(x, -1.0, 1.0)
        fd[(name, nfe)] = frechet_distance(flat(samples[(name, nfe)]), flat(test))
        print(f"{name:>15}, {nfe:2d} NFE: FD {fd[(name, nfe)]:.3f}")
print(f"{'floor':>15}: FD {floor:.3f}")

# %% [markdown]
# The same noise in every panel: the teacher needs many steps (its few-step FD above is far
# from its many-step one), while the reflowed student draws digits in one step.

# %%
show = [
    ("teacher, Euler", 1),
    ("teacher, Euler", 4),
    ("teacher, Heun", 35),
    ("student, Euler", 1),
    ("student, Euler", 4),
]
fig, axes = plt.subplots(1, len(show) + 2, figsize=(3.1 * (len(show) + 2), 3.6))
for ax, key in zip(axes, show, strict=False):
    ax.imshow(image_grid(samples[key][:36], 6, scale=4, pad=2)[..., 0], cmap="gray")
    ax.set_title(f"{key[0]}, {key[1]} NFE\nFD {fd[key]:.2f}", fontsize=10)
    ax.axis("off")
ax = axes[len(show)]
ax.imshow(image_grid(test[:36], 6, scale=4, pad=2)[..., 0], cmap="gray")
ax.set_title(f"held-out digits\nfloor {floor:.2f}", fontsize=10)
ax.axis("off")
ax = axes[-1]
for name in ("teacher, Euler", "student, Euler"):
    keys = [k for k in fd if k[0] == name]
    ax.plot([k[1] for k in keys], [fd[k] for k in keys], "o-", label=name)
ax.axhline(fd[("teacher, Heun", 35)], c="tab:blue", ls="--", label="teacher, Heun 35 NFE")
ax.axhline(floor, c="k", ls=":", label="floor")
ax.set_yscale("log")
ax.set_xlabel("NFE")
ax.set_ylabel("pixel FD to held-out digits")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
