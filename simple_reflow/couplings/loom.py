"""LOOM-CFM: a persistent data → noise assignment improved minibatch by minibatch.

METHOD.md §8 (Davtyan et al., ICLR 2025). The noise pool is fixed and identified by integer
seeds: the noise of seed ``s`` is ``jax.random.normal(jax.random.fold_in(noise_key, s), shape)``.
Each data index ``d`` holds ``K`` caches, ``seeds[d, k]``; initially ``seeds[d, k] = k·N + d``
(all distinct). A step picks one cache per sample, regenerates the currently assigned noises,
solves the exact assignment between the batch's images and those noises and writes the
permutation of seeds back. The identity is always feasible, so the batch's total cost never
increases (the step falls back to the identity if the quantised optimum were worse in float
arithmetic), and with distinct ``(index, cache)`` slots in a batch the seeds stay a
permutation of ``0 … N·K − 1``: the total cost over the whole dataset never increases and
only the batch's entries change.

Requirement: the indices of one batch are distinct and lie in ``[0, num_data)`` (an
epoch-style loader without replacement within a batch, like ``train.toy.make_data_batch_fn``).
A batch that breaks it cannot be checked on the host inside a compiled step, so the step
checks it on the device: such a batch is paired by the assignment as usual but its result is
not written back (the pool stays a permutation), and ``coupling/invalid_batch`` is 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simple_reflow.couplings.minibatch import grouped_assignment
from simple_reflow.pairs import noise_for_indices

__all__ = ["loom_init", "loom_pairs", "loom_noise"]


def loom_init(key, num_data, num_caches):
    """Initial LOOM-CFM state.

    Returns:
      ``{"seeds": int32 [num_data, num_caches], "noise_key": uint32 key data}``; a plain
      pytree of arrays (checkpointable with Orbax as part of the train state).
    """
    seeds = jnp.arange(num_data * num_caches, dtype=jnp.int32).reshape(num_caches, num_data).T
    return {"seeds": seeds, "noise_key": jax.random.key_data(key)}


def loom_noise(state, seeds, data_shape):
    """Noise of the given seeds ``[batch]`` → ``[batch, *data_shape]``."""
    return noise_for_indices(jax.random.wrap_key_data(state["noise_key"]), seeds, data_shape)


def loom_pairs(
    key, batch, state, data_shape, *, cost="sqeuclidean", groups=1, resolution_bits=None
):
    """One LOOM-CFM update.

    Args:
      key: PRNG key of this step (picks the cache of each sample).
      batch: ``{"x0": [B, ...], "index": [B] int32 distinct data indices, ...}``.
      state: from :func:`loom_init`.
      data_shape: per-sample shape.
      cost: ``"sqeuclidean"`` or ``"euclidean"`` (LOOM-CFM's released code).
      groups, resolution_bits: as in :func:`minibatch.grouped_assignment`.

    Returns:
      ``(batch with "x1", new state, metrics)``.
    """
    seeds_table = state["seeds"]
    idx = batch["index"]
    b = idx.shape[0]
    cache = jax.random.randint(key, (b,), 0, seeds_table.shape[1])
    seeds = seeds_table[idx, cache]
    x1 = loom_noise(state, seeds, data_shape)
    perm, before, after = grouped_assignment(
        batch["x0"], x1, cost=cost, groups=groups, resolution_bits=resolution_bits
    )
    improve = jnp.sum(after) <= jnp.sum(before)
    perm = jnp.where(improve, perm, jnp.arange(b, dtype=perm.dtype))
    after = jnp.where(improve, after, before)
    sorted_idx = jnp.sort(idx)
    valid = (
        (sorted_idx[0] >= 0)
        & (sorted_idx[-1] < seeds_table.shape[0])
        & jnp.all(sorted_idx[1:] != sorted_idx[:-1])
    )
    new_seeds = jnp.where(valid, seeds[perm], seeds)
    state = {**state, "seeds": seeds_table.at[idx, cache].set(new_seeds, mode="drop")}
    metrics = {
        "coupling/cost_before": jnp.mean(before),
        "coupling/cost_after": jnp.mean(after),
        "coupling/swaps": jnp.sum(perm != jnp.arange(b)).astype(jnp.float32),
        "coupling/invalid_batch": 1.0 - valid.astype(jnp.float32),
    }
    return {**batch, "x1": x1[perm]}, state, metrics
