"""Average-velocity models (METHOD.md §9): two-time networks, the "mean" sampler, the MeanFlow and
SplitMeanFlow objectives, all against the analytic teacher's exact average velocity.

Ground truth: u*(z, r, t) = (z − Φ_{t→r}(z))/(t − r) with Φ an adaptive Dopri5 solve in float64
at rtol = atol = 1e-10 (:mod:`simple_reflow.average_velocity`), on a 3-component mixture that no
other test uses. Its error is the solve's, ~1e-10·|z|, divided by t − r ≥ 0.04 here: the
tolerance 1e-6 below leaves two decades for the JVP through the solve and the O(t_floor²) =
1e-10 last step into r = 0. A wrong target (sign, the derivative along r instead of t, the split
weights swapped) misses by O(1), which each test checks too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simple_reflow import grids, paths, sampler
from simple_reflow.average_velocity import exact_average_velocity, exact_mean_denoiser
from simple_reflow.losses_mean import (
    jvp,
    meanflow_loss,
    meanflow_objective,
    meanflow_target,
    num_boundary,
    resolve_jvp_mode,
    sample_two_times,
    split_target,
    splitmeanflow_loss,
    splitmeanflow_objective,
)
from simple_reflow.models import build_model, count_parameters
from simple_reflow.models.two_time import init_from_one_time, is_two_time
from simple_reflow.reference_solver import solve_adaptive
from simple_reflow.teachers import GaussianMixture

SOLVE = dict(rtol=1e-10, atol=1e-10, t_floor=1e-5)
TOL = 1e-6
B = 8


def _mixture():
    """An unseen 3-component mixture in 2-D, float64 (call under ``jax.enable_x64``)."""
    return GaussianMixture(
        means=jnp.array([[2.0, -1.0], [-1.5, 0.5], [0.3, 2.2]], jnp.float64),
        stds=jnp.array([0.3, 0.6, 0.45], jnp.float64),
        weights=jnp.array([0.5, 0.3, 0.2], jnp.float64),
    )


def _times(seed=0, n=B):
    """t ∈ [0.2, 1], r = t·U(0, 0.8) (so t − r ≥ 0.04), the last two rows r = 0."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    t = jax.random.uniform(k1, (n,), jnp.float64, 0.2, 1.0)
    r = t * jax.random.uniform(k2, (n,), jnp.float64, 0.0, 0.8)
    return r.at[-2:].set(0.0), t


def _pairs(mix, seed=1, n=B):
    k0, k1 = jax.random.split(jax.random.key(seed))
    return mix.sample(k0, n).astype(jnp.float64), jax.random.normal(k1, (n, 2), jnp.float64)


def _u_star(mix):
    return lambda z, r, t: exact_average_velocity(mix.denoise, z, r, t, **SOLVE)


def _max(x):
    return float(jnp.max(jnp.abs(x)))


# --- ground truth and the "mean" sampler ---------------------------------------------------


@pytest.mark.slow
def test_exact_average_velocity_and_mean_sampling_on_a_gaussian():
    """One Gaussian N(μ, s²I): the flow is z_t = (1 − t)μ + σ_t·x1, σ_t = √((1 − t)²s² + t²)
    (METHOD.md §6), so u* = (z_t − z_r)/(t − r) and the 1-, 2- and 4-NFE average-velocity
    samples of u* are the exact x0 = μ + s·x1, each at its grid's NFE."""
    with jax.enable_x64(True):
        g = GaussianMixture(
            jnp.array([[1.0, -2.0]], jnp.float64), jnp.array([0.5], jnp.float64), jnp.ones(1)
        )
        r, t = _times()
        x1 = jax.random.normal(jax.random.key(3), (B, 2), jnp.float64)
        z_t, z_r = g.exact_flow(x1, t), g.exact_flow(x1, r)
        u = jax.jit(_u_star(g))(z_t, r, t)
        assert _max(u - (z_t - z_r) / (t - r)[:, None]) < TOL
        fn = exact_mean_denoiser(g.denoise, **SOLVE)
        exact = g.exact_flow(x1, jnp.zeros(B, jnp.float64))
        for n in (1, 2, 4):
            grid = grids.uniform_grid(n)
            x0, nfe = jax.jit(lambda x, g=grid: sampler.sample(fn, x, g, solver="mean"))(x1)
            assert nfe == n and _max(x0 - exact) < TOL, (n, _max(x0 - exact))


