"""FlowTurbo's velocity refiners: light networks r_φ(x_t, t, v_prev) ≈ v(x_t, t) − v_prev.

FlowTurbo (Zhao et al. 2024, METHOD.md §9) replaces late network calls by a light refiner that
predicts the offset of the velocity from a velocity computed earlier: a refiner step uses
v_prev + r_φ(x_t, t, v_prev) (:func:`simple_reflow.flowturbo.sample_plan`). The authors'
refiner (``models_assemble.VelocityRefinerBlock``, ``shiml20/FlowTurbo``) is their SiT backbone
cut to one transformer block, with x_t and v_prev concatenated along the channels as its input
(``x_embedder`` over ``2·in_channels``) and t through the backbone's time embedding; it has
about 1/28 of the backbone's transformer parameters. Two refiners of the same interface here:

- :class:`MLPRefiner` for flat data (the toys): an MLP on [x_t, v_prev, Fourier(t)];
- :class:`ConvRefiner` for images (NHWC): a few 3×3 convolutions on [x_t, v_prev] with the
  time features added to every hidden layer [recon: the architecture; the authors' is a
  one-block transformer].

Both zero-initialise their output layer (as the authors zero their final layer), so an untrained
refiner predicts no offset: a refiner step then reuses v_prev. Both are called as
``refiner(x_t [B, ...], t [B], v_prev [B, ...], cond=None) -> offset [B, ...]``; ``cond`` is
accepted and ignored (unconditional refiners).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from simple_reflow.models.mlp import fourier_time_features

__all__ = ["MLPRefiner", "ConvRefiner"]

_TIME_FEATURES = 16


class MLPRefiner(nnx.Module):
    """r_φ(x_t, t, v_prev) for flat data: an MLP on [x_t, v_prev, Fourier(t)].

    Args:
      dim: data dimension (inputs are flattened).
      hidden: hidden width.
      depth: number of hidden layers.
      rngs: parameter RNGs.
    """

    def __init__(self, dim: int, *, hidden: int = 32, depth: int = 2, rngs: nnx.Rngs):
        sizes = [2 * dim + 2 * _TIME_FEATURES] + [hidden] * depth
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.out = nnx.Linear(hidden, dim, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, x_t, t, v_prev, cond=None):
        """The velocity offset ``[B, ...]`` (the shape of x_t)."""
        del cond
        b = x_t.shape[0]
        h = jnp.concatenate(
            [
                x_t.reshape(b, -1),
                v_prev.reshape(b, -1).astype(x_t.dtype),
                fourier_time_features(t, _TIME_FEATURES).astype(x_t.dtype),
            ],
            axis=-1,
        )
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        return self.out(h).reshape(x_t.shape)


class ConvRefiner(nnx.Module):
    """r_φ(x_t, t, v_prev) for images ``[B, H, W, C]``: 3×3 convolutions on [x_t, v_prev].

    Each hidden layer is conv → + linear(Fourier(t)) → SiLU, at full resolution (no
    down-sampling: the refiner corrects a velocity that is already close, METHOD.md §9).

    Args:
      channels: image channels C.
      width: hidden channels.
      depth: number of hidden convolutions.
      rngs: parameter RNGs.
    """

    def __init__(self, channels: int, *, width: int = 32, depth: int = 3, rngs: nnx.Rngs):
        sizes = [2 * channels] + [width] * depth
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, kernel_size=(3, 3), padding="SAME", rngs=rngs)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )
        self.times = nnx.List(
            [nnx.Linear(2 * _TIME_FEATURES, width, rngs=rngs) for _ in range(depth)]
        )
        self.out = nnx.Conv(
            width,
            channels,
            kernel_size=(3, 3),
            padding="SAME",
            kernel_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, x_t, t, v_prev, cond=None):
        """The velocity offset ``[B, H, W, C]``."""
        del cond
        h = jnp.concatenate([x_t, v_prev.astype(x_t.dtype)], axis=-1)
        emb = fourier_time_features(t, _TIME_FEATURES).astype(x_t.dtype)
        for conv, time in zip(self.convs, self.times, strict=True):
            h = jax.nn.silu(conv(h) + time(emb)[:, None, None, :])
        return self.out(h)
