"""SDE sampling with the flow ODE's marginals, on the straight or the VP path (Kim et al.,
NeurIPS 2025; METHOD.md §9).

**Straight path.** Stepping from t to t − h (h > 0, ξ ~ N(0, I)), Euler–Maruyama on
dx = [−v(x, t) + (g(t)²/2)·∇log p_t(x)]·d(−t) + g(t)·dW:

    x_{t−h} = x_t − h·v(x_t, t) + h·(g(t)²/2)·∇log p_t(x_t) + g(t)·√h·ξ,

with v = (x − D)/t and ∇log p_t(x) = −(x − (1 − t)·D(x, t))/t² from the same denoiser
(:func:`simple_reflow.paths.score_from_denoised`). Its marginals are those of the ODE for every
diffusion schedule g: in reverse time r = −t the Fokker–Planck equation of the SDE,
∂_r p = ∇·(p·v) − (g²/2)·∇·(p·∇log p) + (g²/2)·Δp = ∇·(p·v), is the ODE's continuity
equation (derived here; the paper's inference-time SDE conversion states the same family).
g = 0 is the Euler ODE sampler. One network call per step; the step into t = 0 is finite
(h·v = x − D and h·score·g²/2 = −(g²/2)·ε̂ there).

**Other paths (interpolant conversion).** A path x_s = α_s·x0 + σ_s·ε is the straight path
reparametrised: x_s = (α_s + σ_s)·x_{t(s)} with t(s) = σ_s/(α_s + σ_s) (the same
signal-to-noise ratio, :func:`simple_reflow.paths.t_from_alpha_sigma`), so the straight path's
denoiser serves it unchanged: D_s(x_s) = D(x_s/(α_s + σ_s), t(s)) (:func:`denoise_on_path`).
On it ε̂ = (x − α·D)/σ, v = α'·D + σ'·ε̂ and ∇log p_s = −ε̂/σ (Tweedie), and the same
Euler–Maruyama step runs in s. With g = 0 it is the same ODE as the straight path's, written in
other coordinates (the samples agree as the steps shrink: tests/test_sde.py); with g > 0 the
diffusion acts in the new coordinates, which on the VP path (:func:`simple_reflow.paths.
vp_alpha_sigma`, the schedule of the paper's code) gives the paper's VP-SDE. ``path`` names the
path: ``"linear"`` (the library's straight path, s = t), ``"vp"``, or a callable
``s -> (α_s, σ_s)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import paths, sampler

__all__ = ["PATHS", "path_coefficients", "denoise_on_path", "sde_update", "sample_sde"]

PATHS = ("linear", "vp")


def _alpha_sigma_fn(path):
    if callable(path):
        return path
    if path == "vp":
        return paths.vp_alpha_sigma
    if path == "linear":
        return lambda s: (1.0 - s, s)
    raise ValueError(f"path={path!r} is not one of {PATHS} or a callable s -> (alpha, sigma).")


def path_coefficients(path, s):
    """(α_s, σ_s, dα/ds, dσ/ds) of a path at ``s`` (a scalar or ``[batch]``; the derivatives
    by forward-mode differentiation of the schedule, elementwise)."""
    s = jnp.asarray(s)
    (alpha, sigma), (d_alpha, d_sigma) = jax.jvp(_alpha_sigma_fn(path), (s,), (jnp.ones_like(s),))
    return alpha, sigma, d_alpha, d_sigma


def denoise_on_path(denoise_fn, x_s, s, *, path="linear", cond=None):
    """E[x0 | x_s] on ``path`` from the straight path's denoiser: D(x_s/(α + σ), σ/(α + σ)).

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B], cond) -> D [B, ...]``.
      x_s: ``[B, ...]``; s: a scalar or ``[B]`` in (0, 1].
    """
    s = jnp.broadcast_to(jnp.asarray(s, x_s.dtype), (x_s.shape[0],))
    if path == "linear":
        return denoise_fn(x_s, s, cond)
    alpha, sigma = _alpha_sigma_fn(path)(s)
    return denoise_fn(
        paths.to_straight(x_s, alpha, sigma), paths.t_from_alpha_sigma(alpha, sigma), cond
    )


def _diffusion_fn(diffusion):
    if callable(diffusion):
        return diffusion
    if not float(diffusion) >= 0.0:
        raise ValueError(f"diffusion={diffusion!r} must be a float ≥ 0 or a callable g(s).")
    return lambda s, c=float(diffusion): c


def sde_update(x, denoised, s, s_next, noise, *, diffusion=1.0, path="linear"):
    """One Euler–Maruyama step from s to s_next < s given the denoiser's output at (x, s); no
    network call (the searches of :mod:`simple_reflow.search` reuse the denoised lookahead).

    Args:
      x, denoised, noise: ``[B, ...]`` (noise ~ N(0, I)).
      s, s_next: scalars or ``[B]`` (per-element times, as Rollover Budget Forcing needs).
      diffusion: g, a float ≥ 0 or a callable ``g(s)`` (elementwise on a scalar or ``[B]``).
      path: ``"linear"``, ``"vp"`` or a callable ``s -> (α, σ)``.

    Returns:
      x at s_next, ``[B, ...]``.
    """
    s = jnp.asarray(s, x.dtype)
    h = paths.expand_t(s - jnp.asarray(s_next, x.dtype), x)
    if path == "linear":
        v = paths.velocity_from_denoised(x, s, denoised)
        score = paths.score_from_denoised(x, s, denoised)
    else:
        alpha, sigma, d_alpha, d_sigma = (paths.expand_t(c, x) for c in path_coefficients(path, s))
        eps = (x - alpha * denoised) / sigma
        v = d_alpha * denoised + d_sigma * eps
        score = -eps / sigma
    g = paths.expand_t(jnp.asarray(_diffusion_fn(diffusion)(s), x.dtype), x)
    return x - h * v + h * (0.5 * g * g) * score + g * jnp.sqrt(h) * noise


def sample_sde(denoise_fn, x1, grid, key, *, diffusion=1.0, path="linear", cond=None):
    """Samples data from noise ``x1`` with the marginal-preserving SDE (METHOD.md §9).

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B], cond) -> D [B, ...]`` on the straight path.
      x1: ``[B, ...]`` noise; the chain starts at ``σ(grid[0])·x1`` (``grid[0]·x1`` on the
        straight path).
      grid: concrete decreasing times ``[N + 1]`` of ``path`` (:mod:`simple_reflow.grids`).
      key: PRNG key of the injected noise (one ``fold_in`` per step).
      diffusion: g, a float ≥ 0 or a callable ``g(s) -> scalar`` of a traced scalar s.
      path: ``"linear"``, ``"vp"`` or a callable ``s -> (α_s, σ_s)`` (module docstring).
      cond: optional conditioning passed to ``denoise_fn``.

    Returns:
      ``(x0, nfe)``: samples ``[B, ...]`` and the network calls, N.
    """
    g = sampler.validate_grid(grid, "euler")
    if g[1] > g[0]:
        raise ValueError("sample_sde needs a decreasing grid (from noise to data).")
    _diffusion_fn(diffusion)
    _alpha_sigma_fn(path)
    x = x1 * path_coefficients(path, jnp.asarray(float(g[0]), x1.dtype))[1]
    steps = jnp.asarray(np.stack([g[:-1], g[1:]], axis=1), jnp.float32)

    def step(x, inp):
        i, st = inp
        s, s_next = st[0].astype(x.dtype), st[1].astype(x.dtype)
        denoised = denoise_on_path(denoise_fn, x, s, path=path, cond=cond)
        xi = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return sde_update(x, denoised, s, s_next, xi, diffusion=diffusion, path=path), None

    x, _ = jax.lax.scan(step, x, (jnp.arange(len(g) - 1), steps))
    return x, len(g) - 1
