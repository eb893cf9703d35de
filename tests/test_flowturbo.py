"""FlowTurbo (Zhao et al. 2024; METHOD.md §9): plan parsing, the network and refiner calls a
plan costs (counted at run time), the plan executor against the sampler's Heun and
pseudo-corrector and against an exact refiner, the refiner's training set and a short training
run. The pseudo-corrector's measured order of convergence is tested with the other solvers in
tests/test_sampler.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from simple_reflow import flowturbo, grids, paths, sampler, teachers
from simple_reflow.models import MLPDenoiser, count_parameters
from simple_reflow.models.refiner import ConvRefiner, MLPRefiner
from simple_reflow.train.refiner import refiner_fn, train_refiner
from simple_reflow.train.step import split_model


def test_pseudo_heun_nfe_rule():
    # one call to start and one per interval, none for the Euler step into t = 0 (the calls
    # are counted at run time in tests/test_sampler.py; its order is measured there too)
    for grid in [grids.uniform_grid(7), grids.uniform_grid(7) * 0.9, grids.uniform_grid(1)]:
        assert sampler.nfe_of(grid, "pseudo_heun") == len(grid) - (grid[-1] == 0.0)


def test_parse_plan():
    assert flowturbo.parse_plan("H2P3R2") == (("H", 2), ("P", 3), ("R", 2))
    assert flowturbo.parse_plan("h1p5") == (("H", 1), ("P", 5))
    assert flowturbo.parse_plan("P4") == (("P", 4),)
    for bad, token in [("H2X3", "X3"), ("H0P2", "H0"), ("H2P", "P"), ("H2-P3", "-"), ("R2", "R2")]:
        with pytest.raises(ValueError, match="plan") as info:
            flowturbo.parse_plan(bad)
        assert repr(token) in str(info.value), (bad, str(info.value))
    with pytest.raises(ValueError, match="non-empty"):
        flowturbo.parse_plan("")


def test_plan_calls():
    # H: 2 calls per step; P: 1 per step (its first velocity is the previous step's second);
    # a P block opening the plan pays one extra call to start; R: refiner calls only
    assert flowturbo.plan_calls("H2P3") == (2 * 2 + 3, 0)
    assert flowturbo.plan_calls("P4") == (1 + 4, 0)
    assert flowturbo.plan_calls("H1P5R3") == (7, 6)
    # a P-only plan costs what the sampler's pseudo_heun reports on a grid not ending at 0
    assert flowturbo.plan_calls("P4")[0] == sampler.nfe_of(np.linspace(0.9, 0.1, 5), "pseudo_heun")


# --- the plan executor, the refiner and its training (flowturbo.sample_plan, refiner_pairs) ---

GAUSS = teachers.GaussianMixture(
    means=jnp.array([[1.0, -2.0], [-1.5, 0.5]]),
    stds=jnp.array([0.5, 0.3]),
    weights=jnp.array([0.6, 0.4]),
)


def _velocity(x, t):
    return paths.velocity_from_denoised(x, t, GAUSS.denoise(x, t))


def _exact_refiner(x, t, v_prev, cond=None):
    """The offset an ideal refiner predicts: the teacher's velocity minus v_prev."""
    return _velocity(x, t) - v_prev


def _counting(fn):
    """``fn`` counting its executed calls (a host callback per call, as conftest.count_calls)."""
    counter = {"calls": 0}

    def bump():
        counter["calls"] += 1

    def counted(*args):
        jax.debug.callback(bump, ordered=False)
        return fn(*args)

    return counted, counter


def _x1(n=64, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, 2))


