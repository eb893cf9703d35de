"""ODE solvers for the flow dx/dt = v(x, t) = (x − D(x, t))/t (METHOD.md §4).

One entry point, :func:`sample`, integrates from t = grid[0] down to grid[-1] with Euler, Heun
(EDM's, last step into t = 0 Euler) or DPM-Solver-2 (data-prediction form, ratio r), or steps a
two-time (average-velocity) model with ``solver="mean"`` (MeanFlow / SplitMeanFlow, METHOD.md
§9: z_r = z_t − (t − r)·u(z_t, r, t), one NFE per interval), or runs FlowTurbo's
pseudo-corrector (``solver="pseudo_heun"``: Heun reusing the previous step's second velocity,
one NFE per interval after the first), and returns the samples with the NFE actually spent.
Grids are concrete NumPy arrays, so the NFE is known before tracing; the steps run in one
``lax.scan``, with at most one special step at each end.
:func:`integrate` is the same machinery from an arbitrary state, in either time direction
(Euler and Heun), used by the forward pair generator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import paths

__all__ = ["SOLVERS", "nfe_of", "grid_for_budget", "integrate", "sample", "validate_grid"]

SOLVERS = ("euler", "heun", "dpm2", "mean", "pseudo_heun")
"""``"mean"`` needs a two-time denoiser ``denoise_fn(x_t, t, cond, r=r)`` (METHOD.md §9)."""


def validate_grid(grid, solver):
    """Checks a grid: 1-D, ≥ 2 points, strictly monotone, in [0, 1]; returns it as float64."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not one of {SOLVERS}.")
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.shape[0] < 2:
        raise ValueError(f"a grid needs at least 2 time points, got shape {g.shape}.")
    diffs = np.diff(g)
    if not (np.all(diffs < 0) or np.all(diffs > 0)):
        raise ValueError("a grid must be strictly monotone (never clip a grid).")
    if g.min() < 0 or g.max() > 1:
        raise ValueError(f"grid times must lie in [0, 1], got [{g.min()}, {g.max()}].")
    if solver in ("dpm2", "mean") and diffs[0] > 0:
        raise ValueError(f"{solver} integrates towards the data only (a decreasing grid).")
    if diffs[0] > 0 and g[0] == 0:
        raise ValueError("an increasing grid must start at t_min > 0 (v is singular at t = 0).")
    return g


def _plan(g, solver):
    """Splits the steps into (head, body, tail): head/tail are first-order special steps."""
    steps = list(zip(g[:-1], g[1:], strict=True))
    head = tail = None
    if solver == "dpm2" and steps and steps[0][0] == 1.0:
        head, steps = steps[0], steps[1:]  # λ(1) = −∞: the step degenerates to first order
    if solver in ("heun", "dpm2") and steps and steps[-1][1] == 0.0:
        tail, steps = steps[-1], steps[:-1]  # the last step into t = 0 is x' = D
    return head, steps, tail


def nfe_of(grid, solver):
    """The exact number of network evaluations :func:`sample` spends on ``grid``."""
    g = validate_grid(grid, solver)
    if solver in ("euler", "mean"):
        return len(g) - 1
    if solver == "pseudo_heun":  # one call to start, one per step, none into t = 0
        return len(g) - int(g[-1] == 0.0)
    head, body, tail = _plan(g, solver)
    return 2 * len(body) + (head is not None) + (tail is not None)


def grid_for_budget(budget, solver, grid_fn, max_intervals=4096):
    """The grid with the most intervals whose NFE does not exceed ``budget``.

    Args:
      budget: the NFE budget.
      solver: the solver that will run on the grid.
      grid_fn: ``grid_fn(n) -> grid`` with n intervals.
      max_intervals: the largest n tried (a grid with a fixed set of times, such as a BOSS
        grid over N candidates, passes N: a larger budget then gets the N-interval grid).

    Returns:
      ``(grid, nfe)``; raises ``ValueError`` if even one interval costs more than the budget.
    """
    best = None
    for n in range(1, max_intervals + 1):
        g = grid_fn(n)
        nfe = nfe_of(g, solver)
        if nfe > budget:  # the NFE never decreases with n
            break
        best = (g, nfe)
    if best is None:
        raise ValueError(f"no {solver} grid fits an NFE budget of {budget}.")
    return best


