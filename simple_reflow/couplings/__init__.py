"""Couplings: how data and noise are paired in a batch (METHOD.md §3, §8).

PLACEHOLDER written by the lead so the pipeline runs while the coupling engineer builds the
full family (minibatch OT, LOOM-CFM, W-CFM, projection); it will be replaced wholesale.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import ml_collections

__all__ = ["Coupling", "make_coupling", "default_coupling_config"]


class Coupling(NamedTuple):
    init: Callable[[Any], Any]
    apply: Callable[[Any, dict, Any], tuple]


def default_coupling_config():
    c = ml_collections.ConfigDict()
    c.name = "independent"
    return c


def make_coupling(cfg, *, data_shape, num_data=None):
    if cfg.name != "independent":
        raise ValueError(f"coupling.name={cfg.name!r} is not one of ('independent',).")

    def apply(key, batch, state):
        batch = dict(batch)
        batch["x1"] = jax.random.normal(key, batch["x0"].shape, batch["x0"].dtype)
        return batch, state, {}

    return Coupling(lambda key: {}, apply)
