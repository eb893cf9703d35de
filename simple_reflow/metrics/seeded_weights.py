"""Deterministic, non-trivial weights for a network from its parameter names (NumPy only).

Used to compare two implementations of the same network (ours and a reference in another
framework) at full size without shipping its weights: both sides generate every tensor from
its name with :func:`seeded_value`. This module imports only NumPy, so a reference script can
load it by path without JAX.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["seeded_value"]


def seeded_value(name: str, shape, seed: int = 0) -> np.ndarray:
    """The float32 value of parameter or buffer ``name`` of ``shape``, from ``(seed, name)``.

    Convolution / linear weights (≥ 2 dims) are He-normal, ``N(0, 2 / fan_in)`` with
    ``fan_in = prod(shape[1:])`` (PyTorch's OIHW / [out, in] layout); batch-norm parameters
    and statistics (names ending in ``.weight``/``.bias``/``.running_mean``/``.running_var``
    with one dim) are ``1 + 0.1 N``, ``0.1 N``, ``0.1 N`` and ``U(0.5, 1.5)``; other 1-D
    tensors ``0.1 N``.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(int(s) for s in shape)
    leaf = name.rpartition(".")[2]
    if len(shape) >= 2:
        value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif leaf == "running_var":
        value = rng.uniform(0.5, 1.5, shape)
    elif leaf == "weight":
        value = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
        value = 0.1 * rng.standard_normal(shape)
    return value.astype(np.float32)
