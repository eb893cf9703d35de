"""Speed report for whatever backend JAX finds: img/s and model FLOP utilisation (MFU).

  python benchmarks/speed_report.py --out benchmarks/results/speed_report_cpu.json
  python benchmarks/speed_report.py --out speed_gpu.json            # on a GPU / TPU, as is

For the toy MLP and the image backbones (CIFAR10 DDPM++ 32², AFHQv2/FFHQ DDPM++ 64², ImageNet-64
ADM) it times one training step (``make_train_step`` with EDM's loss and Adam, the library's own
step) and one sampling step (one denoiser call = 1 NFE), compiled once, medians after a warm-up.
MFU = the model's FLOPs (XLA's count with direct convolutions, ``common.model_flops``; the JSON
also has the executed count, lower where the CPU runs Winograd) ÷ time ÷ the measured peak of a
large matmul on the same device in the step's compute dtype. float32 always; bfloat16
(``model.dtype``, parameters float32) on accelerators, or on the CPU with ``--bf16``. Batch sizes
are small on the CPU and accelerator-sized elsewhere (``--scale`` multiplies them). On a 2-core
CPU it runs in under 5 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from common import model_flops, run_metadata, write_json, xla_flops
from flax import nnx

from configs import backbones
from simple_reflow import compile_options
from simple_reflow.losses_edm import edm_loss
from simple_reflow.train.configure import model_from_config
from simple_reflow.train.step import init_state, make_train_step, split_model

# name: (model config, image shape, batch on the CPU, batch on an accelerator)
WORKLOADS = {
    "toy_mlp": (lambda: _mlp(), (2,), 256, 4096),
    "ddpmpp_32": (backbones.ddpmpp_cifar10, (32, 32, 3), 4, 128),
    "ddpmpp_64": (backbones.ddpmpp_64, (64, 64, 3), 2, 64),
    "adm_64": (backbones.adm_imagenet64, (64, 64, 3), 1, 32),
}


def _mlp():
    import ml_collections

    return ml_collections.ConfigDict(dict(name="mlp", hidden=256, depth=3, dropout=0.0))


def _median_seconds(fn, repeats):
    fn()  # warm-up (after compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peaks(n, repeats):
    """FLOP/s of an n×n @ n×n jitted matmul in float32 and bfloat16 on the default device."""
    peaks = {}
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
        f = jax.jit(jnp.dot).lower(a, a).compile()
        peaks[dtype] = (
            2.0 * n**3 / _median_seconds(lambda f=f, a=a: f(a, a).block_until_ready(), repeats)
        )
    return peaks


def _random_params(cfg, shape):
    """The model with N(0, 0.05²) parameters, built abstractly (no eager per-shape init)."""
    model = nnx.eval_shape(lambda: model_from_config(cfg, data_shape=shape, rngs=nnx.Rngs(0)))
    model_def, like = split_model(model)
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    params = jax.tree.unflatten(
        treedef,
        [0.05 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
    )
    return model_def, params


def bench(name, dtype, batch, repeats):
    make_cfg, shape, _, _ = WORKLOADS[name]
    cfg = make_cfg()
    if name != "toy_mlp":
        cfg.dtype = dtype
    model_def, params = _random_params(cfg, shape)
    optimizer = optax.adam(1e-4)
    state = init_state(params, optimizer, seed=0)
    batch_data = {"x0": jax.random.uniform(jax.random.key(1), (batch, *shape), minval=-1, maxval=1)}
    if cfg.get("num_classes", 0):
        batch_data["cond"] = jnp.arange(batch, dtype=jnp.int32) % cfg.num_classes

    def train_step(model_def):
        return compile_options.jit(
            make_train_step(model_def, edm_loss, optimizer, ema_decay=0.999), donate_argnums=0
        )

    train_flops = model_flops(cfg, shape, lambda m: train_step(m).lower(state, batch_data))
    t0 = time.perf_counter()
    train = train_step(model_def).lower(state, batch_data).compile()
    compile_train = time.perf_counter() - t0
    holder = [state]

    def run_train():
        holder[0], metrics = train(holder[0], batch_data)
        jax.block_until_ready(metrics["train/loss"])

    train_s = _median_seconds(run_train, repeats)
    train_executed = xla_flops(train)
    params = holder[0].params
    holder[0] = state = None

    x_t = jax.random.normal(jax.random.key(2), (batch, *shape))
    t = jnp.linspace(0.1, 0.9, batch)
    cond = batch_data.get("cond")

    def fwd(model_def):
        return compile_options.jit(lambda p, x, s, c: model_def.merge(p)(x, s, c))

    fwd_flops = model_flops(cfg, shape, lambda m: fwd(m).lower(params, x_t, t, cond))
    t0 = time.perf_counter()
    forward = fwd(model_def).lower(params, x_t, t, cond).compile()
    compile_fwd = time.perf_counter() - t0
    fwd_s = _median_seconds(lambda: forward(params, x_t, t, cond).block_until_ready(), repeats)
    fwd_executed = xla_flops(forward)
    return {
        "batch": batch,
        "dtype": dtype,
        "train": {
            "seconds": train_s,
            "images_per_s": batch / train_s,
            "gflop_per_step": train_flops / 1e9,
            "executed_gflop_per_step": train_executed / 1e9,
            "compile_seconds": compile_train,
        },
        "sample_step": {
            "seconds": fwd_s,
            "images_per_s": batch / fwd_s,
            "gflop_per_call": fwd_flops / 1e9,
            "executed_gflop_per_call": fwd_executed / 1e9,
            "compile_seconds": compile_fwd,
        },
    }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    p.add_argument("--bf16", action="store_true", help="also bfloat16 on the CPU")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the batch sizes")
    p.add_argument("--repeats", type=int, default=0, help="timed calls (0: 3 CPU / 10 else)")
    args = p.parse_args()
    backend = jax.default_backend()
    cpu = backend == "cpu"
    repeats = args.repeats or (3 if cpu else 10)
    dtypes = ["float32"] + (["bfloat16"] if (not cpu or args.bf16) else [])
    out = {
        "meta": run_metadata(vars(args)),
        "backend": backend,
        "device": jax.devices()[0].device_kind,
        "compiler_options": compile_options.cpu_conv_options(),
        "results": {},
    }
    peaks = matmul_peaks(2048 if cpu else 8192, repeats)
    out["matmul_peak_gflops_per_s"] = {k: v / 1e9 for k, v in peaks.items()}
    print(
        f"{backend} ({out['device']}): matmul peak "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()),
        flush=True,
    )
    for name in args.workloads:
        for dtype in dtypes:
            if name == "toy_mlp" and dtype != "float32":
                continue
            batch = max(1, int(round(WORKLOADS[name][2 if cpu else 3] * args.scale)))
            r = bench(name, dtype, batch, repeats)
            for part, flops_key in (("train", "gflop_per_step"), ("sample_step", "gflop_per_call")):
                r[part]["mfu"] = r[part][flops_key] * 1e9 / r[part]["seconds"] / peaks[dtype]
            out["results"][f"{name}/{dtype}"] = r
            train = r["train"]
            print(
                f"{name:>10} {dtype:>8} batch {batch:>4}: train {train['images_per_s']:9.2f} "
                f"img/s (MFU {100 * train['mfu']:5.1f}%), sample step "
                f"{r['sample_step']['images_per_s']:9.2f} img/s "
                f"(MFU {100 * r['sample_step']['mfu']:5.1f}%)",
                flush=True,
            )
    write_json(args.out, out)


if __name__ == "__main__":
    main()
