"""Couplings: where the training pairs come from (METHOD.md §3, §8).

A coupling maps a batch ``{"x0": [B, ...], "index": [B] int32, ...}`` to the same batch with
``"x1"`` filled (and optionally ``"weight"``, mean 1). Build one from the ``coupling`` config
section with :func:`make_coupling`; the train step calls ``coupling.apply(key, batch, state)``
inside its jitted body and keeps ``state`` (LOOM-CFM's assignment) in the train state.

| ``name`` | pairs |
|---|---|
| ``independent`` | ``x1 = N(0, I)`` keyed by the global data index |
| ``ot`` | OT-CFM: exact assignment (ε-scaling auction) or Sinkhorn (OTT-JAX) per batch |
| ``loom`` | LOOM-CFM: persistent data → noise-seed assignment, ``num_caches`` per image |
| ``wcfm`` | W-CFM: independent pairs with Gibbs weights ``exp(−c/(κ√dim))`` |

For ``ot`` with ``ot_batch_factor = f`` the loader must deliver ``f × batch`` samples
(``coupling.batch_factor``); the coupling returns ``batch`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import ml_collections

from simple_reflow.couplings.assignment import default_resolution_bits
from simple_reflow.couplings.loom import loom_init, loom_pairs
from simple_reflow.couplings.minibatch import independent_pairs, ot_pairs
from simple_reflow.couplings.wcfm import wcfm_pairs

__all__ = ["Coupling", "default_coupling_config", "make_coupling", "validate_coupling_config"]

NAMES = ("independent", "ot", "loom", "wcfm")
COSTS = ("sqeuclidean", "euclidean")
METHODS = ("exact", "sinkhorn")


class Coupling(NamedTuple):
    """A pair source with ``init(key) -> state`` and ``apply(key, batch, state)``.

    ``apply`` returns ``(batch, state, metrics)``, is pure and jit-compatible;
    ``batch_factor`` is how many times the train batch the loader must deliver (OT batch
    larger than the train batch).
    """

    name: str
    init: Callable[[Any], Any]
    apply: Callable[[Any, dict, Any], tuple]
    batch_factor: int = 1


def default_coupling_config() -> ml_collections.ConfigDict:
    """Defaults of the ``coupling`` config section."""
    c = ml_collections.ConfigDict()
    c.name = "independent"  # independent | ot | loom | wcfm
    c.cost = "sqeuclidean"  # sqeuclidean | euclidean (LOOM-CFM's released code)
    c.method = "exact"  # ot: exact (auction) | sinkhorn (OTT-JAX)
    c.epsilon = 0.05  # ot/sinkhorn: entropic ε relative to the batch's mean cost
    c.max_iterations = 1000  # ot/sinkhorn
    c.ot_batch_factor = 1  # ot: OT over factor × batch samples, keep batch pairs
    c.ot_groups = 1  # ot/loom: 1 = global batch; G = independent OT per contiguous group
    c.resolution_bits = 0  # exact solver: quantisation levels 2^bits; 0 = largest safe
    c.num_caches = 4  # loom: K noise caches per image (CIFAR10 4–6, ImageNet-64 1)
    c.kappa = 1.0  # wcfm: ε = κ·√dim
    return c


def _require(ok, cfg, field, valid):
    if not ok:
        raise ValueError(f"coupling.{field}={getattr(cfg, field)!r} {valid}.")


def validate_coupling_config(cfg, *, num_data=None):
    """Raises ``ValueError`` naming the first invalid field of a ``coupling`` section."""
    _require(cfg.name in NAMES, cfg, "name", f"is not one of {NAMES}")
    _require(cfg.cost in COSTS, cfg, "cost", f"is not one of {COSTS}")
    _require(cfg.method in METHODS, cfg, "method", f"is not one of {METHODS}")
    _require(cfg.epsilon > 0, cfg, "epsilon", "must be > 0 (relative to the mean cost)")
    for field in ("max_iterations", "ot_batch_factor", "ot_groups", "num_caches"):
        v = getattr(cfg, field)
        _require(isinstance(v, int) and v >= 1, cfg, field, "must be an integer ≥ 1")
    bits = cfg.resolution_bits
    _require(isinstance(bits, int) and 0 <= bits <= 24, cfg, "resolution_bits",
             "must be an integer in [0, 24] (0 = automatic)")
    _require(cfg.kappa > 0 and math.isfinite(cfg.kappa), cfg, "kappa", "must be a finite value > 0")
    if cfg.name == "loom" and (num_data is None or num_data < 1):
        raise ValueError(f"coupling.name='loom' needs num_data ≥ 1 (the dataset size), got "
                         f"num_data={num_data!r}.")


def _check_batch(batch, data_shape, multiple, cfg):
    shape = tuple(batch["x0"].shape[1:])
    if shape != tuple(data_shape):
        raise ValueError(f"batch['x0'] has per-sample shape {shape}, the coupling was built for "
                         f"data_shape={tuple(data_shape)}.")
    if batch["x0"].shape[0] % multiple:
        raise ValueError(f"batch size {batch['x0'].shape[0]} is not a multiple of "
                         f"coupling.ot_groups × coupling.ot_batch_factor = {multiple} "
                         f"({cfg.name!r} coupling).")


def make_coupling(cfg, *, data_shape, num_data=None) -> Coupling:
    """Builds the configured coupling (validated before anything compiles).

    Args:
      cfg: the ``coupling`` config section (see :func:`default_coupling_config`).
      data_shape: per-sample shape of ``x0``, e.g. ``(2,)`` or ``(32, 32, 3)``.
      num_data: dataset size; required by ``loom`` (indices lie in ``[0, num_data)``).
    """
    validate_coupling_config(cfg, num_data=num_data)
    data_shape = tuple(int(d) for d in data_shape)
    bits = cfg.resolution_bits or None
    name, cost, groups = cfg.name, cfg.cost, cfg.ot_groups
    stateless = lambda key: {}

    if name == "independent":
        def apply(key, batch, state):
            _check_batch(batch, data_shape, 1, cfg)
            batch, metrics = independent_pairs(key, batch, data_shape, cost)
            return batch, state, metrics
        return Coupling(name, stateless, apply)

    if name == "ot":
        factor = cfg.ot_batch_factor
        kw = dict(cost=cost, method=cfg.method, epsilon=float(cfg.epsilon),
                  max_iterations=cfg.max_iterations, batch_factor=factor, groups=groups)

        def apply(key, batch, state):
            _check_batch(batch, data_shape, groups * factor, cfg)
            m = batch["x0"].shape[0] // groups
            if bits is not None and bits > default_resolution_bits(m):
                raise ValueError(f"coupling.resolution_bits={bits} exceeds "
                                 f"{default_resolution_bits(m)}, the int32-safe limit at n={m}.")
            batch, metrics = ot_pairs(key, batch, data_shape, resolution_bits=bits, **kw)
            return batch, state, metrics
        return Coupling(name, stateless, apply, factor)

    if name == "loom":
        def init(key):
            return loom_init(key, num_data, cfg.num_caches)

        def apply(key, batch, state):
            _check_batch(batch, data_shape, groups, cfg)
            return loom_pairs(key, batch, state, data_shape, cost=cost, groups=groups,
                              resolution_bits=bits)
        return Coupling(name, init, apply)

    kappa = float(cfg.kappa)

    def apply(key, batch, state):
        _check_batch(batch, data_shape, 1, cfg)
        batch, metrics = wcfm_pairs(key, batch, data_shape, kappa=kappa, cost=cost)
        return batch, state, metrics
    return Coupling(name, stateless, apply)
