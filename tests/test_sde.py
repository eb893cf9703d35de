"""SDE sampling with the ODE's marginals and best-of-N (METHOD.md §9).

Tolerances. With B samples, a coordinate's sample mean has standard error SE_m = √(Var/B)
and, for Gaussian data, its sample variance SE_v = Var·√(2/B); for the mixture the mode
fractions have SE_p = √(p(1 − p)/B). Each check allows 4·SE (false alarm ≈ 6e-5 per check)
plus the Euler–Maruyama bias of the chain at N = 500 uniform steps, which is first order in h:
measured once with B = 200 000 on the single Gaussian below, |bias| ≤ 0.0012 in the mean and
≤ 0.0032 in the variance at g ≤ 2 (0.0082 at N = 100, 0.0049 at N = 250: ∝ 1/N); we allow
0.004 for both. At B = 4096 that is 4·SE_v = 0.022 + 0.004 on a variance of 0.25.
On the 8gaussians mixture (variance 8.25 per coordinate) the bias of the variance is not
resolved with B = 100 000 (deviations ≤ 0.044, within 2·SE): we allow 0.05 beside
4·SE_v ≈ 0.5 at B = 4096; the mode fractions are the sharper check there.
A sign error in the score term, or a noise scale off by √2, moves the variance at g = 2 by
far more than that.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simple_reflow import grids, paths, sampler, sde, search
from simple_reflow.data import toy
from simple_reflow.teachers import GaussianMixture

B, N, BIAS = 4096, 500, 0.004
MIX_BIAS = 0.05  # mixture variance: bias not resolved at B = 100 000 (|dev| ≤ 0.044 ≈ 2·SE)


def _run(gm, g, seed=0, path="linear"):
    fn = lambda x, t, c: gm.denoise(x, t)  # noqa: E731
    z = jax.random.normal(jax.random.key(seed), (B,) + gm.shape)
    x0, nfe = jax.jit(
        lambda z, k: sde.sample_sde(fn, z, grids.uniform_grid(N), k, diffusion=g, path=path)
    )(z, jax.random.key(seed + 1))
    assert nfe == N
    return np.asarray(x0, np.float64)


@pytest.mark.parametrize("g", [0.5, 1.0, 2.0, lambda t: 1.5 * t])
def test_sde_single_gaussian_marginal(g):
    mu, s = np.array([1.0, -2.0]), 0.5
    gm = GaussianMixture(jnp.asarray([mu], jnp.float32), jnp.array([s]), jnp.array([1.0]))
    x0 = _run(gm, g)
    var = s * s
    se_m, se_v = np.sqrt(var / B), var * np.sqrt(2.0 / B)
    np.testing.assert_array_less(np.abs(x0.mean(0) - mu), 4 * se_m + BIAS)
    np.testing.assert_array_less(np.abs(x0.var(0) - var), 4 * se_v + BIAS)


@pytest.mark.parametrize("g", [0.5, 2.0])
def test_sde_mixture_marginal(g):
    """The toy 8gaussians (radius 4, std 0.5): the mean and covariance against the closed
    form, and the fraction of samples nearest each mode against its weight 1/8."""
    gm = toy.toy_mixture()
    x0 = _run(gm, g, seed=3)
    cov = gm.covariance()
    se_m = np.sqrt(np.diag(cov) / B)
    np.testing.assert_array_less(np.abs(x0.mean(0) - gm.mean()), 4 * se_m + BIAS)
    # the variance of a coordinate of the mixture: SE from the fourth moment of exact samples
    exact = np.asarray(gm.sample(jax.random.key(9), 200_000), np.float64)
    c = exact - exact.mean(0)
    se_v = np.sqrt(np.var(c**2, axis=0) / B)
    np.testing.assert_array_less(np.abs(x0.var(0) - np.diag(cov)), 4 * se_v + MIX_BIAS)
    means = np.asarray(gm.means, np.float64)
    nearest = np.argmin(((x0[:, None] - means[None]) ** 2).sum(-1), axis=1)
    frac = np.bincount(nearest, minlength=8) / B
    np.testing.assert_array_less(np.abs(frac - 1 / 8), 4 * np.sqrt((1 / 8) * (7 / 8) / B))


def test_sde_with_zero_diffusion_is_euler():
    gm = toy.toy_mixture()
    fn = lambda x, t, c: gm.denoise(x, t)  # noqa: E731
    z = jax.random.normal(jax.random.key(0), (64, 2))
    grid = grids.uniform_grid(8)
    x_sde, _ = sde.sample_sde(fn, z, grid, jax.random.key(1), diffusion=0.0)
    x_ode, _ = sampler.sample(fn, z, grid, solver="euler")
    np.testing.assert_allclose(x_sde, x_ode, atol=1e-5)


def _reward(x0, cond):
    return -jnp.sum((x0 - jnp.array([[4.0, 0.0]])) ** 2, axis=1)  # near the mode at angle 0


def _ode_sampler(gm, b=32, n=4):
    fn = lambda x, t, c: gm.denoise(x, t)  # noqa: E731

    def sample_fn(key):
        z = jax.random.normal(key, (b, 2))
        return sampler.sample(fn, z, grids.uniform_grid(n), solver="euler")

    return sample_fn


def test_best_of_one_is_plain_sampling():
    gm = toy.toy_mixture()
    sample_fn = _ode_sampler(gm)
    key = jax.random.key(5)
    x_best, r_best, nfe = search.best_of_n(sample_fn, _reward, key, n=1)
    x_plain, nfe_plain = sample_fn(key)
    # the same draws; lax.map compiles the sampler apart from eager mode: float32 rounding only
    np.testing.assert_allclose(x_best, x_plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r_best, _reward(x_plain, None), rtol=1e-5, atol=1e-5)
    assert int(nfe) == nfe_plain == 4


def test_best_of_n_takes_the_max_of_its_candidates():
    gm = toy.toy_mixture()
    sample_fn = _ode_sampler(gm)
    key = jax.random.key(6)
    x_best, r_best, nfe = jax.jit(lambda k: search.best_of_n(sample_fn, _reward, k, n=5))(key)
    impl = jax.random.key_impl(key)
    cands = [
        sample_fn(jax.random.wrap_key_data(search.candidate_key(key, i), impl=impl))[0]
        for i in range(5)
    ]
    rewards = np.stack([np.asarray(_reward(c, None)) for c in cands])  # [5, B]
    assert int(nfe) == 5 * 4
    np.testing.assert_allclose(r_best, rewards.max(0), rtol=1e-5, atol=1e-5)
    chosen = np.stack(cands)[rewards.argmax(0), np.arange(32)]
    np.testing.assert_allclose(x_best, chosen, rtol=1e-5, atol=1e-5)
    assert float(jnp.mean(r_best)) > rewards[0].mean()  # the search pays off on average


# --- The VP path (interpolant conversion, METHOD.md §9).
# The VP chain starts at σ_1·x1 and neglects α_1·x0 (α_1 = e^{−5.025} ≈ 0.0066): a start off by
# at most α_1·|μ| per coordinate, which the flow (Lipschitz ≤ 1 here: it contracts the noise's
# unit variance to the data's 0.25) carries to the end at most unchanged.
ALPHA_1 = float(np.exp(-0.5 * (0.1 + 0.5 * 19.9)))


def test_vp_denoiser_is_the_vp_posterior_mean():
    """D(x_s/(α + σ), σ/(α + σ)) against E[x0 | α·x0 + σ·ε = y] for x0 ~ N(μ, s²I), written
    from Bayes' rule directly: μ + α·s²/(α²s² + σ²)·(y − α·μ)."""
    mu, s2 = np.array([1.0, -2.0]), 0.25
    gm = GaussianMixture(jnp.asarray([mu], jnp.float32), jnp.array([0.5]), jnp.array([1.0]))
    y = jax.random.normal(jax.random.key(0), (5, 2)) * 2.0
    for s in (0.05, 0.3, 0.7, 1.0):
        alpha, sigma = (float(v) for v in paths.vp_alpha_sigma(s))
        assert abs(alpha**2 + sigma**2 - 1.0) < 1e-6
        back = paths.from_straight(paths.to_straight(y, alpha, sigma), alpha, sigma)
        np.testing.assert_allclose(back, y, rtol=1e-6)
        got = sde.denoise_on_path(lambda x, t, c: gm.denoise(x, t), y, s, path="vp")
        want = mu + alpha * s2 / (alpha**2 * s2 + sigma**2) * (np.asarray(y) - alpha * mu)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vp_coefficients_and_their_derivatives():
    """α, σ from the closed form T(s) = 0.1·s + 9.95·s², the derivatives against central
    differences in float64."""
    with jax.enable_x64(True):
        s = jnp.asarray([0.01, 0.2, 0.5, 0.9], jnp.float64)
        alpha, sigma, d_alpha, d_sigma = sde.path_coefficients("vp", s)
        big_t = 0.1 * np.asarray(s) + 9.95 * np.asarray(s) ** 2
        np.testing.assert_allclose(alpha, np.exp(-big_t / 2), rtol=1e-12)
        np.testing.assert_allclose(sigma, np.sqrt(1 - np.exp(-big_t)), rtol=1e-12)
        h = 1e-6
        a_p, s_p = paths.vp_alpha_sigma(s + h)
        a_m, s_m = paths.vp_alpha_sigma(s - h)
        np.testing.assert_allclose(d_alpha, (a_p - a_m) / (2 * h), rtol=1e-6)
        np.testing.assert_allclose(d_sigma, (s_p - s_m) / (2 * h), rtol=1e-6)
        np.testing.assert_allclose(paths.t_from_alpha_sigma(1 - s, s), s, rtol=1e-15)
        lin = sde.path_coefficients("linear", s)
        np.testing.assert_allclose(np.stack(lin), np.stack([1 - s, s, -(s**0), s**0]), rtol=0)


