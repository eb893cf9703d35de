"""Sampling by index over every device and host, and feature statistics streamed from it.

Sample ``i`` depends only on its index, as EDM's ``generate.py --seeds=0-49999``: its noise is
``N(0, I)`` from ``fold_in(key, i)`` and, for class-conditional models, its label is drawn
from ``fold_in(fold_in(key, i), 1)`` (the pair generator's rule). So the same seeds give the same
images whatever the batch size, device count or host count.

:func:`stream` walks indices ``0 … num − 1`` in global batches sharded over the mesh; each host
builds only its slice of every batch, the jitted function runs on all devices, and each host
gets back its own rows. :func:`sample_features` combines it with a sampler and a feature
function (FID's Inception, or pixels) into :class:`~simple_reflow.metrics.fid.FeatureStats`
merged over hosts, without holding the images.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec
from tqdm.auto import tqdm

from simple_reflow import compile_options, pairs, sampler
from simple_reflow.metrics.fid import FeatureStats, to_uint8
from simple_reflow.train import sharding

__all__ = [
    "index_labels",
    "make_index_sampler",
    "stream",
    "sample_features",
    "pixel_features",
    "dataset_features",
]


def index_labels(key, indices, num_classes: int):
    """Class label of sample ``i`` from ``fold_in(fold_in(key, i), 1)``: ``[n] -> [n]`` int32."""
    return jax.vmap(
        lambda i: jax.random.randint(
            jax.random.fold_in(jax.random.fold_in(key, i), 1), (), 0, num_classes
        )
    )(indices)


def make_index_sampler(
    denoiser, grid, *, solver: str, r: float, shape, num_classes: int, key, sample_fn=None
):
    """``fn(params, indices) -> uint8 images [n, *shape]`` (pure; jit it).

    The weights are an argument of ``fn``, so a jitted ``fn`` takes them as an input of the
    compiled program rather than as constants baked into it (a CIFAR10 DDPM++ holds 56M
    parameters; as constants they would slow compilation, enter the persistent cache's key
    and make every snapshot compile again).

    Args:
      denoiser: ``denoiser(params) -> denoise_fn(x_t, t, cond)``, the model to sample (e.g.
        ``ModelDef.denoiser``; ``lambda _: teacher.denoise`` for a closed-form teacher).
      grid, solver, r: the sampler's grid and solver (:func:`simple_reflow.sampler.sample`).
      shape: one image's shape.
      num_classes: class count (0 = unconditional).
      key: the sampling key; sample ``i`` uses ``fold_in(key, i)``.
      sample_fn: optional ``sample_fn(params, x1, cond) -> x0`` in place of
        :func:`simple_reflow.sampler.sample` on ``denoiser(params)`` (``denoiser``, ``grid``,
        ``solver`` and ``r`` are then unused), e.g. a FlowTurbo plan
        (:func:`simple_reflow.train.flowturbo_stage.make_plan_sample_fn`).
    """

    def fn(params, indices):
        x1 = pairs.noise_for_indices(key, indices, tuple(shape))
        cond = index_labels(key, indices, num_classes) if num_classes else None
        if sample_fn is not None:
            return to_uint8(sample_fn(params, x1, cond))
        x0, _ = sampler.sample(denoiser(params), x1, grid, solver=solver, r=r, cond=cond)
        return to_uint8(x0)

    return fn


def stream(
    host_batch: Callable,
    device_fn: Callable,
    num: int,
    batch_size: int,
    mesh,
    *,
    on_batch: Callable,
    desc: str = "",
    unit: str = "img",
):
    """Runs ``device_fn`` over indices ``0 … num − 1`` in global batches over all devices.

    Args:
      host_batch: ``host_batch(indices) -> dict`` of NumPy arrays for this host's slice of a
        batch (indices past ``num`` pad the last batch; their rows are dropped).
      device_fn: jitted ``device_fn(batch) -> dict`` of arrays with the batch on axis 0.
      num: number of items.
      batch_size: global batch, divisible by the device count.
      mesh: the data-parallel mesh.
      on_batch: ``on_batch(indices, outputs)`` with this host's valid rows (NumPy).
      desc, unit: progress bar (process 0), which shows items per second.
    """
    n_proc, pid = jax.process_count(), jax.process_index()
    if batch_size % mesh.size or batch_size % n_proc:
        raise ValueError(
            f"the batch of {batch_size} must divide over {mesh.size} devices and {n_proc} processes"
        )
    batch_size = min(batch_size, -(-num // mesh.size) * mesh.size)  # no more than needed
    per_host = batch_size // n_proc
    spec = PartitionSpec("data")
    with tqdm(total=num, desc=desc, unit=unit, disable=pid != 0) as bar:
        for start in range(0, num, batch_size):
            idx = np.arange(start + pid * per_host, start + (pid + 1) * per_host)
            batch = sharding.shard_batch(host_batch(idx), mesh)
            out = device_fn(batch)
            local = multihost_utils.global_array_to_host_local_array(out, mesh, spec)
            valid = idx < num
            on_batch(idx[valid], {k: np.asarray(v)[valid] for k, v in local.items()})
            bar.update(min(batch_size, num - start))  # tqdm shows the rate in {unit}/s


def sample_features(
    denoiser,
    params,
    grid,
    *,
    solver: str,
    r: float,
    shape,
    num_classes: int,
    key,
    featurize: Callable,
    dim: int,
    num: int,
    batch_size: int,
    mesh,
    keep_images: int = 0,
    desc: str = "sampling",
    sample_fn: Callable | None = None,
):
    """Feature statistics of ``num`` samples (indices ``0 … num − 1``), merged over hosts.

    ``featurize`` (uint8 images → ``[n, dim]``) runs in its own compiled function, so a
    network such as the Inception compiles once for every sampler it scores.

    ``denoiser(params)`` is the model (or ``sample_fn`` the sampler, :func:`make_index_sampler`);
    ``params`` are placed once, replicated over ``mesh``, and passed to the compiled sampler on
    every batch.

    Returns:
      ``(FeatureStats, images)``: the statistics of all samples, and this host's first
      ``keep_images`` uint8 images (for grids).
    """
    fn = compile_options.jit(
        make_index_sampler(
            denoiser,
            grid,
            solver=solver,
            r=r,
            shape=shape,
            num_classes=num_classes,
            key=key,
            sample_fn=sample_fn,
        )
    )
    params = jax.device_put(params, sharding.replicated(mesh))

    def device_fn(batch):  # features from the device-resident samples, in their own jit
        images = fn(params, batch["index"])
        return {"images": images, "features": featurize(images)}

    stats, kept = FeatureStats(dim), []

    def on_batch(indices, out):
        stats.update(out["features"])
        if sum(len(k) for k in kept) < keep_images:
            kept.append(out["images"])

    stream(
        lambda idx: {"index": idx.astype(np.int32)},
        device_fn,
        num,
        batch_size,
        mesh,
        on_batch=on_batch,
        desc=desc,
    )
    images = np.concatenate(kept)[:keep_images] if kept else None
    return stats.merged_across_processes(), images


def pixel_features(images_u8):
    """Flattened pixels in [−1, 1] (the library's image scale): the pixel-space FD's features."""
    return jnp.reshape(images_u8, (images_u8.shape[0], -1)).astype(jnp.float32) / 127.5 - 1.0


def dataset_features(
    source,
    featurize: Callable,
    *,
    dim: int,
    num: int,
    batch_size: int,
    mesh,
    desc: str = "reference images",
):
    """Feature statistics of a data source's first ``num`` images (uint8, as stored).

    Args:
      source: an image source (``simple_reflow.data``) whose ``get(indices)["x0"]`` is in
        [−1, 1] (``u8/127.5 − 1``, so the uint8 values are recovered exactly).
      featurize: uint8 images → ``[n, dim]`` features (on device).
    """
    stats = FeatureStats(dim)

    def host_batch(idx):
        x0 = source.get(np.minimum(idx, len(source) - 1))["x0"]
        return {"images": np.rint((x0 + 1.0) * 127.5).clip(0, 255).astype(np.uint8)}

    stream(
        host_batch,
        lambda b: {"features": featurize(b["images"])},
        num,
        batch_size,
        mesh,
        on_batch=lambda idx, out: stats.update(out["features"]),
        desc=desc,
    )
    return stats.merged_across_processes()
