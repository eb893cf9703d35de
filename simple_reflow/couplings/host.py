"""OT-CFM's and LOOM-CFM's assignments on the host, in the input pipeline, ahead of the step.

Minibatch OT pairs a batch's data with its noise; it does not need the model. Solved on the
host in the loader's thread (:class:`simple_reflow.data.Prefetcher`) for the next batches, it
leaves the train step's critical path: the step receives ``x1`` already paired, as it receives
pairs from a pair store. The pairs are the device coupling's (:func:`minibatch.ot_pairs`,
:func:`loom.loom_pairs`): the noise is ``noise_for_indices`` with the key the step would use
(the same bits, computed on the CPU device: Threefry is backend-independent), only the solver
differs — the exact optimum either way (the auction is exact for its quantised costs, see
``assignment.py``).

LOOM-CFM's assignment is state: the loader keeps a host copy of the seed table, taken from the
train state when the run starts or resumes (``sync``), and updates it batch by batch ahead of
the step; each batch carries its update (``loom/cache``, ``loom/seeds``), which the step writes
into the train state's table (``absorb``), so the checkpointed table is always that of the
checkpointed step. One process only: with several, each would see only its slice's updates.

Solvers (both exact, measured on the 2-core CPU, ``benchmarks/couplings_speed.py``): POT's
network simplex for low-dimensional points, where near-ties make the auction slow (n = 256,
dim 2: 4.2 ms vs 13 ms for the auction), and scipy's ``linear_sum_assignment`` otherwise
(n = 1024, dim 3072: 57 ms + 27 ms for the cost matrix; network simplex 104 ms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from simple_reflow.pairs import noise_for_indices

__all__ = ["HostSolver", "host_assignment", "make_host_ot", "make_host_loom", "LOW_DIM"]

LOW_DIM = 16  # at most this many coordinates: network simplex; more: scipy's LSA


class HostSolver(NamedTuple):
    """A coupling solved in the input pipeline.

    ``pair(key, step, batch) -> batch`` (NumPy; ``key`` the run's key ``jax.random.key(seed)``)
    adds ``x1``; a stateful one also has ``sync(coupling_state)`` (the host copy from the train
    state, before the first batch) and ``absorb(batch, coupling_state) -> coupling_state``
    (jittable: the batch's update written into the train state).
    """

    pair: Callable[[Any, int, dict], dict]
    sync: Callable[[Any], None] | None = None
    absorb: Callable[[dict, Any], Any] | None = None


def _step_coupling_key(key, step):
    """The coupling's key of ``step``, as ``train.step`` derives it: fold_in, then split."""
    return jax.random.split(jax.random.fold_in(key, step))[0]


def _cost(x, y, cost):
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    y = y.reshape(y.shape[0], -1).astype(np.float64)
    c = np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2.0 * (x @ y.T), 0.0)
    return np.sqrt(c) if cost == "euclidean" else c


def host_assignment(x0, x1, cost="sqeuclidean"):
    """The exact minimum-cost permutation: ``x1[perm]`` is paired with ``x0``.

    Args:
      x0, x1: ``[n, ...]`` NumPy arrays.
      cost: ``"sqeuclidean"`` or ``"euclidean"``.

    Returns:
      ``(perm int32 [n], costs of the pairs before [n], after [n])``.
    """
    import ot  # POT and scipy.optimize here, not at import: POT alone imports scikit-learn
    from scipy.optimize import linear_sum_assignment

    c = _cost(x0, x1, cost)
    n = c.shape[0]
    perm = None
    if x0[0].size <= LOW_DIM:
        w = np.full(n, 1.0 / n)
        perm = np.argmax(ot.emd(w, w, c), axis=1)  # a vertex of the Birkhoff polytope
        if len(np.unique(perm)) != n:  # not a permutation (cannot happen at a vertex)
            perm = None
    if perm is None:
        perm = linear_sum_assignment(c)[1]
    return perm.astype(np.int32), np.diagonal(c).copy(), c[np.arange(n), perm]


def _grouped(x0, x1, cost, groups):
    """:func:`host_assignment` within ``groups`` contiguous groups: the global ``perm`` and the
    pairs' costs before and after."""
    m = x0.shape[0] // groups
    parts = [
        host_assignment(x0[g * m : (g + 1) * m], x1[g * m : (g + 1) * m], cost)
        for g in range(groups)
    ]
    perm = np.concatenate([p + g * m for g, (p, _, _) in enumerate(parts)])
    return perm, np.concatenate([b for _, b, _ in parts]), np.concatenate([a for _, _, a in parts])


def _row_metrics(perm, before):
    """Per-pair rows the train step reduces to its metrics: the pair's cost before pairing
    (mean: ``coupling/cost_before``) and whether it was re-assigned (sum: ``coupling/swaps``)."""
    return {
        "coupling/cost_before": before.astype(np.float32),
        "coupling/swaps": (perm != np.arange(len(perm))).astype(np.float32),
    }


def make_host_ot(data_shape, *, cost, batch_factor, groups):
    """OT-CFM on the host: a :class:`HostSolver` whose ``pair`` takes ``batch_factor × B`` rows
    with ``"x0"`` and ``"index"``, solves ``groups`` contiguous groups independently and keeps
    the first ``B / groups`` pairs of each group (metrics: of the kept pairs)."""
    cpu = jax.devices("cpu")[0]

    @jax.jit
    def noise(key, step, index):  # the step's coupling key → (noise, plan) as in ot_pairs
        return noise_for_indices(
            jax.random.split(_step_coupling_key(key, step))[0], index, data_shape
        )

    def pair(key, step, batch):
        with jax.default_device(cpu):
            x1 = np.asarray(noise(jax.device_put(key, cpu), step, batch["index"]))
        x0 = np.asarray(batch["x0"])
        perm, before, _ = _grouped(x0, x1, cost, groups)
        m = x0.shape[0] // groups
        keep = np.concatenate([np.arange(g * m, g * m + m // batch_factor) for g in range(groups)])
        rows = {**batch, "x1": x1[perm], **_row_metrics(perm, before)}
        return {k: np.asarray(v)[keep] for k, v in rows.items()}

    return HostSolver(pair)


def make_host_loom(data_shape, *, cost, groups, num_caches):
    """LOOM-CFM on the host (module docstring): the pairs and table updates of
    :func:`simple_reflow.couplings.loom.loom_pairs`."""
    cpu = jax.devices("cpu")[0]
    held = {}  # the host copy: "seeds" (NumPy [N, K]) and "noise_key"

    @jax.jit
    def caches(key, step, n):
        return jax.random.randint(_step_coupling_key(key, step), (n.shape[0],), 0, num_caches)

    @jax.jit
    def noise(noise_key, seeds):
        return noise_for_indices(jax.random.wrap_key_data(noise_key), seeds, data_shape)

    def sync(state):
        held["seeds"] = np.array(state["seeds"])
        held["noise_key"] = jax.device_put(np.asarray(state["noise_key"]), cpu)

    def pair(key, step, batch):
        table, idx = held["seeds"], np.asarray(batch["index"])
        with jax.default_device(cpu):
            cache = np.asarray(caches(jax.device_put(key, cpu), step, idx))
            seeds = table[np.clip(idx, 0, table.shape[0] - 1), cache]  # as a device gather
            x1 = np.asarray(noise(held["noise_key"], seeds))
        n = len(idx)
        perm, before, after = _grouped(np.asarray(batch["x0"]), x1, cost, groups)
        if np.sum(after) > np.sum(before):
            perm = np.arange(n)  # never worse than the current assignment
        valid = len(np.unique(idx)) == n and idx.min() >= 0 and idx.max() < table.shape[0]
        new = seeds[perm] if valid else seeds
        if valid:
            table[idx, cache] = new
        return {
            **batch,
            "x1": x1[perm],
            "loom/cache": cache.astype(np.int32),
            "loom/seeds": new.astype(np.int32),
            **_row_metrics(perm, before),
            "coupling/invalid_batch": np.full(n, 0.0 if valid else 1.0, np.float32),
        }

    def absorb(batch, state):
        seeds = state["seeds"].at[batch["index"], batch["loom/cache"]]
        return {**state, "seeds": seeds.set(batch["loom/seeds"], mode="drop")}

    return HostSolver(pair, sync, absorb)
