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
