"""Batches deterministic in (seed, step), sharded per host, and a prefetcher.

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
    "stream_positions",
    "uniform_at",
    "flip_bits",
    "host_positions",
    "batch_at",
    "Prefetcher",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@functools.lru_cache(maxsize=16)
def _cached_permutation(seed: int, epoch: int, n: int, stream: int) -> np.ndarray:
    entropy = [seed, epoch, 0x5EED] + ([stream] if stream else [])
    dtype = np.int32 if n < 2**31 else np.int64
    perm = np.random.default_rng(entropy).permutation(n).astype(dtype)
    perm.setflags(write=False)
    return perm


def epoch_permutation(seed: int, epoch: int, n: int, stream: int = 0) -> np.ndarray:
    """The order ``[n]`` in which epoch ``epoch`` visits the examples (read-only, cached);
    ``stream`` > 0 gives an independent order for another sequence (e.g. another pair store)."""
    if seed < 0 or epoch < 0 or stream < 0:
        raise ValueError(
            f"seed, epoch and stream must be non-negative, got seed={seed}, "
            f"epoch={epoch}, stream={stream}"
        )
    return _cached_permutation(int(seed), int(epoch), int(n), int(stream))


def stream_positions(seed: int, positions: np.ndarray, n: int, stream: int = 0) -> np.ndarray:
    """Which of ``n`` items global positions visit: position p reads ``perm_e[p mod n]`` of
    epoch ``e = p // n`` (an epoch visits every item once)."""
    epochs, offsets = np.divmod(np.asarray(positions, np.int64), n)
    out = np.empty(offsets.shape, np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = epoch_permutation(seed, int(e), n, stream)[offsets[sel]]
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform_at(seed: int, positions: np.ndarray, stream: int) -> np.ndarray:
    """A uniform float64 in [0, 1) per (seed, stream, position), from a hash (no state)."""
    with np.errstate(over="ignore"):
        salt = _splitmix64(
            np.full(np.shape(positions), seed, np.uint64)
            ^ _splitmix64(np.full(np.shape(positions), stream, np.uint64))
        )
        h = _splitmix64(np.asarray(positions, np.uint64) ^ salt)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


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
    pos = host_positions(step, batch_size, process_index, process_count)
    batch = source.get(stream_positions(seed, pos, len(source)))
    if random_flip:
        flip = flip_bits(seed, pos)
        batch["x0"] = np.where(flip[:, None, None, None], batch["x0"][:, :, ::-1], batch["x0"])
    return batch


class Prefetcher:
    """``fn(step)`` computed ahead of use in a background thread (e.g. reading and device
    transfer of the next batches while the current step runs).

    ``prefetcher(step)`` returns ``fn(step)`` and keeps the next ``depth`` steps in flight. Steps
    are expected in order; any other step (a resume) restarts the thread there. An exception of
    ``fn`` is raised in the caller, at the step that failed. Use as a context manager (or call
    :meth:`close`) to stop the thread.
    """

    def __init__(self, fn, depth: int = 2):
        self._fn = fn
        self._depth = max(1, int(depth))
        self._next = None  # the step the queue's head holds
        self._thread = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()

    def _start(self, step):
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self._depth)
        self._next = step
        self._thread = threading.Thread(
            target=self._produce, args=(step, self._stop, self._queue), daemon=True
        )
        self._thread.start()

    def _produce(self, step, stop, q):
        while not stop.is_set():
            try:
                item = (step, self._fn(step), None)
            except Exception as e:  # noqa: BLE001 (re-raised in the caller)
                item = (step, None, e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def __call__(self, step: int):
        step = int(step)
        if self._thread is None or step != self._next:
            self._start(step)
        got, value, error = self._queue.get()
        assert got == step, (got, step)
        if error is not None:
            self.close()
            raise error
        self._next = step + 1
        return value

    def close(self):
        """Stops the prefetching thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
