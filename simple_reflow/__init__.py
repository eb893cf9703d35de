"""simple_reflow: Simple ReFlow and related fast flow models in JAX / Flax NNX.

The conventions (data at t = 0, noise at t = 1, denoiser outputs) are those of METHOD.md §1;
``simple_reflow.paths`` holds every conversion.

Importing it first applies ``SIMPLE_REFLOW_MALLOC=keep`` when that is set
(:mod:`simple_reflow.host_memory`: glibc then reuses XLA:CPU's per-step temporary block instead of
faulting it in again each step).
"""

from simple_reflow import host_memory

host_memory.keep_freed_memory()

from simple_reflow import grids, guidance, losses, pairs, paths, sampler, teachers, time_dist  # noqa: E402
from simple_reflow.sampler import sample  # noqa: E402

__all__ = [
    "grids",
    "guidance",
    "host_memory",
    "losses",
    "pairs",
    "paths",
    "sampler",
    "teachers",
    "time_dist",
    "sample",
]
__version__ = "0.1.0"
