"""B3 (issue 24, deliverable 6) — the cost of a MeanFlow and a SplitMeanFlow training step
against a flow-matching step on the same two-time network.

  python benchmarks/mean_speed.py --out benchmarks/results/mean_speed.json
  python benchmarks/mean_speed.py --out /tmp/mean_speed.json --quick    # < 1 min, small U-Net

Run it alone on the machine (the figures are medians of interleaved calls, but a busy CPU
still shifts them); ``flock -x /tmp/cpu.lock`` as ``unet_speed.py`` if others share it.

Networks (the two-time variant, ``two_time=True``, for every method, so that only the objective
differs): the toy MLP of ``configs/toy2d.py`` (3 × 256, batch 256, 50 steps fused per call as
that config's fit loop runs them; the figure is per step) and the DDPM++ of
``configs/cifar10.py`` at 32×32 (EDM's 55.7M-parameter network, dropout 0.13, one step per
call; batch ``--image-batch``, 8 by default on the CPU; ``--channels`` reduces its width,
recorded in the JSON). ``--quick`` keeps the MLP and replaces the DDPM++ by a small one
(16 channels, one level, one block, no attention, 8×8 inputs) and compiles with less XLA
optimisation (``QUICK_COMPILER_OPTIONS``): a check that everything runs, not a measurement.

Methods, each the library's own train step (``train.step.make_train_step``: loss, gradient,
the config's optimiser, EMA; ``compile_options.jit`` with the state donated, as ``train.fit``):

- ``fm``: flow matching as the 1-RF is trained (``train.toy.ONE_RF_LOSS``: uniform t, squared
  ℓ2 on the velocity; t ≤ 80/81 for the EDM-wrapped U-Net);
- ``meanflow_forward`` / ``meanflow_transpose``: ``losses_mean.meanflow_loss`` with the
  config's settings (toy: r = t on 75 % of the rows; CIFAR10: 25 %, Gsunshine/py-meanflow)
  and ``jvp_mode`` forced: forward-mode ``jax.jvp``, or the VJP transposed (the U-Nets'
  reverse-only group norm and convolutions allow only the latter: a forward-mode DDPM++ step
  is recorded as unsupported with the error's first line);
- ``imeanflow_forward`` / ``imeanflow_transpose``: the same with ``tangent="model"``
  (improved MeanFlow's v-loss: the JVP along the model's own u_θ(z, t, t), one more forward
  pass without gradient on the interval rows);
- ``splitmeanflow``: ``losses_mean.splitmeanflow_loss`` (boundary r = t on 50 % of the rows,
  two extra forward passes on the other rows, no gradient through them).

Figures (medians of ``--repeats`` calls after ``--warmup``, the methods interleaved call by call
so that a drifting machine load hits all of them alike): seconds per step, the ratio to
``fm``'s, XLA's executed FLOPs per step and their ratio, the fraction of the float32 matmul
peak measured in the same run (before and after). "Network-calls equivalent": the same
medians for single pieces on the whole batch — one forward pass u(z, r, t) (the unit), the
MeanFlow JVP (u and du/dt along (v, 0, 1)) in forward and transposed mode — and each step in
units of the forward pass; beside it the nominal count of passes (:func:`nominal_passes`),
weighted by the fraction of rows each runs on.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import matmul_peak, run_metadata, write_json, xla_flops  # noqa: E402
from configs import cifar10, toy2d  # noqa: E402
from simple_reflow import compile_options, losses_mean, paths  # noqa: E402
from simple_reflow.average_velocity import average_velocity  # noqa: E402
from simple_reflow.train import configure  # noqa: E402
from simple_reflow.train.step import (  # noqa: E402
    init_state,
    make_multi_step,
    make_optimizer,
    make_train_step,
    split_model,
)
from simple_reflow.train.toy import ONE_RF_LOSS, TOY_SHAPE  # noqa: E402

METHODS = (
    "fm",
    "meanflow_forward",
    "meanflow_transpose",
    "imeanflow_forward",
    "imeanflow_transpose",
    "splitmeanflow",
)
QUICK_UNET = dict(
    resolution=8, model_channels=16, channel_mult=(1,), num_blocks=1, attn_resolutions=()
)

# --quick only: XLA:CPU's compilation (15–45 s per U-Net training program, whatever its width)
# is most of a quick run; these halve it, at the cost of slower code (its figures are a check
# that everything runs, not measurements).
QUICK_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def nominal_passes(name, *, equal_fraction, boundary_fraction):
    """The passes of one step over the whole batch, rows weighted (module docstring).

    ``forward_equivalents`` counts a forward pass with its backward (parameter and input
    gradients) as 3 forward passes, and a forward pass without gradient, a JVP's tangent pass
    and a transposed VJP (the transpose of the input cotangent map: a tangent pass; the VJP's
    own backward pass is dead code) as 1 each: the usual rule of thumb, to read beside the
    measured figure and XLA's FLOP ratio. e = ``equal_fraction`` (MeanFlow's r = t rows),
    b = ``boundary_fraction`` (SplitMeanFlow's).
    """
    e, b = equal_fraction, boundary_fraction
    rec = {"forward_with_grad": 1.0, "forward_no_grad": 0.0, "tangent": 0.0}
    if name == "splitmeanflow":
        rec["forward_no_grad"] = 2.0 * (1.0 - b)
    elif name.endswith("meanflow_forward"):
        rec["tangent"] = 1.0 - e
    elif name.endswith("meanflow_transpose"):
        rec.update(forward_no_grad=1.0 - e, tangent=1.0 - e)
    if name.startswith("imeanflow"):  # u_θ(z, t, t), the tangent
        rec["forward_no_grad"] += 1.0 - e
    rec["forward_equivalents"] = (
        3.0 * rec["forward_with_grad"] + rec["forward_no_grad"] + rec["tangent"]
    )
    return rec


def _configs(workload):
    """``(meanflow config, splitmeanflow config)`` of a workload's recipe; the first also gives
    every method's network, optimiser and EMA."""
    mod = toy2d if workload == "toy_mlp" else cifar10
    return mod.get_config("meanflow"), mod.get_config("splitmeanflow")


def _model(workload, model_cfg, *, quick, channels):
    """``(ModelDef, params, data shape, reduced-size note or None)`` of the two-time network,
    its parameters initialised inside one jitted call (no eager per-layer initialisation)."""
    cfg, note = ml_collections.ConfigDict(model_cfg.to_dict()), {}
    if workload == "toy_mlp":
        shape = TOY_SHAPE
    else:
        shape = (32, 32, 3)
        if quick:
            note.update(QUICK_UNET)
            shape = (8, 8, 3)
        elif channels != cfg.model_channels:
            note["model_channels"] = channels
        cfg.update(note)

    def build():
        return configure.model_from_config(cfg, data_shape=shape, rngs=nnx.Rngs(0), two_time=True)

    model_def, _ = split_model(nnx.eval_shape(build))
    params = jax.jit(lambda: split_model(build())[1])()
    return model_def, params, shape, note or None


def _losses(workload, cfgs, t_max):
    """The four loss functions ``loss_fn(model, batch, key)`` and the row fractions."""
    mf_cfg, smf_cfg = cfgs
    mf_kw = configure.mean_loss_kwargs(mf_cfg.loss, mf_cfg.time)
    smf_kw = configure.mean_loss_kwargs(smf_cfg.loss, smf_cfg.time)
    fns = {
        "fm": functools.partial(ONE_RF_LOSS, t_max=t_max),
        "meanflow_forward": functools.partial(
            losses_mean.meanflow_loss, **{**mf_kw, "jvp_mode": "forward"}
        ),
        "meanflow_transpose": functools.partial(
            losses_mean.meanflow_loss, **{**mf_kw, "jvp_mode": "transpose"}
        ),
        "splitmeanflow": functools.partial(losses_mean.splitmeanflow_loss, **smf_kw),
    }
    for mode in ("forward", "transpose"):
        fns[f"imeanflow_{mode}"] = functools.partial(
            losses_mean.meanflow_loss, **{**mf_kw, "jvp_mode": mode, "tangent": "model"}
        )
    fractions = {
        "meanflow_r_eq_t": mf_kw["equal_fraction"],
        "splitmeanflow_boundary": smf_kw["boundary_fraction"],
    }
    return fns, fractions, mf_kw


def _batch(shape, batch):
    x0 = jax.random.uniform(jax.random.key(1), (batch, *shape), minval=-1.0, maxval=1.0)
    x1 = jax.random.normal(jax.random.key(2), (batch, *shape))
    return {"x0": x0, "x1": x1}


def _first_line(e):
    return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:300]


