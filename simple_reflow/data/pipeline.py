"""Batches deterministic in (seed, step), sharded per host, with a prefetching iterator.

Example positions are global: step ``s`` with global batch ``B`` covers positions
``p = s·B … s·B + B − 1`` of an endless stream. Position ``p`` lies in epoch ``e = p // N``
(``N = len(source)``) and reads example ``perm_e[p mod N]``, where ``perm_e`` is a permutation
drawn from ``(seed, e)``; a batch may straddle two epochs, so no example is ever dropped. The
horizontal flip of position ``p`` is one bit of a hash of ``(seed, p)``.

Host ``i`` of ``k`` reads positions ``s·B + i·B/k … s·B + (i + 1)·B/k − 1``: concatenating the
hosts' slices in host order gives exactly the single-host batch, so results never depend on the
number of hosts, and resuming at step ``s`` needs nothing but ``s``.
"""

from __future__ import annotations

import functools
import queue
import threading

import numpy as np

__all__ = [
    "epoch_permutation",
    "flip_bits",
    "host_positions",
    "batch_at",
    "BatchIterator",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@functools.lru_cache(maxsize=4)
def _cached_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
    perm.setflags(write=False)
    return perm


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order ``[n]`` in which epoch ``epoch`` visits the examples (read-only, cached)."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return _cached_permutation(int(seed), int(epoch), int(n))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def flip_bits(seed: int, positions: np.ndarray) -> np.ndarray:
    """Whether to mirror each global position: bool ``[n]``, a fair coin per (seed, position)."""
    with np.errstate(over="ignore"):
        h = _splitmix64(
            np.asarray(positions, np.uint64)
            ^ _splitmix64(np.full(np.shape(positions), seed, np.uint64))
        )
    return (h >> np.uint64(63)).astype(bool)


def host_positions(
    step: int, batch_size: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
    """The global example positions int64 ``[batch_size // process_count]`` this host reads."""
    if batch_size % process_count:
        raise ValueError(
            f"training.batch_size={batch_size} is not divisible by the "
            f"process count {process_count}."
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    per_host = batch_size // process_count
    start = int(step) * batch_size + process_index * per_host
    return np.arange(start, start + per_host, dtype=np.int64)


def batch_at(
    source,
    seed: int,
    step: int,
    batch_size: int,
    *,
    random_flip: bool,
    process_index: int = 0,
    process_count: int = 1,
) -> dict:
    """This host's slice of global batch ``step``.

    Args:
      source: a data source (see :mod:`simple_reflow.data.images`).
      seed: data seed (permutations and flips).
      step: global training step.
      batch_size: the global batch size ``B`` (divisible by ``process_count``).
      random_flip: mirror the width axis of a fair-coin half of the examples.
      process_index, process_count: this host and the number of hosts.

    Returns:
      ``{"x0": float32 [B/k, H, W, C], "index": int32 [B/k], "cond": int32 [B/k]}`` (``cond``
      only for a conditional source) as NumPy arrays.
    """
    n = len(source)
    pos = host_positions(step, batch_size, process_index, process_count)
    epochs, offsets = np.divmod(pos, n)
    indices = np.empty_like(pos)
    for e in np.unique(epochs):
        sel = epochs == e
        indices[sel] = epoch_permutation(seed, int(e), n)[offsets[sel]]
    batch = source.get(indices)
    if random_flip:
        flip = flip_bits(seed, pos)
        batch["x0"] = np.where(flip[:, None, None, None], batch["x0"][:, :, ::-1], batch["x0"])
    return batch


class BatchIterator:
    """Iterates :func:`batch_at` from ``start_step`` on, prefetching in a background thread.

    ``next(it)`` returns the batch of step ``it.step`` and advances it; to resume after a
    restart build a new iterator with ``start_step`` = the restored training step. Use as a
    context manager (or call :meth:`close`) to stop the thread.
    """

    def __init__(
        self,
        source,
        seed: int,
        batch_size: int,
        *,
        start_step: int = 0,
        random_flip: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
    ):
        self.step = int(start_step)
        self._args = dict(
            source=source,
            seed=seed,
            batch_size=batch_size,
            random_flip=random_flip,
            process_index=process_index,
            process_count=process_count,
        )
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _produce(self):
        step = self.step
        while not self._stop.is_set():
            try:
                item = (step, batch_at(step=step, **self._args))
            except Exception as e:  # re-raised in the consumer
                item = (step, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item[1], Exception):
                return
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        step, batch = self._queue.get()
        assert step == self.step, (step, self.step)
        if isinstance(batch, Exception):
            raise batch
        self.step += 1
        return batch

    def close(self):
        """Stops the prefetching thread."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
