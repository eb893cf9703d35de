"""Named random streams of a run: one seed, independent streams by name.

``stream_key(seed, name)`` is ``fold_in(key(seed), id)`` and ``stream_seed(seed, name)`` a
64-bit integer from NumPy's ``SeedSequence([seed, id])`` (for host-side streams), with a fixed
id per name; ``stream_seed(seed, name, bits=31)`` keeps its top 31 bits, an integer seed that
``jax.random.key`` and ``nnx.Rngs`` take whole (they keep 32 bits of a seed without x64).
Unlike offsets added to the seed (``seed + 11``), two streams never coincide across seeds:
seed 0's pair stream is not seed 6's batch stream.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["STREAMS", "stream_key", "stream_seed"]

# Append only: an id, once given, names its stream for good (stores record their seed).
STREAMS = (
    "coupling",  # a coupling's initial state (LOOM-CFM's assignment)
    "pairs",  # the noise of backward pairs
    "reflow_batches",  # which pairs make each student batch
    "projection_data",  # the target samples pairs are projected onto
    "projection_plan",  # the projection's OT plan draws
    "teacher_batches",  # a 1-RF's data batches (toy teacher, toy couplings)
    "forward_data",  # the target samples forward pairs start from (toy)
    "student_training",  # the student's step keys and model seed (toy)
    "eval",  # evaluation noise and target samples (split; set i by fold_in(key, i))
    "eval_floor",  # the exact-vs-exact W2 floor's two sample sets (split)
    "eval_figure",  # the noise and target samples of the samples figure
    "coupling_data",  # the fixed data set a 1-RF's coupling draws from (B2's contenders)
    "student_batches",  # a two-time student's data batches (toy MeanFlow / SplitMeanFlow)
    "boss_noise",  # BOSS: the reference noises (and labels) of the Euler cost matrix
    "boss_straighten",  # BOSS: the fresh noises of the straightening set, and its fit's seed
    "flowturbo_noise",  # FlowTurbo: the noises (and labels) whose plan runs train the refiner
    "flowturbo_refiner",  # FlowTurbo: the refiner's initial weights and its fit's seed
)


def _id(name: str) -> int:
    if name not in STREAMS:
        raise ValueError(f"stream {name!r} is not one of {STREAMS}.")
    return STREAMS.index(name) + 1


def stream_key(seed: int, name: str) -> jax.Array:
    """The PRNG key of stream ``name`` of a run seeded ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), _id(name))


def stream_seed(seed: int, name: str, bits: int = 64) -> int:
    """An integer seed of stream ``name`` of a run seeded ``seed``: the top ``bits`` bits of a
    64-bit ``SeedSequence`` draw (``bits=31`` for an ``int`` seed of a JAX key or ``nnx.Rngs``)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits={bits} must be in [1, 64].")
    state = int(np.random.SeedSequence([int(seed), _id(name)]).generate_state(1, np.uint64)[0])
    return state >> (64 - bits)