@pytest.mark.parametrize(
    "plan,grid,expected",
    [
        # H1: 2, P3: 3, R2: 2 + 1 refiner calls (the R step into t = 0 is an Euler step)
        ("H1P3R2", grids.uniform_grid(6), (5, 3)),
        ("H1P3R2", np.linspace(0.9, 0.1, 7), (5, 4)),  # not into t = 0
        # P opening the plan: 1 call to start; H into t = 0 is one call (x' = D)
        ("P2R1H1", grids.uniform_grid(4), (3 + 1, 2)),
        ("H2", grids.uniform_grid(2), (3, 0)),
        ("P3", grids.uniform_grid(3), (3, 0)),
        ("H1R1", grids.uniform_grid(2), (2, 1)),
    ],
)
def test_sample_plan_counts_every_call(plan, grid, expected):
    """The NFE and refiner calls returned equal the calls executed at run time (scan
    iterations included) and the counts derived by hand from the plan."""
    denoise, net = _counting(lambda x, t, c: GAUSS.denoise(x, t))
    refine, ref = _counting(_exact_refiner)
    x, nfe, calls = (
        jax.jit(lambda x1: flowturbo.sample_plan(denoise, refine, x1, plan, grid)[0])(_x1()),
        *flowturbo.plan_calls(plan, grid),
    )
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert (net["calls"], ref["calls"]) == (nfe, calls) == expected
    assert flowturbo.sample_plan(GAUSS, _exact_refiner, _x1(), plan, grid)[1:] == expected


@pytest.mark.parametrize("grid", [grids.uniform_grid(5), np.linspace(0.9, 0.1, 6)])
def test_h_and_p_plans_equal_the_sampler(grid):
    x1 = _x1()
    h, nfe_h, _ = flowturbo.sample_plan(GAUSS, None, x1, "H5", grid)
    ref_h, ref_nfe_h = sampler.sample(GAUSS, x1, grid, solver="heun")
    np.testing.assert_allclose(h, ref_h, atol=1e-6)
    p, nfe_p, _ = flowturbo.sample_plan(GAUSS, None, x1, "P5", grid)
    ref_p, ref_nfe_p = sampler.sample(GAUSS, x1, grid, solver="pseudo_heun")
    np.testing.assert_allclose(p, ref_p, atol=1e-6)
    assert (nfe_h, nfe_p) == (ref_nfe_h, ref_nfe_p)
    # a plan of blocks is the same plan as its string
    assert np.array_equal(flowturbo.sample_plan(GAUSS, None, x1, (("H", 5),), grid)[0], h)


@pytest.mark.parametrize("grid", [grids.uniform_grid(5), np.linspace(0.9, 0.1, 6)])
def test_exact_refiner_steps_are_teacher_heun_steps(grid):
    """With r = v − v_prev every R step is a Heun step of the teacher (the last into t = 0 an
    Euler step, as the sampler's Heun), whatever velocity the earlier steps carried."""
    x1 = _x1()
    ref, _ = sampler.sample(GAUSS, x1, grid, solver="heun")
    got, _, _ = flowturbo.sample_plan(GAUSS, _exact_refiner, x1, "H1R4", grid)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    p_r, _, _ = flowturbo.sample_plan(GAUSS, _exact_refiner, x1, "P2R3", grid)
    p_h, _, _ = flowturbo.sample_plan(GAUSS, None, x1, "P2H3", grid)
    np.testing.assert_allclose(p_r, p_h, atol=1e-5)
    # and the refiner is really used: with no offset the R steps differ
    zero = flowturbo.sample_plan(GAUSS, lambda x, t, v, c: jnp.zeros_like(x), x1, "H1R4", grid)
    assert float(jnp.max(jnp.abs(zero[0] - ref))) > 1e-2


def test_refiner_step_by_hand():
    """H1R2 on 1 → 0.5 → 0.3 → 0.2 with a constant offset c, computed by hand: H carries its
    second velocity v₂; an R step takes d₁ = v_c + c, d₂ = d₁ + c, x' = x + h(d₁ + d₂)/2 and
    carries d₁ (the authors' integrator)."""
    c = jnp.array([[0.3, -0.2]])
    grid = np.array([1.0, 0.5, 0.3, 0.2])
    x1 = _x1(8)
    got, _, _ = flowturbo.sample_plan(
        GAUSS, lambda x, t, v, cond: jnp.broadcast_to(c, x.shape), x1, "H1R2", grid
    )
    ones = jnp.ones((8,))
    v1 = _velocity(x1, ones)
    x_pred = x1 - 0.5 * v1
    v2 = _velocity(x_pred, 0.5 * ones)
    x_a = x1 - 0.5 * 0.5 * (v1 + v2)
    x_b = x_a - 0.2 * (v2 + 1.5 * c)  # d₁ = v₂ + c, d₂ = v₂ + 2c
    x_c = x_b - 0.1 * (v2 + c + 1.5 * c)  # carried d₁ = v₂ + c
    np.testing.assert_allclose(got, x_c, atol=1e-5)


