"""The per-pair cost of the couplings (METHOD.md §8).

The couplings' noise is :func:`simple_reflow.pairs.noise_for_indices`: ``N(0, I)`` drawn from
``jax.random.fold_in(key, i)`` for an integer ``i`` (a global data index, or a LOOM-CFM noise
seed), the same function that draws the teachers' backward-pair noise, so the same pairs come
out on any number of devices and a run can be resumed or split without coordination.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["pair_cost"]


def pair_cost(x0, x1, cost="sqeuclidean"):
    """Cost of aligned pairs ``c(x0[b], x1[b])``: ``[batch, ...] x2 -> [batch]``.

    ``"sqeuclidean"`` is ‖x0 − x1‖², ``"euclidean"`` is ‖x0 − x1‖ (no 1/dim factor).
    """
    d = (x0 - x1).reshape(x0.shape[0], -1).astype(jnp.float32)
    sq = jnp.sum(d * d, axis=1)
    if cost == "sqeuclidean":
        return sq
    if cost == "euclidean":
        return jnp.sqrt(sq)
    raise ValueError(f"cost={cost!r} is not one of ('sqeuclidean', 'euclidean').")
