"""Couplings: where the training pairs come from (METHOD.md §3, §8).

A coupling maps a batch ``{"x0": [B, ...], "index": [B] int32, ...}`` to the same batch with
``"x1"`` filled (and optionally ``"weight"``, mean 1). Build one with :func:`make_coupling`
(its keyword arguments are the fields of a config's ``coupling`` section); the train step calls
``coupling.apply(key, batch, state)`` inside its jitted body and keeps ``state`` (LOOM-CFM's
assignment) in the train state.

| ``name`` | pairs |
|---|---|
| ``independent`` | ``x1 = N(0, I)`` keyed by the global data index |
| ``ot`` | OT-CFM: exact assignment (ε-scaling auction) or Sinkhorn (OTT-JAX) per batch |
| ``loom`` | LOOM-CFM: persistent data → noise-seed assignment, ``num_caches`` per image |
| ``wcfm`` | W-CFM: independent pairs with Gibbs weights ``exp(−c/(κ√dim))`` |

For ``ot`` with ``ot_batch_factor = f`` the loader must deliver ``f × batch`` samples
(``Coupling.batch_factor``); the coupling returns ``batch`` pairs.

Where the exact assignment of OT-CFM and LOOM-CFM is solved (``solver``): ``device`` — the
ε-scaling auction inside the jitted step; ``host`` — POT / scipy in the input pipeline, for the
next batches while the current step runs (:mod:`~simple_reflow.couplings.host`;
``Coupling.host`` is then a :class:`~simple_reflow.couplings.host.HostSolver` and the step
receives paired batches); ``auto`` (default) — ``host`` on an accelerator, where the sequential
auction is a chain of tiny kernels the step would wait on, and on a CPU for points of at most
``host.LOW_DIM`` coordinates, where near-ties make the auction slow (2-D, n = 256: 13 ms vs
4.2 ms); else ``device`` (on a CPU the host solver competes with XLA for the same cores, and at
n = 1024, dim 3072 the auction is as fast). With several processes, OT-CFM's host solver needs
``ot_groups`` to be a multiple of the process count (each process solves its own groups, so the
pairs do not depend on the process count) and LOOM-CFM's runs on the device (its table would
need every process's updates); ``auto`` falls back to ``device`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from simple_reflow.couplings.assignment import default_resolution_bits
from simple_reflow.couplings.host import LOW_DIM, HostSolver, make_host_loom, make_host_ot
from simple_reflow.couplings.loom import loom_init, loom_pairs
from simple_reflow.couplings.minibatch import independent_pairs, ot_pairs
from simple_reflow.couplings.wcfm import wcfm_pairs

__all__ = ["Coupling", "NAMES", "COSTS", "METHODS", "SOLVERS", "make_coupling"]

NAMES = ("independent", "ot", "loom", "wcfm")
COSTS = ("sqeuclidean", "euclidean")
METHODS = ("exact", "sinkhorn")
SOLVERS = ("auto", "device", "host")


class Coupling(NamedTuple):
    """A pair source with ``init(key) -> state`` and ``apply(key, batch, state)``.

    ``apply`` returns ``(batch, state, metrics)``, is pure and jit-compatible;
    ``batch_factor`` is how many times the train batch the loader must deliver (OT batch
    larger than the train batch). ``host``, when not None, pairs batches in the input pipeline
    instead (:class:`~simple_reflow.couplings.host.HostSolver`); the step then skips ``apply``.
    """

    name: str
    init: Callable[[Any], Any]
    apply: Callable[[Any, dict, Any], tuple]
    batch_factor: int = 1
    host: HostSolver | None = None


def _require(ok, field, value, valid):
    if not ok:
        raise ValueError(f"{field}={value!r} {valid}.")


def _check_args(name, cost, method, epsilon, kappa, resolution_bits, num_data, **counts):
    _require(name in NAMES, "name", name, f"is not one of {NAMES}")
    _require(cost in COSTS, "cost", cost, f"is not one of {COSTS}")
    _require(method in METHODS, "method", method, f"is not one of {METHODS}")
    _require(epsilon > 0, "epsilon", epsilon, "must be > 0 (relative to the mean cost)")
    for field, v in counts.items():
        _require(isinstance(v, int) and v >= 1, field, v, "must be an integer ≥ 1")
    bits = resolution_bits
    _require(
        isinstance(bits, int) and 0 <= bits <= 24,
        "resolution_bits",
        bits,
        "must be an integer in [0, 24] (0 = automatic)",
    )
    _require(kappa > 0 and math.isfinite(kappa), "kappa", kappa, "must be a finite value > 0")
    if name == "loom" and (num_data is None or num_data < 1):
        raise ValueError(
            f"name='loom' needs num_data ≥ 1 (the dataset size), got num_data={num_data!r}."
        )


def _check_batch(batch, data_shape, multiple, name):
    shape = tuple(batch["x0"].shape[1:])
    if shape != tuple(data_shape):
        raise ValueError(
            f"batch['x0'] has per-sample shape {shape}, the coupling was built for "
            f"data_shape={tuple(data_shape)}."
        )
    if batch["x0"].shape[0] % multiple:
        raise ValueError(
            f"batch size {batch['x0'].shape[0]} is not a multiple of "
            f"ot_groups × ot_batch_factor = {multiple} ({name!r} coupling)."
        )


def _host_solver(solver, name, method, data_shape, groups):
    """Whether the assignment is solved on the host (module docstring)."""
    _require(solver in SOLVERS, "solver", solver, f"is not one of {SOLVERS}")
    processes = jax.process_count()
    exact = name == "loom" or (name == "ot" and method == "exact")
    if solver == "host":
        if not exact:
            raise ValueError(
                f"solver='host' solves exact OT-CFM (name='ot', method='exact') or LOOM-CFM "
                f"(name='loom'), got name={name!r}, method={method!r}."
            )
        if name == "loom" and processes > 1:
            raise ValueError(
                f"solver='host' for LOOM-CFM needs one process (got {processes}): each would "
                "see only its own slice's updates of the assignment; use solver='device'."
            )
        if groups % processes:
            raise ValueError(
                f"solver='host' with {processes} processes needs ot_groups={groups} to be a "
                "multiple of the process count (each process solves its own groups)."
            )
        return True
    if solver == "device" or not exact or groups % processes:
        return False
    if name == "loom" and processes > 1:
        return False
    return jax.default_backend() != "cpu" or math.prod(data_shape) <= LOW_DIM


def make_coupling(
    name="independent",
    *,
    data_shape,
    num_data=None,
    cost="sqeuclidean",
    method="exact",
    epsilon=0.05,
    max_iterations=1000,
    ot_batch_factor=1,
    ot_groups=1,
    resolution_bits=0,
    num_caches=4,
    kappa=1.0,
    solver="auto",
) -> Coupling:
    """Builds a coupling; bad arguments raise a ValueError naming them before anything compiles.

    Args:
      name: ``independent`` | ``ot`` | ``loom`` | ``wcfm`` (module docstring).
      data_shape: per-sample shape of ``x0``, e.g. ``(2,)`` or ``(32, 32, 3)``.
      num_data: dataset size; required by ``loom`` (indices lie in ``[0, num_data)``).
      cost: ``sqeuclidean`` | ``euclidean`` (LOOM-CFM's released code).
      method: ``ot``: ``exact`` (ε-scaling auction) | ``sinkhorn`` (OTT-JAX).
      epsilon: ``ot``/``sinkhorn``: entropic ε relative to the batch's mean cost.
      max_iterations: ``ot``/``sinkhorn``.
      ot_batch_factor: ``ot``: OT over factor × batch samples, keep batch pairs.
      ot_groups: ``ot``/``loom``: 1 = global batch; G = independent OT per contiguous group.
      resolution_bits: exact solver: quantisation levels 2^bits; 0 = the largest safe.
      num_caches: ``loom``: K noise caches per image (CIFAR10 4–6, ImageNet-64 1).
      kappa: ``wcfm``: ε = κ·√dim.
      solver: ``ot`` with ``method='exact'``, ``loom``: ``auto`` | ``device`` | ``host``
        (module docstring).
    """
    _check_args(
        name,
        cost,
        method,
        epsilon,
        kappa,
        resolution_bits,
        num_data,
        max_iterations=max_iterations,
        ot_batch_factor=ot_batch_factor,
        ot_groups=ot_groups,
        num_caches=num_caches,
    )
    data_shape = tuple(int(d) for d in data_shape)
    host = _host_solver(solver, name, method, data_shape, ot_groups)
    bits = resolution_bits or None
    groups = ot_groups
    stateless = lambda key: {}

    if name == "independent":

        def apply(key, batch, state):
            _check_batch(batch, data_shape, 1, name)
            batch, metrics = independent_pairs(key, batch, data_shape, cost)
            return batch, state, metrics

        return Coupling(name, stateless, apply)

    if name == "ot":
        factor = ot_batch_factor
        kw = dict(
            cost=cost,
            method=method,
            epsilon=float(epsilon),
            max_iterations=max_iterations,
            batch_factor=factor,
            groups=groups,
        )

        def apply(key, batch, state):
            _check_batch(batch, data_shape, groups * factor, name)
            m = batch["x0"].shape[0] // groups
            if bits is not None and bits > default_resolution_bits(m):
                raise ValueError(
                    f"resolution_bits={bits} exceeds "
                    f"{default_resolution_bits(m)}, the int32-safe limit at n={m}."
                )
            batch, metrics = ot_pairs(key, batch, data_shape, resolution_bits=bits, **kw)
            return batch, state, metrics

        if host:
            # each process pairs its own contiguous slice of the global batch: its groups
            local = groups // jax.process_count()
            host = make_host_ot(data_shape, cost=cost, batch_factor=factor, groups=local)
            return Coupling(name, stateless, apply, factor, host)
        return Coupling(name, stateless, apply, factor)

    if name == "loom":

        def init(key):
            return loom_init(key, num_data, num_caches)

        def apply(key, batch, state):
            _check_batch(batch, data_shape, groups, name)
            return loom_pairs(
                key, batch, state, data_shape, cost=cost, groups=groups, resolution_bits=bits
            )

        if host:
            host = make_host_loom(data_shape, cost=cost, groups=groups, num_caches=num_caches)
        return Coupling(name, init, apply, 1, host or None)

    kappa = float(kappa)

    def apply(key, batch, state):
        _check_batch(batch, data_shape, 1, name)
        batch, metrics = wcfm_pairs(key, batch, data_shape, kappa=kappa, cost=cost)
        return batch, state, metrics

    return Coupling(name, stateless, apply)
