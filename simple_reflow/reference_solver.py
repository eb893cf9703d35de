"""An adaptive reference solver for the flow ODE (diffrax), as TorchCFM's and flow_matching's
dopri5.

:func:`solve_adaptive` integrates dx/dt = v(x, t) = (x − D(x, t))/t (METHOD.md §4) from
x_{t_start} = t_start·x1 down to ``t_end`` with an embedded Runge–Kutta pair (Dormand–Prince
5(4) or Tsitouras 5(4)) under step-size control (``rtol``, ``atol``; the error is measured over
the whole batch, so the batch shares its steps), then takes the last step into t = 0 as the
fixed-grid solvers do: x0 = D(x_{t_end}, t_end), the Euler step, whose error is O(t_end²) (v is
singular at t = 0). It returns the samples and the network evaluations actually spent, so
reference solves report their cost; the fixed 199-NFE Heun solve of :mod:`sampler` stays
available.
"""

from __future__ import annotations

import jax.numpy as jnp

from simple_reflow import paths

__all__ = ["METHODS", "solve_adaptive"]

# name: (diffrax solver class name, network evaluations per step after the first: both are
# FSAL pairs). Names, so that importing the library does not import diffrax (~0.5 s): only a
# solve does, through :func:`diffrax_solver`.
METHODS = {"dopri5": ("Dopri5", 6), "tsit5": ("Tsit5", 6)}


def diffrax_solver(method: str):
    """``(diffrax module, solver instance, evaluations per step)`` of ``METHODS[method]``."""
    import diffrax

    name, per_step = METHODS[method]
    return diffrax, getattr(diffrax, name)(), per_step


def solve_adaptive(
    denoise_fn,
    x1,
    *,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    cond=None,
    max_steps: int = 16384,
):
    """Solves the flow ODE from noise to data with step-size control.

    Args:
      denoise_fn: ``denoise_fn(x_t, t, cond) -> D``.
      x1: ``[B, ...]`` noise; the solve starts at ``t_start·x1``.
      t_start, t_end: integration interval (``1 ≥ t_start > t_end > 0``).
      rtol, atol: tolerances of the step-size controller.
      method: ``"dopri5"`` or ``"tsit5"``.
      cond: optional labels passed to ``denoise_fn``.
      max_steps: step budget (an error past it).

    Returns:
      ``(x0, nfe)``: samples ``[B, ...]`` and the network evaluations spent (a traced int32:
      1 + 6 per attempted step, accepted or rejected, + 1 for the last step into t = 0).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {tuple(METHODS)}.")
    if not 0.0 < t_end < t_start <= 1.0:
        raise ValueError(f"need 1 >= t_start > t_end > 0, got t_start={t_start}, t_end={t_end}.")
    diffrax, solver, per_step = diffrax_solver(method)

    def field(t, x, args):
        tb = jnp.full((x.shape[0],), t, x.dtype)
        return paths.velocity_from_denoised(x, tb, denoise_fn(x, tb, cond))

    x_start = jnp.asarray(x1, jnp.float32) * t_start
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t0=t_start,
        t1=t_end,
        dt0=-(t_start - t_end) / 64,
        y0=x_start,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    x_end = sol.ys[-1]
    x0 = denoise_fn(x_end, jnp.full((x_end.shape[0],), t_end, x_end.dtype), cond)
    nfe = 1 + per_step * jnp.asarray(sol.stats["num_steps"], jnp.int32) + 1
    return x0, nfe
