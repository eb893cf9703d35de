"""W-CFM: independent pairs weighted by a Gibbs kernel (METHOD.md §8).

``w_i ∝ exp(−c(x0_i, x1_i)/ε)`` with ``ε = κ·√dim``, normalised in log space within the
(global) batch: ``w = B · softmax(log w)``, so the weights average to exactly 1 and never
underflow. An existing ``batch["weight"]`` multiplies in. The effective sample size
``ESS = (Σ w)² / Σ w²`` ∈ [1, B] is logged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from simple_reflow.couplings.noise import pair_cost
from simple_reflow.pairs import noise_for_indices

__all__ = ["gibbs_weights", "wcfm_pairs"]


def gibbs_weights(costs, epsilon, prior=None):
    """Batch-normalised Gibbs weights.

    Args:
      costs: ``[B]`` pair costs.
      epsilon: temperature ε > 0.
      prior: optional ``[B]`` positive weights that multiply in.

    Returns:
      ``weight`` ``[B]`` (mean 1) and the effective sample size ``[]``.
    """
    logits = -costs / epsilon
    if prior is not None:
        logits = logits + jnp.log(prior)
    w = costs.shape[0] * jax.nn.softmax(logits)
    ess = jnp.sum(w) ** 2 / jnp.sum(w * w)
    return w, ess


def wcfm_pairs(key, batch, data_shape, *, kappa=1.0, cost="sqeuclidean"):
    """Independent noise keyed by ``batch["index"]``, Gibbs-weighted: ``(batch, metrics)``."""
    x1 = noise_for_indices(key, batch["index"], data_shape)
    c = pair_cost(batch["x0"], x1, cost)
    eps = kappa * math.sqrt(math.prod(data_shape))
    w, ess = gibbs_weights(c, eps, batch.get("weight"))
    metrics = {
        "coupling/cost_before": jnp.mean(c),
        "coupling/cost_after": jnp.mean(w * c),
        "coupling/ess": ess,
        "coupling/ess_fraction": ess / c.shape[0],
    }
    return {**batch, "x1": x1, "weight": w}, metrics
