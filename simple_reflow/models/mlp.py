"""A time-conditioned MLP denoiser for toy data.

The network predicts a velocity v_θ(x_t, t) and returns the denoiser D = x_t − t·v_θ
(METHOD.md §1), so the straight-path target u = x1 − x0 has unit-order scale at every t and
the module follows the library's denoiser protocol.

With ``two_time=True`` it is a two-time (average-velocity) network u_θ(z_t, r, t) for MeanFlow
and SplitMeanFlow (METHOD.md §9): the interval t − r enters through the same Fourier features
as t and a zero-initialised linear map added to the first layer's pre-activation, so the
network equals its one-time self at initialisation (see :mod:`simple_reflow.models.two_time`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from simple_reflow import paths
from simple_reflow.models.dropout import Dropout
from simple_reflow.models.layers import second_time_input

__all__ = ["MLPDenoiser", "fourier_time_features"]


def fourier_time_features(t, num=16, max_freq=64.0):
    """Sinusoidal features of t ∈ [0, 1]: ``[B] -> [B, 2·num]`` (log-spaced frequencies)."""
    freqs = jnp.exp(jnp.linspace(0.0, math.log(max_freq), num)) * math.pi
    ang = t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


class MLPDenoiser(nnx.Module):
    """MLP velocity network behind the denoiser interface.

    Args:
      dim: data dimension (the input is flattened).
      hidden: hidden width.
      depth: number of hidden layers.
      dropout: dropout rate after each hidden activation (active iff a key is passed).
      two_time: also take a second time r (the interval t − r), through a zero-initialised
        embedding; off by default (no extra parameters).
      rngs: parameter RNGs.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 256,
        depth: int = 3,
        dropout: float = 0.0,
        two_time: bool = False,
        rngs: nnx.Rngs,
    ):
        self.time_features = 16
        sizes = [dim + 2 * self.time_features] + [hidden] * depth
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.out = nnx.Linear(hidden, dim, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)
        self.dropout = Dropout(dropout)
        # Built last, so the other parameters draw the same random numbers with or without it.
        zeros = nnx.initializers.zeros_init()
        self.map_interval = (
            nnx.Linear(2 * self.time_features, hidden, kernel_init=zeros, rngs=rngs)
            if two_time
            else None
        )

    def velocity(self, x_t, t, *, r=None, key=None):
        """v_θ(x_t, t), or u_θ(x_t, r, t) of a two-time network: ``[B, ...], [B] -> [B, ...]``.

        ``r=None`` on a two-time network means r = t (the instantaneous velocity).
        """
        interval = second_time_input(
            self.map_interval is not None, None if r is None else t - r, x_t.shape[0], t.dtype
        )
        h = jnp.concatenate(
            [x_t.reshape(x_t.shape[0], -1), fourier_time_features(t, self.time_features)], axis=-1
        )
        n = len(self.layers)
        keys = (None,) * n if key is None else jax.random.split(key, n)
        for i, (layer, k) in enumerate(zip(self.layers, keys, strict=True)):
            pre = layer(h)
            if i == 0 and interval is not None:
                pre = pre + self.map_interval(fourier_time_features(interval, self.time_features))
            h = jax.nn.silu(pre)
            h = self.dropout(h, deterministic=k is None, rngs=k)
        return self.out(h).reshape(x_t.shape)

    def __call__(self, x_t, t, cond=None, *, r=None, key=None):
        """D(x_t, t), or D_u(x_t, r, t) = x_t − t·u_θ(x_t, r, t) of a two-time network."""
        del cond
        return paths.denoised_from_velocity(x_t, t, self.velocity(x_t, t, r=r, key=key))
