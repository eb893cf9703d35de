"""B3 (toy part) — training and sampling speed of the toy MLP on this machine.

  python benchmarks/toy_speed.py --out results/toy_speed.json
  python benchmarks/toy_speed.py --out /tmp/s.json --xla-sweep   # also try XLA CPU flag sets

Figures (medians after warm-up, the matmul peak measured in the same run):

- training: steps/s of the jitted Simple ReFlow step (3 hidden layers of 256, batch 256), with
  1, 10 and 100 steps fused per call (``training.steps_per_call``); model FLOPs per step from
  XLA's cost analysis and the fraction of the float32 matmul peak they reach;
- sampling: a 9-NFE DPM-Solver-2 sample of 10^4 points (sigmoid grid from t_max < 1, so the
  9 evaluations are all network calls) against nine separately timed forward passes of the
  network on the same batch: the ratio is the solver's overhead.

``--xla-sweep`` reruns the training figure in subprocesses under a few ``XLA_FLAGS`` settings
(XLA's CPU threading) and reports each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    matmul_peak,
    run_metadata,
    time_fn,
    write_json,
    xla_flops,
)
from configs.toy2d import get_config  # noqa: E402
from simple_reflow import grids, losses, pair_mixing, sampler  # noqa: E402
from simple_reflow.train.configure import flow_loss_kwargs  # noqa: E402
from simple_reflow.train.step import (  # noqa: E402
    init_state,
    make_multi_step,
    make_optimizer,
    make_train_step,
)
from simple_reflow.train.toy import build_mlp  # noqa: E402

BATCH = 256
SWEEP = {
    "default": "",
    "single-thread eigen": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def train_figures(peak):
    cfg = get_config()
    model_def, params = build_mlp(cfg.model, 0)
    optimizer = make_optimizer(cfg.optim)
    loss_fn = functools.partial(losses.flow_loss, **flow_loss_kwargs(cfg.loss, cfg.time))
    step = make_train_step(model_def, loss_fn, optimizer, ema_decay=0.999)
    n = 20_000
    data = {
        "backward": {
            "x0": jax.random.normal(jax.random.key(1), (n, 2)),
            "x1": jax.random.normal(jax.random.key(2), (n, 2)),
        }
    }
    data["forward"] = data["backward"]
    key = jax.random.key(3)

    def batch_fn(s, d):
        return pair_mixing.mix_pairs(
            jax.random.fold_in(key, s), d, pair_mixing.pair_fractions(0.4), BATCH
        )

    state = init_state(params, optimizer, 0)
    batch = batch_fn(0, data)
    single = jax.jit(step).lower(state, batch).compile()
    flops = xla_flops(single)
    out = {"flops_per_step": flops, "batch": BATCH}
    for k in (1, 10, 100):
        multi = jax.jit(lambda st, d, k=k: make_multi_step(step, lambda s: batch_fn(s, d), k)(st))
        sec = time_fn(lambda st, m=multi: m(st, data)[0], state, repeats=max(5, 200 // k))
        sps = k / sec
        out[f"steps_per_sec@fused={k}"] = sps
        out[f"peak_fraction@fused={k}"] = flops * sps / peak
    return out


def sample_figures():
    cfg = get_config()
    model_def, params = build_mlp(cfg.model, 0)
    denoise = model_def.denoiser(params)
    x1 = jax.random.normal(jax.random.key(0), (10_000, 2))
    grid = grids.sigmoid_grid(5, 20.0) * (1 - 1e-3)  # 5 intervals from t < 1: 2·5 − 1 = 9 NFE
    nfe = sampler.nfe_of(grid, "dpm2")
    sample = jax.jit(lambda x: sampler.sample(denoise, x, grid, solver="dpm2", r=0.4)[0])
    forward = jax.jit(lambda x: denoise(x, jnp.full((x.shape[0],), 0.5)))
    t_sample = time_fn(sample, x1, repeats=30)
    t_forward = time_fn(forward, x1, repeats=50)
    return {
        "nfe": nfe,
        "sample_sec": t_sample,
        "forward_sec": t_forward,
        "overhead_ratio": t_sample / (nfe * t_forward),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--xla-sweep", action="store_true")
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    peak = matmul_peak()
    result = {"matmul_peak_flops": peak, "train": train_figures(peak)}
    if args.train_only:  # the sweep's subprocess mode
        print(json.dumps(result))
        return
    result["sample"] = sample_figures()
    if args.xla_sweep:
        result["xla_sweep"] = {}
        for name, flags in SWEEP.items():
            env = {**os.environ, "XLA_FLAGS": flags}
            res = subprocess.run(
                [sys.executable, __file__, "--out", "-", "--train-only"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result["xla_sweep"][name] = json.loads(res.stdout.strip().splitlines()[-1])
    t = result["train"]
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s (2048² float32)")
    print(f"train step (MLP 3×256, batch {BATCH}): {t['flops_per_step'] / 1e6:.1f} MFLOP/step")
    for k in (1, 10, 100):
        print(
            f"  fused {k:>3}: {t[f'steps_per_sec@fused={k}']:.0f} steps/s, "
            f"{t[f'peak_fraction@fused={k}']:.2f} of the matmul peak"
        )
    s = result["sample"]
    print(
        f"sample 10^4 points at {s['nfe']} NFE: {s['sample_sec'] * 1e3:.2f} ms; one forward "
        f"{s['forward_sec'] * 1e3:.2f} ms; ratio to {s['nfe']} forwards: "
        f"{s['overhead_ratio']:.3f}"
    )
    for name, r in result.get("xla_sweep", {}).items():
        tr = r["train"]
        print(
            f"  XLA_FLAGS {name!r}: fused 100 {tr['steps_per_sec@fused=100']:.0f} steps/s "
            f"({tr['peak_fraction@fused=100']:.2f} of its peak "
            f"{r['matmul_peak_flops'] / 1e9:.0f} GFLOP/s)"
        )
    write_json(args.out, {**run_metadata({"batch": BATCH}), **result})


if __name__ == "__main__":
    main()
