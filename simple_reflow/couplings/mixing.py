"""Mixing pair sources (backward, forward, projected) by configured fractions (METHOD.md §3).

Each source is a full batch ``{"x0": [B, ...], "x1": [B, ...], ...}``; slot ``i`` of the mixed
batch is slot ``i`` of the source chosen for it. ``mode="sample"`` picks each slot's source
independently with probabilities ``fractions`` (Simple ReFlow's "forward pair with probability
ρ"); ``mode="exact"`` uses exactly ``round(f·B)`` slots per source (largest remainders), placed
by a random permutation. Static shapes, pure, jit-compatible.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["mixture_counts", "mix_sources"]


def mixture_counts(fractions, batch_size):
    """Slots per source: ``round(f·B)`` by largest remainders, summing to ``B`` (NumPy ints)."""
    f = np.asarray(fractions, np.float64)
    if f.ndim != 1 or np.any(f < 0) or not math.isclose(f.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions={list(fractions)} must be ≥ 0 and sum to 1.")
    raw = f * batch_size
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: batch_size - counts.sum()]] += 1
    return counts


def mix_sources(key, sources, fractions, *, mode="sample"):
    """Mixes aligned batches of several pair sources.

    Args:
      key: PRNG key.
      sources: dict ``name -> batch`` (each ``{"x0": [B, ...], "x1": [B, ...], ...}``); only
        the keys common to every source are kept.
      fractions: dict ``name -> fraction`` (same names, ≥ 0, summing to 1).
      mode: ``"sample"`` (independent per slot) or ``"exact"`` (fixed counts).

    Returns:
      The mixed batch, with ``"source"`` ``[B]`` int32 (position in ``sorted(sources)``).
    """
    names = sorted(sources)
    if sorted(fractions) != names:
        raise ValueError(f"fractions has sources {sorted(fractions)}, expected {names}.")
    frac = [float(fractions[n]) for n in names]
    b = sources[names[0]]["x0"].shape[0]
    if mode == "exact":
        labels = np.repeat(np.arange(len(names)), mixture_counts(frac, b))
        label = jax.random.permutation(key, jnp.asarray(labels, jnp.int32))
    elif mode == "sample":
        mixture_counts(frac, b)  # validates the fractions
        logits = jnp.log(jnp.asarray(frac, jnp.float32))
        label = jax.random.categorical(key, logits, shape=(b,)).astype(jnp.int32)
    else:
        raise ValueError(f"mode={mode!r} is not one of ('sample', 'exact').")
    keys = set.intersection(*(set(sources[n]) for n in names))

    def pick(*arrays):
        stacked = jnp.stack(arrays)
        return jnp.take_along_axis(
            stacked, label.reshape((1, b) + (1,) * (stacked.ndim - 2)), axis=0)[0]

    out = {k: pick(*(sources[n][k] for n in names)) for k in sorted(keys)}
    return {**out, "source": label}
