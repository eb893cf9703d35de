"""Couplings: exact assignment, OT-CFM, LOOM-CFM, W-CFM, projection (issue 3)."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from simple_reflow.couplings import make_coupling
from simple_reflow.couplings.assignment import (
    cost_matrix,
    default_resolution_bits,
    solve_assignment,
)
from simple_reflow.couplings.host import host_assignment
from simple_reflow.couplings.loom import loom_noise
from simple_reflow.couplings.noise import pair_cost
from simple_reflow.couplings.projection import pairs_from_plan, project_pairs, search_lambda
from simple_reflow.couplings.wcfm import gibbs_weights
from simple_reflow.pairs import noise_for_indices
from simple_reflow.train.configure import coupling_from_config, default_coupling_config


def _np_cost(x, y, cost):
    d = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    return d**2 if cost == "sqeuclidean" else d


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_exact_assignment_equals_brute_force(cost):
    """Optimal within n·h (h = range/2^bits) always; the brute-force permutation itself whenever
    the optimum beats the runner-up by more than n·h (module docstring of assignment.py)."""
    rng = np.random.default_rng(0)
    solve = jax.jit(jax.vmap(solve_assignment))
    checked = 0
    for n in range(2, 8):
        perms = np.array(list(itertools.permutations(range(n))))
        xs = rng.normal(size=(6, n, 2)).astype(np.float32)
        ys = rng.normal(size=(6, n, 2)).astype(np.float32)
        cs = np.stack([_np_cost(x, y, cost) for x, y in zip(xs, ys, strict=True)])
        cs = cs.astype(np.float32)
        ours = np.asarray(solve(jnp.asarray(cs)))
        for c, p in zip(cs.astype(np.float64), ours, strict=True):
            totals = c[np.arange(n), perms].sum(1)
            order = np.argsort(totals)
            h = (c.max() - c.min()) / 2 ** default_resolution_bits(n)
            assert sorted(p.tolist()) == list(range(n))
            assert c[np.arange(n), p].sum() <= totals[order[0]] + n * h + 1e-9
            if totals[order[1]] - totals[order[0]] > n * h:
                np.testing.assert_array_equal(p, perms[order[0]])
                checked += 1
    assert checked >= 30  # nearly every random instance is separated by more than n·h


def test_exact_on_grid_costs_matches_scipy():
    """Integer costs spanning exactly [0, 2^12] with 12 bits lie on the grid: exact optimum."""
    rng = np.random.default_rng(1)
    n = 60
    c = rng.integers(0, 4097, size=(n, n)).astype(np.float32)
    c[0, 0], c[1, 1] = 0, 4096  # pin the range
    p = np.asarray(jax.jit(lambda c: solve_assignment(c, resolution_bits=12))(jnp.asarray(c)))
    r, s = linear_sum_assignment(c)
    assert c[np.arange(n), p].sum() == c[r, s].sum()


def test_exact_vs_scipy_float_n128():
    rng = np.random.default_rng(2)
    n = 128
    x, y = rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
    c = np.asarray(cost_matrix(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    p = np.asarray(jax.jit(solve_assignment)(jnp.asarray(c)))
    r, s = linear_sum_assignment(c.astype(np.float64))
    h = (c.max() - c.min()) / 2 ** default_resolution_bits(n)
    assert sorted(p.tolist()) == list(range(n))
    assert c[np.arange(n), p].sum(dtype=np.float64) <= c[r, s].sum(dtype=np.float64) + n * h


def test_cost_matrix_matches_numpy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 3, 2)), rng.normal(size=(4, 3, 2))
    for cost in ("sqeuclidean", "euclidean"):
        got = cost_matrix(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), cost)
        want = _np_cost(x.reshape(5, -1), y.reshape(4, -1), cost)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def _batch(b, shape=(2,), seed=0, scale=3.0):
    x0 = scale * jax.random.normal(jax.random.key(seed), (b,) + shape)
    return {"x0": x0, "index": jnp.arange(b, dtype=jnp.int32)}


def test_ot_pairs_permute_the_independent_noise():
    batch, key = _batch(32), jax.random.key(5)
    ot = make_coupling("ot", data_shape=(2,))
    out, _, m = jax.jit(ot.apply)(key, batch, {})
    x1 = np.asarray(noise_for_indices(jax.random.split(key)[0], batch["index"], (2,)))
    got = np.asarray(out["x1"])
    # Same multiset of noise vectors (a permutation, no resampling), lower total cost.
    np.testing.assert_array_equal(got[np.lexsort(got.T)], x1[np.lexsort(x1.T)])
    assert float(m["coupling/cost_after"]) < float(m["coupling/cost_before"])
    np.testing.assert_allclose(
        float(m["coupling/cost_after"]), float(jnp.mean(pair_cost(out["x0"], out["x1"]))), rtol=1e-5
    )


def test_ot_batch_factor_and_groups_shapes():
    ot = make_coupling("ot", ot_batch_factor=2, ot_groups=2, data_shape=(2,))
    assert ot.batch_factor == 2
    batch = {**_batch(16), "cond": jnp.arange(16, dtype=jnp.int32)}
    out, _, _ = jax.jit(ot.apply)(jax.random.key(0), batch, {})
    assert out["x0"].shape == (8, 2) and out["x1"].shape == (8, 2)
    # The first 4 rows of each group of 8 are kept, aligned with their labels.
    np.testing.assert_array_equal(np.asarray(out["cond"]), [0, 1, 2, 3, 8, 9, 10, 11])


def test_sinkhorn_ot_is_sharp_at_small_epsilon_in_2d():
    ot = make_coupling("ot", method="sinkhorn", epsilon=1e-3, data_shape=(2,))
    _, _, m = jax.jit(ot.apply)(jax.random.key(0), _batch(16), {})
    assert float(m["coupling/plan_max_row"]) > 0.9
    assert float(m["coupling/cost_after"]) < float(m["coupling/cost_before"])


def _dataset_cost(state, data, shape):
    seeds = state["seeds"]
    total = 0.0
    for k in range(seeds.shape[1]):
        x1 = loom_noise(state, seeds[:, k], shape)
        total += float(jnp.sum(pair_cost(data, x1)))
    return total


def test_loom_never_increases_dataset_cost_and_touches_only_the_batch():
    n, k, b, shape = 24, 2, 6, (3,)
    data = 2.0 * jax.random.normal(jax.random.key(0), (n,) + shape)
    loom = make_coupling("loom", num_caches=k, data_shape=shape, num_data=n)
    state = loom.init(jax.random.key(1))
    apply = jax.jit(loom.apply)
    total = _dataset_cost(state, data, shape)
    for step in range(8):
        idx = jax.random.permutation(jax.random.key(100 + step), n)[:b].astype(jnp.int32)
        batch = {"x0": data[idx], "index": idx}
        out, new, m = apply(jax.random.key(step), batch, state)
        changed = np.argwhere(np.asarray(new["seeds"] != state["seeds"]))
        assert set(changed[:, 0].tolist()) <= set(np.asarray(idx).tolist())
        assert sorted(np.asarray(new["seeds"]).ravel().tolist()) == list(range(n * k))
        new_total = _dataset_cost(new, data, shape)
        assert new_total <= total * (1 + 1e-6)  # float32 re-summation of identical terms
        assert float(m["coupling/cost_after"]) <= float(m["coupling/cost_before"])
        # The returned noise is the noise of the written-back seeds (cache drawn as loom.py).
        cache = jax.random.randint(jax.random.key(step), (b,), 0, k)
        np.testing.assert_array_equal(
            np.asarray(out["x1"]), np.asarray(loom_noise(new, new["seeds"][idx, cache], shape))
        )
        state, total = new, new_total
    assert total < _dataset_cost(loom.init(jax.random.key(1)), data, shape)


@pytest.mark.parametrize(
    "idx", [[0, 5, 5, 9], [0, 5, 24, 9], [-1, 2, 3, 4]], ids=["duplicate", "past_end", "negative"]
)
def test_loom_invalid_batch_leaves_the_pool_unchanged(idx):
    n, k, shape = 24, 2, (3,)
    data = 2.0 * jax.random.normal(jax.random.key(0), (n,) + shape)
    loom = make_coupling("loom", num_caches=k, data_shape=shape, num_data=n)
    state = loom.init(jax.random.key(1))
    apply = jax.jit(loom.apply)
    idx = jnp.asarray(idx, jnp.int32)
    _, new, m = apply(jax.random.key(0), {"x0": data[jnp.clip(idx, 0, n - 1)], "index": idx}, state)
    np.testing.assert_array_equal(np.asarray(new["seeds"]), np.asarray(state["seeds"]))
    assert float(m["coupling/invalid_batch"]) == 1.0
    good = jnp.asarray([0, 5, 7, 9], jnp.int32)
    _, new, m = apply(jax.random.key(0), {"x0": data[good], "index": good}, state)
    assert float(m["coupling/invalid_batch"]) == 0.0


def test_wcfm_weights_mean_one_and_proportional_to_gibbs():
    shape = (4,)
    wc = make_coupling("wcfm", kappa=0.5, data_shape=shape)
    out, _, m = jax.jit(wc.apply)(jax.random.key(0), _batch(64, shape, scale=1.0), {})
    w = np.asarray(out["weight"], np.float64)
    c = np.asarray(pair_cost(out["x0"], out["x1"]), np.float64)
    eps = 0.5 * math.sqrt(4)
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-5)
    ratio = w / np.exp(-(c - c.min()) / eps)
    np.testing.assert_allclose(ratio / ratio.mean(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(float(m["coupling/ess"]), w.sum() ** 2 / (w**2).sum(), rtol=1e-4)
    # Log-space normalisation survives costs that would underflow exp(−c/ε).
    w2, ess = gibbs_weights(jnp.asarray([1e4, 1e4 + 1.0]), 1.0)
    np.testing.assert_allclose(
        np.asarray(w2), 2 * np.array([1, np.exp(-1)]) / (1 + np.exp(-1)), rtol=1e-5
    )


def test_projection_with_permutation_plan_uses_each_image_and_noise_once():
    n, shape = 16, (3,)
    y = jax.random.normal(jax.random.key(0), (n,) + shape)
    sigma = np.asarray(jax.random.permutation(jax.random.key(1), n))
    x_hat0 = y[sigma] + 1e-3 * jax.random.normal(jax.random.key(2), (n,) + shape)
    x1 = jax.random.normal(jax.random.key(3), (n,) + shape)
    plan = jax.nn.one_hot(sigma, n) / n
    for mode in ("sample", "argmax"):
        np.testing.assert_array_equal(
            np.asarray(pairs_from_plan(jax.random.key(4), plan, mode=mode)), sigma
        )
        out, m = jax.jit(
            lambda k, a, b, c, mode=mode: project_pairs(k, a, b, c, epsilon=1e-3, mode=mode)
        )(jax.random.key(5), x_hat0, x1, y)
        assert sorted(np.asarray(out["j"]).tolist()) == list(range(n))  # each image once
        np.testing.assert_array_equal(np.asarray(out["j"]), sigma)
        np.testing.assert_array_equal(np.asarray(out["x1"]), np.asarray(x1))  # each noise once
        np.testing.assert_allclose(np.asarray(out["x0"]), np.asarray(y[sigma]))
        assert float(m["projection/unique_fraction"]) == 1.0


def test_lambda_search_picks_largest_lambda_within_budget():
    x_hat0 = jax.random.normal(jax.random.key(0), (24, 2)) + jnp.array([[1.0, 0.0]])
    y = jax.random.normal(jax.random.key(1), (24, 2))
    lambdas = (0.01, 1.0, 100.0, None)
    search = jax.jit(
        lambda b: search_lambda(x_hat0, y, budget=b, lambdas=lambdas, epsilon=0.05)[:2]
    )
    idx, disps = search(jnp.inf)
    d = np.asarray(disps)
    assert int(idx) == len(lambdas) - 1
    assert np.all(np.diff(d) >= -1e-3 * d.max())  # a harder marginal displaces more
    mid = 0.5 * (d[1] + d[2])
    assert int(search(mid)[0]) == 1
    assert int(search(-1.0)[0]) == 0  # nothing fits: the loosest λ


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "foo"),
        ("cost", "l1"),
        ("method", "emd"),
        ("epsilon", 0.0),
        ("ot_batch_factor", 0),
        ("num_caches", 0),
        ("kappa", -1.0),
        ("resolution_bits", 30),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}="):  # the argument of make_coupling
        make_coupling(**{"name": "independent", field: value}, data_shape=(2,))
    cfg = default_coupling_config()
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=rf"^coupling\.{field}="):  # the config field
        coupling_from_config(cfg, data_shape=(2,))


def test_loom_needs_num_data():
    with pytest.raises(ValueError, match="num_data"):
        make_coupling("loom", data_shape=(2,))


def test_default_coupling_config_is_make_couplings_defaults():
    cfg = default_coupling_config()
    assert cfg.name == "independent" and cfg.num_caches == 4 and cfg.epsilon == 0.05
    # the section's fields are exactly make_coupling's keywords: a config builds every coupling
    cfg.name, cfg.num_caches = "loom", 3
    loom = coupling_from_config(cfg, data_shape=(2,), num_data=10)
    assert loom.name == "loom" and loom.init(jax.random.key(0))["seeds"].shape == (10, 3)


@pytest.mark.parametrize("dim", [2, 40])  # network simplex (≤ LOW_DIM coordinates) and LSA
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_host_assignment_equals_brute_force(dim, cost):
    rng = np.random.default_rng(dim)
    for n in range(2, 8):
        perms = np.array(list(itertools.permutations(range(n))))
        for _ in range(4):
            x, y = rng.normal(size=(2, n, dim))
            c = _np_cost(x, y, cost)
            best = perms[np.argmin(c[np.arange(n), perms].sum(1))]
            perm, before, after = host_assignment(x, y, cost)
            np.testing.assert_array_equal(perm, best)
            np.testing.assert_allclose(before, np.diagonal(c), rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(after, c[np.arange(n), best], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("shape", "factor", "groups"), [((2,), 1, 1), ((2,), 2, 2), ((3, 2, 4), 1, 2)]
)
def test_host_ot_pairs_are_the_device_couplings_pairs(shape, factor, groups):
    """Same noise bits (the step's key derivation), same optimal permutation, same rows kept."""
    b = 32
    device = make_coupling(
        "ot", data_shape=shape, ot_batch_factor=factor, ot_groups=groups, solver="device"
    )
    host = make_coupling(
        "ot", data_shape=shape, ot_batch_factor=factor, ot_groups=groups, solver="host"
    )
    assert device.host is None and host.host is not None
    batch = _batch(b * factor, shape, seed=3)
    key, step = jax.random.key(5), 7
    key_couple = jax.random.split(jax.random.fold_in(key, step))[0]  # as train.step does
    want, _, metrics = jax.jit(device.apply)(key_couple, batch, {})
    got = host.host.pair(key, step, jax.tree.map(np.asarray, batch))
    assert set(got) == set(want) | {"coupling/cost_before", "coupling/swaps"}
    for k in want:
        np.testing.assert_array_equal(got[k], np.asarray(want[k]), err_msg=k)
    if factor == 1:  # the per-pair rows reduce to the device coupling's metrics
        for k, reduce in [("coupling/cost_before", np.mean), ("coupling/swaps", np.sum)]:
            np.testing.assert_allclose(reduce(got[k]), metrics[k], rtol=1e-5, err_msg=k)


def test_solver_auto_picks_host_for_low_dim_points_on_cpu():
    assert make_coupling("ot", data_shape=(2,)).host is not None
    assert make_coupling("ot", data_shape=(8, 8, 3)).host is None  # auction on a CPU
    assert make_coupling("ot", data_shape=(2,), method="sinkhorn").host is None
    assert make_coupling("loom", data_shape=(2,), num_data=8).host is not None
    assert make_coupling("loom", data_shape=(8, 8, 3), num_data=8).host is None
    with pytest.raises(ValueError, match="solver='host'"):
        make_coupling("wcfm", data_shape=(2,), solver="host")
    with pytest.raises(ValueError, match="solver="):
        make_coupling("ot", data_shape=(2,), solver="gpu")


@pytest.mark.parametrize(
    ("variant", "steps_per_call"),
    [
        pytest.param("ot-cfm", 1, marks=pytest.mark.slow),
        pytest.param("ot-cfm", 4, marks=pytest.mark.slow),
        pytest.param("loom-cfm", 2, marks=pytest.mark.slow),
    ],
)
def test_toy_training_with_the_host_solver_equals_the_device_solver(
    tmp_path, variant, steps_per_call
):
    """The host pipeline pairs exactly as the in-step auction: the same losses, params and
    (LOOM-CFM) assignment table, also across a resume."""
    from configs.toy2d import get_config
    from simple_reflow.train.toy import ONE_RF_LOSS, make_data_batch_fn, train_flow

    cfg = get_config(f"smoke,{variant}")
    cfg.model.hidden, cfg.training.batch_size = 32, 64
    cfg.training.update(steps_per_call=steps_per_call, log_every=4, ckpt_every=4)
    num_data = 256 if variant == "loom-cfm" else None  # 4 batches per epoch
    name = cfg.coupling.name
    out = {}
    for solver in ("device", "host"):
        coupling = make_coupling(name, data_shape=(2,), num_data=num_data, solver=solver)
        batch_fn, data = make_data_batch_fn("8gaussians", 64, 3, num_data)
        for steps in (4, 12) if solver == "host" else (12,):  # host: stopped at 4, resumed
            _, state = train_flow(
                cfg,
                str(tmp_path / solver),
                batch_fn=batch_fn,
                data=data,
                loss_fn=ONE_RF_LOSS,
                coupling=coupling,
                num_steps=steps,
                seed=0,
                desc=solver,
            )
        rows = (tmp_path / solver / "metrics.jsonl").read_text().splitlines()
        out[solver] = (state, [json.loads(r)["train/loss"] for r in rows])
    np.testing.assert_allclose(out["host"][1], out["device"][1], rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(out["host"][0].params),
        jax.tree.leaves(out["device"][0].params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    if variant == "loom-cfm":
        seeds = [np.asarray(out[s][0].coupling["seeds"]) for s in ("host", "device")]
        np.testing.assert_array_equal(*seeds)
        assert np.any(seeds[0] != loom_init_seeds(256, cfg.coupling.num_caches))  # it moved


def loom_init_seeds(n, k):
    return np.arange(n * k, dtype=np.int32).reshape(k, n).T


def test_host_ot_per_process_slices_concatenate_to_the_global_pairs():
    """With ot_groups a multiple of the process count, each process pairs its contiguous slice
    of the global batch with groups / processes groups: the same pairs as one process."""
    from simple_reflow.couplings.host import make_host_ot

    shape, factor, groups, processes = (2,), 2, 4, 2
    batch = jax.tree.map(np.asarray, _batch(64 * factor, shape, seed=4))
    key = jax.random.key(1)
    whole = make_host_ot(shape, cost="sqeuclidean", batch_factor=factor, groups=groups)
    local = make_host_ot(shape, cost="sqeuclidean", batch_factor=factor, groups=groups // processes)
    want = whole.pair(key, 3, batch)
    n = len(batch["index"]) // processes
    parts = [
        local.pair(key, 3, {k: v[p * n : (p + 1) * n] for k, v in batch.items()})
        for p in range(processes)
    ]
    for k in want:
        np.testing.assert_array_equal(np.concatenate([q[k] for q in parts]), want[k])
