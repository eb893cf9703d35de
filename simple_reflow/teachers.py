"""Teachers: denoisers in flow time (METHOD.md §1, §6).

- :func:`edm_to_flow` turns an EDM denoiser D_EDM(x; σ) into a flow denoiser,
  D(x_t, t) = D_EDM(x_t/(1 − t); t/(1 − t)).
- :class:`GaussianMixture` is the analytic teacher: for data Σ_k π_k N(μ_k, s_k² I) and noise
  N(0, I) the posterior mean, the EDM denoiser and exact samples are all closed-form.
- A trained network is a teacher as it is: any ``model(x_t, t, cond)`` is a denoiser.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import paths

__all__ = ["edm_to_flow", "GaussianMixture"]


def edm_to_flow(edm_fn):
    """Wraps ``edm_fn(x_ve, sigma [B], cond)`` as a flow denoiser ``fn(x_t, t [B], cond)``."""

    def denoise_fn(x_t, t, cond=None):
        return edm_fn(paths.to_ve(x_t, t), paths.sigma_from_t(t), cond)

    return denoise_fn


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture data Σ_k π_k N(μ_k, s_k² I) in any shape (METHOD.md §6).

    Attributes:
      means: ``[K, ...]`` component means; the trailing shape is the data shape.
      stds: ``[K]`` component standard deviations s_k.
      weights: ``[K]`` mixture weights π_k (normalised here).
    """

    means: jax.Array
    stds: jax.Array
    weights: jax.Array

    def __post_init__(self):
        # One floating dtype for all three, the means' (float64 arrays stay float64 for
        # reference computations under jax.enable_x64; integer means become float32).
        dtype = jnp.asarray(self.means).dtype
        dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
        w = jnp.asarray(self.weights, dtype)
        object.__setattr__(self, "means", jnp.asarray(self.means, dtype))
        object.__setattr__(self, "stds", jnp.asarray(self.stds, dtype))
        object.__setattr__(self, "weights", w / jnp.sum(w))

    @property
    def shape(self):
        return tuple(self.means.shape[1:])

    @property
    def dim(self):
        return int(self.means[0].size)

    def _flat_means(self):
        return self.means.reshape(self.means.shape[0], -1)

    def _posterior_logits(self, y, scale, var):
        """log π_k + log N(y; scale_k μ_k, var_k I) for flat y [B, d], scale/var [B, K]."""
        mu = self._flat_means()
        sq = (
            jnp.sum(y * y, 1)[:, None]
            - 2.0 * scale * (y @ mu.T)
            + scale**2 * jnp.sum(mu * mu, 1)[None, :]
        )
        return jnp.log(self.weights)[None] - 0.5 * sq / var - 0.5 * self.dim * jnp.log(var)

    def denoise(self, x_t, t, cond=None):
        """E[x0 | x_t] for the straight path (METHOD.md §6).

        Args:
          x_t: ``[B, ...]``; t: ``[B]`` in [0, 1].
        """
        del cond
        y = x_t.reshape(x_t.shape[0], -1)
        tb = t.reshape(-1, 1)
        s2 = self.stds[None] ** 2
        var = (1.0 - tb) ** 2 * s2 + tb**2  # v_k(t), [B, K]
        w = jax.nn.softmax(self._posterior_logits(y, 1.0 - tb, var), axis=1)
        mu = self._flat_means()
        gain = (1.0 - tb) * s2 / var  # [B, K]
        # Σ_k w_k [μ_k + g_k (y − (1 − t) μ_k)] = Σ_k w_k (1 − g_k(1 − t)) μ_k + (Σ_k w_k g_k) y
        out = (w * (1.0 - gain * (1.0 - tb))) @ mu + jnp.sum(w * gain, 1, keepdims=True) * y
        return out.reshape(x_t.shape)

    def edm_denoise(self, y, sigma, cond=None):
        """EDM's denoiser of the same data: E[x0 | x0 + σn = y] (METHOD.md §6)."""
        del cond
        yf = y.reshape(y.shape[0], -1)
        sb = sigma.reshape(-1, 1)
        s2 = self.stds[None] ** 2
        var = s2 + sb**2
        w = jax.nn.softmax(self._posterior_logits(yf, jnp.ones_like(var), var), axis=1)
        mu = self._flat_means()
        gain = s2 / var
        out = (w * (1.0 - gain)) @ mu + jnp.sum(w * gain, 1, keepdims=True) * yf
        return out.reshape(y.shape)

    def __call__(self, x_t, t, cond=None):
        return self.denoise(x_t, t, cond)

    def mean(self):
        """The data mean Σ_k π_k μ_k, flat ``[d]`` (float64, closed form)."""
        mu = np.asarray(self._flat_means(), np.float64)
        return np.asarray(self.weights, np.float64) @ mu

    def covariance(self):
        """The data covariance Σ_k π_k (s_k² I + μ_k μ_kᵀ) − m mᵀ, ``[d, d]`` (float64, closed
        form; law of total covariance)."""
        mu = np.asarray(self._flat_means(), np.float64)
        w = np.asarray(self.weights, np.float64)
        s2 = np.asarray(self.stds, np.float64) ** 2
        m = w @ mu
        return (w[:, None] * mu).T @ mu + (w @ s2) * np.eye(self.dim) - np.outer(m, m)

    def sample(self, key, n):
        """Exact samples ``[n, ...]`` of the data distribution."""
        key_k, key_n = jax.random.split(key)
        k = jax.random.categorical(key_k, jnp.log(self.weights), shape=(n,))
        noise = jax.random.normal(key_n, (n,) + self.shape)
        std = self.stds[k].reshape((n,) + (1,) * len(self.shape))
        return self.means[k] + std * noise

    def exact_flow(self, x1, t):
        """For a single component: x_t = (1 − t)μ + √((1 − t)²s² + t²)·x1, the exact ODE flow."""
        if self.means.shape[0] != 1:
            raise ValueError("exact_flow is closed-form only for a single Gaussian component.")
        tb = paths.expand_t(t, x1)
        scale = jnp.sqrt((1 - tb) ** 2 * self.stds[0] ** 2 + tb**2)
        return (1.0 - tb) * self.means[:1] + scale * x1  # means[:1]: [1, ...], x1's rank
