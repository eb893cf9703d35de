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
# # From an EDM checkpoint: import, sample at several NFE, score FID
#
# Simple ReFlow starts from NVIDIA's published EDM teachers. This notebook shows the three
# steps the image stages take with such a checkpoint, from Python and without a config:
#
# 1. **import** an EDM network pickle with `simple_reflow.models.edm_import` — read without
#    PyTorch and without running the code EDM embeds in its pickles: its architecture
#    (`edm_architecture`) and its `state_dict` as this library's parameters (`edm_params`);
# 2. **sample** it at several NFE budgets through the flow-time wrapper
#    `D(x_t, t) = D_EDM(x_t / (1 − t); σ = t / (1 − t))`, each sample seeded by its index;
# 3. the **FID pipeline**: samples quantised to uint8 as EDM's `generate.py` does, features of
#    the FID Inception-v3 (pytorch-fid's network, in JAX), float64 statistics streamed batch by
#    batch, a reference file in EDM's layout, and the Fréchet distance.
#
# **Stand-ins.** Nothing is downloaded: the checkpoint is the committed test pickle
# `tests/fixtures/edm/ddpmpp_uncond.pkl`, a reduced-width DDPM++ with EDM's structure whose
# parameters were perturbed to random values (it is what `tests/test_edm_import.py` checks our
# network against EDM's own), so its "samples" are not pictures of anything. The Inception has
# weights generated from each parameter's name (`metrics.seeded_weights`, as in
# `tests/test_fid.py`) instead of pytorch-fid's file, so its FID values only illustrate the
# pipeline; FID sets are `NUM_FID` images instead of the dataset configs' `eval.num_samples`
# (both printed; the real-scale commands are at the end).

# %%
import json
import os
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import simple_reflow
from simple_reflow import compile_options, grids, paths, sampler
from simple_reflow.metrics.fid import FeatureStats, load_reference, save_reference
from simple_reflow.metrics.frechet import frechet_distance_from_stats
from simple_reflow.metrics.inception import FIDInception, inception_params, uint8_features
from simple_reflow.metrics.seeded_weights import seeded_value
from simple_reflow.models import build_model, count_parameters
from simple_reflow.models.edm_import import edm_architecture, edm_params, read_edm_network
from simple_reflow.train.sampling import make_index_sampler
from simple_reflow.train.step import split_model
from simple_reflow.viz import image_grid

root = pathlib.Path(simple_reflow.__file__).resolve().parents[1]  # the checkout: fixtures there
CHECKPOINT = root / "tests" / "fixtures" / "edm" / "ddpmpp_uncond.pkl"
NUM_FID = 8  # images per FID set
workdir = tempfile.mkdtemp(prefix="edm_")

# %% [markdown]
# ## Import
#
# `read_edm_network` returns the network's constructor arguments (completed with the defaults
# of EDM's `training/networks.py`) and its `state_dict`; `edm_architecture` turns them into the
# options of `build_model`. The module is built abstractly (`nnx.eval_shape`: shapes only, no
# initialisation), and `edm_params` fills it, checking every key and shape (a missing or extra
# key, or another architecture, is one line naming it).

# %%
net = read_edm_network(str(CHECKPOINT))
arch = edm_architecture(net)
print(json.dumps(arch, indent=1, default=str))
name, resolution = arch.pop("name"), arch.pop("resolution")
arch.pop("channels_per_head")  # ADM's attention head width; DDPM++ has one head
shape = (resolution, resolution, int(net.kwargs["img_channels"]))
abstract = nnx.eval_shape(lambda: build_model(name, data_shape=shape, rngs=nnx.Rngs(0), **arch))
model_def, like = split_model(abstract)
params = edm_params(
    net.state, like, resample_filter=arch["resample_filter"], source=str(CHECKPOINT)
)
print(
    f"{name} {shape}: {count_parameters(abstract):,} parameters, "
    f"{len(net.state)} tensors in the pickle's state_dict"
)

# %% [markdown]
# ## Sampling at several NFE
#
# The imported model is a flow-time denoiser like every model of the library:
# `model(x_t, t)` is EDM's `D_EDM(x_t / (1 − t); t / (1 − t))`, and `model.edm(x, σ)` is EDM's
# own call. EDM's teachers are defined up to σ_max, i.e. t_max = σ_max / (1 + σ_max) (printed
# below): the grids are scaled to end there (`make_grid(..., t_max=paths.EDM_T_MAX)`).
# `make_index_sampler` is what the `eval` stage and `scripts/sample.py` compile:
# `fn(params, indices) -> uint8 images`, sample i from noise seeded by i (as EDM's `--seeds`),
# the weights an input of the program rather than constants baked into it. Budgets: one Euler
# step, a few Euler steps, and Heun (EDM's solver), all on EDM's ρ grid.

