"""Per-sample noise keyed by integers, and the per-pair cost (METHOD.md §1, §8).

Every noise sample is ``N(0, I)`` drawn from ``jax.random.fold_in(key, i)`` for an integer
``i`` (a global data index, or a LOOM-CFM noise seed), so the same pairs come out on any
number of devices and a run can be resumed or split without coordination.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["noise_from_ids", "pair_cost"]


def noise_from_ids(key, ids, shape):
    """``x1[b] = jax.random.normal(jax.random.fold_in(key, ids[b]), shape)``.

    Args:
      key: a PRNG key.
      ids: ``[batch]`` integer ids (global data indices or noise seeds).
      shape: per-sample shape, e.g. ``(2,)`` or ``(32, 32, 3)``.

    Returns:
      ``[batch, *shape]`` float32 standard normal noise.
    """
    draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), tuple(shape), jnp.float32)
    return jax.vmap(draw)(jnp.asarray(ids))


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
