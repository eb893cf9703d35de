"""The straight path and every conversion between parametrisations (METHOD.md §1).

One time convention for the whole library: data at ``t = 0``, noise at ``t = 1``,
``x_t = (1 - t) x0 + t x1``. A *denoiser* ``D(x_t, t) ≈ E[x0 | x_t]`` is the network's
output everywhere; velocity, noise prediction, EDM's σ-space and the log-SNR are derived
from it here and nowhere else.

All functions take ``t`` of shape ``[batch]`` (or a scalar) and images/vectors of shape
``[batch, ...]``; ``t`` is broadcast over the trailing axes.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "T_EPS",
    "EDM_SIGMA_MIN",
    "EDM_SIGMA_MAX",
    "EDM_T_MAX",
    "expand_t",
    "interpolate",
    "target_velocity",
    "velocity_from_denoised",
    "denoised_from_velocity",
    "noise_from_denoised",
    "score_from_denoised",
    "sigma_from_t",
    "t_from_sigma",
    "to_ve",
    "from_ve",
    "log_snr",
    "t_from_log_snr",
    "VP_BETA_MIN",
    "VP_BETA_MAX",
    "vp_alpha_sigma",
    "t_from_alpha_sigma",
    "to_straight",
    "from_straight",
]

T_EPS = 1e-5
"""Lower clip for t wherever a division by t occurs (METHOD.md §3)."""

EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0
EDM_T_MAX = EDM_SIGMA_MAX / (1.0 + EDM_SIGMA_MAX)
"""t = σ/(1 + σ) at EDM's σ_max = 80: 80/81."""


def expand_t(t, x):
    """Reshapes ``t`` ([batch] or scalar) to broadcast against ``x`` ([batch, ...])."""
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def interpolate(x0, x1, t):
    """x_t = (1 − t)·x0 + t·x1 (METHOD.md §1)."""
    tb = expand_t(t, x0)
    return (1.0 - tb) * x0 + tb * x1


def target_velocity(x0, x1):
    """u = dx_t/dt = x1 − x0."""
    return x1 - x0


def velocity_from_denoised(x_t, t, denoised):
    """v = (x_t − D)/t."""
    return (x_t - denoised) / expand_t(t, x_t)


def denoised_from_velocity(x_t, t, v):
    """D = x_t − t·v."""
    return x_t - expand_t(t, x_t) * v


def noise_from_denoised(x_t, t, denoised):
    """ε̂ = (x_t − (1 − t)·D)/t."""
    tb = expand_t(t, x_t)
    return (x_t - (1.0 - tb) * denoised) / tb


def score_from_denoised(x_t, t, denoised):
    """∇log p_t(x_t) = −ε̂/t = −(x_t − (1 − t)·D)/t² for x_t = (1 − t)x0 + t·ε (Tweedie;
    METHOD.md §9)."""
    tb = expand_t(t, x_t)
    return -(x_t - (1.0 - tb) * denoised) / (tb * tb)


def sigma_from_t(t):
    """EDM noise level σ = t/(1 − t)."""
    return t / (1.0 - t)


def t_from_sigma(sigma):
    """Flow time t = σ/(1 + σ)."""
    return sigma / (1.0 + sigma)


def to_ve(x_t, t):
    """EDM variance-exploding coordinates x_VE = x_t/(1 − t)."""
    return x_t / (1.0 - expand_t(t, x_t))


def from_ve(x_ve, t):
    """Inverse of :func:`to_ve`: x_t = (1 − t)·x_VE."""
    return x_ve * (1.0 - expand_t(t, x_ve))


def log_snr(t):
    """λ(t) = log((1 − t)/t), the log signal-to-noise ratio of the straight path."""
    return jnp.log1p(-t) - jnp.log(t)


def t_from_log_snr(lam):
    """Inverse of :func:`log_snr`: t = S(−λ), S the logistic function."""
    return 1.0 / (1.0 + jnp.exp(lam))


# --- Other interpolants α_s·x0 + σ_s·ε as reparametrisations of the straight path (METHOD.md §9).

VP_BETA_MIN = 0.1
VP_BETA_MAX = 20.0
"""β(s) of the variance-preserving path (Song et al. 2021's VP SDE, the schedule of Kim et al.
2025's interpolant conversion): β(s) = β_min + (β_max − β_min)·s."""


def vp_alpha_sigma(s, beta_min=VP_BETA_MIN, beta_max=VP_BETA_MAX):
    """(α_s, σ_s) of the variance-preserving path x_s = α_s·x0 + σ_s·ε, data at s = 0.

    T(s) = ∫₀ˢ β = β_min·s + (β_max − β_min)·s²/2, α_s = exp(−T/2), σ_s = √(1 − exp(−T)), so
    α² + σ² = 1. At s = 1, α = e^{−5.025} ≈ 0.0066: a chain started at σ_1·x1 neglects α_1·x0,
    as the straight-path sampler started at t < 1 neglects (1 − t)·x0.
    """
    big_t = beta_min * s + 0.5 * (beta_max - beta_min) * s * s
    return jnp.exp(-0.5 * big_t), jnp.sqrt(-jnp.expm1(-big_t))


def t_from_alpha_sigma(alpha, sigma):
    """The straight-path time with the same signal-to-noise ratio as α·x0 + σ·ε:
    t = σ/(α + σ), so that (1 − t)/t = α/σ."""
    return sigma / (alpha + sigma)


def to_straight(x_s, alpha, sigma):
    """x_t = x_s/(α + σ): a point of the path α·x0 + σ·ε is the straight path's point at
    t = σ/(α + σ) scaled by α + σ (both write x0 + (σ/α)·ε up to scale). ``alpha``, ``sigma``:
    scalars or ``[batch]``."""
    return x_s / expand_t(alpha + sigma, x_s)


def from_straight(x_t, alpha, sigma):
    """Inverse of :func:`to_straight`: x_s = (α + σ)·x_t."""
    return x_t * expand_t(alpha + sigma, x_t)
