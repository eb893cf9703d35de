"""B3 speed: the CIFAR10 DDPM++ on this machine, against EDM's own PyTorch training step.

Measures, in one session and one after the other:

1. the matmul peak: a jitted float32 ``jnp.dot`` of two n×n matrices (n = 2048);
2. one training step of EDM's CIFAR10 DDPM++ (55.7M parameters) behind EDM's preconditioning,
   at ``--batch`` (8): the library's ``make_train_step`` with EDM's loss (``losses_edm``),
   Adam (optax) and the EMA update, ``value_and_grad`` inside one ``jax.jit`` — images/s,
   model FLOPs per step (XLA's cost analysis with direct convolutions, ``common.model_flops``;
   the executed count is recorded too), and their fraction of the matmul peak;
3. a forward-only denoiser call (eval mode) at ``--fwd-batch`` (64), the pair generator's cost;
4. EDM's own PyTorch training step (``training/networks.py`` + ``training/loss.py``: EDMLoss,
   backward, Adam, EMA) of the same network and its forward denoiser (eval mode, no_grad, at
   ``--fwd-batch``), run in a subprocess with ``--torch-python`` and
   an EDM checkout at ``--edm-repo``; skipped with a message if either is missing. By default
   (``--edm-malloc both``) each EDM run is made twice: with glibc's default allocator settings
   (``edm_pytorch``, EDM as it ships) and with those of the library's opt-in
   ``SIMPLE_REFLOW_MALLOC=keep`` (``edm_pytorch_library_malloc``:
   :data:`simple_reflow.host_memory.ENVIRONMENT`), which make EDM's forward pass much faster
   here (7.8 -> 10.0 img/s), so that the comparison does not rest on the allocator. Run this
   script with ``SIMPLE_REFLOW_MALLOC=keep`` to give the JAX process the same settings.

Every figure is the median of ``--repeats`` timed calls after ``--warmup`` untimed ones. EDM's
subprocess runs ``--edm-runs`` times (default 2), alternately before and after the JAX
measurement, because its rate drifts between runs on a shared machine (2.48–2.76 img/s
training in one session); the ratios are taken against the median of its runs, and each run's
ratio is recorded too.
XLA options are taken from the ``XLA_FLAGS`` environment variable and recorded in the JSON,
with the compiler options the library's programs get (:mod:`simple_reflow.compile_options`).

Run (exclusive lock: nothing else may use the CPU while timing)::

    git --git-dir=<edm mirror> archive HEAD | tar -x -C /tmp/edm
    JAX_PLATFORMS=cpu flock -x /tmp/cpu.lock python benchmarks/unet_speed.py \\
        --out runs/unet_speed.json --edm-repo /tmp/edm --torch-python /tmp/torchvenv/bin/python
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compiler_options():
    from simple_reflow import compile_options

    return compile_options.cpu_conv_options()


def _median_time(fn, *, repeats: int, warmup: int):
    """Runs ``fn()`` (which must block) ``warmup`` + ``repeats`` times; returns timed seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def bench_jax(args) -> dict:
    """Matmul peak, DDPM++ train step and forward call with JAX on this CPU."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    sys.path.insert(0, REPO)
    from common import model_flops, xla_flops

    from configs import backbones
    from simple_reflow import compile_options, losses_edm
    from simple_reflow.train.configure import model_from_config
    from simple_reflow.train.step import init_state, make_train_step, split_model

    out = {"jax_version": jax.__version__, "devices": [str(d) for d in jax.devices()]}
    rep = dict(repeats=args.repeats, warmup=args.warmup)

    # 1. Matmul peak.
    n = args.matmul_n
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    times = _median_time(lambda: dot(a, a).block_until_ready(), **rep)
    peak = 2.0 * n**3 / statistics.median(times)
    out["matmul"] = {"n": n, "seconds": times, "gflops_per_s": peak / 1e9}
    print(f"matmul {n}x{n} f32: {peak / 1e9:.1f} GFLOP/s", flush=True)

    # 2. Training step.
    cfg = backbones.ddpmpp_cifar10(dropout=args.dropout)
    cfg.conv_algorithm = args.conv_algorithm
    shape = (32, 32, 3)
    start = time.perf_counter()
    model = model_from_config(cfg, data_shape=shape, rngs=nnx.Rngs(0))
    model_def, params = split_model(model)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    out["init_seconds"] = time.perf_counter() - start
    out["num_params"] = int(num_params)
    optimizer = optax.adam(2e-4)
    loss_fn = functools.partial(losses_edm.edm_loss)

    def step(model_def):
        return compile_options.jit(
            make_train_step(model_def, loss_fn, optimizer, ema_decay=0.9999), donate_argnums=0
        )

    state = init_state(params, optimizer, seed=0)
    x0 = jax.random.uniform(jax.random.key(1), (args.batch, *shape), minval=-1.0, maxval=1.0)
    batch = {"x0": x0}
    train_flops = model_flops(cfg, shape, lambda m: step(m).lower(state, batch))
    start = time.perf_counter()
    compiled = step(model_def).lower(state, batch).compile()
    out["train_compile_seconds"] = time.perf_counter() - start

    holder = [state]

    def run_step():
        new_state, metrics = compiled(holder[0], batch)
        jax.block_until_ready(metrics["train/loss"])
        holder[0] = new_state

    times = _median_time(run_step, **rep)
    med = statistics.median(times)
    out["train"] = {
        "batch": args.batch,
        "seconds": times,
        "images_per_s": args.batch / med,
        "flops_per_step": train_flops,
        "executed_flops_per_step": xla_flops(compiled),
        "gflops_per_s": train_flops / med / 1e9,
        "fraction_of_matmul_peak": train_flops / med / peak,
        "step": "simple_reflow.train.step.make_train_step + losses_edm.edm_loss + optax.adam",
    }
    print(
        f"train step batch {args.batch}: {args.batch / med:.2f} img/s, "
        f"{train_flops / 1e9:.1f} GFLOP/step, {train_flops / med / 1e9:.1f} GFLOP/s "
        f"({100 * train_flops / med / peak:.1f}% of matmul peak)",
        flush=True,
    )
    params = holder[0].params
    state = None  # free the optimizer state before the forward benchmark

    if args.breakdown:
        # Where the step's time goes: the loss alone, value_and_grad, and Adam + EMA alone.
        key = jax.random.key(3)

        def loss_only(p):
            return loss_fn(model_def.merge(p), batch, key)[0]

        grad_fn = compile_options.jit(jax.value_and_grad(loss_only))
        loss_jit = compile_options.jit(loss_only)
        grads = grad_fn(params)[1]
        opt_state = optimizer.init(params)

        def update(p, g, o, e):
            u, o = optimizer.update(g, o, p)
            p = optax.apply_updates(p, u)
            return p, o, jax.tree.map(lambda a, b: 0.9999 * a + 1e-4 * b, e, p)

        upd = jax.jit(update)
        parts = {
            "loss_forward": lambda: loss_jit(params).block_until_ready(),
            "value_and_grad": lambda: jax.block_until_ready(grad_fn(params)),
            "adam_and_ema": lambda: jax.block_until_ready(upd(params, grads, opt_state, params)),
        }
        out["train_breakdown_seconds"] = {}
        for name, fn in parts.items():
            med_part = statistics.median(_median_time(fn, **rep))
            out["train_breakdown_seconds"][name] = med_part
            print(f"  {name}: {med_part:.3f} s", flush=True)

    # 3. Forward-only denoiser call (eval mode, no dropout).
    def forward(model_def):
        return compile_options.jit(lambda p, x_t, t: model_def.merge(p)(x_t, t))

    fb = args.fwd_batch
    x_t = jax.random.normal(jax.random.key(2), (fb, *shape))
    t = jnp.linspace(0.1, 0.9, fb)
    fwd_flops = model_flops(cfg, shape, lambda m: forward(m).lower(params, x_t, t))
    start = time.perf_counter()
    fwd = forward(model_def).lower(params, x_t, t).compile()
    out["forward_compile_seconds"] = time.perf_counter() - start
    times = _median_time(lambda: fwd(params, x_t, t).block_until_ready(), **rep)
    med = statistics.median(times)
    out["forward"] = {
        "batch": fb,
        "seconds": times,
        "images_per_s": fb / med,
        "flops_per_call": fwd_flops,
        "executed_flops_per_call": xla_flops(fwd),
        "gflops_per_s": fwd_flops / med / 1e9,
        "fraction_of_matmul_peak": fwd_flops / med / peak,
    }
    print(
        f"forward batch {fb}: {fb / med:.2f} img/s, {fwd_flops / 1e9:.1f} GFLOP/call, "
        f"{fwd_flops / med / 1e9:.1f} GFLOP/s ({100 * fwd_flops / med / peak:.1f}% of peak)",
        flush=True,
    )
    return out


def torch_worker(args) -> None:
    """Runs in a subprocess: EDM's PyTorch DDPM++ training step; prints one JSON line."""
    import copy

    import torch

    sys.path.insert(0, args.edm_repo)
    from training.loss import EDMLoss
    from training.networks import EDMPrecond

    torch.manual_seed(0)
    net = EDMPrecond(
        img_resolution=32,
        img_channels=3,
        label_dim=0,
        model_type="SongUNet",
        embedding_type="positional",
        encoder_type="standard",
        decoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
        model_channels=128,
        channel_mult=[2, 2, 2],
        augment_dim=9,
        dropout=args.dropout,
    ).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    loss_fn = EDMLoss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8)
    images = torch.rand(args.batch, 3, 32, 32) * 2 - 1

    def run_step():  # EDM's training_loop.py, one round with no gradient accumulation
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net=net, images=images, labels=None, augment_pipe=None)
        loss.sum().mul(1.0 / args.batch).backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.copy_(p_net.detach().lerp(p_ema, 0.9999))

    times = _median_time(run_step, repeats=args.repeats, warmup=args.warmup)
    med = statistics.median(times)
    # The forward denoiser in eval mode (the pair generator's and sampler's cost), as ours.
    net.eval()
    fb = args.fwd_batch
    x = torch.randn(fb, 3, 32, 32) * 10.0
    sigma = torch.linspace(0.1, 80.0, fb)

    def run_forward():
        with torch.no_grad():
            net(x, sigma)

    fwd_times = _median_time(run_forward, repeats=args.repeats, warmup=args.warmup)
    print(
        json.dumps(
            {
                "torch_version": torch.__version__,
                "threads": torch.get_num_threads(),
                "num_params": sum(p.numel() for p in net.parameters()),
                "batch": args.batch,
                "seconds": times,
                "images_per_s": args.batch / med,
                "forward": {
                    "batch": fb,
                    "seconds": fwd_times,
                    "images_per_s": fb / statistics.median(fwd_times),
                },
            }
        )
    )