@pytest.mark.slow
def test_one_nfe_mean_sample_of_the_exact_u_is_the_accurate_ode_solution():
    """On the mixture, one average-velocity step of u* from x1 lands where the adaptive
    reference solver (:func:`solve_adaptive`, float32, rtol = atol = 1e-6) ends: within the
    float32 solve's own error (its tolerance times the trajectory length, and its O(t_end²)
    last step), ~1e-5 here, against an O(1) displacement."""
    with jax.enable_x64(True):
        mix = _mixture()
        x1 = jax.random.normal(jax.random.key(4), (B, 2), jnp.float64)
        fn = exact_mean_denoiser(mix.denoise, **SOLVE)
        x0, nfe = jax.jit(lambda x: sampler.sample(fn, x, grids.uniform_grid(1), solver="mean"))(x1)
    mix32 = GaussianMixture(*(jnp.asarray(a, jnp.float32) for a in _mixture_arrays()))
    ref, _ = jax.jit(lambda x: solve_adaptive(mix32.denoise, x, rtol=1e-6, atol=1e-6))(
        jnp.asarray(x1, jnp.float32)
    )
    assert nfe == 1
    assert _max(np.asarray(x0) - np.asarray(ref, np.float64)) < 1e-4
    assert _max(np.asarray(x0) - np.asarray(x1)) > 1.0  # a real displacement


def _mixture_arrays():
    mix = _mixture()
    return np.asarray(mix.means), np.asarray(mix.stds), np.asarray(mix.weights)


# --- the objectives' targets at u = u* ----------------------------------------------------


def _jvp_target(u_fn, z, r, t, v, *, along_r=False, sign=-1.0):
    """MeanFlow's target and two deliberate mistakes: the derivative along r, a flipped sign."""
    tangents = (
        (v, jnp.ones_like(r), jnp.zeros_like(t))
        if along_r
        else (v, jnp.zeros_like(r), jnp.ones_like(t))
    )
    _, dudt = jax.jvp(u_fn, (z, r, t), tangents)
    return v + sign * (t - r)[:, None] * dudt


@pytest.mark.slow
def test_meanflow_target_at_the_exact_average_velocity_is_itself():
    """MeanFlow's identity u = v − (t − r)·du/dt (du/dt along (v, 0, 1)) holds for u* to the
    solver's tolerance; the target with the sign flipped or differentiated along r misses."""
    with jax.enable_x64(True):
        mix = _mixture()
        r, t = _times()
        z = 3.0 * jax.random.normal(jax.random.key(5), (B, 2), jnp.float64)
        v = paths.velocity_from_denoised(z, t, mix.denoise(z, t))
        u_fn = _u_star(mix)
        u, target = jax.jit(lambda *a: meanflow_target(u_fn, *a))(z, r, t, v)
        assert _max(u - target) < TOL, _max(u - target)
        wrong_r = jax.jit(lambda *a: _jvp_target(u_fn, *a, along_r=True))(z, r, t, v)
        wrong_sign = jax.jit(lambda *a: _jvp_target(u_fn, *a, sign=1.0))(z, r, t, v)
        assert _max(u - wrong_r) > 1e-2 and _max(u - wrong_sign) > 1e-2


def _split_mutant(u_fn, z, r, t, lam, *, swap_weights=False, sign=-1.0):
    """The split target with a deliberate mistake: the weights swapped, or z_s stepped the
    wrong way (z_t + (t − s)·u₂)."""
    s = (1.0 - lam) * t + lam * r
    u2 = u_fn(z, s, t)
    u1 = u_fn(z + sign * (t - s)[:, None] * u2, r, s)
    a = (lam if swap_weights else 1.0 - lam)[:, None]
    return a * u1 + (1.0 - a) * u2


