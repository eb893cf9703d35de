"""Named random streams of a run: one seed, independent streams by name.

``stream_key(seed, name)`` is ``fold_in(key(seed), id)`` and ``stream_seed(seed, name)`` a
64-bit integer from NumPy's ``SeedSequence([seed, id])`` (for host-side streams), with a fixed
id per name. Unlike offsets added to the seed (``seed + 11``), two streams never coincide
across seeds: seed 0's pair stream is not seed 6's batch stream.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["STREAMS", "stream_key", "stream_seed"]

# Append only: an id, once given, names its stream for good (stores record their seed).
STREAMS = ("coupling", "pairs", "reflow_batches", "projection_data", "projection_plan")


def _id(name: str) -> int:
    if name not in STREAMS:
        raise ValueError(f"stream {name!r} is not one of {STREAMS}.")
    return STREAMS.index(name) + 1


def stream_key(seed: int, name: str) -> jax.Array:
    """The PRNG key of stream ``name`` of a run seeded ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), _id(name))


def stream_seed(seed: int, name: str) -> int:
    """A host-side integer seed of stream ``name`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), _id(name)]).generate_state(1, np.uint64)[0])
