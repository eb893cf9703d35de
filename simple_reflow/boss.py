"""BOSS: Bellman optimal step sizes and straightening (Nguyen et al., ICLR 2024; METHOD.md §9).

Three pure pieces, the caller jits:

1. :func:`reference_trajectories`: the states ``[N + 1, B, ...]`` of B noises at every candidate
   time 1 = τ_0 > … > τ_N = 0 from an accurate solve — a fine Heun grid (each candidate interval
   split into ``substeps`` Heun steps, uniform except in an interval ending at t = 0, where they
   shrink quadratically because the last step into t = 0 is Euler, as in
   :mod:`simple_reflow.sampler`).
2. :func:`euler_cost_matrix`: c(i, j), the local error of one Euler step from τ_i to τ_j,
   c(i, j) = (1/B)·Σ_b ‖x_{τ_j} − (x_{τ_i} − (τ_i − τ_j)·v(x_{τ_i}, τ_i))‖², squared ℓ2 summed
   over the entries and averaged over the batch — as the authors' code
   (``ImageGeneration/sampling.py``, ``get_bellman_disc``, loss ``"l2_pixel"``:
   ``torch.sum(torch.square(·))`` accumulated over samples, divided by their count). The argmin
   of the programme does not depend on a positive factor, so a mean over entries would give the
   same grid. The authors record the reference states with Euler on the fine candidate grid
   itself; we use the accurate Heun solve of METHOD.md §9 [recon: the reference solver].
3. :func:`optimal_path` / :func:`optimal_grid`: the Bellman programme V_0(0) = 0,
   V_0(j > 0) = ∞, V_k(j) = min_{i<j} V_{k−1}(i) + c(i, j), O(N²K) in one ``lax.scan``; the
   argmin path to V_K(N) gives the K-step grid, an ordinary grid for :func:`sampler.sample`
   with ``solver="euler"``.

Straightening (:func:`straightening_pairs`, :func:`straightening_loss`) regresses the model's
velocity at x_{τ_i} on the chord (x_{τ_i} − x_{τ_j})/(τ_i − τ_j) of each chosen interval, as
the authors' ``get_redress_loss_fn`` (``ImageGeneration/losses.py``, loss ``"l2"``).
:mod:`simple_reflow.train.boss` saves a grid beside its model's snapshot (``boss_grid.json``,
checked against the snapshot's SHA-256) and runs the straightening fine-tune on the library's
fit loop (all weights, or low-rank adapters only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import losses, paths, sampler

__all__ = [
    "reference_trajectories",
    "euler_cost_matrix",
    "optimal_path",
    "optimal_grid",
    "straightening_pairs",
    "straightening_loss",
]


def _candidates(times):
    tau = np.asarray(times, dtype=np.float64)
    if tau.ndim != 1 or tau.shape[0] < 2 or not np.all(np.diff(tau) < 0):
        raise ValueError(f"candidate times must be a strictly decreasing 1-D grid, got {tau!r}.")
    if tau[-1] < 0 or tau[0] > 1:
        raise ValueError(f"candidate times must lie in [0, 1], got [{tau[-1]}, {tau[0]}].")
    return tau


def reference_trajectories(denoise_fn, x1, times, *, substeps=8, cond=None):
    """States of the flow ODE at every candidate time, from a fine Heun solve.

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B], cond) -> D [B, ...]``.
      x1: ``[B, ...]`` noise; the solve starts at ``times[0]·x1`` (METHOD.md §2).
      times: concrete candidate times ``[N + 1]``, strictly decreasing (τ_0 = 1, τ_N = 0).
      substeps: Heun steps per candidate interval (≈ 2·substeps NFE per interval); uniform,
        except t_k = τ_{N−1}·(1 − k/substeps)² in a last interval ending at 0.
      cond: optional conditioning passed to ``denoise_fn``.

    Returns:
      ``[N + 1, B, ...]``: the states x_{τ_i}, ``[0]`` the start and ``[N]`` the end.
    """
    tau = _candidates(times)
    if substeps < 1:
        raise ValueError(f"substeps={substeps!r} must be at least 1.")
    u = np.linspace(0.0, 1.0, substeps + 1)[:-1]
    pieces = [a + (b - a) * u for a, b in zip(tau[:-1], tau[1:], strict=True)]
    if tau[-1] == 0.0:  # quadratic spacing into t = 0: the last (Euler) substep is short
        pieces[-1] = tau[-2] * (1.0 - u) ** 2
    fine = np.concatenate(pieces + [tau[-1:]])
    _, _, states = sampler.integrate(
        denoise_fn, x1 * float(tau[0]), fine, solver="heun", cond=cond, trajectory=True
    )
    return states[::substeps]


def euler_cost_matrix(denoise_fn, trajectories, times, *, cond=None):
    """c(i, j) of one Euler step from τ_i to τ_j on reference states (BOSS; METHOD.md §9).

    The Euler step is written in data-prediction form,
    x_{τ_i} − (τ_i − τ_j)·v = (τ_j/τ_i)·x_{τ_i} + (1 − τ_j/τ_i)·D(x_{τ_i}, τ_i), so τ_j = 0
    needs no division by zero. One network call per candidate time i < N (``lax.map``), each
    row vectorised over j.

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B], cond) -> D [B, ...]``.
      trajectories: ``[N + 1, B, ...]`` reference states at ``times``
        (:func:`reference_trajectories`, or an exact flow).
      times: the candidate times ``[N + 1]``, strictly decreasing, τ_i > 0 for i < N.
      cond: optional conditioning.

    Returns:
      ``[N + 1, N + 1]`` float: c(i, j) for i < j, +∞ elsewhere (no step backwards or in place).
    """
    tau = _candidates(times)
    n1 = tau.shape[0]
    if trajectories.shape[0] != n1:
        raise ValueError(f"trajectories have {trajectories.shape[0]} time points, times has {n1}.")
    dtype = trajectories.dtype
    tau_j = jnp.asarray(tau, dtype)

    def row(args):
        x_i, t_i = args  # [B, ...], scalar
        d_i = denoise_fn(x_i, jnp.full((x_i.shape[0],), t_i, dtype), cond)
        ratio = paths.expand_t(tau_j / t_i, trajectories)  # [N + 1, 1, ...]
        pred = ratio * x_i[None] + (1.0 - ratio) * d_i[None]  # the Euler step to every τ_j
        err = (pred - trajectories).reshape(n1, x_i.shape[0], -1)
        return jnp.mean(jnp.sum(jnp.square(err), axis=2), axis=1)  # [N + 1]

    rows = jax.lax.map(row, (trajectories[:-1], tau_j[:-1]))  # [N, N + 1]
    cost = jnp.concatenate([rows, jnp.zeros((1, n1), dtype)], axis=0)
    upper = jnp.asarray(np.triu(np.ones((n1, n1), bool), k=1))
    return jnp.where(upper, cost, jnp.inf)


def optimal_path(cost, num_steps):
    """The Bellman programme: the cheapest path 0 → N with exactly ``num_steps`` steps.

    V_0(0) = 0, V_0(j > 0) = ∞, V_k(j) = min_{i<j} V_{k−1}(i) + c(i, j) (BOSS §3; METHOD.md §9),
    one ``lax.scan`` over k with the argmin parents, then a backward scan for the path.
    Jittable (``num_steps`` static); O(N²K) time, O(NK) memory beyond the cost matrix.

    Args:
      cost: ``[N + 1, N + 1]``, c(i, j) for i < j (+∞ or anything above ∞ elsewhere is ignored:
        only i < j is read).
      num_steps: K, with 1 ≤ K ≤ N.

    Returns:
      ``(indices [K + 1] int32, total)``: indices[0] = 0, indices[K] = N, strictly increasing;
      ``total`` the path's summed cost V_K(N).
    """
    n1 = cost.shape[0]
    if cost.ndim != 2 or cost.shape[1] != n1:
        raise ValueError(f"cost must be a square [N + 1, N + 1] matrix, got {cost.shape}.")
    if not 1 <= num_steps <= n1 - 1:
        raise ValueError(f"num_steps={num_steps!r} must lie in [1, {n1 - 1}] for {n1} times.")
    upper = jnp.asarray(np.triu(np.ones((n1, n1), bool), k=1))
    c = jnp.where(upper, cost, jnp.inf)
    v0 = jnp.full((n1,), jnp.inf, c.dtype).at[0].set(0.0)

    def bellman(v_prev, _):
        total = v_prev[:, None] + c  # [i, j]
        return jnp.min(total, axis=0), jnp.argmin(total, axis=0).astype(jnp.int32)

    v_k, parents = jax.lax.scan(bellman, v0, None, length=num_steps)  # parents [K, N + 1]

    def back(j, parent_row):
        i = parent_row[j]
        return i, i

    _, earlier = jax.lax.scan(back, jnp.int32(n1 - 1), parents, reverse=True)  # [K]
    indices = jnp.concatenate([earlier, jnp.array([n1 - 1], jnp.int32)])
    return indices, v_k[n1 - 1]


def optimal_grid(cost, times, num_steps):
    """The BOSS grid: the candidate times on :func:`optimal_path`, a NumPy grid ``[K + 1]``
    (concrete, so call it outside ``jit``) for :func:`sampler.sample` with ``solver="euler"``."""
    tau = _candidates(times)
    indices, _ = optimal_path(jnp.asarray(cost), num_steps)
    return tau[np.asarray(indices)]


def straightening_pairs(trajectories, times, indices):
    """The straightening batch of BOSS: each chosen interval's endpoints on each trajectory.

    Args:
      trajectories: ``[N + 1, B, ...]`` reference states at ``times``.
      times: the candidate times ``[N + 1]``.
      indices: ``[K + 1]`` increasing candidate indices (:func:`optimal_path`).

    Returns:
      ``{"x_from": [K·B, ...], "x_to": [K·B, ...], "t_from": [K·B], "t_to": [K·B]}``, interval
      major: rows k·B … (k + 1)·B − 1 hold interval k.
    """
    idx = np.asarray(indices)
    tau = _candidates(times)
    k, b = idx.shape[0] - 1, trajectories.shape[1]
    shape = (k * b,) + trajectories.shape[2:]
    dtype = trajectories.dtype
    return {
        "x_from": trajectories[idx[:-1]].reshape(shape),
        "x_to": trajectories[idx[1:]].reshape(shape),
        "t_from": jnp.repeat(jnp.asarray(tau[idx[:-1]], dtype), b),
        "t_to": jnp.repeat(jnp.asarray(tau[idx[1:]], dtype), b),
    }


def straightening_loss(model, batch, key=None, *, distance_fn=losses.sq_l2):
    """BOSS straightening: ‖v(x_{τ_i}, τ_i) − (x_{τ_i} − x_{τ_j})/(τ_i − τ_j)‖² (METHOD.md §9).

    The model's velocity v = (x − D)/t at the start of each chosen interval regressed on the
    interval's chord, so that one Euler step lands on the reference point. The authors'
    ``get_redress_loss_fn`` takes the squared error reduced per sample (the mean over entries
    with ``reduce_mean``, ½·sum otherwise), then the batch mean; ours is ``distance_fn`` of the
    difference (default: the mean over entries), then the (optionally weighted) batch mean.

    Args:
      model: a flow-time denoiser ``model(x_t, t, cond=None, *, key=None)``.
      batch: :func:`straightening_pairs`' dict (``t_from > t_to``, ``t_from > 0``) with
        optional ``"cond"`` and ``"weight"`` ``[B]``.
      key: PRNG key for dropout (None: no dropout).
      distance_fn: ``distance_fn(Δ [B, ...]) -> [B]``.

    Returns:
      ``(loss, metrics)`` with ``metrics["train/raw_distance"]`` the unweighted batch mean.
    """
    x_from, x_to = batch["x_from"], batch["x_to"]
    t_from, t_to = batch["t_from"], batch["t_to"]
    denoised = model(x_from, t_from, batch.get("cond"), key=key)
    v = paths.velocity_from_denoised(x_from, t_from, denoised)
    chord = (x_from - x_to) / paths.expand_t(t_from - t_to, x_from)
    d = distance_fn(v - chord)
    weight = batch.get("weight")
    loss = jnp.mean(d if weight is None else weight * d)
    return loss, {"train/raw_distance": jnp.mean(d)}
