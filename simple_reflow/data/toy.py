"""Toy 2-D targets, exactly as BENCHMARKS.md B1 defines them.

- ``8gaussians``: 8 equal-weight components on a circle of radius 4, isotropic std 0.5 — a
  Gaussian mixture, so :func:`toy_mixture` gives the exact analytic teacher (METHOD.md §6);
- ``moons``: scikit-learn's two moons with noise 0.05, scaled ×2 and centred;
- ``checkerboard``: the 4×4 checkerboard on [−4, 4]², uniform inside the dark cells.

Every sampler is a pure JAX function ``sample(key, n) -> [n, 2]`` (jit-able, so training draws
fresh data inside the jitted step). The moons are drawn as scikit-learn's ``make_moons``
draws them (two half circles, then Gaussian noise), in JAX.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from simple_reflow.teachers import GaussianMixture

__all__ = ["TOY_DATASETS", "toy_mixture", "sample_toy", "make_toy_sampler"]

TOY_DATASETS = ("8gaussians", "moons", "checkerboard")

# make_moons' outer moon (cos θ, sin θ) and inner moon (1 − cos θ, 0.5 − sin θ) have centre of
# mass (0.5, 0.25) over both moons (x: (0 + 1)/2, y: (2/π − 2/π + 0.5)/2).
_MOONS_CENTER = (0.5, 0.25)


def toy_mixture():
    """The ``8gaussians`` target as a :class:`GaussianMixture` (radius 4, std 0.5)."""
    angles = jnp.arange(8, dtype=jnp.float32) * (2 * math.pi / 8)
    means = 4.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    return GaussianMixture(means=means, stds=jnp.full((8,), 0.5), weights=jnp.ones((8,)))


def _moons(key, n):
    key_side, key_theta, key_noise = jax.random.split(key, 3)
    theta = jax.random.uniform(key_theta, (n,)) * math.pi
    outer = jnp.stack([jnp.cos(theta), jnp.sin(theta)], 1)
    inner = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], 1)
    side = jax.random.bernoulli(key_side, 0.5, (n, 1))
    x = jnp.where(side, inner, outer) + 0.05 * jax.random.normal(key_noise, (n, 2))
    return 2.0 * (x - jnp.asarray([_MOONS_CENTER], x.dtype))  # [1, 2]: broadcast over rows


def _checkerboard(key, n):
    # Dark cells of the 4×4 board on [-4, 4]^2 (cells of side 2): (i + j) even, i, j ∈ {0..3}.
    key_cell, key_pos = jax.random.split(key)
    cells = jnp.asarray(
        [(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], jnp.float32
    )
    c = jax.random.randint(key_cell, (n,), 0, cells.shape[0])
    return -4.0 + 2.0 * (cells[c] + jax.random.uniform(key_pos, (n, 2)))


def sample_toy(name, key, n):
    """Draws ``n`` exact samples ``[n, 2]`` of a toy target."""
    if name == "8gaussians":
        return toy_mixture().sample(key, n)
    if name == "moons":
        return _moons(key, n)
    if name == "checkerboard":
        return _checkerboard(key, n)
    raise ValueError(f"data.name={name!r} is not one of {TOY_DATASETS}.")


def make_toy_sampler(name):
    """Returns ``sample(key, n)`` for a toy target, checking the name first."""
    if name not in TOY_DATASETS:
        raise ValueError(f"data.name={name!r} is not one of {TOY_DATASETS}.")
    return lambda key, n: sample_toy(name, key, n)
