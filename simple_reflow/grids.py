"""Inference time grids on [0, 1] (METHOD.md §4).

Every grid is a NumPy float64 array ``[N + 1]`` with ``t_0 = 1`` and ``t_N = 0``, strictly
decreasing, so the sampler can count NFE statically. A model defined only up to t_max (an EDM
teacher: 80/81) uses ``scale_grid(grid, t_max)``; grids are never clipped.
"""

from __future__ import annotations

import numpy as np

from simple_reflow import paths

__all__ = [
    "GRIDS",
    "uniform_grid",
    "edm_grid",
    "sigmoid_grid",
    "scale_grid",
    "make_grid",
    "forward_grid",
]

GRIDS = ("uniform", "edm", "sigmoid")


def uniform_grid(n):
    """t_i = 1 − i/N, i = 0..N."""
    return np.linspace(1.0, 0.0, n + 1)


def edm_grid(n, rho=7.0, sigma_min=paths.EDM_SIGMA_MIN, sigma_max=paths.EDM_SIGMA_MAX):
    """EDM's ρ-schedule (EDM eq. 5) mapped to flow time, rescaled to t_0 = 1.

    σ_i = (σ_max^{1/ρ} + i/(N − 1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i < N, σ_N = 0, then
    t_i = σ_i/(1 + σ_i) divided by t(σ_max) so the grid starts at 1: scale it back with
    :func:`scale_grid` to start at EDM's t_max = 80/81.
    """
    if n < 2:
        raise ValueError(f"edm_grid needs n >= 2 intervals, got {n}.")
    i = np.arange(n)
    sig = sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    sig = np.append(sig**rho, 0.0)
    t = sig / (1.0 + sig)
    return t / t[0]


def sigmoid_grid(n, kappa=20.0):
    """t_i = (S(κ(½ − i/N)) − S(−κ/2)) / (S(κ/2) − S(−κ/2)) [recon]: dense at both ends."""

    def s(z):
        return 1.0 / (1.0 + np.exp(-z))

    i = np.arange(n + 1)
    t = (s(kappa * (0.5 - i / n)) - s(-kappa / 2)) / (s(kappa / 2) - s(-kappa / 2))
    return t  # t_0 = 1 and t_N = 0 exactly: numerator and denominator coincide


def scale_grid(grid, t_max):
    """t_i ↦ t_max·t_i for a model defined on [0, t_max] (METHOD.md §4)."""
    return np.asarray(grid, dtype=np.float64) * t_max


def make_grid(name, n, *, kappa=20.0, rho=7.0, t_max=1.0):
    """Builds a named grid with ``n`` intervals, scaled to end at ``t_max``."""
    if name == "uniform":
        g = uniform_grid(n)
    elif name == "edm":
        g = edm_grid(max(n, 2), rho) if n >= 2 else uniform_grid(n)
    elif name == "sigmoid":
        g = sigmoid_grid(n, kappa)
    else:
        raise ValueError(f"grid={name!r} is not one of {GRIDS}.")
    return scale_grid(g, t_max)


def forward_grid(name, n, *, t_min, t_max=1.0, **kw):
    """The increasing grid of forward pairs (data → noise, METHOD.md §2).

    The named grid ending at ``min(t_max, 1 − t_min)`` (ε̂ = (x − (1 − t)D)/t needs t < 1),
    reversed, with t = 0 replaced by ``t_min`` (the forward solve starts at x_{t_min}): the
    same times as the backward grid wherever they lie in (t_min, t_max].
    """
    g = np.sort(make_grid(name, n, t_max=min(t_max, 1.0 - t_min), **kw))
    return np.concatenate([[t_min], g[g > t_min]])
