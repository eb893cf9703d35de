"""Shared helpers of the benchmark scripts: run metadata, the matmul peak, timing.

Every benchmark writes its figures with :func:`run_metadata` (git commit, machine, jax
version) and quotes speed as a fraction of :func:`matmul_peak`, measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import ml_collections

__all__ = ["run_metadata", "matmul_peak", "model_flops", "xla_flops", "time_fn", "write_json"]


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def xla_flops(stage) -> float:
    """FLOPs in XLA's cost analysis of a lowered or compiled program."""
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def model_flops(cfg, data_shape, lower) -> float:
    """FLOPs of the model as defined: XLA's cost analysis of the program built with
    ``model.conv_algorithm = "xla"`` (3×3 convolutions counted as direct convolutions), so
    that utilisation means the same whichever algorithm runs (Winograd does 4× fewer
    multiplications, :mod:`simple_reflow.models.winograd`).

    Args:
      cfg: the ``model`` section the benchmark runs.
      data_shape: one example's shape.
      lower: ``model_def -> jax.stages.Lowered`` of the benchmarked program for that model
        (lowered only, not compiled: its cost analysis equals the compiled one's to 0.03 % on
        the DDPM++ training step).
    """
    from flax import nnx

    from simple_reflow.train.configure import model_from_config
    from simple_reflow.train.step import split_model

    direct = ml_collections.ConfigDict(cfg.to_dict())
    if "conv_algorithm" in direct:
        direct.conv_algorithm = "xla"
    model = nnx.eval_shape(
        lambda: model_from_config(direct, data_shape=data_shape, rngs=nnx.Rngs(0))
    )
    return xla_flops(lower(split_model(model)[0]))


def run_metadata(config=None):
    """Git commit, CPU/GPU, core count, jax/jaxlib versions and the benchmark's config."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "git_commit": commit,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "config": config,
    }


def time_fn(fn, *args, repeats=10, warmup=2):
    """Median wall time (s) of ``fn(*args)`` after ``warmup`` calls; blocks on the result."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n=2048, repeats=10):
    """The machine's float32 matmul rate (FLOP/s): a jitted n×n @ n×n, median of ``repeats``."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    return 2.0 * n**3 / time_fn(f, a, b, repeats=repeats)


def evict_page_cache(files):
    """Drops ``files`` from the page cache (``posix_fadvise``): the next reads hit the disk."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def write_json(path, obj):
    """Writes ``obj`` as indented JSON, creating the parent folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
