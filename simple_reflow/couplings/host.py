"""OT-CFM's assignment on the host, in the input pipeline, ahead of the train step.

Minibatch OT pairs a batch's data with its noise; it does not need the model. Solved on the
host in the loader's thread (:class:`simple_reflow.data.Prefetcher`) for the next batches, it
leaves the train step's critical path: the step receives ``x1`` already paired, as it receives
pairs from a pair store. The pairs are the device coupling's (:func:`minibatch.ot_pairs`): the
noise is ``noise_for_indices`` with the key the step would use (the same bits, computed on the
CPU device: Threefry is backend-independent), only the solver differs — the exact optimum
either way (the auction is exact for its quantised costs, see ``assignment.py``).

Solvers (both exact, measured on the 2-core CPU, ``benchmarks/couplings_speed.py``): POT's
network simplex for low-dimensional points, where near-ties make the auction slow (n = 256,
dim 2: 4.2 ms vs 13 ms for the auction), and scipy's ``linear_sum_assignment`` otherwise
(n = 1024, dim 3072: 57 ms + 27 ms for the cost matrix; network simplex 104 ms).
"""

from __future__ import annotations

import jax
import numpy as np
import ot
from scipy.optimize import linear_sum_assignment

from simple_reflow.pairs import noise_for_indices

__all__ = ["host_assignment", "make_host_ot", "LOW_DIM"]

LOW_DIM = 16  # at most this many coordinates: network simplex; more: scipy's LSA


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


def make_host_ot(data_shape, *, cost, batch_factor, groups):
    """``pair(key, step, batch) -> batch``, NumPy in and out, OT-CFM on the host.

    ``key`` is the run's key (``jax.random.key(seed)``, as in ``train.step.init_state``);
    ``batch`` holds ``batch_factor × B`` rows with ``"x0"`` and ``"index"``, ``groups``
    contiguous groups solved independently; the first ``B / groups`` pairs of each group are kept.
    """
    cpu = jax.devices("cpu")[0]

    @jax.jit
    def noise(key, step, index):
        # the train step's derivation: fold_in(key, step) → (coupling, loss) → (noise, plan)
        k = jax.random.split(jax.random.fold_in(key, step))[0]
        return noise_for_indices(jax.random.split(k)[0], index, data_shape)

    def pair(key, step, batch):
        with jax.default_device(cpu):
            x1 = np.asarray(noise(jax.device_put(key, cpu), step, batch["index"]))
        x0 = np.asarray(batch["x0"])
        n = x0.shape[0]
        m = n // groups
        sl = [slice(g * m, (g + 1) * m) for g in range(groups)]
        perm = np.concatenate([host_assignment(x0[s], x1[s], cost)[0] + s.start for s in sl])
        keep = np.concatenate([np.arange(s.start, s.start + m // batch_factor) for s in sl])
        out = {k: np.asarray(v)[keep] for k, v in batch.items()}
        out["x1"] = x1[perm][keep]
        return out

    return pair
