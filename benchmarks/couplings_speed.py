"""B3 coupling cost: exact assignment, Sinkhorn and projection at n ∈ {256, 1024}, dim ∈ {2, 3072}.

Run (exclusive CPU)::

    JAX_PLATFORMS=cpu flock -x /tmp/cpu.lock python benchmarks/couplings_speed.py --out FILE.json

Rows (medians after warm-up; compile time reported apart):
- ``exact``: the library's auction including the cost matrix, jitted, from the two point sets;
  ``exact_solve_only``: the auction on a precomputed cost matrix;
- ``scipy``: ``scipy.optimize.linear_sum_assignment`` on a NumPy cost matrix (reference), with
  the NumPy cost matrix time apart;
- ``sinkhorn``: OTT-JAX balanced Sinkhorn, ε = 0.05 × mean cost, including the cost matrix;
- ``projection``: balanced coupling projection (plan + drawn pairs), ε = 0.05 × mean cost;
- sharpness of the Sinkhorn plan (mean largest row mass) per relative ε at n = 256;
- the toy-MLP train step (batch 256, 8gaussians data) with the OT-CFM coupling vs the
  independent one (also exact OT within 4, 8 or 16 groups, ``coupling.ot_groups``), through the
  library's ``make_train_step``; beside it, compiled exact solvers
  (scipy's ``linear_sum_assignment``, POT's network-simplex ``emd``) on the same 256 × 256 costs,
  which bound from below what any exact OT-CFM step at this size can cost here;
- a large-matmul peak from the same run.

``--sections`` picks a subset (``coupling,sharpness,toy_step``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import matmul_peak, run_metadata, time_fn, write_json  # noqa: E402
from simple_reflow.couplings import make_coupling  # noqa: E402
from simple_reflow.couplings.assignment import cost_matrix, solve_assignment  # noqa: E402
from simple_reflow.couplings.minibatch import sinkhorn_plan  # noqa: E402
from simple_reflow.couplings.projection import project_pairs  # noqa: E402


def _points(n, dim, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, dim))
    y = 0.5 * jax.random.normal(jax.random.key(seed + 1), (n, dim)) + 0.3
    return x, y


def _timed(fn, *args, repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    run = time_fn(fn, *args, repeats=repeats, warmup=1)
    return {"compile_s": max(first - run, 0.0), "median_ms": 1e3 * run}


def coupling_rows(sizes, dims, repeats):
    rows = []
    for n in sizes:
        for dim in dims:
            x, y = _points(n, dim)
            exact = jax.jit(lambda x, y: solve_assignment(cost_matrix(x, y)))
            solve = jax.jit(solve_assignment)
            sink = jax.jit(lambda x, y: sinkhorn_plan(x, y, epsilon=0.05)[0])
            proj = jax.jit(lambda k, x, y: project_pairs(k, x, x, y, epsilon=0.05)[0]["j"])
            c = cost_matrix(x, y)
            rec = {"n": n, "dim": dim}
            rec["exact"] = _timed(exact, x, y, repeats=repeats)
            rec["exact_solve_only"] = _timed(solve, c, repeats=repeats)
            rec["sinkhorn"] = _timed(sink, x, y, repeats=repeats)
            rec["projection"] = _timed(proj, jax.random.key(0), x, y, repeats=repeats)
            xn, yn = np.asarray(x), np.asarray(y)
            t = time.perf_counter()
            cn = (xn * xn).sum(1)[:, None] + (yn * yn).sum(1)[None] - 2 * xn @ yn.T
            rec["numpy_cost_ms"] = 1e3 * (time.perf_counter() - t)
            ts = []
            for _ in range(max(3, repeats // 2)):
                t = time.perf_counter()
                r, s = linear_sum_assignment(cn)
                ts.append(time.perf_counter() - t)
            rec["scipy_ms"] = 1e3 * float(np.median(ts))
            p = np.asarray(exact(x, y))
            rec["exact_total_minus_scipy"] = float(
                cn[np.arange(n), p].sum(dtype=np.float64) - cn[r, s].sum(dtype=np.float64)
            )
            rows.append(rec)
            print(
                f"n={n:5d} dim={dim:5d}  exact {rec['exact']['median_ms']:8.2f} ms "
                f"(solve {rec['exact_solve_only']['median_ms']:7.2f}, compile "
                f"{rec['exact']['compile_s']:.2f} s)  scipy {rec['scipy_ms']:8.2f} ms "
                f"(+cost {rec['numpy_cost_ms']:.1f})  sinkhorn "
                f"{rec['sinkhorn']['median_ms']:8.2f} ms  projection "
                f"{rec['projection']['median_ms']:8.2f} ms",
                flush=True,
            )
    return rows


def sharpness_rows(n, dims, epsilons):
    rows = []
    for dim in dims:
        x, y = _points(n, dim, seed=3)
        for eps in epsilons:
            plan, _, conv = jax.jit(
                lambda x, y, e=eps: sinkhorn_plan(x, y, epsilon=e, max_iterations=5000)
            )(x, y)
            rows_ = plan / plan.sum(1, keepdims=True)
            rec = {
                "n": n,
                "dim": dim,
                "epsilon_rel": eps,
                "mean_max_row": float(jnp.mean(jnp.max(rows_, axis=1))),
                "converged": bool(conv),
            }
            rows.append(rec)
            print(
                f"sharpness n={n} dim={dim:5d} eps_rel={eps:8.0e}: mean max row "
                f"{rec['mean_max_row']:.3f} (converged {rec['converged']})",
                flush=True,
            )
    return rows


def toy_step_ratio(batch=256, repeats=30, steps=20):
    """Toy-MLP step time, OT-CFM vs independent, through ``train.step.make_train_step``."""
    from configs.toy2d import get_config
    from simple_reflow.data.toy import sample_toy
    from simple_reflow.train.step import init_state, make_optimizer, make_train_step
    from simple_reflow.train.toy import ONE_RF_LOSS, build_mlp

    cfg = get_config()
    out = {
        "batch": batch,
        "dim": 2,
        "data": "8gaussians",
        "steps_per_call": steps,
        "via": "train.step",
    }
    x0 = sample_toy("8gaussians", jax.random.key(0), batch)
    for name in ("independent", "ot", "ot_bits8", "ot_groups4", "ot_groups8", "ot_groups16"):
        kw = {}
        if name == "ot_bits8":
            kw["resolution_bits"] = 8  # exact only up to n·range/2^8 in total cost
        if name.startswith("ot_groups"):  # exact OT within groups of 256 / G (ot_groups)
            kw["ot_groups"] = int(name.removeprefix("ot_groups"))
        # the in-step solver (benchmarks/cfm_vs_torchcfm.py times the host solver's pipeline)
        coupling = make_coupling(name.split("_")[0], data_shape=(2,), solver="device", **kw)
        model_def, params = build_mlp(cfg.model, 0)
        opt = make_optimizer(cfg.optim)
        step = make_train_step(model_def, ONE_RF_LOSS, opt, ema_decay=0.999, coupling=coupling)
        state = init_state(params, opt, 0, coupling.init(jax.random.key(1)))

        def many(state, x0, step=step):
            def body(s, i):
                idx = s.step * batch + jnp.arange(batch, dtype=jnp.int32)
                return step(s, {"x0": x0, "index": idx})[0], None

            return jax.lax.scan(body, state, None, length=steps)[0]

        f = jax.jit(many)
        out[name] = _timed(f, state, x0, repeats=repeats)
        out[name]["per_step_ms"] = out[name]["median_ms"] / steps
    out["reference_exact_ms"] = _reference_solvers(batch)
    fastest = min(out["reference_exact_ms"].values())
    out["ratio_lower_bound_fastest_reference"] = 1.0 + fastest / out["independent"]["per_step_ms"]
    out["ratio_ot_over_independent"] = out["ot"]["median_ms"] / out["independent"]["median_ms"]
    out["ratio_ot_bits8_over_independent"] = (
        out["ot_bits8"]["median_ms"] / out["independent"]["median_ms"]
    )
    print(
        f"toy MLP step (batch {batch}): independent {out['independent']['per_step_ms']:.3f} ms,"
        f" ot {out['ot']['per_step_ms']:.3f} ms (ratio {out['ratio_ot_over_independent']:.2f}),"
        f" ot 8 bits {out['ot_bits8']['per_step_ms']:.3f} ms "
        f"(ratio {out['ratio_ot_bits8_over_independent']:.2f})",
        flush=True,
    )
    print(
        "exact OT within groups: "
        + ", ".join(
            f"{g} groups of {batch // g}: ratio "
            f"{out[f'ot_groups{g}']['median_ms'] / out['independent']['median_ms']:.2f}"
            for g in (4, 8, 16)
        ),
        flush=True,
    )
    ref = out["reference_exact_ms"]
    print(
        "exact solvers on the same 256 x 256 costs (NumPy cost matrix included): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in ref.items())
        + f" -> an exact OT-CFM step costs at least "
        f"{out['ratio_lower_bound_fastest_reference']:.2f}x an independent one",
        flush=True,
    )
    return out


def _reference_solvers(batch, draws=20):
    """Median ms of scipy's LSA and POT's ``emd`` on toy costs (8gaussians data vs noise)."""
    import ot

    from simple_reflow.data.toy import sample_toy

    times = {"scipy_lsa": [], "pot_emd": []}
    a = np.full(batch, 1.0 / batch)
    for i in range(draws):
        x = np.asarray(sample_toy("8gaussians", jax.random.key(100 + i), batch), np.float64)
        y = np.random.default_rng(i).standard_normal((batch, 2))
        for name in times:
            t = time.perf_counter()
            c = (x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T
            if name == "scipy_lsa":
                linear_sum_assignment(c)
            else:
                ot.emd(a, a, c)
            times[name].append(time.perf_counter() - t)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--dims", default="2,3072")
    ap.add_argument("--sections", default="coupling,sharpness,toy_step")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(s) for s in args.dims.split(",")]
    peak = matmul_peak()
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    res = {"meta": run_metadata(vars(args)), "matmul_peak_flops": peak}
    if res["meta"]["git_commit"] == "unknown":
        res["meta"]["git_commit"] = "uncommitted"
    if "coupling" in sections:
        res["coupling"] = coupling_rows(sizes, dims, args.repeats)
    if "sharpness" in sections:
        res["sharpness"] = sharpness_rows(256, dims, [1e-1, 1e-2, 1e-3, 1e-4])
    if "toy_step" in sections:
        res["toy_step"] = toy_step_ratio()
    res["matmul_peak_flops_end"] = matmul_peak()
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
