"""The average velocity of a flow and its exact value on an analytic teacher (METHOD.md §9).

Along the ODE trajectory through z_t (dz/dτ = v(z, τ), data at τ = 0), for r < t,

    u(z_t, r, t) = (z_t − z_r)/(t − r) = (1/(t − r))·∫_r^t v(z_τ, τ) dτ,   u(z, t, t) = v(z, t),

(MeanFlow, Geng et al. 2025, Eq. 3). A two-time network is a denoiser D_u(z_t, r, t) with
u = (z_t − D_u)/t [recon, METHOD.md §9], so z_r = (r/t)·z_t + (1 − r/t)·D_u; it is called as
``denoise_fn(x_t, t, cond, r=r)`` (:mod:`simple_reflow.models.two_time`).

The ground truth on an analytic teacher (any one-time denoiser; :class:`~simple_reflow.teachers.
GaussianMixture`) is u*(z, r, t) = (z − Φ_{t→r}(z))/(t − r) with Φ the accurate solve:
:func:`flow_map` integrates each sample over its own interval [r_i, t_i] with an embedded
Runge–Kutta pair (diffrax) under step-size control, in the dtype of ``z`` (float64 under
``jax.enable_x64`` for tests). Its derivatives are forward-mode (``jax.jvp``, diffrax's
``ForwardMode``), which is what MeanFlow's target needs; reverse mode is not supported.
"""

from __future__ import annotations

import jax.numpy as jnp

from simple_reflow import paths
from simple_reflow.reference_solver import METHODS, diffrax_solver

__all__ = [
    "average_velocity",
    "mean_step",
    "flow_map",
    "exact_average_velocity",
    "exact_mean_denoiser",
]


def average_velocity(denoise_fn, z, r, t, cond=None, *, key=None):
    """u(z, r, t) = (z − D_u(z, r, t))/t of a two-time denoiser [recon, METHOD.md §9].

    Args:
      denoise_fn: ``denoise_fn(x_t, t, cond, r=r[, key=key]) -> D_u``.
      z: ``[B, ...]`` the state at time t.
      r, t: ``[B]`` start and end of the interval, 0 ≤ r ≤ t, t > 0.
      cond: optional conditioning.
      key: dropout key passed to the model (omitted when ``None``).
    """
    extra = {} if key is None else {"key": key}
    return paths.velocity_from_denoised(z, t, denoise_fn(z, t, cond, r=r, **extra))


def mean_step(z_t, r, t, denoised):
    """z_r = (r/t)·z_t + (1 − r/t)·D_u = z_t − (t − r)·u (METHOD.md §9)."""
    ratio = paths.expand_t(r, z_t) / paths.expand_t(t, z_t)
    return ratio * z_t + (1.0 - ratio) * denoised