def _interleaved(calls, *, repeats, warmup):
    """Median seconds of each blocking ``calls[name]()``, timed round-robin."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def bench(workload, *, batch, quick, channels, repeats, warmup, peak):
    """Every figure of one network (module docstring)."""
    jit = functools.partial(
        compile_options.jit, compiler_options=QUICK_COMPILER_OPTIONS if quick else {}
    )
    cfgs = _configs(workload)
    cfg = cfgs[0]
    t_max = cfg.time.get("t_max", 1.0)
    model_def, params, shape, reduced = _model(workload, cfg.model, quick=quick, channels=channels)
    k = cfg.training.steps_per_call if workload == "toy_mlp" else 1
    loss_fns, fractions, mf_kw = _losses(workload, cfgs, t_max)
    optimizer = make_optimizer(cfg.optim)
    data = _batch(shape, batch)
    out = {
        "batch": batch,
        "data_shape": list(shape),
        "steps_per_call": k,
        "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
        "reduced": reduced,
        "row_fractions": fractions,
        "methods": {},
    }
    calls, per_call_steps = {}, {}
    for name in METHODS:
        loss_fn = loss_fns[name]
        step = make_train_step(model_def, loss_fn, optimizer, ema_decay=cfg.training.ema_decay)
        if k == 1:
            program = step
        else:

            def program(state, b, step=step):  # k steps fused, as fit runs the toy
                return make_multi_step(step, lambda s: b, k)(state)

        state = init_state(jax.tree.map(jnp.array, params), optimizer, 0)
        t0 = time.perf_counter()
        try:
            compiled = jit(program, donate_argnums=0).lower(state, data).compile()
        except Exception as e:  # noqa: BLE001 (forward-mode JVP through custom_vjp layers)
            out["methods"][name] = {"supported": False, "error": _first_line(e)}
            print(f"  {workload} {name}: not supported ({_first_line(e)[:120]})", flush=True)
            continue
        holder = [state]

        def run(compiled=compiled, holder=holder):
            holder[0], metrics = compiled(holder[0], data)
            jax.block_until_ready(metrics["train/loss"])

        calls[name] = run
        per_call_steps[name] = k
        seconds = time.perf_counter() - t0
        # XLA counts a loop's body once: the FLOPs of a fused call are one step's lowered.
        one = compiled if k == 1 else compile_options.jit(step).lower(state, data)
        out["methods"][name] = {
            "supported": True,
            "compile_seconds": seconds,
            "executed_flops_per_step": xla_flops(one),
        }

    # The pieces, on the whole batch and the first parameters (no gradient).
    def u_of(p):
        model = model_def.merge(p)
        return lambda z, r, t: average_velocity(model, z, r, t)

    r, t = losses_mean.sample_two_times(
        jax.random.key(3),
        batch,
        time_fn=mf_kw["time_fn"],
        equal_fraction=0.0,
        t_max=t_max,
    )
    z = paths.interpolate(data["x0"], data["x1"], t)
    v = data["x1"] - data["x0"]
    pieces = {
        "forward": lambda p, z, r, t, v: u_of(p)(z, r, t),
        "jvp_forward": lambda p, z, r, t, v: losses_mean.meanflow_target(
            u_of(p), z, r, t, v, jvp_mode="forward"
        ),
        "jvp_transpose": lambda p, z, r, t, v: losses_mean.meanflow_target(
            u_of(p), z, r, t, v, jvp_mode="transpose"
        ),
    }
    args = (params, z, r, t, v)
    piece_calls = {}
    for name, fn in pieces.items():
        try:
            compiled = jit(fn).lower(*args).compile()
        except Exception as e:  # noqa: BLE001
            out.setdefault("pieces", {})[name] = {"supported": False, "error": _first_line(e)}
            continue
        piece_calls[name] = lambda c=compiled: jax.block_until_ready(c(*args))
        out.setdefault("pieces", {})[name] = {
            "supported": True,
            "executed_flops": xla_flops(compiled),
        }
    print(f"  {workload}: compiled; timing {repeats} rounds", flush=True)
    seconds = _interleaved({**calls, **piece_calls}, repeats=repeats, warmup=warmup)
    fwd = seconds.get("forward")
    for name, s in seconds.items():
        if name in calls:
            rec = out["methods"][name]
            rec["seconds_per_step"] = s / per_call_steps[name]
        else:
            rec = out["pieces"][name]
            rec["seconds"] = s
        sec = rec.get("seconds_per_step", rec.get("seconds"))
        flops = rec.get("executed_flops_per_step", rec.get("executed_flops"))
        rec["peak_fraction"] = flops / sec / peak
        rec["forward_equivalents"] = sec / fwd if fwd else None
    fm = out["methods"]["fm"]
    for name, rec in out["methods"].items():
        if rec["supported"]:
            rec["time_ratio_to_fm"] = rec["seconds_per_step"] / fm["seconds_per_step"]
            rec["flop_ratio_to_fm"] = rec["executed_flops_per_step"] / fm["executed_flops_per_step"]
        rec["nominal"] = nominal_passes(
            name,
            equal_fraction=fractions["meanflow_r_eq_t"],
            boundary_fraction=fractions["splitmeanflow_boundary"],
        )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="small U-Net, few repeats (< 1 min)")
    parser.add_argument("--workloads", nargs="+", default=["toy_mlp", "ddpmpp_32"])
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=128, help="DDPM++ model_channels")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7 / 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls (2 / 1)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    start = time.perf_counter()
    peak = matmul_peak()
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    results = {}
    for workload in args.workloads:
        if workload not in ("toy_mlp", "ddpmpp_32"):
            raise SystemExit(f"--workloads: {workload!r} is not one of toy_mlp, ddpmpp_32.")
        batch = (
            toy2d.get_config().training.batch_size if workload == "toy_mlp" else args.image_batch
        )
        results[workload] = r = bench(
            workload,
            batch=batch,
            quick=args.quick,
            channels=args.channels,
            repeats=repeats,
            warmup=warmup,
            peak=peak,
        )
        for name, m in r["methods"].items():
            if not m["supported"]:
                continue
            print(
                f"{workload:>9} {name:>19}: {m['seconds_per_step'] * 1e3:9.2f} ms/step, "
                f"× {m['time_ratio_to_fm']:.2f} of fm (FLOPs × {m['flop_ratio_to_fm']:.2f}), "
                f"{m['forward_equivalents']:.2f} forward passes "
                f"(rule of thumb {m['nominal']['forward_equivalents']:.2f})",
                flush=True,
            )
        for name, p in r.get("pieces", {}).items():
            if p["supported"]:
                print(
                    f"{workload:>9} {name:>19}: {p['seconds'] * 1e3:9.2f} ms "
                    f"({p['forward_equivalents']:.2f} forward passes)",
                    flush=True,
                )
    peak_after = matmul_peak()
    config = {
        **vars(args),
        "repeats": repeats,
        "warmup": warmup,
        "seconds": time.perf_counter() - start,
    }
    write_json(
        args.out,
        {
            **run_metadata(config),
            "compiler_options": compile_options.cpu_conv_options(),
            "matmul_peak_flops": {"before": peak, "after": peak_after},
            "results": results,
        },
    )
    print(f"wrote {args.out} in {config['seconds']:.0f} s")


if __name__ == "__main__":
    main()
