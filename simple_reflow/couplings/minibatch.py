"""Independent pairs and minibatch optimal transport, OT-CFM (METHOD.md §8; Tong et al. 2024).

The batch's data ``x0`` stay where they are; only the noise ``x1`` is re-ordered. With the
exact solver the pairing is a permutation of the batch's noise (no resampling with
replacement). With Sinkhorn (OTT-JAX) the noise of row ``i`` is drawn from row ``i`` of the
entropic plan, so a noise can repeat.

Entropic scale. ``epsilon`` is relative to the batch's mean cost. The mean squared cost grows
like ``dim`` while the cost differences that decide the pairing grow only like ``√dim``, so a
fixed relative ε blurs the plan more in high dimension. ``benchmarks/couplings_speed.py``
reports the mean largest row mass of the plan (1 = a permutation) per relative ε. Measured at
n = 256 (ε = 1e-1 / 1e-2 / 1e-3 / 1e-4): dim 2: 0.06 / 0.26 / 0.64 / 0.82 (not converged in
5000 iterations at 1e-4); dim 3072: 0.006 / 0.07 / 0.69 / 0.89. In dim 3072 the plan is
essentially uniform down to ε ≈ 1e-2 and becomes sharp only below ≈ 1e-3 of the mean cost.
Use the exact solver where a sharp pairing matters.

Cost (``benchmarks/couplings_speed.py``, 2-core CPU, three runs). At n = 1024, dim = 3072 the
exact coupling takes 78–82 ms including the cost matrix (scipy's LSA 113–117 ms with its NumPy
cost). On the toy MLP (batch 256, 2-D) an exact OT-CFM step costs 8.4–9.0× an independent one:
the auction needs 7,000–13,000 sequential bids there (near-ties in 2-D), and even the fastest
compiled exact solver measured (POT's network simplex, ≈ 4.3 ms) makes the step ≥ 3.1× as long.
Exact OT within ``groups`` of 64 / 32 / 16 costs 2.5–2.9× / 1.6–1.9× / 1.4–1.6× (two runs).
The auction is sequential (Gauss-Seidel); on accelerators each bid is a few tiny kernels, so
expect it to be slower there than on a CPU (not measured: no accelerator was available).

Groups. ``groups = 1`` solves OT on the global batch (the default; under a data-parallel mesh
XLA gathers what it needs). ``groups = G`` splits the batch into ``G`` contiguous groups solved
independently; with ``G`` = the number of data-parallel devices each device solves its own shard
(per-device OT, no communication). Either way the pairs do not depend on the device count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simple_reflow.couplings.assignment import cost_matrix, solve_assignment
from simple_reflow.couplings.noise import pair_cost
from simple_reflow.couplings.projection import sinkhorn_solve
from simple_reflow.pairs import noise_for_indices

__all__ = ["independent_pairs", "grouped_assignment", "ot_pairs", "sinkhorn_plan"]


def independent_pairs(key, batch, data_shape, cost="sqeuclidean"):
    """``x1 = N(0, I)`` keyed by ``batch["index"]``; returns ``(batch, metrics)``."""
    x1 = noise_for_indices(key, batch["index"], data_shape)
    c = jnp.mean(pair_cost(batch["x0"], x1, cost))
    return {**batch, "x1": x1}, {"coupling/cost_before": c, "coupling/cost_after": c}


def grouped_assignment(x0, x1, *, cost="sqeuclidean", groups=1, resolution_bits=None):
    """Exact assignment within ``groups`` contiguous groups of the batch.

    Args:
      x0: ``[batch, ...]`` data.
      x1: ``[batch, ...]`` noise.
      cost: ``"sqeuclidean"`` or ``"euclidean"``.
      groups: number of independent groups (divides ``batch``).
      resolution_bits: see :func:`solve_assignment`.

    Returns:
      ``perm`` ``[batch]`` int32 global indices (``x1[perm]`` is paired with ``x0``) and the
      ``[batch]`` costs of the pairs before and after.
    """
    n = x0.shape[0]
    m = n // groups
    xg = x0.reshape((groups, m) + x0.shape[1:])
    yg = x1.reshape((groups, m) + x1.shape[1:])

    def solve(x, y):
        c = cost_matrix(x, y, cost)
        p = solve_assignment(c, resolution_bits=resolution_bits)
        return p, jnp.diagonal(c), jnp.take_along_axis(c, p[:, None], axis=1)[:, 0]

    perm, before, after = jax.vmap(solve)(xg, yg)
    perm = perm + (jnp.arange(groups, dtype=jnp.int32) * m)[:, None]
    return perm.reshape(n), before.reshape(n), after.reshape(n)


def sinkhorn_plan(x0, x1, *, cost="sqeuclidean", epsilon=0.05, max_iterations=1000):
    """Balanced entropic OT plan (OTT-JAX) with ε = ``epsilon`` × mean cost.

    Returns:
      ``plan`` ``[n, n]`` (rows sum to ≈ 1/n), the cost matrix ``[n, n]`` and ``converged``.
    """
    c = cost_matrix(x0, x1, cost)
    plan, converged = sinkhorn_solve(c, epsilon * jnp.mean(c), max_iterations=max_iterations)
    return plan, c, converged


def ot_pairs(
    key,
    batch,
    data_shape,
    *,
    cost="sqeuclidean",
    method="exact",
    epsilon=0.05,
    max_iterations=1000,
    batch_factor=1,
    groups=1,
    resolution_bits=None,
):
    """OT-CFM pairs: noise drawn for the whole (OT) batch, then re-ordered by OT.

    Args:
      key: PRNG key of this step.
      batch: ``{"x0": [n, ...], "index": [n], ...}`` with ``n = batch_factor × train batch``.
      data_shape: per-sample shape.
      cost, method, epsilon, max_iterations, groups, resolution_bits: see the module docstring.
      batch_factor: OT on ``n`` samples, keep the first ``n / batch_factor`` pairs of each group.

    Returns:
      ``(batch, metrics)``; every entry of the returned batch has ``n / batch_factor`` rows.
    """
    n = batch["x0"].shape[0]
    key_noise, key_plan = jax.random.split(key)
    x1 = noise_for_indices(key_noise, batch["index"], data_shape)
    if method == "exact":
        perm, before, after = grouped_assignment(
            batch["x0"], x1, cost=cost, groups=groups, resolution_bits=resolution_bits
        )
        metrics = {}
    else:
        m = n // groups
        xg = batch["x0"].reshape((groups, m) + batch["x0"].shape[1:])
        yg = x1.reshape((groups, m) + x1.shape[1:])
        plan, c, converged = jax.vmap(
            lambda x, y: sinkhorn_plan(
                x, y, cost=cost, epsilon=epsilon, max_iterations=max_iterations
            )
        )(xg, yg)
        rows = plan / jnp.sum(plan, axis=2, keepdims=True)
        keys = jax.random.split(key_plan, groups)
        local = jax.vmap(lambda k, r: jax.random.categorical(k, jnp.log(r), axis=1))(keys, rows)
        before = jnp.diagonal(c, axis1=1, axis2=2).reshape(n)
        after = jnp.take_along_axis(c, local[..., None], axis=2).reshape(n)
        perm = (local + (jnp.arange(groups) * m)[:, None]).reshape(n).astype(jnp.int32)
        metrics = {
            "coupling/plan_max_row": jnp.mean(jnp.max(rows, axis=2)),
            "coupling/converged": jnp.mean(converged.astype(jnp.float32)),
        }
    out = {**batch, "x1": x1[perm]}
    metrics = {
        "coupling/cost_before": jnp.mean(before),
        "coupling/cost_after": jnp.mean(after),
        "coupling/swaps": jnp.sum(perm != jnp.arange(n)).astype(jnp.float32),
        **metrics,
    }
    if batch_factor > 1:
        keep = n // groups // batch_factor
        out = jax.tree.map(
            lambda a: a.reshape((groups, n // groups) + a.shape[1:])[:, :keep].reshape(
                (groups * keep,) + a.shape[1:]
            ),
            out,
        )
    return out, metrics
