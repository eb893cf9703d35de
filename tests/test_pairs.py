"""Pair generation: per-index seeds, resumable shards, host splitting, mixing by fractions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simple_reflow import grids, pairs
from simple_reflow.data.toy import toy_mixture

GRID = grids.uniform_grid(4)


def _generator():
    gm = toy_mixture()
    key = jax.random.key(7)
    fn = jax.jit(lambda i: pairs.backward_pairs(gm, key, i, (2,), GRID, solver="heun")[:2])

    def generate(idx):
        x0, x1 = fn(jnp.asarray(idx))
        return {"x0": x0, "x1": x1}

    return generate


def test_pairs_depend_only_on_their_index():
    gen = _generator()
    a = gen(np.arange(0, 8, dtype=np.int32))
    b = gen(np.arange(4, 12, dtype=np.int32))
    np.testing.assert_array_equal(a["x1"][4:], b["x1"][:4])
    np.testing.assert_allclose(a["x0"][4:], b["x0"][:4], rtol=1e-6)


def test_interrupted_generation_resumes_without_loss_or_duplicates(tmp_path):
    gen = _generator()
    calls = {"n": 0}

    def flaky(idx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the job is killed during the third chunk
        return gen(idx)

    out = str(tmp_path / "pairs")
    with pytest.raises(KeyboardInterrupt):
        pairs.write_pair_shards(flaky, 50, 8, out)
    made = pairs.write_pair_shards(gen, 50, 8, out)
    assert made == 50 - 16  # the two finished shards were kept, not redone
    got = pairs.load_pair_shards(out, 50)
    ref = gen(np.arange(56, dtype=np.int32))
    np.testing.assert_array_equal(got["index"], np.arange(50))
    np.testing.assert_array_equal(got["x1"], np.asarray(ref["x1"])[:50])


def test_hosts_split_chunks_and_together_make_the_whole(tmp_path):
    gen = _generator()
    out = str(tmp_path / "pairs")
    n0 = pairs.write_pair_shards(gen, 40, 8, out, process_index=0, process_count=2)
    n1 = pairs.write_pair_shards(gen, 40, 8, out, process_index=1, process_count=2)
    assert (n0, n1) == (24, 16)
    single = str(tmp_path / "single")
    pairs.write_pair_shards(gen, 40, 8, single)
    a, b = pairs.load_pair_shards(out), pairs.load_pair_shards(single)
    np.testing.assert_array_equal(a["x1"], b["x1"])


def _stores(sizes):
    """Store v holds pairs whose x0 = (v, i) and x1 = (−v, i): source and index are readable."""
    return {name: {"x0": jnp.stack([jnp.full((n,), float(v)), jnp.arange(n, dtype=jnp.float32)],
                                   1),
                   "x1": jnp.stack([jnp.full((n,), -float(v)), jnp.arange(n, dtype=jnp.float32)],
                                   1)}
            for v, (name, n) in enumerate(sizes.items(), start=1)}


@pytest.mark.parametrize("rho,q", [(0.4, 0.0), (0.3, 0.2), (0.0, 0.5)])
def test_mix_pairs_follows_the_fractions(rho, q):
    n = 20_000
    sizes = {"backward": 100, "forward": 50, "projected": 30}
    stores = _stores(sizes)
    batch = pairs.mix_pairs(jax.random.key(0), stores, pairs.pair_fractions(rho, q), n)
    src = np.asarray(batch["x0"][:, 0]).astype(int) - 1
    for s, f in enumerate((1 - rho - q, rho, q)):
        # Binomial(n, f): std √(f(1 − f)/n) ≤ 0.0036; 5 std
        assert abs(np.mean(src == s) - f) < 0.018
    np.testing.assert_array_equal(batch["x0"], -batch["x1"] * np.array([1, -1]))  # never split
    idx = np.asarray(batch["x0"][:, 1]).astype(int)
    for s, name in enumerate(pairs.SOURCES):  # each slot indexes within its own source
        assert np.all(idx[src == s] < sizes[name])


def test_mix_indices_backward_only_and_errors():
    src, idx = pairs.mix_indices(jax.random.key(0), {"backward": 7}, pairs.pair_fractions(0.0),
                                 64)
    assert np.all(np.asarray(src) == 0) and np.all((0 <= np.asarray(idx)) & (np.asarray(idx) < 7))
    with pytest.raises(ValueError, match="forward pairs have fraction"):
        pairs.mix_indices(jax.random.key(0), {"backward": 7}, pairs.pair_fractions(0.4), 8)
    with pytest.raises(ValueError, match="rho \\+ projected"):
        pairs.pair_fractions(0.7, 0.5)


def test_host_gather_equals_device_mix():
    stores = _stores({"backward": 40, "forward": 9, "projected": 5})
    fr = pairs.pair_fractions(0.4, 0.2)
    sizes = {k: len(v["x0"]) for k, v in stores.items()}
    src, idx = pairs.mix_indices(jax.random.key(3), sizes, fr, 256)
    host = pairs.gather_pairs(jax.tree.map(np.asarray, stores), np.asarray(src), np.asarray(idx),
                              xp=np)
    dev = pairs.mix_pairs(jax.random.key(3), stores, fr, 256)
    for k in ("x0", "x1"):
        np.testing.assert_array_equal(host[k], np.asarray(dev[k]))


def test_forward_pairs_need_an_increasing_grid_below_one():
    gm = toy_mixture()
    with pytest.raises(ValueError, match="increasing"):
        pairs.forward_pairs(gm, jnp.zeros((2, 2)), GRID)
    with pytest.raises(ValueError, match="t_max < 1"):
        pairs.forward_pairs(gm, jnp.zeros((2, 2)), np.array([0.01, 0.5, 1.0]))
