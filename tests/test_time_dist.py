"""Each training-time distribution matches its density (KS test, 10^4 draws)."""

import jax
import ml_collections
import numpy as np
import pytest
from scipy import integrate, stats

from simple_reflow.time_dist import TIME_DISTS, sample_time, time_density
from simple_reflow.train.configure import validate_time_config


def _cdf(dist, t, **kw):
    return np.array(
        [
            integrate.quad(lambda s: time_density(s, dist, **kw), 1e-12, x)[0]
            for x in np.atleast_1d(t)
        ]
    )


@pytest.mark.parametrize("dist", TIME_DISTS)
def test_density_integrates_to_one(dist):
    total, _ = integrate.quad(lambda s: time_density(s, dist), 1e-12, 1 - 1e-12, limit=200)
    assert abs(total - 1.0) < 1e-6


@pytest.mark.parametrize(
    "dist,kw",
    [
        ("uniform", {}),
        ("exp10", {}),
        ("u_shape", {"a": 4.0}),
        ("u_shape", {"a": 1.5}),
        ("logit_normal", {"mean": -0.5, "std": 1.3}),
    ],
)
def test_samples_match_density_ks(dist, kw):
    t = np.asarray(sample_time(jax.random.key(0), (10_000,), dist, **kw), np.float64)
    assert t.min() >= 0 and t.max() <= 1
    # Quadrature CDF of the density, tabulated and interpolated.
    grid = np.linspace(0, 1, 401)
    table = np.concatenate(
        [
            [0.0],
            np.cumsum(
                [
                    integrate.quad(lambda s: time_density(s, dist, **kw), a, b)[0]
                    for a, b in zip(grid[:-1], grid[1:], strict=True)
                ]
            ),
        ]
    )
    res = stats.kstest(t, lambda x: np.interp(x, grid, table))
    # At n = 10^4 a correct sampler gives p < 1e-3 with probability 1e-3; a wrong density
    # (e.g. uniform vs 10^t, sup-CDF gap 0.1) gives D ≈ 0.1 and p ≈ 0.
    assert res.pvalue > 1e-3, res


def test_exp10_puts_ten_times_more_mass_near_noise():
    assert time_density(1.0, "exp10") / time_density(0.0, "exp10") == pytest.approx(10.0)
    # closed-form inverse CDF of METHOD.md §3
    u = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(_cdf("exp10", np.log10(1 + 9 * u)), u, atol=1e-8)


def test_bad_arguments_and_fields_are_named():
    with pytest.raises(ValueError, match="^dist='beta'"):
        sample_time(jax.random.key(0), (3,), "beta")
    with pytest.raises(ValueError, match="^a=0"):
        sample_time(jax.random.key(0), (3,), "u_shape", a=0)
    with pytest.raises(ValueError, match="^std=-1"):
        time_density(0.5, "logit_normal", std=-1)
    section = dict(dist="uniform", u_shape_a=4.0, logit_mean=0.0, logit_std=1.0, t_max=1.0)
    for field, value, dist in [
        ("dist", "beta", "beta"),
        ("u_shape_a", 0.0, "u_shape"),
        ("logit_std", 0.0, "logit_normal"),
        ("t_max", 0.0, "uniform"),
    ]:
        cfg = ml_collections.ConfigDict({**section, "dist": dist, field: value})
        with pytest.raises(ValueError, match=rf"^time\.{field}="):
            validate_time_config(cfg)
