"""Inference-time search under an NFE budget (Kim et al., NeurIPS 2025; METHOD.md §9).

A reward is a callable ``reward_fn(x0 [B, ...], cond) -> [B]`` (higher is better). A sampler
for the search is ``sample_fn(key) -> (x0 [B, ...], nfe)``, e.g. the ODE sampler on noise drawn
from ``key`` or :func:`simple_reflow.sde.sample_sde`. :func:`best_of_n` draws N candidates per
batch element and keeps the highest-reward one; particle search and Rollover Budget Forcing
build on the same two callables (to come, issue 25).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["candidate_key", "best_of_n"]


def candidate_key(key, index):
    """The key of candidate ``index``: ``key`` itself for candidate 0, ``fold_in(key, index)``
    otherwise, so that best-of-1 is plain sampling with ``key``."""
    return jnp.where(
        index == 0, jax.random.key_data(key), jax.random.key_data(jax.random.fold_in(key, index))
    )


def best_of_n(sample_fn, reward_fn, key, *, n, cond=None):
    """Best-of-N: the highest-reward of ``n`` independent samples, per batch element.

    Args:
      sample_fn: ``sample_fn(key) -> (x0 [B, ...], nfe)``.
      reward_fn: ``reward_fn(x0, cond) -> [B]``.
      key: a typed PRNG key (``jax.random.key``); candidate i samples with
        :func:`candidate_key` ``(key, i)``.
      n: the number of candidates (static).
      cond: passed to ``reward_fn``.

    Returns:
      ``(x0 [B, ...], reward [B], nfe)``: the chosen samples, their rewards and the NFE spent
      by all candidates, n times one sample's.
    """
    if n < 1:
        raise ValueError(f"best_of_n needs n >= 1 candidates, got n={n!r}.")
    impl = jax.random.key_impl(key)

    def one(i):
        x0, nfe = sample_fn(jax.random.wrap_key_data(candidate_key(key, i), impl=impl))
        return x0, reward_fn(x0, cond), jnp.asarray(nfe)

    xs, rewards, nfes = jax.lax.map(one, jnp.arange(n))  # [n, B, ...], [n, B], [n]
    best = jnp.argmax(rewards, axis=0)  # [B]
    x0 = jnp.take_along_axis(xs, best.reshape((1, -1) + (1,) * (xs.ndim - 2)), axis=0)[0]
    reward = jnp.take_along_axis(rewards, best[None], axis=0)[0]
    return x0, reward, jnp.sum(nfes)