def test_plan_validation():
    x1 = _x1(4)
    with pytest.raises(ValueError, match="refiner block"):
        flowturbo.sample_plan(GAUSS, _exact_refiner, x1, "R2H1", grids.uniform_grid(3))
    with pytest.raises(ValueError, match=r"takes 6 steps.*needs 7 times; got 5"):
        flowturbo.sample_plan(GAUSS, _exact_refiner, x1, "H1P3R2", grids.uniform_grid(4))
    with pytest.raises(ValueError, match="decreasing"):
        flowturbo.sample_plan(GAUSS, None, x1, "H2", np.array([0.1, 0.5, 0.9]))
    with pytest.raises(ValueError, match="monotone"):
        flowturbo.sample_plan(GAUSS, None, x1, "H2", np.array([1.0, 0.2, 0.5]))
    with pytest.raises(ValueError, match="refiner_fn"):
        flowturbo.sample_plan(GAUSS, None, x1, "H1R1", grids.uniform_grid(2))
    with pytest.raises(ValueError, match="refiner_fn"):
        flowturbo.make_plan_sampler(GAUSS, None, "H1R1", grids.uniform_grid(2))
    with pytest.raises(ValueError, match="bad block 'X1'"):
        flowturbo.sample_plan(GAUSS, None, x1, (("H", 1), ("X", 1)), grids.uniform_grid(2))
    with pytest.raises(ValueError, match="no refiner"):
        flowturbo.refiner_pairs(GAUSS, x1, "H2", grids.uniform_grid(2))
    # a grid function of the number of intervals is called with the plan's step count
    assert flowturbo.plan_grid("H1P3R2", grids.uniform_grid).shape == (7,)


def test_plan_sampler_is_one_compiled_function():
    fn, nfe, calls = flowturbo.make_plan_sampler(
        GAUSS, _exact_refiner, "H1P3R2", grids.uniform_grid
    )
    counted = chex.assert_max_traces(n=1)(
        lambda x1: flowturbo.sample_plan(GAUSS, _exact_refiner, x1, "H1P3R2", grids.uniform_grid)
    )
    jitted = jax.jit(counted)
    for seed in range(3):
        x1 = _x1(16, seed)
        np.testing.assert_allclose(fn(x1), jitted(x1)[0], atol=1e-6)
    assert (nfe, calls) == (5, 3)
    assert flowturbo.time_plan(fn, _x1(16), repeats=2) > 0.0


def test_refiner_pairs_record_the_teacher_at_every_refiner_call():
    plan, grid, b = "H1P3R2", grids.uniform_grid(6), 32
    x1 = _x1(b)

    @jax.jit
    def run(x1):
        pairs = flowturbo.refiner_pairs(GAUSS, x1, plan, grid)
        p_run, _, _ = flowturbo.sample_plan(GAUSS, None, x1, "H1P3", grid[:5])
        return pairs, p_run, _velocity(pairs["x"], pairs["t"])

    pairs, p_run, target = run(x1)
    m = flowturbo.plan_calls(plan, grid)[1]
    assert {k: v.shape for k, v in pairs.items()} == {
        "x": (m * b, 2),
        "t": (m * b,),
        "v_prev": (m * b, 2),
        "target": (m * b, 2),
    }
    # calls: step 1/3 → 1/6 at both ends, then the Euler step 1/6 → 0 at its start
    np.testing.assert_allclose(np.asarray(pairs["t"][::b]), [2 / 6, 1 / 6, 1 / 6], rtol=1e-6)
    np.testing.assert_allclose(pairs["target"], target, rtol=1e-5, atol=1e-5)
    # the first call starts where the plan's H1P3 ends; its v_prev is P's last v₂, the
    # velocity at the predictor point x̃ = x + h·v₁ of the same time: close, not equal
    np.testing.assert_allclose(pairs["x"][:b], p_run, atol=1e-6)
    gap = float(jnp.max(jnp.abs(pairs["v_prev"][:b] - target[:b])))
    assert 1e-3 < gap < 1.0, gap  # 0.39 here: velocities of order 3, h = 1/6
    # the second call's v_prev is the first call's refined velocity d₁ (the teacher's)
    np.testing.assert_allclose(pairs["v_prev"][b : 2 * b], pairs["target"][:b], atol=1e-6)