@pytest.mark.slow
def test_split_target_at_the_exact_average_velocity_is_itself():
    """Interval splitting (t − r)·u(z_t, r, t) = (s − r)·u(z_s, r, s) + (t − s)·u(z_t, s, t)
    holds for u* to the solver's tolerance; the weights swapped or z_s stepped the wrong way
    miss."""
    with jax.enable_x64(True):
        mix = _mixture()
        r, t = _times()
        z = 3.0 * jax.random.normal(jax.random.key(6), (B, 2), jnp.float64)
        lam = jnp.linspace(0.1, 0.7, B, dtype=jnp.float64)  # λ ≠ ½, so a swap shows
        u_fn = _u_star(mix)
        u = jax.jit(u_fn)(z, r, t)
        target = jax.jit(lambda *a: split_target(u_fn, *a))(z, r, t, lam)
        assert _max(u - target) < TOL, _max(u - target)
        swapped = jax.jit(lambda *a: _split_mutant(u_fn, *a, swap_weights=True))(z, r, t, lam)
        backwards = jax.jit(lambda *a: _split_mutant(u_fn, *a, sign=1.0))(z, r, t, lam)
        assert _max(u - swapped) > 1e-2 and _max(u - backwards) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["meanflow", "splitmeanflow"])
def test_objectives_vanish_at_the_exact_average_velocity_when_distilling(objective):
    """With u_θ = u* and the teacher's velocity (distillation) both objectives are ~0: the
    plain squared error (p = 0) is below (dim·TOL)², boundary rows (r = t) included."""
    with jax.enable_x64(True):
        mix = _mixture()
        r, t = _times()
        r = r.at[:2].set(t[:2])  # two boundary rows first
        x0, x1 = _pairs(mix)
        model = exact_mean_denoiser(mix.denoise, **SOLVE)
        kw = dict(num_equal=2, teacher_fn=mix.denoise, norm_p=0.0)
        if objective == "meanflow":
            fn = lambda a, b, c, d: meanflow_objective(model, a, b, c, d, **kw)  # noqa: E731
        else:
            lam = jnp.full((B,), 0.3, jnp.float64)
            fn = lambda a, b, c, d: splitmeanflow_objective(model, a, b, c, d, lam, **kw)  # noqa: E731
        loss, metrics = jax.jit(fn)(x0, x1, r, t)
        assert float(loss) < (2 * TOL) ** 2, float(loss)
        # From scratch the target is built on x1 − x0 instead: far from u* per sample.
        scratch, _ = jax.jit(
            lambda a, b, c, d: meanflow_objective(model, a, b, c, d, num_equal=2, norm_p=0.0)
        )(x0, x1, r, t)
        assert float(scratch) > 1e-2


# --- gradients: the stop-gradient --------------------------------------------------------


def _random_mlp64(seed=0, hidden=16):
    """A two-time MLP with every parameter random (the output layer too), in float64."""
    model = build_model(
        "mlp", data_shape=(2,), rngs=nnx.Rngs(seed), hidden=hidden, depth=2, two_time=True
    )
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    nnx.update(
        model,
        jax.tree.unflatten(
            treedef, [jnp.asarray(0.5 * rng.standard_normal(x.shape), jnp.float64) for x in leaves]
        ),
    )
    return model


def _gradient_batch(key):
    """r, t, x0, x1 of 6 rows in float64, the first two with r = t (call under x64)."""
    r, t = _times(n=6)
    r = r.at[:2].set(t[:2])
    x0 = jax.random.normal(jax.random.key(key), (6, 2), jnp.float64)
    x1 = jax.random.normal(jax.random.key(key + 1), (6, 2), jnp.float64)
    return r, t, x0, x1


def _u_of(m, z, r, t):
    return paths.velocity_from_denoised(z, t, m(z, t, None, r=r))


def _dudt(model, z, r, t, tangent, h=1e-5):
    """du/dt along (tangent, 0, 1) by a fourth-order central difference: error ~h⁴·u⁽⁵⁾,
    rounding ~1e-16/h in float64."""

    def step(d):
        return _u_of(model, z + d * tangent, r, t + d)

    return (8 * (step(h) - step(-h)) - (step(2 * h) - step(-2 * h))) / (12 * h)


def _grad(loss_of_model, model):
    graphdef, params = nnx.split(model)
    return jax.grad(lambda p: loss_of_model(nnx.merge(graphdef, p)))(params)


def _rel(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(la, lb, strict=True))
    return (num / sum(float(jnp.sum(y**2)) for y in lb)) ** 0.5


