"""Evaluation of toy-2D models: W2 per NFE budget, an accurate solve, straightness.

Shared by the toy pipeline (``scripts/train.py``) and the B1 benchmark
(``benchmarks/toy2d.py``), so both report the same figures the same way.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from simple_reflow import grids, sampler
from simple_reflow.data.toy import make_toy_sampler
from simple_reflow.metrics.transport import straightness, w2
from simple_reflow.train.streams import stream_key

__all__ = ["solver_grid_fn", "evaluate_model", "evaluate_models", "format_table", "write_outputs"]


def solver_grid_fn(solver_cfg):
    """``n -> grid`` for the configured grid (sigmoid-κ, EDM-ρ or uniform) and t_max."""
    return lambda n: grids.make_grid(
        solver_cfg.grid, n, kappa=solver_cfg.kappa, rho=solver_cfg.rho, t_max=solver_cfg.t_max
    )


def _sample_fn(denoise_fn, grid, solver, r):
    return jax.jit(lambda x1: sampler.sample(denoise_fn, x1, grid, solver=solver, r=r)[0])


def evaluate_model(denoise_fn, cfg, *, solver_cfg=None, key=None, with_accurate=True):
    """W2 at each budget of ``cfg.eval.nfe``, and on an accurate solve with straightness.

    Returns:
      A list of records ``{"solver", "nfe", "budget", "w2", "straightness"}``; the accurate
      solve has ``budget = "accurate"`` (Heun on a uniform grid of ``eval.accurate_steps``).
    """
    solver_cfg = solver_cfg or cfg.sampler
    n = cfg.eval.num_samples
    key = stream_key(cfg.seed, "eval") if key is None else key
    key_noise, key_data = jax.random.split(key)
    x1 = jax.random.normal(key_noise, (n, 2))
    target = make_toy_sampler(cfg.data.name)(key_data, n)
    records = []
    for budget in cfg.eval.nfe:
        grid, nfe = sampler.grid_for_budget(budget, solver_cfg.solver, solver_grid_fn(solver_cfg))
        x0 = _sample_fn(denoise_fn, grid, solver_cfg.solver, solver_cfg.r)(x1)
        records.append(
            {
                "solver": solver_cfg.solver,
                "budget": budget,
                "nfe": nfe,
                "w2": w2(x0, target),
                "straightness": None,
            }
        )
    if with_accurate:
        grid = grids.uniform_grid(cfg.eval.accurate_steps)
        x0 = _sample_fn(denoise_fn, grid, "heun", 0.5)(x1)
        s = jax.jit(lambda x: straightness(denoise_fn, x, grid, solver="heun"))(x1)
        records.append(
            {
                "solver": "heun",
                "budget": "accurate",
                "nfe": sampler.nfe_of(grid, "heun"),
                "w2": w2(x0, target),
                "straightness": float(s),
            }
        )
    return records


def evaluate_models(models, cfg):
    """Evaluates each named model with the configured sampler; adds the W2 floor."""
    n = cfg.eval.num_samples
    sample_data = make_toy_sampler(cfg.data.name)
    key_a, key_b = jax.random.split(stream_key(cfg.seed, "eval_floor"))
    floor = w2(sample_data(key_a, n), sample_data(key_b, n))
    return {"w2_floor": floor, "models": {k: evaluate_model(f, cfg) for k, f in models.items()}}


def format_table(metrics):
    """A plain-text table: one row per model, one column per NFE budget, plus accurate."""
    names = list(metrics["models"])
    recs = metrics["models"][names[0]]
    header = (
        ["model"]
        + [
            f"NFE {r['nfe']}" if r["budget"] != "accurate" else f"accurate ({r['nfe']})"
            for r in recs
        ]
        + ["straightness"]
    )
    lines = [
        "W2 to the target (floor {:.4f})".format(metrics["w2_floor"]),
        " | ".join(f"{h:>14}" for h in header),
    ]
    for name in names:
        rs = metrics["models"][name]
        s = [r["straightness"] for r in rs if r["straightness"] is not None]
        cells = [name] + [f"{r['w2']:.4f}" for r in rs] + [f"{s[0]:.4f}" if s else "-"]
        lines.append(" | ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def _flat(metrics):
    out = {"eval/w2_floor": metrics["w2_floor"]}
    for name, rs in metrics["models"].items():
        for r in rs:
            tag = "accurate" if r["budget"] == "accurate" else f"nfe={r['nfe']}"
            out[f"eval/{name}/w2@{tag}"] = r["w2"]
            if r["straightness"] is not None:
                out[f"eval/{name}/straightness"] = r["straightness"]
    return out


def write_outputs(workdir, cfg, metrics, models):
    """Writes ``eval_metrics.json`` (the image eval stage's name too) and ``samples.png``
    (samples at the largest budget, trajectories)."""
    from simple_reflow.viz import save_toy_figure

    with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
        json.dump({**_flat(metrics), "records": metrics["models"]}, f, indent=1)
    key_noise, key_data = jax.random.split(stream_key(cfg.seed, "eval_figure"))
    x1 = jax.random.normal(key_noise, (2000, 2))
    budget = max(cfg.eval.nfe)
    grid, nfe = sampler.grid_for_budget(budget, cfg.sampler.solver, solver_grid_fn(cfg.sampler))
    samples = {"target": np.asarray(make_toy_sampler(cfg.data.name)(key_data, 2000))}
    trajectories = {}
    fine = grids.uniform_grid(64)
    for name, fn in models.items():
        label = f"{name} ({nfe} NFE, {cfg.sampler.solver}; paths: accurate)"
        samples[label] = np.asarray(_sample_fn(fn, grid, cfg.sampler.solver, cfg.sampler.r)(x1))
        traj = jax.jit(
            lambda x, fn=fn: sampler.integrate(fn, x, fine, solver="heun", trajectory=True)[2]
        )(x1[:24])
        trajectories[label] = np.asarray(traj)
    save_toy_figure(os.path.join(workdir, "samples.png"), samples, trajectories)
