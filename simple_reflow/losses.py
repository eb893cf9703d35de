"""Per-sample distances and the flow-matching loss (METHOD.md §3).

For a pair (x0, x1) and a time t: x_t = (1 − t)x0 + t x1, Δ = D_θ(x_t, t) − x0 and a per-sample
distance d(Δ) ≥ 0. Simple ReFlow's loss normalisation divides each sample's distance by its own
stop-gradient value, mean_i d_i / sg(d_i + δ), whose gradient is ∇ log d_i.
"""

from __future__ import annotations

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
    "per_sample_distance",
    "normalized_mean",
    "flow_loss",
    "validate_loss_config",
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


def per_sample_distance(delta, cfg):
    """Dispatches on ``loss.distance``: ``[B, ...] -> [B]``."""
    if cfg.distance == "l2":
        return sq_l2(delta)
    if cfg.distance == "pseudo_huber":
        return pseudo_huber(delta)
    if cfg.distance == "hpf":
        return hpf_distance(delta, cfg.hpf_weight, cfg.hpf_sigma)
    raise ValueError(f"loss.distance={cfg.distance!r} is not one of {DISTANCES}.")


def normalized_mean(d, weight=None, delta=1e-8):
    """Simple ReFlow's normalised loss mean_i w_i·d_i / sg(d_i + δ) [paper].

    Its value is ≈ mean(w) and its gradient is mean_i w_i ∇ log(d_i + δ).
    """
    per = d / jax.lax.stop_gradient(d + delta)
    return jnp.mean(per if weight is None else weight * per)


def flow_loss(model, batch, key, cfg, time_cfg):
    """The flow-matching loss on a batch of pairs.

    Args:
      model: a flow-time denoiser ``model(x_t, t, cond=None, *, key=None)``.
      batch: ``{"x0": [B, ...], "x1": [B, ...]}`` with optional ``"cond"`` and ``"weight"``.
      key: PRNG key for t and dropout.
      cfg: the ``loss`` config section (distance, normalize, space, hpf_*).
      time_cfg: the ``time`` config section.

    Returns:
      ``(loss, metrics)``.
    """
    x0, x1 = batch["x0"], batch["x1"]
    key_t, key_drop = jax.random.split(key)
    t = sample_time(
        key_t, (x0.shape[0],), time_cfg.dist, a=time_cfg.u_shape_a,
        mean=time_cfg.logit_mean, std=time_cfg.logit_std,
    )
    t = jnp.clip(t, paths.T_EPS, time_cfg.get("t_max", 1.0)).astype(x0.dtype)
    x_t = paths.interpolate(x0, x1, t)
    denoised = model(x_t, t, batch.get("cond"), key=key_drop)
    delta = denoised - x0
    if cfg.space == "velocity":  # v − u = (x0 − D)/t (METHOD.md §1)
        delta = -delta / paths.expand_t(t, delta)
    d = per_sample_distance(delta, cfg)
    weight = batch.get("weight")
    if cfg.normalize:
        loss = normalized_mean(d, weight, 1e-8 * math.prod(x0.shape[1:]))
    else:
        loss = jnp.mean(d if weight is None else weight * d)
    return loss, {"train/distance": jnp.mean(d)}


def validate_loss_config(cfg):
    """Checks a ``loss`` config section; raises ``ValueError`` naming the bad field."""
    if cfg.get("kind", "flow") not in ("flow", "edm"):
        raise ValueError(f"loss.kind={cfg.kind!r} is not one of ('flow', 'edm').")
    if cfg.distance not in DISTANCES:
        raise ValueError(f"loss.distance={cfg.distance!r} is not one of {DISTANCES}.")
    if cfg.space not in LOSS_SPACES:
        raise ValueError(f"loss.space={cfg.space!r} is not one of {LOSS_SPACES}.")
    if cfg.hpf_weight < 0:
        raise ValueError(f"loss.hpf_weight={cfg.hpf_weight!r} must be >= 0.")
    if not cfg.hpf_sigma > 0:
        raise ValueError(f"loss.hpf_sigma={cfg.hpf_sigma!r} must be > 0.")
