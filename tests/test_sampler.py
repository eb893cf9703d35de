"""Solvers against the closed-form flow of a single Gaussian (METHOD.md §4, §6).

For data N(μ, s²I) the exact flow is x_t = (1 − t)μ + √((1 − t)²s² + t²)·z: the solvers start
from the exact state at t_max = 0.9 (DPM-Solver-2's first step degenerates at t = 1, where
λ = −∞) and their error at t = 0 is compared with the exact end μ + s·z. The measured slope of
log(error) against log(N) is the order of convergence: 1 for Euler, 2 for Heun and DPM-Solver-2.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simple_reflow import grids, guidance, sampler
from simple_reflow.teachers import GaussianMixture

T_MAX = 0.9
GAUSS = GaussianMixture(
    means=jnp.array([[1.0, -2.0]]), stds=jnp.array([0.5]), weights=jnp.array([1.0])
)


def _error(solver, n):
    z = jax.random.normal(jax.random.key(0), (256, 2))
    grid = grids.uniform_grid(n) * T_MAX
    with jax.enable_x64(True):
        z64 = jnp.asarray(np.asarray(z), jnp.float64)
        gm = GaussianMixture(
            GAUSS.means.astype(jnp.float64),
            GAUSS.stds.astype(jnp.float64),
            GAUSS.weights.astype(jnp.float64),
        )
        # float64 so that the float32 rounding floor does not bend the measured slopes
        x_start = gm.exact_flow(z64, jnp.full((256,), T_MAX, jnp.float64))
        x0, nfe = sampler.integrate(
            lambda x, t, c: gm.denoise(x, t), x_start, grid, solver=solver, r=0.5
        )
        exact = gm.exact_flow(z64, jnp.zeros((256,), jnp.float64))
        return float(jnp.max(jnp.abs(x0 - exact))), nfe


@pytest.mark.parametrize(
    "solver,order", [("euler", 1), ("heun", 2), ("dpm2", 2), ("pseudo_heun", 2)]
)
def test_measured_order_of_convergence(solver, order):
    ns = np.array([8, 16, 32, 64])
    errs = np.array([_error(solver, n)[0] for n in ns])
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.25, (solver, slope, errs)
    if solver == "pseudo_heun":  # FlowTurbo's corrector is another method, not Heun relabelled
        assert abs(errs[0] - _error("heun", 8)[0]) > 1e-3 * errs[0]


def test_nfe_counts():
    assert sampler.nfe_of(grids.uniform_grid(5), "euler") == 5
    assert sampler.nfe_of(grids.uniform_grid(5), "heun") == 9  # last step Euler
    # DPM-Solver-2: 2N − 1, minus one more when the first step starts at t = 1 exactly
    assert sampler.nfe_of(grids.uniform_grid(5) * 0.99, "dpm2") == 9
    assert sampler.nfe_of(grids.sigmoid_grid(5), "dpm2") == 8
    assert sampler.nfe_of(grids.sigmoid_grid(1), "dpm2") == 1
    g, nfe = sampler.grid_for_budget(9, "dpm2", lambda n: grids.sigmoid_grid(n) * 0.99)
    assert nfe == 9 and len(g) == 6


def test_sample_counts_every_network_call():
    """The returned NFE equals the network calls executed at run time (scan iterations
    included), not a recount by the sampler's own rule."""
    from conftest import count_calls

    for solver, grid in [
        ("euler", grids.uniform_grid(7)),
        ("heun", grids.uniform_grid(7)),
        ("dpm2", grids.sigmoid_grid(7)),
        ("dpm2", grids.uniform_grid(7) * 0.9),
        ("heun", grids.uniform_grid(1)),
        ("pseudo_heun", grids.uniform_grid(7)),  # one call per step, none into t = 0
        ("pseudo_heun", grids.uniform_grid(7) * 0.9),
        ("pseudo_heun", grids.uniform_grid(1)),
    ]:
        fn, counter = count_calls(lambda x, t, c: GAUSS.denoise(x, t))
        x, nfe = jax.jit(lambda x1, fn=fn, g=grid, s=solver: sampler.sample(fn, x1, g, solver=s))(
            jnp.ones((2, 2))
        )
        jax.block_until_ready(x)
        jax.effects_barrier()
        assert int(nfe) == counter["calls"] > 0, (solver, int(nfe), counter["calls"])