@pytest.mark.slow
def test_meanflow_gradient_stops_at_the_target():
    """The MeanFlow gradient is that of mean_i w_i·‖u_θ,i − T_i‖² with T and w constants; T is
    computed here independently, du/dt by a fourth-order central difference along (v, 0, 1) in
    float64. Dropping the stop-gradient (a local mutant) changes the gradient."""
    p, c = 1.0, 1e-3
    with jax.enable_x64(True):
        model = _random_mlp64()
        r, t, x0, x1 = _gradient_batch(7)
        z, v = paths.interpolate(x0, x1, t), x1 - x0
        u_of = _u_of
        dudt = _dudt(model, z, r, t, v)
        target = v - (t - r)[:, None] * dudt
        sq0 = jnp.sum((u_of(model, z, r, t) - target) ** 2, axis=1)
        w = 1.0 / (sq0 + c) ** p

        def expected(m):
            return jnp.mean(w * jnp.sum((u_of(m, z, r, t) - target) ** 2, axis=1))

        def actual(m):
            kw = dict(num_equal=2, norm_p=p, norm_eps=c)
            return meanflow_objective(m, x0, x1, r, t, **kw)[0]

        def no_stop_gradient(m):
            u, tgt = meanflow_target(lambda *a: u_of(m, *a), z, r, t, v)
            return jnp.mean(w * jnp.sum((u - tgt) ** 2, axis=1))

        assert abs(float(actual(model)) - float(expected(model))) < 1e-6
        g_exp, g_act = _grad(expected, model), _grad(actual, model)
        assert _rel(g_act, g_exp) < 1e-5, _rel(g_act, g_exp)
        assert _rel(_grad(no_stop_gradient, model), g_exp) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("jvp_mode", ["forward", "transpose"])
def test_improved_meanflow_is_a_v_loss_along_the_models_own_velocity(jvp_mode):
    """Improved MeanFlow (``tangent="model"``): the loss is w·‖V_θ − v‖² on the compound
    prediction V_θ = u_θ(z, r, t) + (t − r)·sg(du_θ/dt), du/dt along (u_θ(z, t, t), 0, 1) —
    computed here independently by a fourth-order central difference in float64 — with the
    gradient through u_θ(z, r, t) only. MeanFlow's tangent x1 − x0 gives another value and
    gradient, and a missing stop-gradient another gradient."""
    p, c = 1.0, 1e-3
    with jax.enable_x64(True):
        model = _random_mlp64(2)
        r, t, x0, x1 = _gradient_batch(11)
        z, v = paths.interpolate(x0, x1, t), x1 - x0
        u_of = _u_of
        dudt = _dudt(model, z, r, t, u_of(model, z, t, t))  # along v_θ(z, t) = u_θ(z, t, t)
        lag = (t - r)[:, None] * dudt  # zero on the boundary rows: V = u(z, t, t) there
        sq0 = jnp.sum((u_of(model, z, r, t) + lag - v) ** 2, axis=1)
        w = 1.0 / (sq0 + c) ** p

        def expected(m):
            return jnp.mean(w * jnp.sum((u_of(m, z, r, t) + lag - v) ** 2, axis=1))

        def objective(m, tangent="model"):
            kw = dict(num_equal=2, norm_p=p, norm_eps=c, jvp_mode=jvp_mode, tangent=tangent)
            return meanflow_objective(m, x0, x1, r, t, **kw)

        def actual(m, tangent="model"):
            return objective(m, tangent)[0]

        def distance(tangent):  # the unweighted mean ‖V − v‖² per entry
            return float(objective(model, tangent)[1]["train/raw_distance"])

        def no_stop_gradient(m):  # through du/dt and through the tangent
            tangent = u_of(m, z[2:], t[2:], t[2:])
            u, tgt = meanflow_target(
                lambda *a: u_of(m, *a), z[2:], r[2:], t[2:], v[2:], tangent=tangent
            )
            rows = jnp.sum((u - tgt) ** 2, axis=1)
            boundary = jnp.sum((u_of(m, z[:2], t[:2], t[:2]) - v[:2]) ** 2, axis=1)
            return jnp.mean(w * jnp.concatenate([boundary, rows]))

        assert abs(float(actual(model)) - float(expected(model))) < 1e-6
        assert abs(distance("model") / float(jnp.mean(sq0) / 2) - 1) < 1e-6
        assert abs(distance("target") / float(jnp.mean(sq0) / 2) - 1) > 1e-2
        g_exp = _grad(expected, model)
        assert _rel(_grad(actual, model), g_exp) < 1e-5, _rel(_grad(actual, model), g_exp)
        # the mutants' gradients: 100× the tolerance away at least
        assert _rel(_grad(lambda m: actual(m, "target"), model), g_exp) > 1e-3
        assert _rel(_grad(no_stop_gradient, model), g_exp) > 1e-3
        with pytest.raises(ValueError, match="tangent"):
            actual(model, "teacher")