@pytest.mark.parametrize("g", [0.5, 2.0, lambda s: 3.0 * s * s])
def test_vp_sde_single_gaussian_marginal(g):
    mu, s = np.array([1.0, -2.0]), 0.5
    gm = GaussianMixture(jnp.asarray([mu], jnp.float32), jnp.array([s]), jnp.array([1.0]))
    x0 = _run(gm, g, path="vp")
    var = s * s
    se_m, se_v = np.sqrt(var / B), var * np.sqrt(2.0 / B)
    start = ALPHA_1 * np.abs(mu)
    np.testing.assert_array_less(np.abs(x0.mean(0) - mu), 4 * se_m + BIAS + start)
    np.testing.assert_array_less(np.abs(x0.var(0) - var), 4 * se_v + BIAS)


def test_vp_sde_mixture_mode_fractions():
    gm = toy.toy_mixture()
    x0 = _run(gm, 2.0, seed=4, path="vp")
    means = np.asarray(gm.means, np.float64)
    frac = np.bincount(np.argmin(((x0[:, None] - means[None]) ** 2).sum(-1), axis=1), minlength=8)
    np.testing.assert_array_less(np.abs(frac / B - 1 / 8), 4 * np.sqrt((1 / 8) * (7 / 8) / B))
    cov = gm.covariance()
    np.testing.assert_array_less(
        np.abs(x0.mean(0) - gm.mean()), 4 * np.sqrt(np.diag(cov) / B) + BIAS + ALPHA_1 * 4
    )


