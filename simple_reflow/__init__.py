"""simple_reflow: Simple ReFlow and related fast flow models in JAX / Flax NNX.

The conventions (data at t = 0, noise at t = 1, denoiser outputs) are those of METHOD.md §1;
``simple_reflow.paths`` holds every conversion.
"""

from simple_reflow import grids, guidance, losses, pairs, paths, sampler, teachers, time_dist
from simple_reflow.sampler import sample

__all__ = [
    "grids",
    "guidance",
    "losses",
    "pairs",
    "paths",
    "sampler",
    "teachers",
    "time_dist",
    "sample",
]
__version__ = "0.1.0"