def flow_map(
    denoise_fn,
    z,
    t,
    r,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    t_floor: float = 1e-4,
    method: str = "dopri5",
    cond=None,
    max_steps: int = 16384,
):
    """Φ_{t→r}(z): the flow ODE solved from z at time t_i down to r_i, per sample.

    Each sample runs on its own interval through τ_i(s) = t_i + s·(r_i − t_i), s ∈ [0, 1],
    dz_i/ds = (r_i − t_i)·v(z_i, τ_i(s)), one diffrax solve for the batch (the step-size
    control measures the error over the whole batch). v = (z − D)/τ is singular at τ = 0, so
    an interval ending below ``t_floor`` is solved to ``t_floor`` and finished by the
    first-order data-prediction step z_r = (r/τ)·z + (1 − r/τ)·D(z, τ), whose error is
    O(t_floor²) (as :func:`~simple_reflow.reference_solver.solve_adaptive` ends at t = 0).

    Args:
      denoise_fn: a one-time denoiser ``denoise_fn(x_t, t [B], cond) -> D``.
      z: ``[B, ...]`` states at times ``t``.
      t, r: ``[B]`` start and end times, 0 ≤ r ≤ t ≤ 1 (r = t gives z back).
      rtol, atol: tolerances of the step-size controller.
      t_floor: the smallest time the ODE is integrated to, > 0.
      method: ``"dopri5"`` or ``"tsit5"``.
      cond: optional conditioning passed to ``denoise_fn``.
      max_steps: step budget (an error past it).

    Returns:
      ``(z_r, nfe)``: ``[B, ...]`` and the network evaluations spent (a traced int32).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {tuple(METHODS)}.")
    if not t_floor > 0:
        raise ValueError(f"t_floor={t_floor!r} must be > 0 (v is singular at t = 0).")
    diffrax, solver, per_step = diffrax_solver(method)
    t = jnp.broadcast_to(jnp.asarray(t, z.dtype), z.shape[:1])
    r = jnp.broadcast_to(jnp.asarray(r, z.dtype), z.shape[:1])
    r_end = jnp.maximum(r, jnp.minimum(t, t_floor))  # never integrate upwards past t

    def field(s, y, args):
        tau = t + jnp.asarray(s, z.dtype) * (r_end - t)
        v = paths.velocity_from_denoised(y, tau, denoise_fn(y, tau, cond))
        return paths.expand_t(r_end - t, y) * v

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t0=0.0,
        t1=1.0,
        dt0=1.0 / 64,
        y0=z,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
        adjoint=diffrax.ForwardMode(),
    )
    z_end = sol.ys[-1]
    # The last step r_end → r < r_end (only below t_floor): first order, a no-op where r = r_end.
    ratio = paths.expand_t(jnp.where(r < r_end, r / r_end, jnp.ones_like(r)), z_end)
    z_r = ratio * z_end + (1.0 - ratio) * denoise_fn(z_end, r_end, cond)
    nfe = 1 + per_step * jnp.asarray(sol.stats["num_steps"], jnp.int32) + 1
    return z_r, nfe


def exact_average_velocity(denoise_fn, z, r, t, *, cond=None, **solve_options):
    """u*(z, r, t) = (z − Φ_{t→r}(z))/(t − r), and v(z, t) where r = t (METHOD.md §9).

    Args:
      denoise_fn: the one-time teacher ``denoise_fn(x_t, t, cond) -> D``.
      z: ``[B, ...]``; r, t: ``[B]`` with 0 ≤ r ≤ t ≤ 1, t > 0.
      cond: optional conditioning.
      **solve_options: :func:`flow_map`'s (``rtol``, ``atol``, ``t_floor``, ``method``, ...).
        The error of u* is the solve's error divided by t − r.

    Returns:
      ``[B, ...]`` the exact average velocity.
    """
    t = jnp.broadcast_to(jnp.asarray(t, z.dtype), z.shape[:1])
    r = jnp.broadcast_to(jnp.asarray(r, z.dtype), z.shape[:1])
    z_r, _ = flow_map(denoise_fn, z, t, r, cond=cond, **solve_options)
    gap = t - r
    safe = jnp.where(gap > 0, gap, jnp.ones_like(gap))
    u = (z - z_r) / paths.expand_t(safe, z)
    v = paths.velocity_from_denoised(z, t, denoise_fn(z, t, cond))
    return jnp.where(paths.expand_t(gap > 0, z), u, v)


def exact_mean_denoiser(denoise_fn, **solve_options):
    """The exact two-time denoiser of a one-time teacher: D_u* = z − t·u*(z, r, t).

    Returns:
      ``fn(x_t, t, cond=None, *, r=None, key=None)``, the protocol of a two-time model
      (``r=None``: the teacher itself; ``key`` is ignored), for :func:`~simple_reflow.sampler.
      sample` with ``solver="mean"`` and for the objectives of :mod:`simple_reflow.losses_mean`.
    """

    def fn(x_t, t, cond=None, *, r=None, key=None):
        del key
        t = jnp.broadcast_to(jnp.asarray(t, x_t.dtype), x_t.shape[:1])
        if r is None:
            return denoise_fn(x_t, t, cond)
        u = exact_average_velocity(denoise_fn, x_t, r, t, cond=cond, **solve_options)
        return paths.denoised_from_velocity(x_t, t, u)

    return fn
