"""Teacher pairs for ReFlow (METHOD.md §2) and projected pairs (§3).

- Backward pairs: x1 ~ N(0, I) drawn from the pair's own global index, integrated by the
  teacher from t_max (starting at x = t_max·x1 [recon]) to 0; the pair is (x̂0, x1).
- Forward pairs: a real x0, integrated from t_min (starting at x = (1 − t_min)·x0, the mean of
  x_{t_min} [recon]) up to t_max; the noise end is x1 = ε̂(x_{t_max}, t_max) [recon].
- Projected pairs: backward pairs re-paired with real data by entropic OT
  (:func:`projected_pairs`, OTT-JAX, ``couplings/projection.py``).

Pairs on disk: :mod:`simple_reflow.pair_store`; mixing them into batches:
:mod:`simple_reflow.pair_mixing`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simple_reflow import paths, sampler

__all__ = [
    "noise_for_indices",
    "backward_pairs",
    "forward_pairs",
    "reconstruction_error",
    "projected_pairs",
]


def noise_for_indices(key, indices, shape, dtype=jnp.float32):
    """x1_i = N(0, I) drawn from ``fold_in(key, i)``: ``[n] -> [n, *shape]``.

    The one per-index noise of the library (backward pairs, the couplings, index-seeded
    sampling): ``indices`` are global data indices, pair indices or LOOM-CFM noise seeds, so the
    same noise comes out on any number of devices and in any batch order.
    """
    shape = tuple(shape)
    draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, dtype)
    return jax.vmap(draw)(jnp.asarray(indices))


def backward_pairs(denoise_fn, key, indices, shape, grid, *, solver="heun", cond=None):
    """Noise → data pairs (x̂0, x1) for the given global indices.

    Args:
      denoise_fn: the teacher in flow time.
      key: the run's pair key; pair i uses ``fold_in(key, i)``.
      indices: ``[n]`` int32 global pair indices.
      shape: the data shape.
      grid: a decreasing grid from t_max to 0 (see ``grids.make_grid(..., t_max=...)``).

    Returns:
      ``(x0_hat, x1, nfe)``.
    """
    x1 = noise_for_indices(key, indices, shape)
    x0, nfe = sampler.sample(denoise_fn, x1, grid, solver=solver, cond=cond)
    return x0, x1, nfe


def forward_pairs(denoise_fn, x0, grid, *, solver="heun", cond=None):
    """Data → noise pairs (x0, x̂1) for real data ``x0 [n, ...]``.

    Args:
      grid: an increasing grid from t_min > 0 to t_max < 1.

    Returns:
      ``(x0, x1_hat, nfe)`` with x̂1 = ε̂(x_{t_max}, t_max) [recon].
    """
    g = sampler.validate_grid(grid, solver)
    if not g[1] > g[0]:
        raise ValueError("forward_pairs needs an increasing grid (from data to noise).")
    if g[-1] >= 1.0:
        raise ValueError("forward_pairs needs t_max < 1 (ε̂ divides by t, the data part by 1 − t).")
    x_end, nfe = sampler.integrate(
        denoise_fn, x0 * (1.0 - float(g[0])), g, solver=solver, cond=cond
    )
    t_end = jnp.full((x0.shape[0],), float(g[-1]), x0.dtype)
    return x0, paths.noise_from_denoised(x_end, t_end, denoise_fn(x_end, t_end, cond)), nfe + 1


def reconstruction_error(denoise_fn, forward, grid, *, solver="heun", cond=None):
    """Mean ``‖x̂0 − x0‖²/dim`` of forward pairs re-integrated backward from their noise end.

    The default displacement budget of Algorithm 2 (METHOD.md §3 [recon]).
    """
    x0_hat, _ = sampler.sample(denoise_fn, forward["x1"], grid, solver=solver, cond=cond)
    d = x0_hat - forward["x0"]
    return jnp.mean(jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1)) / d[0].size


BUDGET_PAIRS = 256  # forward pairs re-integrated for Algorithm 2's default budget


def projected_pairs(
    key,
    backward,
    real,
    *,
    epsilon=0.05,
    lam="balanced",
    draw="sample",
    denoise_fn=None,
    forward=None,
    grid=None,
    solver="heun",
):
    """Projected pairs ``(y_{j(i)}, x1_i)`` of backward pairs onto real data (METHOD.md §3).

    Args:
      key: PRNG key (draws ``j(i)`` from the plan's rows).
      backward: ``{"x0": [n, ...], "x1": [n, ...]}`` teacher pairs.
      real: ``[m, ...]`` real data.
      epsilon: entropic ε relative to the mean cost.
      lam: ``"balanced"`` (λ = ∞) or ``"search"`` (Algorithm 2).
      draw: ``"sample"`` j(i) from the plan's row i, or ``"argmax"``.
      denoise_fn, forward, grid, solver: for ``lam="search"``: the budget is the teacher's
        :func:`reconstruction_error` on the first :data:`BUDGET_PAIRS` forward pairs,
        re-integrated on the backward ``grid``.

    Returns:
      ``({"x0": [n, ...], "x1": [n, ...]}, metrics)``; metrics include the budget when searched.
    """
    from simple_reflow.couplings.projection import project_pairs

    if lam not in ("balanced", "search"):
        raise ValueError(f"lam={lam!r} is not one of ('balanced', 'search').")
    budget, metrics = None, {}
    if lam == "search":
        if forward is None or denoise_fn is None or grid is None:
            raise ValueError(
                "lam='search' needs forward pairs, the teacher (denoise_fn) and the "
                "backward grid for its budget."
            )
        first = {k: jnp.asarray(forward[k][:BUDGET_PAIRS]) for k in ("x0", "x1")}
        budget = reconstruction_error(denoise_fn, first, grid, solver=solver)
        metrics["projection/budget"] = budget
    project = jax.jit(project_pairs, static_argnames=("epsilon", "mode"))
    out, m = project(
        key,
        jnp.asarray(backward["x0"]),
        jnp.asarray(backward["x1"]),
        jnp.asarray(real),
        budget=budget,
        epsilon=float(epsilon),
        mode=draw,
    )
    return {"x0": out["x0"], "x1": out["x1"]}, {**metrics, **m}