def test_vp_ode_is_the_linear_ode_reparametrised():
    """Euler on the VP path (g = 0) converges, at first order, to the straight path's ODE
    solution from the matching start: x_lin(t(1)) = x_VP(1)/(α_1 + σ_1) = t(1)·x1, solved
    by the adaptive reference solver to 1e-9. Errors at N = 100 and 400 (measured: 7.7e-3 and
    2.0e-3 on 64 points of 8gaussians): the ratio of a first-order method is 4."""
    from simple_reflow import reference_solver

    with jax.enable_x64(True):
        gm = toy.toy_mixture()
        gm = GaussianMixture(
            *(jnp.asarray(a, jnp.float64) for a in (gm.means, gm.stds, gm.weights))
        )
        fn = lambda x, t, c: gm.denoise(x, t)  # noqa: E731
        z = jax.random.normal(jax.random.key(0), (64, 2), jnp.float64)
        alpha, sigma = paths.vp_alpha_sigma(1.0)
        t0 = float(paths.t_from_alpha_sigma(alpha, sigma))
        ref, _ = jax.jit(
            lambda z: reference_solver.solve_adaptive(
                fn, z, t_start=t0, t_end=1e-6, rtol=1e-9, atol=1e-9
            )
        )(z)
        errs = []
        for n in (100, 400):
            x, _ = jax.jit(
                lambda z, n=n: sde.sample_sde(
                    fn, z, grids.uniform_grid(n), jax.random.key(1), diffusion=0.0, path="vp"
                )
            )(z)
            errs.append(float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, 1)))))
    assert errs[1] < 4e-3, errs
    assert 3.0 < errs[0] / errs[1] < 5.0, errs
