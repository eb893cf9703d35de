"""Couplings under a data-parallel mesh, and LOOM-CFM state through an Orbax checkpoint."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import xla_flags

from simple_reflow.couplings import make_coupling

_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from simple_reflow.couplings import make_coupling

    assert jax.device_count() == 8, jax.devices()
    b, shape, n_data = 32, (4, 2), 64
    data = 2.0 * jax.random.normal(jax.random.key(0), (n_data,) + shape)
    idx = jax.random.permutation(jax.random.key(1), n_data)[:b].astype(jnp.int32)
    batch = {"x0": data[idx], "index": idx}

    def run(kw, devices):
        mesh = Mesh(np.array(devices), ("data",))
        shard, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        c = make_coupling(**kw, data_shape=shape, num_data=n_data)
        state = jax.device_put(c.init(jax.random.key(2)), rep)
        bt = jax.device_put(batch, shard)
        step = jax.jit(c.apply, in_shardings=(rep, shard, rep),
                       out_shardings=(shard, rep, rep))
        out, state, _ = step(jax.random.key(3), bt, state)
        out, state, m = step(jax.random.key(4), out, state)
        return jax.tree.map(np.asarray, (out, state, m))

    for name, extra in [("ot", {}), ("ot", {"ot_groups": 8}), ("loom", {}), ("wcfm", {}),
                        ("independent", {})]:
        one = run({"name": name, **extra}, jax.devices()[:1])
        eight = run({"name": name, **extra}, jax.devices())
        # Pairs (x0, x1, index) and state bit-identical. Metrics and W-CFM's weights come from
        # batch-wide sums whose order depends on the device count: equal to float32 rounding.
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5)
        for k in one[0]:
            (close if k == "weight" else np.testing.assert_array_equal)(one[0][k], eight[0][k])
        jax.tree.map(np.testing.assert_array_equal, one[1], eight[1])
        jax.tree.map(close, one[2], eight[2])
        print("same", name, extra)
    print("ALL-OK")
""")


@pytest.mark.slow
def test_identical_pairs_on_1_and_8_virtual_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags(8),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    }
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ALL-OK" in res.stdout


def test_loom_state_identical_after_orbax_round_trip(tmp_path):
    n, shape = 20, (3,)
    loom = make_coupling("loom", num_caches=3, data_shape=shape, num_data=n)
    state = loom.init(jax.random.key(0))
    data = jax.random.normal(jax.random.key(1), (n,) + shape)
    apply = jax.jit(loom.apply)
    for step in range(3):
        idx = jnp.arange(5 * step, 5 * step + 5, dtype=jnp.int32)
        _, state, _ = apply(jax.random.key(step), {"x0": data[idx], "index": idx}, state)
    path = tmp_path / "loom_state"
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, state)
        ckpt.wait_until_finished()
        restored = ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state, restored
    )
    assert restored["seeds"].dtype == jnp.int32
    # The restored state continues exactly like the original.
    idx = jnp.arange(5, dtype=jnp.int32)
    batch = {"x0": data[idx], "index": idx}
    a = apply(jax.random.key(9), batch, state)
    b = apply(jax.random.key(9), batch, restored)
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)
