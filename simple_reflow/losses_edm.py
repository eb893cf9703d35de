"""EDM's teacher-training loss, written for a flow-time denoiser (Karras et al. 2022, §5).

EDM trains a denoiser D_EDM(y + n; σ) on noise levels ln σ ~ N(P_mean, P_std²) with the weight
λ(σ) = (σ² + σ_d²)/(σ·σ_d)² (EDM eq. 8 and Table 1), which makes the effective training
target of the preconditioned network unit-variance at every σ. The library's models are flow
denoisers D(x_t, t); by METHOD.md §1, D(x_t, t) = D_EDM(x_t/(1 − t); t/(1 − t)), so one EDM
training example maps to flow time as

    σ = exp(P_mean + P_std·n),  n ~ N(0, 1),      t = σ/(1 + σ),
    x_VE = y + σ·ε,  ε ~ N(0, I),                 x_t = (1 − t)·x_VE,
    loss = mean_i λ(σ_i)·mean_pixels (D(x_t, t) − y)².

The only departure from EDM's code is the reduction: EDM sums the squared error over pixels
and averages over the batch; we average over pixels too (a constant factor, dim, that Adam's
update ignores up to its ε), so the loss reads ~1 at initialisation for any resolution.
EDM's geometric augmentation pipeline (and its ``augment_labels`` conditioning) is not used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simple_reflow import paths

__all__ = ["edm_sigma", "edm_weight", "edm_loss"]


def edm_sigma(key, batch: int, *, p_mean: float = -1.2, p_std: float = 1.2, dtype=jnp.float32):
    """EDM's training noise levels σ = exp(P_mean + P_std·n), n ~ N(0, 1): ``[batch]``."""
    n = jax.random.normal(key, (batch,), dtype)
    return jnp.exp(p_mean + p_std * n)


def edm_weight(sigma, sigma_data: float = 0.5):
    """EDM's loss weight λ(σ) = (σ² + σ_d²)/(σ·σ_d)² = 1/σ² + 1/σ_d² (EDM Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(
    model, batch, key, *, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5
):
    """EDM's denoising loss for a flow-time denoiser (module docstring for the formulas).

    Args:
      model: ``model(x_t, t, cond=None, *, key=None)`` → D ``[B, ...]``, a flow-time
        denoiser (an NNX module: dropout, and label dropout, are active because a key is
        passed).
      batch: ``{"x0": [B, ...]}`` clean data y in [−1, 1], optional ``"cond"`` int ``[B]``.
      key: PRNG key; split into (σ noise, ε noise, dropout) in that order.
      p_mean, p_std: EDM's log-normal noise-level distribution (−1.2, 1.2).
      sigma_data: EDM's data standard deviation σ_d (0.5).

    Returns:
      ``(loss, metrics)``: the scalar weighted loss, and ``train/edm_mse``, the unweighted
      mean squared error.
    """
    y = batch["x0"]
    key_sigma, key_eps, key_drop = jax.random.split(key, 3)
    sigma = edm_sigma(key_sigma, y.shape[0], p_mean=p_mean, p_std=p_std, dtype=y.dtype)
    eps = jax.random.normal(key_eps, y.shape, y.dtype)
    x_ve = y + paths.expand_t(sigma, y) * eps
    t = paths.t_from_sigma(sigma)
    x_t = paths.from_ve(x_ve, t)
    denoised = model(x_t, t, batch.get("cond"), key=key_drop)
    mse = jnp.mean(jnp.square(denoised - y).reshape(y.shape[0], -1), axis=1)
    loss = jnp.mean(edm_weight(sigma, sigma_data) * mse)
    return loss, {"train/edm_mse": jnp.mean(mse)}
