"""Data-parallel mesh and shardings (STYLE.md principle 6).

One ``data`` mesh axis; batches are split along it, parameters and optimiser state are
replicated. Host-local batches become global arrays with
``jax.make_array_from_process_local_data``, so the same code runs on one CPU, on 8 virtual
devices and on several hosts.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["make_mesh", "batch_sharding", "replicated", "shard_batch"]


def make_mesh(cfg_mesh=None):
    """A 1-D mesh over ``mesh.data`` devices (-1 or missing: all of them)."""
    n = jax.device_count()
    want = -1 if cfg_mesh is None else cfg_mesh.get("data", -1)
    if want not in (-1, n):
        if want < 1 or n % want:
            raise ValueError(f"mesh.data={want} must be -1 or divide the {n} devices.")
        n = want
    return jax.make_mesh(
        (n,), ("data",), devices=jax.devices()[:n], axis_types=(jax.sharding.AxisType.Auto,)
    )


def batch_sharding(mesh):
    """Splits the leading (batch) axis over ``data``."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch, mesh):
    """Host-local NumPy batch (this process's slice) → global arrays sharded on ``data``."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
