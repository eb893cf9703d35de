"""Training-time distributions on [0, 1] (METHOD.md §3).

Each distribution is sampled exactly by inverting its CDF (or by a transform of a Gaussian)
and comes with its density, so a test can check one against the other.

- ``uniform``: p(t) = 1.
- ``exp10`` (Simple ReFlow): p(t) = ln(10)·10^t/9, sampled by t = log10(1 + 9u).
- ``u_shape`` (2-RF++): p(t) ∝ cosh(a(t − ½)), sampled by t = ½ + asinh((2u − 1)·sinh(a/2))/a.
- ``logit_normal``: t = S(m + s·n), n ~ N(0, 1), S the logistic function.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TIME_DISTS", "sample_time", "time_density"]

TIME_DISTS = ("uniform", "exp10", "u_shape", "logit_normal")


def _check(dist, a, std):
    if dist not in TIME_DISTS:
        raise ValueError(f"dist={dist!r} is not one of {TIME_DISTS}.")
    if dist == "u_shape" and not a > 0:
        raise ValueError(f"a={a!r} must be > 0 for dist='u_shape'.")
    if dist == "logit_normal" and not std > 0:
        raise ValueError(f"std={std!r} must be > 0 for dist='logit_normal'.")


def sample_time(key, shape, dist="uniform", *, a=4.0, mean=0.0, std=1.0, dtype=jnp.float32):
    """Draws training times t ∈ [0, 1].

    Args:
      key: PRNG key.
      shape: output shape, usually ``(batch,)``.
      dist: one of :data:`TIME_DISTS`.
      a: U-shape sharpness (2-RF++ uses a = 4), > 0.
      mean, std: location and scale (> 0) of the logit-normal.
      dtype: of ``t``.

    Returns:
      ``t`` of the given shape.
    """
    _check(dist, a, std)
    if dist == "logit_normal":
        return jax.nn.sigmoid(mean + std * jax.random.normal(key, shape, dtype))
    u = jax.random.uniform(key, shape, dtype)
    if dist == "uniform":
        return u
    if dist == "exp10":
        return jnp.log10(1.0 + 9.0 * u)
    return 0.5 + jnp.arcsinh((2.0 * u - 1.0) * math.sinh(a / 2.0)) / a  # u_shape


def time_density(t, dist="uniform", *, a=4.0, mean=0.0, std=1.0):
    """The density p(t) of :func:`sample_time` (NumPy, for tests and plots)."""
    _check(dist, a, std)
    t = np.asarray(t, dtype=np.float64)
    if dist == "uniform":
        return np.ones_like(t)
    if dist == "exp10":
        return math.log(10.0) * 10.0**t / 9.0
    if dist == "u_shape":
        return a * np.cosh(a * (t - 0.5)) / (2.0 * math.sinh(a / 2.0))
    logit = np.log(t) - np.log1p(-t)  # logit_normal
    gauss = np.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    return gauss / (t * (1.0 - t))