# %%
print(f"σ_max = {paths.EDM_SIGMA_MAX}, t_max = {paths.EDM_T_MAX:.6f}; {NUM_FID} samples each")
setups = {
    "Euler, 1 step": ("euler", grids.make_grid("edm", 1, t_max=paths.EDM_T_MAX)),
    "Euler, 4 steps": ("euler", grids.make_grid("edm", 4, t_max=paths.EDM_T_MAX)),
    "Heun, 5 steps": ("heun", grids.make_grid("edm", 5, t_max=paths.EDM_T_MAX)),
}
samplers, images = {}, {}
for label, (solver, grid) in setups.items():
    samplers[label] = compile_options.jit(
        make_index_sampler(
            model_def.denoiser,
            grid,
            solver=solver,
            r=0.4,
            shape=shape,
            num_classes=0,
            key=jax.random.key(0),
        )
    )
    images[label] = np.asarray(samplers[label](params, jnp.arange(NUM_FID)))
    nfe = sampler.nfe_of(grid, solver)
    print(f"{label}: {nfe} NFE, images {images[label].shape} {images[label].dtype}")

# %% [markdown]
# ## FID
#
# `uint8_features(inception)` compiles the Inception once (weights as an input) and maps uint8
# images of any size to its pool features; `FeatureStats` accumulates count, sum and sum of
# outer products in float64, so a full-size FID never holds the images. The reference
# statistics here are those of the Heun samples, written and read back in EDM's `.npz` layout
# as `scripts/fid_stats.py` writes a data set's: the FID of the one-step samples then measures
# how far they are from the accurate solve's (same noise, same indices). Each FID costs two
# eigendecompositions of the features' covariance matrices, seconds on a small CPU, so the
# notebook scores one budget; the `eval` stage scores each budget of `eval.nfe`.

# %%
with np.load(root / "tests" / "fixtures" / "fid" / "inception_seeded.npz") as f:
    torch_shapes = json.loads(str(f["state_shapes_json"]))  # pytorch-fid's names and shapes
state = {
    k: seeded_value(k, s) for k, s in torch_shapes.items() if not k.endswith("num_batches_tracked")
}
inception = nnx.eval_shape(FIDInception)
nnx.update(inception, nnx.State(jax.tree.map(jnp.asarray, inception_params(state))))
featurize = uint8_features(inception)


def statistics(batches):
    """Mean and covariance of the Inception features of uint8 image batches, streamed."""
    stats = None
    for u8 in batches:  # in the eval stage: one batch per sampler call, on every device
        features = featurize(u8)
        stats = stats or FeatureStats(features.shape[-1])
        stats.update(features)
    return stats.mean_cov()


reference = os.path.join(workdir, "reference.npz")
save_reference(
    reference, *statistics([images["Heun, 5 steps"]]), num_images=NUM_FID, resolution=resolution
)
mu_ref, sigma_ref = load_reference(reference, resolution=resolution)
print(f"reference statistics: {len(mu_ref)} Inception pool features, from {NUM_FID} images")
label = "Euler, 1 step"
fid = {label: frechet_distance_from_stats(*statistics([images[label]]), mu_ref, sigma_ref)}
print(f"{label}: FID {fid[label]:.1f} to the statistics of the Heun samples")

# %% [markdown]
# ## At the real scale
#
# Download a network pickle from the links in EDM's README by hand (nothing is downloaded at
# run time), and pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`. Then, with the config of
# that checkpoint (the README's table lists one per published pickle):
#
# ```bash
# # the checkpoint as a teacher snapshot (ema.npz, model.json, import.json with its SHA-256)
# python scripts/import_edm.py --checkpoint edm-cifar10-32x32-uncond-vp.pkl \
#     --workdir runs/cifar10/edm-teacher --config configs/cifar10.py:pairs
# # reference statistics of the training images, in EDM's layout (EDM's published files work too)
# export SIMPLE_REFLOW_INCEPTION=/path/to/pt_inception-2015-12-05-6726825d.pth
# python scripts/fid_stats.py --config configs/cifar10.py:eval --out refs/cifar10-32x32.npz
# # FID per NFE budget (eval.nfe) of the teacher and a student, eval.num_samples images each
# python scripts/train.py --config configs/cifar10.py:eval --workdir runs/cifar10/reflow \
#     --config.teacher.workdir=runs/cifar10/edm-teacher --config.eval.fid_ref=refs/cifar10-32x32.npz
# ```
#
# The `pairs` and `reflow` stages between import and eval are in the README; the printout
# below reads the budgets and sample count from `configs/cifar10.py`.

# %%
sys.path.insert(0, str(root))
from configs.cifar10 import get_config  # noqa: E402

eval_cfg = get_config("eval").eval
budgets, num = tuple(eval_cfg.nfe), eval_cfg.num_samples
print(f"configs/cifar10.py:eval scores NFE budgets {budgets} on {num:,} samples each")

# %% [markdown]
# The samples of the random-weight stand-in for each budget (same noise in each panel), with
# the FID computed above; with a published checkpoint the same code draws CIFAR10 images.

# %%
fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 3.2))
for ax, (label, u8) in zip(axes, images.items(), strict=True):
    ax.imshow(image_grid(u8 / 127.5 - 1.0, 4, scale=2, pad=2))  # uint8 → [−1, 1]
    nfe = sampler.nfe_of(setups[label][1], setups[label][0])
    score = {
        "Euler, 1 step": f"FID {fid['Euler, 1 step']:.1f} to the Heun samples",
        "Heun, 5 steps": "the FID reference",
    }.get(label, "")
    ax.set_title(f"{label} ({nfe} NFE)\n{score}")
    ax.axis("off")
fig.tight_layout()
plt.show()