@pytest.mark.slow
def test_splitmeanflow_gradient_stops_at_the_target():
    """The SplitMeanFlow gradient flows through u_θ(z_t, r, t) only: equal to that of
    ‖u_θ − T‖² with T the (constant) split target; without the stop-gradient it differs."""
    with jax.enable_x64(True):
        model = _random_mlp64(1)
        r, t = _times(n=6)
        r = r.at[:2].set(t[:2])
        lam = jnp.full((6,), 0.4, jnp.float64)
        x0 = jax.random.normal(jax.random.key(9), (6, 2), jnp.float64)
        x1 = jax.random.normal(jax.random.key(10), (6, 2), jnp.float64)
        z = paths.interpolate(x0, x1, t)

        def u_of(m, z_, r_, t_):
            return paths.velocity_from_denoised(z_, t_, m(z_, t_, None, r=r_))

        target = jnp.concatenate(
            [(x1 - x0)[:2], split_target(lambda *a: u_of(model, *a), z[2:], r[2:], t[2:], lam[2:])]
        )

        def expected(m):
            return jnp.mean(jnp.sum((u_of(m, z, r, t) - target) ** 2, axis=1))

        def actual(m):
            return splitmeanflow_objective(m, x0, x1, r, t, lam, num_equal=2, norm_p=0.0)[0]

        def no_stop_gradient(m):
            tgt = split_target(lambda *a: u_of(m, *a), z[2:], r[2:], t[2:], lam[2:])
            return jnp.mean(jnp.sum((u_of(m, z[2:], r[2:], t[2:]) - tgt) ** 2, axis=1))

        assert abs(float(actual(model)) - float(expected(model))) < 1e-10
        g_exp = _grad(expected, model)
        assert _rel(_grad(actual, model), g_exp) < 1e-10
        assert _rel(_grad(no_stop_gradient, model), g_exp) > 1e-2


# --- two-time networks ----------------------------------------------------------------------

TINY = dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0)
BACKBONES = {
    "mlp": ((3,), dict(hidden=16, depth=2)),
    "ddpmpp": ((8, 8, 3), TINY),
    "ncsnpp": ((8, 8, 3), TINY),
    "adm": ((8, 8, 3), dict(TINY, channels_per_head=8)),
}


def _random_teacher(name, shape, options):
    """The one-time network with every parameter random and non-zero (as tests/test_backbones
    does), so a zero-initialised layer cannot hide a mismatch."""
    model = nnx.eval_shape(lambda: build_model(name, data_shape=shape, rngs=nnx.Rngs(0), **options))
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(0)
    nnx.update(
        model,
        jax.tree.unflatten(
            treedef, [jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype) for x in leaves]
        ),
    )
    return model


@nnx.jit
def _call(model, x, t, r):
    return model(x, t, None, r=r)


@nnx.jit
def _call_one_time(model, x, t):
    return model(x, t, None)


@pytest.mark.parametrize(
    "name", [n if n == "ddpmpp" else pytest.param(n, marks=pytest.mark.slow) for n in BACKBONES]
)
def test_two_time_network_is_its_teacher_at_initialisation(name):
    """Initialised from a one-time teacher the two-time network gives u(z, r, t) = v_T(z, t) for
    every r (the added embedding is zero); the only new parameters are ``map_interval``'s, and
    once those move, r matters (the second time is wired in)."""
    shape, options = BACKBONES[name]
    teacher = _random_teacher(name, shape, options)
    student = nnx.eval_shape(
        lambda: build_model(name, data_shape=shape, rngs=nnx.Rngs(1), two_time=True, **options)
    )
    init_from_one_time(student, teacher)
    assert is_two_time(student) and not is_two_time(teacher)
    extra = count_parameters(student) - count_parameters(teacher)
    assert extra == student_interval_size(student) > 0
    x = jax.random.normal(jax.random.key(0), (3, *shape))
    t = jnp.array([0.2, 0.55, 0.9])
    r = jnp.array([0.0, 0.3, 0.9])
    d_teacher = _call_one_time(teacher, x, t)
    np.testing.assert_allclose(_call(student, x, t, r), d_teacher, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_call_one_time(student, x, t), d_teacher, rtol=1e-6, atol=1e-6)
    layer = _interval_layer(student)
    nnx.update(layer, jax.tree.map(lambda a: a + 0.5, nnx.state(layer, nnx.Param)))
    moved = _call(student, x, t, r)
    assert _max(moved[:2] - d_teacher[:2]) > 1e-4  # r < t: the interval now enters
    with pytest.raises(ValueError, match="two_time=True"):
        _call(teacher, x, t, r)