def _velocity(denoise_fn, x, t, cond):
    tb = jnp.full((x.shape[0],), t, x.dtype)
    return paths.velocity_from_denoised(x, tb, denoise_fn(x, tb, cond))


def _denoise(denoise_fn, x, t, cond):
    return denoise_fn(x, jnp.full((x.shape[0],), t, x.dtype), cond)


def _first_order(denoise_fn, x, s, t_next, cond):
    """x' = (t'/s)·x + (1 − t'/s)·D(x, s): Euler, written in data-prediction form."""
    ratio = t_next / s
    return ratio * x + (1.0 - ratio) * _denoise(denoise_fn, x, s, cond)


def _mean_step(denoise_fn, x, s, t_next, cond):
    """z_r = (r/t)·z_t + (1 − r/t)·D_u(z_t, r, t) = z_t − (t − r)·u(z_t, r, t), t = s, r = t'
    (METHOD.md §9 [recon: the denoiser form]): exact for the exact average velocity."""
    tb, rb = (jnp.full((x.shape[0],), v, x.dtype) for v in (s, t_next))
    ratio = t_next / s
    return ratio * x + (1.0 - ratio) * denoise_fn(x, tb, cond, r=rb)


def _heun_step(denoise_fn, x, s, t_next, cond):
    d1 = _velocity(denoise_fn, x, s, cond)
    x_euler = x + (t_next - s) * d1
    d2 = _velocity(denoise_fn, x_euler, t_next, cond)
    return x + (t_next - s) * 0.5 * (d1 + d2)


def _dpm2_step(denoise_fn, x, s, t_next, cond, r):
    """One DPM-Solver-2 step s → t' [paper: name and r; update: recon, METHOD.md §4]."""
    lam_s, lam_t = paths.log_snr(s), paths.log_snr(t_next)
    h = lam_t - lam_s
    t_mid = paths.t_from_log_snr(lam_s + r * h)
    d_s = _denoise(denoise_fn, x, s, cond)
    u = (t_mid / s) * x + (1.0 - t_mid / s) * d_s
    d_m = _denoise(denoise_fn, u, t_mid, cond)
    mix = (1.0 - 1.0 / (2.0 * r)) * d_s + (1.0 / (2.0 * r)) * d_m
    return (t_next / s) * x + (1.0 - t_next / s) * mix


def _pseudo_heun(denoise_fn, x, g, cond, nfe, trajectory):
    """FlowTurbo's pseudo-corrector (Zhao et al. 2024, METHOD.md §9): Heun whose first velocity
    is the previous step's second, v₁ ← v(x̃_i, t_i) at the previous predictor point x̃_i (as
    the authors' ``one_step_pseudo_corrector``), so one network call per step after the first.
    A last step into t = 0 (where v is singular) is Euler on the carried velocity, no call.
    Second order: x̃_i − x_i = O(h²), so the reused velocity is off by O(h²)."""
    steps = list(zip(g[:-1], g[1:], strict=True))
    tail = steps.pop() if g[-1] == 0.0 else None
    v = _velocity(denoise_fn, x, float(g[0]), cond)

    def step(carry, st):
        x, v1 = carry
        s, t_next = st[0].astype(x.dtype), st[1].astype(x.dtype)
        v2 = _velocity(denoise_fn, x + (t_next - s) * v1, t_next, cond)
        x = x + (t_next - s) * 0.5 * (v1 + v2)
        return (x, v2), (x if trajectory else None)

    states = [x[None]]
    if steps:
        (x, v), traj = jax.lax.scan(step, (x, v), jnp.asarray(np.array(steps), jnp.float32))
        states.append(traj)
    if tail is not None:
        x = x + float(tail[1] - tail[0]) * v
        states.append(x[None])
    if trajectory:
        return x, nfe, jnp.concatenate(states, axis=0)
    return x, nfe


