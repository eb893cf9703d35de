"""Pair generation: per-index seeds, resumable shards, host splitting, ρ-mixing."""

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


def test_mix_pairs_uses_forward_with_probability_rho():
    n = 20_000
    backward = {"x0": jnp.zeros((100, 2)), "x1": jnp.zeros((100, 2))}
    forward = {"x0": jnp.ones((50, 2)), "x1": jnp.ones((50, 2))}
    batch = pairs.mix_pairs(jax.random.key(0), backward, forward, 0.4, n)
    frac = float(jnp.mean(batch["x0"][:, 0]))
    # Binomial(n, 0.4): std √(0.24/n) ≈ 0.0035; 5 std
    assert abs(frac - 0.4) < 0.018
    np.testing.assert_array_equal(batch["x0"], batch["x1"])  # pairs are never split
    only_b = pairs.mix_pairs(jax.random.key(0), backward, None, 0.0, 64)
    assert float(jnp.abs(only_b["x0"]).sum()) == 0.0


def test_forward_pairs_need_an_increasing_grid_below_one():
    gm = toy_mixture()
    with pytest.raises(ValueError, match="increasing"):
        pairs.forward_pairs(gm, jnp.zeros((2, 2)), GRID)
    with pytest.raises(ValueError, match="t_max < 1"):
        pairs.forward_pairs(gm, jnp.zeros((2, 2)), np.array([0.01, 0.5, 1.0]))
