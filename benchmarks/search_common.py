"""What the inference-time search benchmarks share (``search_toy.py``, ``search_digits.py``):
the samplers, the methods, one search under an NFE budget, the seed statistics and the
``--report`` / ``--quick`` command line.

Samplers: N = :data:`STEPS` uniform steps (the paper's 10), Euler–Maruyama of
:mod:`simple_reflow.sde`: ``linear-ODE`` (g = 0), ``linear-SDE`` and ``VP-SDE`` (g(s) = 3·s²,
the paper code's "square" schedule with norm 3; VP: the ScoreSDE β ∈ [0.1, 20] path). Budget
:data:`STEPS`·K per sample: best-of-K, particle search with K particles (λ = :data:`LAM`,
systematic resampling; ``ps`` keeps the highest final reward, ``ps-sample`` draws the final
particle ∝ its weight) and RBF (an initial best-of-K at s = 1, the rest of the budget rolled
over the steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from simple_reflow import grids, search

__all__ = ["LAM", "STEPS", "SAMPLERS", "METHODS", "search_fn", "agg", "parse_args", "read_run"]

LAM, STEPS = 1.0, 10
SAMPLERS = {  # name: (path, diffusion)
    "linear-ODE": ("linear", 0.0),
    "linear-SDE": ("linear", lambda s: 3.0 * s * s),
    "VP-SDE": ("vp", lambda s: 3.0 * s * s),
}
METHODS = ("best-of-n", "ps", "ps-sample", "rbf")


def search_fn(denoise, reward, sampler, method, k, shape):
    """``fn(key) -> (x0, reward, nfe)``: ``method`` with budget K on ``sampler``."""
    path, g = SAMPLERS[sampler]
    grid = grids.uniform_grid(STEPS)
    if method == "best-of-n":
        sample_fn = search.sde_sample_fn(denoise, shape, grid, diffusion=g, path=path)
        return lambda key: search.best_of_n(sample_fn, reward, key, n=k)
    if method in ("ps", "ps-sample"):
        return lambda key: search.particle_search(
            denoise,
            reward,
            key,
            shape=shape,
            grid=grid,
            particles=k,
            diffusion=g,
            path=path,
            lam=LAM,
            select="max" if method == "ps" else "sample",
        )
    return lambda key: search.rollover_budget_forcing(
        denoise,
        reward,
        key,
        shape=shape,
        grid=grid,
        budget=STEPS * k,
        initial=k,
        diffusion=g,
        path=path,
    )


def agg(records, sampler, method, k, key):
    """Mean and standard deviation over the seeds of one record field."""
    v = [r[key] for r in records if (r["sampler"], r["method"], r["k"]) == (sampler, method, k)]
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def parse_args(doc, default_out, argv=None, extra=()):
    """The shared command line (``--out``, ``--quick``, ``--report``) plus ``extra``:
    ``(flag, kwargs)`` pairs for ``add_argument``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=default_out)
    for flag, kwargs in extra:
        ap.add_argument(flag, **kwargs)
    ap.add_argument("--quick", action="store_true", help="K = 1, 4; one seed; n = 256")
    ap.add_argument("--report", action="store_true", help="only redraw .md and .png from --out")
    return ap.parse_args(argv)


def read_run(out):
    """``(records, meta)`` of an earlier run (``out`` and its ``.meta.json``)."""
    with open(out) as f:
        records = json.load(f)
    with open(os.path.splitext(out)[0] + ".meta.json") as f:
        return records, json.load(f)