def integrate(denoise_fn, x, grid, *, solver="euler", r=0.4, cond=None, trajectory=False):
    """Integrates the flow ODE along ``grid`` from the state ``x`` at ``t = grid[0]``.

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B], cond) -> D [B, ...]``; for ``"mean"`` a
        two-time denoiser ``denoise_fn(x_t, t, cond, r=r [B]) -> D_u`` (METHOD.md §9).
      x: the state at ``grid[0]``, ``[B, ...]``.
      grid: concrete, strictly monotone times (decreasing towards data or increasing towards
        noise; DPM-Solver-2 and "mean" only decreasing).
      solver: "euler", "heun", "dpm2", "mean" (average-velocity steps, one NFE each) or
        "pseudo_heun" (FlowTurbo's pseudo-corrector: N + 1 NFE, N into t = 0).
      r: DPM-Solver-2's intermediate ratio.
      cond: optional conditioning passed to ``denoise_fn``.
      trajectory: also return the states at every grid point, ``[N + 1, B, ...]``.

    Returns:
      ``(x_end, nfe)`` or ``(x_end, nfe, states)``.
    """
    g = validate_grid(grid, solver)
    if solver == "dpm2" and not 0 < r < 1:
        raise ValueError(f"dpm2 ratio r={r!r} must lie in (0, 1).")
    nfe = nfe_of(g, solver)
    if solver == "pseudo_heun":
        return _pseudo_heun(denoise_fn, x, g, cond, nfe, trajectory)
    if solver in ("euler", "mean"):
        head, body, tail = None, list(zip(g[:-1], g[1:], strict=True)), None
    else:
        head, body, tail = _plan(g, solver)

    def step(x, st):
        s, t_next = st[0].astype(x.dtype), st[1].astype(x.dtype)
        if solver == "euler":
            x = _first_order(denoise_fn, x, s, t_next, cond)
        elif solver == "mean":
            x = _mean_step(denoise_fn, x, s, t_next, cond)
        elif solver == "heun":
            x = _heun_step(denoise_fn, x, s, t_next, cond)
        else:
            x = _dpm2_step(denoise_fn, x, s, t_next, cond, r)
        return x, (x if trajectory else None)

    states = [x[None]] if trajectory else None
    if head is not None:
        x = _first_order(denoise_fn, x, float(head[0]), float(head[1]), cond)
        if trajectory:
            states.append(x[None])
    if body:
        x, traj = jax.lax.scan(step, x, jnp.asarray(np.array(body), jnp.float32))
        if trajectory:
            states.append(traj)
    if tail is not None:
        x = _first_order(denoise_fn, x, float(tail[0]), float(tail[1]), cond)
        if trajectory:
            states.append(x[None])
    if trajectory:
        return x, nfe, jnp.concatenate(states, axis=0)
    return x, nfe


def sample(denoise_fn, x1, grid, *, solver="dpm2", r=0.4, cond=None):
    """Generates data from noise ``x1`` along a decreasing grid (METHOD.md §4).

    The integration starts at x = grid[0]·x1 (for grid[0] = t_max < 1 the data part of x_{t_max}
    is neglected, METHOD.md §2 [recon]) and ends at grid[-1] (0 for a full solve). With
    ``solver="mean"`` a two-time model takes one average-velocity step per interval: on
    ``grids.uniform_grid(1)`` the 1-NFE sample x0 = x1 − u(x1, 0, 1) (MeanFlow Alg. 2).

    Returns:
      ``(x0, nfe)``: samples ``[B, ...]`` and the exact number of network evaluations.
    """
    g = validate_grid(grid, solver)
    if g[1] > g[0]:
        raise ValueError("sample() needs a decreasing grid (from noise to data).")
    return integrate(denoise_fn, x1 * float(g[0]), g, solver=solver, r=r, cond=cond)