def bench_torch(args, env=None, name="default") -> dict:
    """EDM's PyTorch step in a subprocess (its own thread pool, no JAX in the process), with
    ``env`` added to its environment (glibc's allocator settings)."""
    if not args.edm_repo or not os.path.isfile(
        os.path.join(args.edm_repo, "training", "networks.py")
    ):
        msg = f"skipped: no EDM checkout at --edm-repo={args.edm_repo!r}"
        print(msg)
        return {"skipped": msg}
    cmd = [
        args.torch_python,
        os.path.abspath(__file__),
        "--torch-worker",
        "--edm-repo",
        args.edm_repo,
        "--batch",
        str(args.batch),
        "--fwd-batch",
        str(args.fwd_batch),
        "--dropout",
        str(args.dropout),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        msg = f"skipped: the PyTorch run failed: {proc.stderr.strip().splitlines()[-1:]}"
        print(msg)
        return {"skipped": msg}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"EDM PyTorch ({name} malloc) train step batch {args.batch}: "
        f"{res['images_per_s']:.2f} img/s, "
        f"forward batch {args.fwd_batch}: {res['forward']['images_per_s']:.2f} img/s "
        f"(torch {res['torch_version']}, {res['threads']} threads)",
        flush=True,
    )
    return res


def _compare(result, runs, suffix, name) -> None:
    """EDM's runs under one allocator setting: their medians, and the library's ratios to them."""
    result[f"edm_pytorch{suffix}_runs"] = runs
    done = [r for r in runs if "images_per_s" in r]
    if not done:
        result[f"edm_pytorch{suffix}"] = runs[-1]
        return
    edm = dict(done[0], images_per_s=statistics.median(r["images_per_s"] for r in done))
    edm["forward"] = dict(
        done[0]["forward"],
        images_per_s=statistics.median(r["forward"]["images_per_s"] for r in done),
    )
    result[f"edm_pytorch{suffix}"] = edm
    if "jax" not in result:
        return
    ours_train = result["jax"]["train"]["images_per_s"]
    ours_fwd = result["jax"]["forward"]["images_per_s"]
    ratio = ours_train / edm["images_per_s"]
    fwd = ours_fwd / edm["forward"]["images_per_s"]
    result[f"train_speedup_vs_edm_pytorch{suffix}"] = ratio
    result[f"forward_speedup_vs_edm_pytorch{suffix}"] = fwd
    per_train = [ours_train / r["images_per_s"] for r in done]
    per_fwd = [ours_fwd / r["forward"]["images_per_s"] for r in done]
    result[f"train_speedup_per_edm{suffix}_run"] = per_train
    result[f"forward_speedup_per_edm{suffix}_run"] = per_fwd
    print(
        f"JAX / EDM PyTorch ({name} malloc) throughput, median of {len(done)} EDM runs: "
        f"training {ratio:.2f}x, forward {fwd:.2f}x; per EDM run: training "
        + ", ".join(f"{v:.2f}x" for v in per_train)
        + "; forward "
        + ", ".join(f"{v:.2f}x" for v in per_fwd)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON file to write")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--fwd-batch", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.13)
    p.add_argument(
        "--conv-algorithm",
        default="auto",
        help="model.conv_algorithm: auto | xla | chunked | winograd",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--edm-repo", default=None, help="a checkout of NVlabs/edm")
    p.add_argument(
        "--torch-python", default=sys.executable, help="a Python interpreter with torch installed"
    )
    p.add_argument(
        "--edm-runs",
        type=int,
        default=2,
        help="EDM subprocess runs, alternately before and after the JAX measurement",
    )
    p.add_argument(
        "--edm-malloc",
        choices=("default", "library", "both"),
        default="both",
        help="glibc allocator settings of EDM's process: glibc's defaults, those of "
        "SIMPLE_REFLOW_MALLOC=keep (simple_reflow.host_memory.ENVIRONMENT), or a run of each",
    )
    p.add_argument("--skip-jax", action="store_true")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the loss alone, value_and_grad, and Adam + EMA alone",
    )
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        torch_worker(args)
        return
    sys.path.insert(0, REPO)
    from simple_reflow import host_memory  # SIMPLE_REFLOW_MALLOC=keep, if set, before JAX starts

    result = {
        "benchmark": "unet_speed",
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compiler_options": _compiler_options(),
        "host_memory": host_memory.keep_freed_memory(),
        "args": vars(args),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        result["git_commit"] = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        result["git_commit"] = None
    settings = {"default": None, "library": host_memory.ENVIRONMENT}
    if args.edm_malloc != "both":
        settings = {args.edm_malloc: settings[args.edm_malloc]}
    edm_runs = {name: [] for name in settings}
    for run in range(max(1, args.edm_runs)):
        if run == 1 and not args.skip_jax:
            result["jax"] = bench_jax(args)
        for name, env in settings.items():
            edm_runs[name].append(bench_torch(args, env, name))
        if any("images_per_s" not in runs[-1] for runs in edm_runs.values()):
            break  # no EDM checkout, or its run failed: the message is in the JSON
    if "jax" not in result and not args.skip_jax:
        result["jax"] = bench_jax(args)
    for name, runs in edm_runs.items():
        _compare(result, runs, "" if name == "default" else f"_{name}_malloc", name)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
