"""Coupling projection with OTT-JAX (METHOD.md §3, "[recon]": the algorithm is ours).

The teacher's outputs ``x̂0`` are not exactly distributed like the data, so the backward
coupling ``(x̂0, x1)`` has the wrong data marginal. We move it toward couplings whose marginals
are the data and the noise while staying close to the teacher's coupling:

1. take ``n`` backward pairs ``(x̂0_i, x1_i)`` and ``m`` real images ``y_j``;
2. solve entropic OT between ``{x̂0_i}`` and ``{y_j}`` with cost ``‖x̂0_i − y_j‖²/dim`` and
   ``ε = epsilon × mean cost``. "Given λ" (Algorithm 1): the data-side marginal is a KL
   penalty of weight λ, i.e. OTT-JAX's unbalanced Sinkhorn with ``tau_b = λ/(λ + ε)``;
   ``λ = ∞`` (``None``) is balanced OT. λ is given in units of ε (``λ = lam·ε``) so that
   ``tau_b = lam/(lam + 1)`` is static, as OTT-JAX requires. The teacher side stays a hard
   constraint;
3. projected pair ``i`` is ``(y_{j(i)}, x1_i)`` with ``j(i)`` drawn from row ``i`` of the plan
   (or its argmax);
4. Algorithm 2: the largest λ of a grid whose expected displacement
   ``Σ_j P_ij ‖x̂0_i − y_j‖²/dim / Σ_j P_ij`` (mean over i) stays under a budget (default: the
   teacher's reconstruction error on forward pairs, computed by the caller).

All functions are pure and jit-compatible (λ grids are static Python floats).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from simple_reflow.couplings.assignment import cost_matrix

__all__ = [
    "projection_cost",
    "projection_plan",
    "sinkhorn_solve",
    "pairs_from_plan",
    "search_lambda",
    "project_pairs",
]


def projection_cost(x_hat0, y):
    """``‖x̂0_i − y_j‖²/dim``: ``[n, ...], [m, ...] -> [n, m]``."""
    return cost_matrix(x_hat0, y, "sqeuclidean") / math.prod(x_hat0.shape[1:])


def projection_plan(x_hat0, y, *, epsilon=0.05, lam=None, max_iterations=2000, threshold=1e-3):
    """Entropic OT plan between teacher samples and real data (Algorithm 1, "given λ").

    Args:
      x_hat0: ``[n, ...]`` teacher samples (backward-pair data ends).
      y: ``[m, ...]`` real images.
      epsilon: entropic ε relative to the mean cost.
      lam: data-side KL weight λ in units of ε (λ = lam·ε, tau_b = lam/(lam + 1)); ``None``
        or ``inf`` = balanced.
      max_iterations, threshold: Sinkhorn settings.

    Returns:
      ``plan`` ``[n, m]``, ``cost`` ``[n, m]`` and ``converged`` (bool scalar).
    """
    c = projection_cost(x_hat0, y)
    if lam is None or math.isinf(lam):
        tau_b = 1.0
    else:
        # λ = lam·ε, so tau_b = λ/(λ + ε) = lam/(lam + 1) is static, as OTT-JAX requires.
        tau_b = lam / (lam + 1.0)
    plan, converged = sinkhorn_solve(
        c, epsilon * jnp.mean(c), tau_b=tau_b, max_iterations=max_iterations, threshold=threshold
    )
    return plan, c, converged


def sinkhorn_solve(cost, epsilon, *, tau_b=1.0, max_iterations=2000, threshold=1e-3):
    """OTT-JAX's Sinkhorn on a cost matrix ``[n, m]``: ``(plan [n, m], converged)``.

    The row marginal is a hard constraint; ``tau_b < 1`` relaxes the column marginal (a KL
    penalty, unbalanced OT), ``tau_b = 1`` is balanced OT. ``epsilon`` is absolute.

    OTT-JAX 0.6 relies on implicit promotion inside its solver (``sinkhorn.marginal_error``
    raises a float32 ``[n]`` to the power of an int32 ``[k, 1]``), which the tests' strict
    setting (tests/conftest.py: ``jax_numpy_dtype_promotion = "strict"``,
    ``jax_numpy_rank_promotion = "raise"``) rejects. So the solver call alone is traced with
    JAX's standard promotion; our code around it stays under the caller's setting.
    """
    # OTT-JAX here, not at import: importing it costs ~1 s (scipy.stats, jaxopt), which every
    # process of the library paid whether or not it solved a transport problem.
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
    prob = linear_problem.LinearProblem(geom, tau_a=1.0, tau_b=tau_b)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        out = sinkhorn.Sinkhorn(max_iterations=max_iterations, threshold=threshold)(prob)
    return out.matrix, out.converged


def pairs_from_plan(key, plan, *, mode="sample"):
    """Column ``j(i)`` per row of a plan: drawn from row ``i`` or its argmax. ``[n, m] -> [n]``."""
    if mode == "argmax":
        return jnp.argmax(plan, axis=1).astype(jnp.int32)
    if mode != "sample":
        raise ValueError(f"mode={mode!r} is not one of ('sample', 'argmax').")
    logits = jnp.log(jnp.maximum(plan, 0.0))
    return jax.random.categorical(key, logits, axis=1).astype(jnp.int32)


def _expected_displacement(plan, cost):
    rows = jnp.sum(plan, axis=1)
    return jnp.mean(jnp.sum(plan * cost, axis=1) / jnp.maximum(rows, 1e-30))


def search_lambda(
    x_hat0, y, *, budget, lambdas=(0.1, 1.0, 10.0, 100.0, None), epsilon=0.05, max_iterations=2000
):
    """Algorithm 2: the largest λ whose expected displacement stays under ``budget``.

    Args:
      x_hat0: ``[n, ...]`` teacher samples.
      y: ``[m, ...]`` real images.
      budget: displacement budget (units of ``‖·‖²/dim``), a float or scalar array.
      lambdas: increasing static grid of λ in units of ε (``None`` = balanced, last).
      epsilon: entropic ε relative to the mean cost.

    Returns:
      ``index`` (int32 scalar, into ``lambdas``; 0 if none fits), ``displacements`` ``[L]``
      and ``plans`` ``[L, n, m]``.
    """
    plans, disps = [], []
    for lam in lambdas:
        plan, c, _ = projection_plan(
            x_hat0, y, epsilon=epsilon, lam=lam, max_iterations=max_iterations
        )
        plans.append(plan)
        disps.append(_expected_displacement(plan, c))
    disps = jnp.stack(disps)
    fits = disps <= budget
    last = len(lambdas) - 1 - jnp.argmax(fits[::-1])
    index = jnp.where(jnp.any(fits), last, 0).astype(jnp.int32)
    return index, disps, jnp.stack(plans)


def project_pairs(
    key,
    x_hat0,
    x1,
    y,
    *,
    budget=None,
    lambdas=(0.1, 1.0, 10.0, 100.0, None),
    epsilon=0.05,
    mode="sample",
    max_iterations=2000,
):
    """Projected pairs ``(y_{j(i)}, x1_i)`` (steps 1–4 above).

    Args:
      key: PRNG key (used when ``mode="sample"``).
      x_hat0: ``[n, ...]`` teacher samples of the backward pairs.
      x1: ``[n, ...]`` their noises (kept, in order: each noise is used exactly once).
      y: ``[m, ...]`` real images.
      budget: ``None`` = balanced OT (λ = ∞); else Algorithm 2 over ``lambdas``.
      epsilon, mode, max_iterations: as above.

    Returns:
      ``{"x0": [n, ...], "x1": [n, ...], "j": [n], "displacement": [n]}`` and metrics.
    """
    if budget is None:
        plan, c, _ = projection_plan(x_hat0, y, epsilon=epsilon, max_iterations=max_iterations)
        metrics = {}
    else:
        index, disps, plans = search_lambda(
            x_hat0,
            y,
            budget=budget,
            lambdas=lambdas,
            epsilon=epsilon,
            max_iterations=max_iterations,
        )
        plan, c = plans[index], projection_cost(x_hat0, y)
        metrics = {"projection/lambda_index": index, "projection/displacement_chosen": disps[index]}
    j = pairs_from_plan(key, plan, mode=mode)
    disp = jnp.take_along_axis(c, j[:, None], axis=1)[:, 0]
    metrics = {
        **metrics,
        "projection/displacement": jnp.mean(disp),
        "projection/unique_fraction": _unique_fraction(j, y.shape[0]),
    }
    return {"x0": y[j], "x1": x1, "j": j, "displacement": disp}, metrics


def _unique_fraction(j, m):
    """Fraction of the ``n`` draws that hit distinct real images."""
    hits = jnp.zeros((m,), jnp.int32).at[j].add(1)
    return jnp.sum(hits > 0) / j.shape[0]
