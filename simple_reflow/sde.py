"""SDE sampling with the flow ODE's marginals (Kim et al., NeurIPS 2025; METHOD.md §9).

Stepping from t to t − h (h > 0, ξ ~ N(0, I)), Euler–Maruyama on
dx = [−v(x, t) + (g(t)²/2)·∇log p_t(x)]·d(−t) + g(t)·dW:

    x_{t−h} = x_t − h·v(x_t, t) + h·(g(t)²/2)·∇log p_t(x_t) + g(t)·√h·ξ,

with v = (x − D)/t and ∇log p_t(x) = −(x − (1 − t)·D(x, t))/t² from the same denoiser
(:func:`simple_reflow.paths.score_from_denoised`). Its marginals are those of the ODE for every
diffusion schedule g: in reverse time s = −t the Fokker–Planck equation of the SDE,
∂_s p = ∇·(p·v) − (g²/2)·∇·(p·∇log p) + (g²/2)·Δp = ∇·(p·v), is the ODE's continuity
equation (derived here; the paper's inference-time SDE conversion states the same family).
g = 0 is the Euler ODE sampler. One network call per step; the step into t = 0 is finite
(h·v = x − D and h·score·g²/2 = −(g²/2)·ε̂ there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import paths, sampler

__all__ = ["sample_sde"]


def sample_sde(denoise_fn, x1, grid, key, *, diffusion=1.0, cond=None):
    """Samples data from noise ``x1`` with the marginal-preserving SDE (METHOD.md §9).

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B], cond) -> D [B, ...]``.
      x1: ``[B, ...]`` noise; the chain starts at ``grid[0]·x1``.
      grid: concrete decreasing times ``[N + 1]`` (:mod:`simple_reflow.grids`).
      key: PRNG key of the injected noise (one ``fold_in`` per step).
      diffusion: g, a float ≥ 0 or a callable ``g(t) -> scalar`` of a traced scalar t.
      cond: optional conditioning passed to ``denoise_fn``.

    Returns:
      ``(x0, nfe)``: samples ``[B, ...]`` and the network calls, N.
    """
    g = sampler.validate_grid(grid, "euler")
    if g[1] > g[0]:
        raise ValueError("sample_sde needs a decreasing grid (from noise to data).")
    if not callable(diffusion) and not float(diffusion) >= 0.0:
        raise ValueError(f"diffusion={diffusion!r} must be a float ≥ 0 or a callable g(t).")
    g_fn = diffusion if callable(diffusion) else (lambda t, c=float(diffusion): c)
    x = x1 * float(g[0])
    steps = jnp.asarray(np.stack([g[:-1], g[1:]], axis=1), jnp.float32)

    def step(x, inp):
        i, st = inp
        s, t_next = st[0].astype(x.dtype), st[1].astype(x.dtype)
        h = s - t_next
        tb = jnp.full((x.shape[0],), s, x.dtype)
        denoised = denoise_fn(x, tb, cond)
        v = paths.velocity_from_denoised(x, tb, denoised)
        score = paths.score_from_denoised(x, tb, denoised)
        g_t = jnp.asarray(g_fn(s), x.dtype)
        xi = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        x = x - h * v + h * (0.5 * g_t * g_t) * score + g_t * jnp.sqrt(h) * xi
        return x, None

    x, _ = jax.lax.scan(step, x, (jnp.arange(len(g) - 1), steps))
    return x, len(g) - 1