def test_sampler_is_one_compiled_function():
    @chex.assert_max_traces(n=1)
    def run(x1):
        return sampler.sample(GAUSS, x1, grids.sigmoid_grid(9), solver="dpm2")[0]

    f = jax.jit(run)
    for seed in range(3):
        f(jax.random.normal(jax.random.key(seed), (16, 2))).block_until_ready()


def test_grid_validation():
    with pytest.raises(ValueError, match="monotone"):
        sampler.sample(GAUSS, jnp.ones((2, 2)), np.array([1.0, 0.5, 0.7, 0.0]), solver="euler")
    with pytest.raises(ValueError, match="solver"):
        sampler.sample(GAUSS, jnp.ones((2, 2)), grids.uniform_grid(3), solver="rk4")


def test_autoguidance_and_cfg_formulas():
    x = jax.random.normal(jax.random.key(1), (4, 2))
    t = jnp.full((4,), 0.5)
    good = lambda x, t, c=None: 2.0 * x  # noqa: E731
    bad = lambda x, t, c=None: x  # noqa: E731
    np.testing.assert_allclose(guidance.autoguidance(good, bad, 0.6)(x, t), 2.6 * x, rtol=1e-6)
    np.testing.assert_allclose(guidance.autoguidance(good, bad, 0.0)(x, t), 2.0 * x)

    def cond_fn(x, t, c):
        return x * (1.0 + c[:, None].astype(x.dtype))

    c = jnp.array([1, 2, 3, 4])
    out = guidance.classifier_free(cond_fn, 0.5, null_class=0)(x, t, c)
    expected = cond_fn(x, t, c) + 0.5 * (cond_fn(x, t, c) - x)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_eval_stage_guidance_takes_both_snapshots_as_inputs(tmp_path):
    """The image eval stage's guided student, ``denoiser(params)``: AutoGuidance reads the weak
    snapshot from ``guidance.bad_workdir`` and passes both weight sets to the compiled sampler;
    each equals the guidance formula applied to the two networks, and ``w = 0`` is the plain
    student."""
    import ml_collections
    from flax import nnx

    from simple_reflow.models import build_model
    from simple_reflow.train import checkpoint
    from simple_reflow.train.images import _guided
    from simple_reflow.train.step import split_model

    model_def, good = split_model(build_model("mlp", data_shape=(2,), rngs=nnx.Rngs(0), hidden=8))
    bad = jax.tree.map(lambda p: p + 0.1, good)  # (the output layer starts at zero)
    checkpoint.save_params(str(tmp_path / "ema.npz"), bad)
    x = jax.random.normal(jax.random.key(1), (4, 2))
    t = jnp.full((4,), 0.5)
    d_good, d_bad = model_def.denoiser(good)(x, t), model_def.denoiser(bad)(x, t)
    assert float(jnp.max(jnp.abs(d_good - d_bad))) > 1e-3  # two different networks

    cfg = ml_collections.ConfigDict(
        {"guidance": {"kind": "autoguidance", "w": 0.6, "bad_workdir": str(tmp_path)}}
    )
    denoiser, params = _guided(cfg, model_def, good)
    out = jax.jit(lambda p: denoiser(p)(x, t))(params)
    np.testing.assert_allclose(out, d_good + 0.6 * (d_good - d_bad), rtol=1e-5, atol=1e-6)
    cfg.guidance.w = 0.0
    denoiser, params = _guided(cfg, model_def, good)
    np.testing.assert_array_equal(denoiser(params)(x, t), d_good)