def _interval_layer(model):
    return getattr(model, "backbone", model).map_interval


def student_interval_size(model):
    state = nnx.state(_interval_layer(model), nnx.Param)
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state))


def test_distilled_student_samples_like_its_teacher_at_step_zero():
    """At step 0 the student's average-velocity sampling ("mean") is the teacher's Euler
    sampling on the same grid, step for step: x' = (r/t)·x + (1 − r/t)·D."""
    teacher = _random_teacher("mlp", (2,), dict(hidden=16, depth=2))
    student = init_from_one_time(
        build_model("mlp", data_shape=(2,), rngs=nnx.Rngs(3), hidden=16, depth=2, two_time=True),
        teacher,
    )
    x1 = jax.random.normal(jax.random.key(2), (64, 2))
    for n in (1, 2, 4):
        grid = grids.uniform_grid(n)
        mean, nfe = sampler.sample(
            lambda x, t, c, r: student(x, t, c, r=r), x1, grid, solver="mean"
        )
        euler, nfe_euler = sampler.sample(teacher, x1, grid, solver="euler")
        assert nfe == nfe_euler == n
        np.testing.assert_allclose(mean, euler, rtol=1e-6, atol=1e-6)


# --- time sampling, JVP modes, losses on batches --------------------------------------------


def test_sample_two_times():
    r, t = sample_two_times(jax.random.key(0), 10, equal_fraction=0.3, t_max=0.9)
    k = num_boundary(10, 0.3)
    assert k == 3
    assert bool(jnp.all(r[:k] == t[:k])) and bool(jnp.all(r[k:] < t[k:]))
    assert bool(jnp.all((r >= 0) & (t >= paths.T_EPS) & (t <= 0.9)))
    with pytest.raises(ValueError, match="fraction"):
        num_boundary(4, 1.5)


def test_jvp_by_transpose_equals_forward_mode():
    """The VJP-transpose JVP (for layers with only reverse mode) equals ``jax.jvp``."""
    model = _random_teacher("mlp", (2,), dict(hidden=16, depth=2, two_time=True))
    z = jax.random.normal(jax.random.key(0), (5, 2))
    v = jax.random.normal(jax.random.key(1), (5, 2))
    t, r = jnp.linspace(0.2, 0.9, 5), jnp.linspace(0.0, 0.5, 5)
    fn = lambda z_, r_, t_: model.velocity(z_, t_, r=r_)  # noqa: E731
    tangents = (v, jnp.zeros(5), jnp.ones(5))
    fwd = jvp(fn, (z, r, t), tangents, mode="forward")
    tra = jvp(fn, (z, r, t), tangents, mode="transpose")
    np.testing.assert_allclose(tra[1], fwd[1], rtol=1e-5, atol=1e-5)
    assert _max(fwd[1]) > 1e-2


