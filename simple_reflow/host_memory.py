"""Host memory: an opt-in glibc setting that keeps the blocks XLA:CPU frees for the next
execution instead of unmapping them (``SIMPLE_REFLOW_MALLOC=keep``; off by default).

XLA:CPU allocates each execution's temporary buffers as one block on one of its worker
threads: 1.48 GB for the CIFAR10 DDPM++ training step at batch 8. glibc's malloc serves a block
that large with a fresh ``mmap`` (always, from a worker thread's arena) and returns it with
``munmap`` when the execution ends, so every step faults in 1.48 GB of new zeroed pages:
367,000 minor page faults per step, measured with ``getrusage`` (and the ``mmap``/``munmap``
pair seen with ``strace``). :func:`keep_freed_memory` sets three of glibc's ``mallopt``
tunables so that the block comes from the main heap and stays there once freed:

- ``M_ARENA_MAX = 1``: every thread allocates from the main arena (a worker thread's arena
  would fall back to ``mmap`` for a block larger than its 64 MB heaps, whatever else is set);
- ``M_MMAP_MAX = 0``: no block is served by its own ``mmap``;
- ``M_TRIM_THRESHOLD`` = the largest ``size_t``: free memory at the top of the heap is never
  returned to the system.

Then the steady-state step takes no page faults, and on the 2-core CPU the DDPM++ training step
took 3.1 % less time: medians of 10 steps in three alternating pairs of processes, 3.163 /
2.927 / 2.998 s against 3.250 / 3.047 / 3.081 s with glibc's defaults. But sampling got slower
with one arena for every thread (why was not measured): ``benchmarks/speed_report.py`` measured
the ADM 64² sampling step at 1.31 / 1.11 / 1.45 img/s with it against 1.63 / 1.64 / 1.62 without
(``M_ARENA_MAX=1`` alone: 1.28; the other two alone: 1.66), and the DDPM++ 32² sampling step
varied as much as it gained (7.73 / 9.53 vs 10.04 / 8.50 img/s). So it is off by default, for a
training job to opt into: ``SIMPLE_REFLOW_MALLOC=keep`` in the environment, read by
``import simple_reflow`` (Linux with glibc only; elsewhere nothing changes). It reaches only
threads that have not allocated yet, so it takes effect when ``simple_reflow`` is imported
before JAX's CPU backend starts (before the first array or computation); the same setting from
the environment, which works in any order and for any program, is :data:`ENVIRONMENT`:
``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=18446744073709551615``.

Huge pages are the other way to cut the faults, from the environment only:
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` makes glibc ask for transparent huge pages on the blocks
it maps (the arenas stay as they are). The DDPM++ training step then took about 1,300 faults
and 2.894 / 2.784 s against 367,000 and 3.057 / 3.260 s (two alternating pairs), and
``speed_report.py``'s training steps were faster (ADM 64² 0.37 / 0.36 vs 0.33 / 0.31 img/s), but
its ADM sampling step slower again (1.51 / 1.40 vs 1.68 / 1.60 img/s): for training jobs only.

Other programs pay the same faults: EDM's PyTorch DDPM++ took 20 million minor faults in one
``benchmarks/unet_speed.py`` worker run and 0.9 million with :data:`ENVIRONMENT`, its forward
pass at batch 64 rising from 7.79 to 9.94-10.03 img/s and its training step from 2.79-2.84 to
2.85-2.90 img/s; ``unet_speed.py`` reports the side-by-side ratios under both settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["ENVIRONMENT", "glibc", "keep_freed_memory"]

# The same tunables as glibc environment variables, read when a process starts.
ENVIRONMENT = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1),
}

# glibc's mallopt parameter numbers (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int; glibc stores the trim threshold as a size_t, so -1 is SIZE_MAX (never trim).
_NEVER = -1


def glibc() -> bool:
    """Whether this process runs on Linux with glibc (the only allocator these tunables reach)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> dict:
    """With ``SIMPLE_REFLOW_MALLOC=keep``, sets the ``mallopt`` tunables of the module docstring;
    returns ``{name: value}`` of those set, empty otherwise (the default ``system``, or not glibc).
    """
    choice = os.environ.get("SIMPLE_REFLOW_MALLOC", "system")
    if choice not in ("keep", "system"):
        raise ValueError(f"SIMPLE_REFLOW_MALLOC={choice!r} must be 'keep' or 'system'.")
    if choice == "system" or not glibc():
        return {}
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    wanted = {
        "M_ARENA_MAX": (_M_ARENA_MAX, 1),
        "M_MMAP_MAX": (_M_MMAP_MAX, 0),
        "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, _NEVER),
    }
    return {name: value for name, (param, value) in wanted.items() if mallopt(param, value) == 1}
