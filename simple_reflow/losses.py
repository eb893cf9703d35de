"""Per-sample distances and the flow-matching loss (METHOD.md §3).

For a pair (x0, x1) and a time t: x_t = (1 − t)x0 + t x1, Δ = D_θ(x_t, t) − x0 and a per-sample
distance d(Δ) ≥ 0. Simple ReFlow's loss normalisation divides each sample's distance by its own
stop-gradient value, mean_i d_i / sg(d_i + δ), whose gradient is ∇ log d_i.

:func:`flow_loss` takes the distance and the time distribution as callables, so a notebook
builds Simple ReFlow's loss with keywords alone::

    loss_fn = functools.partial(
        flow_loss, distance_fn=make_distance("hpf"), normalize=True,
        time_fn=functools.partial(time_dist.sample_time, dist="exp10"))

(``simple_reflow.train.configure`` builds the same from a config's ``loss`` and ``time``.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from simple_reflow import paths
from simple_reflow.time_dist import sample_time

__all__ = [
    "DISTANCES",
    "LOSS_SPACES",
    "sq_l2",
    "pseudo_huber",
    "gaussian_blur",
    "high_pass",
    "hpf_distance",
    "make_distance",
    "normalized_mean",
    "flow_loss",
]

DISTANCES = ("l2", "pseudo_huber", "hpf")
LOSS_SPACES = ("denoiser", "velocity")


def _flat(delta):
    return delta.reshape(delta.shape[0], -1)


def sq_l2(delta):
    """Squared ℓ2 distance, the mean over entries: ``[B, ...] -> [B]``."""
    return jnp.mean(jnp.square(_flat(delta)), axis=1)


def pseudo_huber(delta, c=None):
    """Pseudo-Huber √(‖Δ‖² + c²) − c with iCT's c = 0.00054·√dim by default."""
    flat = _flat(delta)
    if c is None:
        c = 0.00054 * math.sqrt(flat.shape[1])
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=1) + c * c) - c


def _gaussian_kernel(sigma):
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (x / sigma) ** 2)
    return k / jnp.sum(k)


def gaussian_blur(x, sigma=1.0):
    """Per-channel separable Gaussian blur G_s ∗ x of NHWC images, reflect padding.

    Args:
      x: ``[B, H, W, C]``.
      sigma: the blur's standard deviation in pixels.
    """
    k = _gaussian_kernel(sigma).astype(x.dtype)
    r = (k.shape[0] - 1) // 2
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    h, w = x.shape[1], x.shape[2]
    # Separable: rows then columns, as sums of shifted copies (kernels are tiny).
    rows = sum(k[i] * xp[:, i : i + h, :, :] for i in range(k.shape[0]))
    return sum(k[j] * rows[:, :, j : j + w, :] for j in range(k.shape[0]))


def high_pass(x, sigma=1.0):
    """H(Δ) = Δ − G_s ∗ Δ [filter: recon, METHOD.md §3]."""
    return x - gaussian_blur(x, sigma)


def hpf_distance(delta, weight=10.0, sigma=1.0):
    """High-pass-filter distance d = (‖Δ‖² + λ‖H(Δ)‖²)/dim [paper; filter recon].

    Divided by dim (a constant) so that λ = 0 gives :func:`sq_l2` exactly. On non-image
    data (``delta.ndim != 4``) H = 0 (METHOD.md §3).
    """
    d = sq_l2(delta)
    if delta.ndim == 4 and weight:
        d = d + weight * sq_l2(high_pass(delta, sigma))
    return d


def make_distance(distance="l2", *, hpf_weight=10.0, hpf_sigma=1.0):
    """The per-sample distance ``d(Δ): [B, ...] -> [B]`` that ``distance`` names.

    Args:
      distance: one of :data:`DISTANCES`: ``"l2"`` (:func:`sq_l2`), ``"pseudo_huber"``
        (:func:`pseudo_huber`, iCT's c) or ``"hpf"`` (:func:`hpf_distance`).
      hpf_weight: λ of the high-pass-filter distance, ≥ 0.
      hpf_sigma: the blur's standard deviation in pixels, > 0.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} is not one of {DISTANCES}.")
    if hpf_weight < 0:
        raise ValueError(f"hpf_weight={hpf_weight!r} must be >= 0.")
    if not hpf_sigma > 0:
        raise ValueError(f"hpf_sigma={hpf_sigma!r} must be > 0.")
    if distance == "l2":
        return sq_l2
    if distance == "pseudo_huber":
        return pseudo_huber
    return functools.partial(hpf_distance, weight=hpf_weight, sigma=hpf_sigma)


def normalized_mean(d, weight=None, delta=1e-8):
    """Simple ReFlow's normalised loss mean_i w_i·d_i / sg(d_i + δ) [paper].

    Its value is ≈ mean(w) and its gradient is mean_i w_i ∇ log(d_i + δ).
    """
    per = d / jax.lax.stop_gradient(d + delta)
    return jnp.mean(per if weight is None else weight * per)


def flow_loss(
    model,
    batch,
    key,
    *,
    distance_fn=sq_l2,
    time_fn=sample_time,
    normalize=False,
    space="denoiser",
    t_max=1.0,
):
    """The flow-matching loss on a batch of pairs.

    Args:
      model: a flow-time denoiser ``model(x_t, t, cond=None, *, key=None)``.
      batch: ``{"x0": [B, ...], "x1": [B, ...]}`` with optional ``"cond"`` and ``"weight"``.
      key: PRNG key for t and dropout.
      distance_fn: ``distance_fn(Δ [B, ...]) -> [B]``, e.g. :func:`make_distance`'s.
      time_fn: ``time_fn(key, shape) -> t``, e.g. ``functools.partial(sample_time,
        dist="exp10")``; t is clipped to ``[paths.T_EPS, t_max]``.
      normalize: Simple ReFlow's normalisation mean_i d_i / sg(d_i + δ) [paper].
      space: ``"denoiser"`` (Δ = D − x0) or ``"velocity"`` (v − u = (x0 − D)/t).
      t_max: the largest training time, in (0, 1] (80/81 for EDM-wrapped models).

    Returns:
      ``(loss, metrics)``: ``metrics["train/raw_distance"]`` is the batch mean of the raw
      per-sample distance d_i, which shows training progress where the normalised loss is
      ≈ 1 by construction.
    """
    if space not in LOSS_SPACES:
        raise ValueError(f"space={space!r} is not one of {LOSS_SPACES}.")
    if not 0 < t_max <= 1:
        raise ValueError(f"t_max={t_max!r} must lie in (0, 1].")
    x0, x1 = batch["x0"], batch["x1"]
    key_t, key_drop = jax.random.split(key)
    t = jnp.clip(time_fn(key_t, (x0.shape[0],)), paths.T_EPS, t_max).astype(x0.dtype)
    x_t = paths.interpolate(x0, x1, t)
    denoised = model(x_t, t, batch.get("cond"), key=key_drop)
    delta = denoised - x0
    if space == "velocity":  # v − u = (x0 − D)/t (METHOD.md §1)
        delta = -delta / paths.expand_t(t, delta)
    d = distance_fn(delta)
    weight = batch.get("weight")
    if normalize:
        loss = normalized_mean(d, weight, 1e-8 * math.prod(x0.shape[1:]))
    else:
        loss = jnp.mean(d if weight is None else weight * d)
    return loss, {"train/raw_distance": jnp.mean(d)}  # unnormalised: shows progress
