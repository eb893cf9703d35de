"""Named random streams: deterministic, distinct by name and by seed (no offset collisions)."""

import jax
import numpy as np
import pytest

from simple_reflow.train.streams import STREAMS, stream_key, stream_seed


def test_streams_are_deterministic_and_never_coincide():
    keys = {
        (s, n): jax.random.key_data(stream_key(s, n)).tolist() for s in range(12) for n in STREAMS
    }
    assert keys[(3, "pairs")] == jax.random.key_data(stream_key(3, "pairs")).tolist()
    assert len({tuple(v) for v in keys.values()}) == len(keys)
    seeds = {(s, n): stream_seed(s, n) for s in range(12) for n in STREAMS}
    assert stream_seed(3, "pairs") == seeds[(3, "pairs")]
    assert len(set(seeds.values())) == len(seeds)
    # the collision that offsets had: seed 0 + 17 == seed 6 + 11
    assert stream_seed(0, "reflow_batches") != stream_seed(6, "pairs")
    assert all(0 <= v < 2**64 for v in seeds.values())
    np.random.default_rng(seeds[(0, "projection_data")])  # a valid NumPy seed


def test_unknown_stream_is_refused():
    with pytest.raises(ValueError, match="stream 'params'"):
        stream_key(0, "params")


def test_stream_ids_are_append_only():
    # stores record their seed: an id, once given, never moves (new names go at the end)
    assert STREAMS[:5] == (
        "coupling",
        "pairs",
        "reflow_batches",
        "projection_data",
        "projection_plan",
    )
    assert len(set(STREAMS)) == len(STREAMS)


def test_short_stream_seed_is_a_whole_jax_seed():
    full = stream_seed(4, "student_training")
    short = stream_seed(4, "student_training", bits=31)
    assert short == full >> 33 and 0 <= short < 2**31
    # jax.random.key keeps the seed whole (no truncation to 32 bits): its key data is (0, seed)
    assert jax.random.key_data(jax.random.key(short)).tolist() == [0, short]
    assert stream_seed(4, "teacher_batches", bits=31) != short
    with pytest.raises(ValueError, match="bits=0"):
        stream_seed(0, "pairs", bits=0)
