"""FID cost on this machine: Inception throughput and an end-to-end FID run, vs the matmul peak.

  python benchmarks/fid_speed.py --out benchmarks/results/fid_speed.json [--num 1000]

Measures, in one run: the float32 matmul peak; the FID Inception's feature throughput
(images/s, XLA's FLOP count per image and its fraction of the peak) for 32² and 64² inputs
(both are resized to 299², so they cost the same); the forward throughput of the CIFAR10
DDPM++ (55.7M parameters); and an end-to-end FID of ``--num`` samples of a small DDPM++ at 9
NFE through the library's streaming path (sampling, uint8, Inception, float64 statistics).
From these it extrapolates the wall time of a 50,000-sample FID of the CIFAR10 DDPM++ at 9 NFE.
The Inception weights are seeded (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import matmul_peak, run_metadata, time_fn, write_json
from flax import nnx

from configs import backbones
from simple_reflow import grids, sampler
from simple_reflow.metrics.fid import FeatureStats
from simple_reflow.metrics.inception import FIDInception, inception_params, uint8_features
from simple_reflow.metrics.seeded_weights import seeded_value
from simple_reflow.models.params import flat_params
from simple_reflow.train import sampling, sharding
from simple_reflow.train.configure import model_from_config
from simple_reflow.train.step import split_model


def seeded_inception():
    like = flat_params(nnx.to_pure_dict(nnx.state(nnx.eval_shape(FIDInception), nnx.Param)))
    state = {}
    for name, v in like.items():
        prefix, leaf = name.rpartition("/")[0].replace("/", "."), name.rpartition("/")[2]
        if leaf == "weight":
            kh, kw, i, o = v.shape
            state[f"{prefix}.conv.weight"] = seeded_value(f"{prefix}.conv.weight", (o, i, kh, kw))
            for b in ("weight", "bias", "running_mean", "running_var"):
                state[f"{prefix}.bn.{b}"] = seeded_value(f"{prefix}.bn.{b}", (o,))
    model = nnx.eval_shape(FIDInception)
    nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, inception_params(state))))
    graphdef, st = nnx.split(model)
    raw = jax.jit(lambda s, u8: nnx.merge(graphdef, s)(u8.astype(jnp.float32) / 255))
    return uint8_features(model), raw, st  # raw: for XLA's FLOP count


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--batch", type=int, default=50)
    args = p.parse_args()
    out = {"meta": run_metadata(vars(args))}
    peak = matmul_peak()
    out["matmul_gflops_per_s"] = peak / 1e9
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)

    featurize, raw, st = seeded_inception()
    for size in (32, 64):
        x = jnp.asarray(
            np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3)), jnp.uint8
        )
        flops = raw.lower(st, x).compile().cost_analysis()
        flops = (flops[0] if isinstance(flops, list) else flops)["flops"] / args.batch
        sec = time_fn(featurize, x, repeats=5, warmup=1)
        rate = args.batch / sec
        out[f"inception_{size}"] = {
            "images_per_s": rate,
            "gflop_per_image": flops / 1e9,
            "fraction_of_matmul_peak": rate * flops / peak,
        }
        print(
            f"Inception {size}² → 299²: {rate:.1f} img/s, {flops / 1e9:.2f} GFLOP/image, "
            f"{100 * rate * flops / peak:.1f}% of the matmul peak",
            flush=True,
        )

    ddpm = model_from_config(backbones.ddpmpp_cifar10(), data_shape=(32, 32, 3), rngs=nnx.Rngs(0))
    model_def, params = split_model(ddpm)
    fwd = jax.jit(lambda prm, x, t: model_def.merge(prm)(x, t))
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
    t = jnp.full((16,), 0.5)
    sec = time_fn(fwd, params, x, t, repeats=3, warmup=1)
    ddpm_rate = 16 / sec
    out["ddpmpp_cifar10_forward_images_per_s"] = ddpm_rate
    print(f"CIFAR10 DDPM++ forward: {ddpm_rate:.2f} img/s (batch 16)", flush=True)

    small = backbones.ddpmpp_smoke()
    model_def, params = split_model(
        model_from_config(small, data_shape=(32, 32, 3), rngs=nnx.Rngs(0))
    )
    grid, nfe = sampler.grid_for_budget(9, "dpm2", lambda k: grids.sigmoid_grid(k))
    start = time.perf_counter()
    stats, _ = sampling.sample_features(
        model_def.denoiser,
        params,
        grid,
        solver="dpm2",
        r=0.4,
        shape=(32, 32, 3),
        num_classes=0,
        key=jax.random.key(0),
        featurize=featurize,
        dim=2048,
        num=args.num,
        batch_size=args.batch,
        mesh=sharding.make_mesh(),
    )
    stats.mean_cov()
    total = time.perf_counter() - start
    assert isinstance(stats, FeatureStats) and stats.count == args.num
    out["end_to_end"] = {
        "num": args.num,
        "nfe": nfe,
        "seconds": total,
        "model": "ddpmpp_smoke 32x32",
        "images_per_s": args.num / total,
    }
    est = 50_000 * (nfe / ddpm_rate + 1 / out["inception_32"]["images_per_s"])
    out["extrapolated_50k_fid_cifar10_ddpmpp_hours"] = est / 3600  # at the same NFE
    print(
        f"end-to-end FID of {args.num} samples (small DDPM++, {nfe} NFE): {total:.1f} s "
        f"({args.num / total:.1f} img/s); a 50k FID of the CIFAR10 DDPM++ at {nfe} NFE: "
        f"≈ {est / 3600:.1f} h here",
        flush=True,
    )
    write_json(args.out, out)


if __name__ == "__main__":
    main()