def test_refiners_start_at_zero_offset_and_are_light():
    @jax.jit
    def offsets(x, v, img):  # built inside one program: faster than eager initialisation
        mlp, conv = MLPRefiner(2, rngs=nnx.Rngs(0)), ConvRefiner(3, rngs=nnx.Rngs(0))
        return mlp(x, jnp.full((4,), 0.5), v), conv(img, jnp.full((2,), 0.3), img)

    img = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
    mlp_out, conv_out = offsets(_x1(4), _x1(4, 1), img)
    assert mlp_out.shape == (4, 2) and conv_out.shape == img.shape
    assert float(jnp.max(jnp.abs(mlp_out))) == float(jnp.max(jnp.abs(conv_out))) == 0.0
    # the default toy refiner against the toy backbone (configs/toy2d.py: 3 × 256): 1.6 %
    size = count_parameters(nnx.eval_shape(lambda: MLPRefiner(2, rngs=nnx.Rngs(0))))
    backbone = nnx.eval_shape(lambda: MLPDenoiser(2, hidden=256, depth=3, rngs=nnx.Rngs(0)))
    assert size == (36 * 32 + 32) + (32 * 32 + 32) + (32 * 2 + 2)
    assert size < 0.05 * count_parameters(backbone)


@pytest.mark.slow  # 6-18 s on the shared 2-core machine: compiling the fit loop dominates
def test_trained_refiner_beats_reusing_the_velocity(tmp_path):
    """A few hundred steps on the teacher's trajectories: the refined velocity is closer to the
    teacher's than v_prev alone on fresh noise, and the H1P3R2 sample moves towards the
    teacher's Heun solve on the same grid (what an exact refiner gives)."""
    plan, grid = "H1P3R2", grids.uniform_grid(6)
    make_pairs = jax.jit(lambda x1: flowturbo.refiner_pairs(GAUSS, x1, plan, grid))
    model_def, params = split_model(MLPRefiner(2, hidden=32, rngs=nnx.Rngs(0)))
    state = train_refiner(
        model_def,
        params,
        make_pairs(_x1(1024, 1)),
        optimizer=optax.adam(3e-3),
        num_steps=200,
        batch_size=256,
        workdir=str(tmp_path),
        seed=0,
        ema_decay=0.9,
        log_every=200,
        ckpt_every=200,
    )

    @jax.jit
    def evaluate(ema, fresh, x1):
        loss, metrics = flowturbo.refiner_loss(model_def.merge(ema), fresh)
        heun, _ = sampler.sample(GAUSS, x1, grid, solver="heun")
        trained = flowturbo.sample_plan(GAUSS, refiner_fn(model_def, ema), x1, plan, grid)[0]
        zero = flowturbo.sample_plan(GAUSS, lambda x, t, v, c: jnp.zeros_like(x), x1, plan, grid)
        return (
            loss,
            metrics["train/reuse_distance"],
            jnp.mean(jnp.sum((trained - heun) ** 2, 1)),
            jnp.mean(jnp.sum((zero[0] - heun) ** 2, 1)),
        )

    fresh = make_pairs(_x1(1024, 2))  # held out
    loss, reuse, err_trained, err_zero = map(float, evaluate(state.ema, fresh, _x1(1024, 3)))
    # measured: loss 0.0066 against 0.13 for v_prev alone; error 0.011 against 0.030
    assert loss < 0.2 * reuse, (loss, reuse)
    assert err_trained < 0.5 * err_zero, (err_trained, err_zero)