@pytest.mark.slow
def test_meanflow_loss_trains_through_a_unet_with_reverse_only_layers():
    """DDPM++'s group norm is a ``custom_vjp`` (no forward mode): ``jax.jvp`` fails, the
    default ``jvp_mode="auto"`` transposes the VJP, and the loss has a finite gradient."""
    assert resolve_jvp_mode(_random_teacher("mlp", (2,), dict(hidden=4, depth=1))) == "forward"
    shape, options = BACKBONES["ddpmpp"]
    model = _random_teacher("ddpmpp", shape, dict(options, two_time=True))
    batch = {
        "x0": jax.random.normal(jax.random.key(0), (4, *shape)),
        "x1": jax.random.normal(jax.random.key(1), (4, *shape)),
    }
    with pytest.raises(TypeError, match="custom_vjp"):
        meanflow_loss(model, batch, jax.random.key(2), jvp_mode="forward")
    # The transposed VJP is the derivative along (v, 0, 1): against a central difference
    # (float32, h = 1e-2: error ~h²·u⁽³⁾ + rounding 1e-7/h, both ~1e-3 of |du/dt| here).
    z, v = batch["x1"], batch["x0"]
    r, t = jnp.array([0.0, 0.2, 0.5, 0.6]), jnp.array([0.3, 0.6, 0.9, 0.6])

    def u_fn(z_, r_, t_):
        return paths.velocity_from_denoised(z_, t_, model(z_, t_, None, r=r_))

    tangents = (v, jnp.zeros(4), jnp.ones(4))
    _, dudt = jax.jit(lambda *p: jvp(u_fn, p, tangents, mode="transpose"))(z, r, t)
    h = 1e-2
    fd = (u_fn(z + h * v, r, t + h) - u_fn(z - h * v, r, t - h)) / (2 * h)
    assert _max(dudt - fd) < 2e-2 * _max(fd), (_max(dudt - fd), _max(fd))
    graphdef, params = nnx.split(model)
    loss_fn = lambda p: meanflow_loss(nnx.merge(graphdef, p), batch, jax.random.key(2))[0]  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("loss_fn", [meanflow_loss, splitmeanflow_loss])
def test_losses_on_a_batch_with_weights_and_a_teacher(loss_fn):
    """Both losses take any coupling's batch (with ``weight``), from scratch or distilling; at
    the teacher's initialisation the distilled boundary rows are exact (u = v_T), so only the
    interval rows contribute, and a zero weight removes a row."""
    teacher = _random_teacher("mlp", (2,), dict(hidden=16, depth=2))
    student = init_from_one_time(
        build_model("mlp", data_shape=(2,), rngs=nnx.Rngs(3), hidden=16, depth=2, two_time=True),
        teacher,
    )
    batch = {
        "x0": jax.random.normal(jax.random.key(0), (8, 2)),
        "x1": jax.random.normal(jax.random.key(1), (8, 2)),
        "weight": jnp.ones(8),
    }
    key = jax.random.key(5)
    scratch, metrics = loss_fn(student, batch, key)
    distil, _ = loss_fn(student, batch, key, teacher_fn=teacher)
    assert np.isfinite(float(scratch)) and np.isfinite(float(distil))
    assert float(metrics["train/raw_distance"]) > 0
    frac = dict(equal_fraction=1.0) if loss_fn is meanflow_loss else dict(boundary_fraction=1.0)
    boundary_only, _ = loss_fn(student, batch, key, teacher_fn=teacher, **frac)
    assert float(boundary_only) < 1e-10  # u(z, t, t) = v_T exactly at initialisation
    zero = dict(batch, weight=jnp.zeros(8))
    assert float(loss_fn(student, zero, key)[0]) == 0.0


def test_mean_speed_benchmark_runs_every_objective_and_counts_the_extra_passes():
    """``benchmarks/mean_speed.py`` on the toy MLP (its recipe, a small batch, one timed round):
    every objective compiles and runs through the library's train step, and XLA's executed
    FLOPs order as the passes do — improved MeanFlow adds a forward pass u_θ(z, t, t) to
    MeanFlow in either JVP mode (it cannot be shared with u_θ(z, r, t): r differs), and
    MeanFlow's and SplitMeanFlow's extra passes add to flow matching's."""
    from benchmarks import mean_speed

    out = mean_speed.bench(
        "toy_mlp", batch=16, quick=True, channels=0, repeats=1, warmup=0, peak=1e11
    )
    methods = out["methods"]
    assert set(methods) == set(mean_speed.METHODS)
    assert all(m["supported"] and m["seconds_per_step"] > 0 for m in methods.values())
    flops = {k: m["executed_flops_per_step"] for k, m in methods.items()}
    for mode in ("forward", "transpose"):
        assert flops[f"imeanflow_{mode}"] > flops[f"meanflow_{mode}"] > flops["fm"]
    assert flops["splitmeanflow"] > flops["fm"]
    nominal = {k: m["nominal"]["forward_equivalents"] for k, m in methods.items()}
    e = out["row_fractions"]["meanflow_r_eq_t"]
    assert nominal["imeanflow_transpose"] == pytest.approx(nominal["meanflow_transpose"] + 1 - e)
