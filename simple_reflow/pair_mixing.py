"""Mixing backward, forward and projected pairs into ReFlow batches (METHOD.md §3).

Each slot of a batch is a forward pair with probability ρ (the paper's "forward pair with
probability ρ"), a projected pair with probability q, a backward pair otherwise
(:func:`pair_fractions`). Two implementations of the same rule:

- on the device, for pairs held in device memory (the toys): :func:`mix_pairs` inside the
  jitted step, slot sources and indices drawn from a PRNG key;
- on the host, for pair stores on disk (images): :func:`stream_indices` picks, for every global
  position ``p = step·B + j`` of the batch stream, its source from a hash of ``(seed, p)`` and its
  pair from that source's own epoch permutation (``p // N`` is the source's epoch, so within
  an epoch a source's pairs are visited without repetition); nothing but ``(seed, step)`` is
  needed to resume, and each host computes only its slice of every global batch.
  :func:`read_mixed` reads the chosen pairs from the stores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow.data.pipeline import host_positions, stream_positions, uniform_at

__all__ = [
    "SOURCES",
    "pair_fractions",
    "mix_indices",
    "gather_pairs",
    "mix_pairs",
    "stream_indices",
    "read_mixed",
]

# Pair sources of a ReFlow batch, in the order ``source`` arrays label them.
SOURCES = ("backward", "forward", "projected")


def pair_fractions(rho, projected=0.0):
    """Batch fractions per pair source: forward ρ [paper, §3], projected q, backward the rest."""
    if not (0 <= rho <= 1 and 0 <= projected <= 1 and rho + projected <= 1 + 1e-9):
        raise ValueError(
            f"pair fractions rho={rho!r}, projected={projected!r} must be >= 0 "
            "with rho + projected <= 1."
        )
    return {
        "backward": max(0.0, 1.0 - rho - projected),
        "forward": float(rho),
        "projected": float(projected),
    }


def mix_indices(key, sizes, fractions, batch_size):
    """Which pair each slot of a batch takes.

    Each slot picks its source independently: forward with probability ``fractions["forward"]``
    (the paper's "forward pair with probability ρ"), projected with ``fractions["projected"]``,
    backward otherwise; then a pair of that source uniformly, with replacement. With only
    backward and forward pairs this is the same random stream as a Bernoulli(ρ) mask.

    Args:
      key: PRNG key (fold in the step for a reproducible stream).
      sizes: ``{source: number of pairs}`` for the sources present.
      fractions: ``{source: fraction}`` (see :func:`pair_fractions`); a source with a positive
        fraction must be in ``sizes``.
      batch_size: slots.

    Returns:
      ``source`` ``[B]`` int32 (position in :data:`SOURCES`) and ``index`` ``[B]`` int32 into it.
    """
    for name in SOURCES:
        if fractions.get(name, 0.0) > 0 and not sizes.get(name):
            raise ValueError(f"{name} pairs have fraction {fractions[name]} but none exist.")
    key_b, key_f, key_s = jax.random.split(key, 3)
    keys = {"backward": key_b, "forward": key_f, "projected": jax.random.fold_in(key, 3)}
    f_fwd = float(fractions.get("forward", 0.0)) if sizes.get("forward") else 0.0
    f_proj = float(fractions.get("projected", 0.0)) if sizes.get("projected") else 0.0
    u = jax.random.uniform(key_s, (batch_size,))
    source = jnp.where(u < f_fwd, 1, jnp.where(u < f_fwd + f_proj, 2, 0)).astype(jnp.int32)
    index = jnp.zeros((batch_size,), jnp.int32)
    for s, name in enumerate(SOURCES):
        if sizes.get(name) and (s == 0 or fractions.get(name, 0.0) > 0):
            i = jax.random.randint(keys[name], (batch_size,), 0, sizes[name])
            index = jnp.where(source == s, i, index)
    return source, index


def gather_pairs(stores, source, index):
    """Gathers a mixed batch from pairs held on the device.

    Args:
      stores: ``{source: {"x0": [N, ...], "x1": [N, ...], ...}}``; the keys common to every
        store are gathered.
      source, index: from :func:`mix_indices`.
    """
    names = [n for n in SOURCES if n in stores]
    keys = sorted(set.intersection(*(set(stores[n]) for n in names)))
    out = {}
    for k in keys:
        val = None
        for name in names:
            arr = stores[name][k]
            g = arr[jnp.clip(index, 0, len(arr) - 1)]
            if val is None:
                val = g
            else:
                m = (source == SOURCES.index(name)).reshape((-1,) + (1,) * (g.ndim - 1))
                val = jnp.where(m, g, val)
        out[k] = val
    return out


def mix_pairs(key, stores, fractions, batch_size):
    """A batch of ``batch_size`` pairs mixed by ``fractions``, on the device (inside a jit)."""
    sizes = {n: stores[n]["x0"].shape[0] for n in stores}
    source, index = mix_indices(key, sizes, fractions, batch_size)
    return gather_pairs(stores, source, index)


def stream_indices(seed, step, batch_size, sizes, fractions, *, process_index=0, process_count=1):
    """This host's slots of global batch ``step`` of the host-side stream (module doc).

    Args:
      seed: the stream's seed.
      step: the training step.
      batch_size: the global batch ``B``.
      sizes: ``{source: number of pairs}``; fractions: from :func:`pair_fractions`.
      process_index, process_count: this host's slice ``B/k`` of the global batch.

    Returns:
      ``source`` int32 ``[B/k]`` (position in :data:`SOURCES`) and ``index`` int64 ``[B/k]``.
    """
    for name in SOURCES:
        if fractions.get(name, 0.0) > 0 and not sizes.get(name):
            raise ValueError(f"{name} pairs have fraction {fractions[name]} but none exist.")
    pos = host_positions(step, batch_size, process_index, process_count)
    u = uniform_at(seed, pos, stream=len(SOURCES) + 1)
    f_fwd = float(fractions.get("forward", 0.0)) if sizes.get("forward") else 0.0
    f_proj = float(fractions.get("projected", 0.0)) if sizes.get("projected") else 0.0
    source = np.where(u < f_fwd, 1, np.where(u < f_fwd + f_proj, 2, 0)).astype(np.int32)
    index = np.zeros(pos.shape, np.int64)
    for s, name in enumerate(SOURCES):
        sel = source == s
        if sel.any():
            index[sel] = stream_positions(seed, pos[sel], sizes[name], stream=s + 1)
    return source, index


def read_mixed(stores, source, index):
    """Reads a mixed batch: slot j is pair ``index[j]`` of store ``SOURCES[source[j]]``.

    Args:
      stores: ``{source: store}`` with ``store.read(indices, keys) -> {name: [n, ...]}`` (a
        :class:`~simple_reflow.pair_store.PairStore`); the arrays common to every store present
        are read (``index`` excluded).
    """
    names = [n for n in SOURCES if n in stores]
    keys = sorted(set.intersection(*(set(stores[n].arrays) for n in names)) - {"index"})
    out = {}
    for s, name in enumerate(SOURCES):
        sel = np.flatnonzero(source == s)
        if not len(sel):
            continue
        part = stores[name].read(index[sel], keys)
        for k, v in part.items():
            if k not in out:
                out[k] = np.empty((len(source), *v.shape[1:]), v.dtype)
            out[k][sel] = v
    return out
