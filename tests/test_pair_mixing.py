"""Mixing pairs by fractions: on the device (toys) and as a host-side stream (pair stores)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simple_reflow import pair_mixing


def _stores(sizes):
    """Store v holds pairs whose x0 = (v, i) and x1 = (−v, i): source and index are readable."""
    return {
        name: {
            "x0": jnp.stack([jnp.full((n,), float(v)), jnp.arange(n, dtype=jnp.float32)], 1),
            "x1": jnp.stack([jnp.full((n,), -float(v)), jnp.arange(n, dtype=jnp.float32)], 1),
        }
        for v, (name, n) in enumerate(sizes.items(), start=1)
    }


@pytest.mark.parametrize("rho,q", [(0.4, 0.0), (0.3, 0.2), (0.0, 0.5)])
def test_mix_pairs_follows_the_fractions(rho, q):
    n = 20_000
    sizes = {"backward": 100, "forward": 50, "projected": 30}
    stores = _stores(sizes)
    batch = pair_mixing.mix_pairs(jax.random.key(0), stores, pair_mixing.pair_fractions(rho, q), n)
    src = np.asarray(batch["x0"][:, 0]).astype(int) - 1
    for s, f in enumerate((1 - rho - q, rho, q)):
        # Binomial(n, f): std √(f(1 − f)/n) ≤ 0.0036; 5 std
        assert abs(np.mean(src == s) - f) < 0.018
    np.testing.assert_array_equal(batch["x0"], -np.asarray(batch["x1"]) * [1, -1])  # never split
    idx = np.asarray(batch["x0"][:, 1]).astype(int)
    for s, name in enumerate(pair_mixing.SOURCES):  # each slot indexes within its own source
        assert np.all(idx[src == s] < sizes[name])


def test_mix_indices_backward_only_and_errors():
    fr = pair_mixing.pair_fractions
    src, idx = pair_mixing.mix_indices(jax.random.key(0), {"backward": 7}, fr(0.0), 64)
    assert np.all(np.asarray(src) == 0) and np.all((0 <= np.asarray(idx)) & (np.asarray(idx) < 7))
    with pytest.raises(ValueError, match="forward pairs have fraction"):
        pair_mixing.mix_indices(jax.random.key(0), {"backward": 7}, fr(0.4), 8)
    with pytest.raises(ValueError, match="rho \\+ projected"):
        pair_mixing.pair_fractions(0.7, 0.5)


def test_stream_is_a_function_of_seed_and_step_and_hosts_split_it():
    sizes = {"backward": 300, "forward": 70}
    fr = pair_mixing.pair_fractions(0.4)
    a = pair_mixing.stream_indices(5, 11, 64, sizes, fr)
    b = pair_mixing.stream_indices(5, 11, 64, sizes, fr)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    parts = [
        pair_mixing.stream_indices(5, 11, 64, sizes, fr, process_index=i, process_count=4)
        for i in range(4)
    ]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), a[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), a[1])
    other = pair_mixing.stream_indices(6, 11, 64, sizes, fr)
    assert np.mean(other[1] != a[1]) > 0.5  # another seed, another stream


@pytest.mark.parametrize("rho,q", [(0.4, 0.0), (0.3, 0.2)])
def test_stream_follows_the_fractions_and_visits_each_pair_once_per_epoch(rho, q):
    sizes = {"backward": 997, "forward": 101, "projected": 50}
    fr = pair_mixing.pair_fractions(rho, q)
    steps = [pair_mixing.stream_indices(0, s, 100, sizes, fr) for s in range(200)]
    src = np.concatenate([x[0] for x in steps])
    idx = np.concatenate([x[1] for x in steps])
    n = len(src)  # 20,000 slots: Binomial std ≤ 0.0036, 5 std = 0.018
    for s, f in enumerate((1 - rho - q, rho, q)):
        assert abs(np.mean(src == s) - f) < 0.018
    pos = np.arange(n)
    for s, name in enumerate(pair_mixing.SOURCES):
        if not fr[name]:
            assert not np.any(src == s)
            continue
        size = sizes[name]
        sel = src == s
        assert np.all((idx[sel] >= 0) & (idx[sel] < size))
        for e in range(n // size):  # within one epoch of the source's stream: no repeats
            window = sel & (pos // size == e)
            assert len(np.unique(idx[window])) == window.sum()


def test_read_mixed_takes_each_slot_from_its_store():
    class Store:  # the PairStore reading protocol over arrays held in memory
        def __init__(self, v, n):
            self.arrays = {"x0": None, "x1": None, "index": None}
            self.x = np.stack([np.full(n, v, np.float32), np.arange(n, dtype=np.float32)], 1)

        def read(self, indices, keys):
            return {k: self.x[indices] * (1 if k == "x0" else -1) for k in keys}

    stores = {"backward": Store(1, 40), "forward": Store(2, 9)}
    source, index = pair_mixing.stream_indices(
        1, 3, 64, {"backward": 40, "forward": 9}, pair_mixing.pair_fractions(0.5)
    )
    batch = pair_mixing.read_mixed(stores, source, index)
    np.testing.assert_array_equal(batch["x0"][:, 0], source + 1)
    np.testing.assert_array_equal(batch["x0"][:, 1], index)
    np.testing.assert_array_equal(batch["x1"], -batch["x0"])
