"""Pair store: read throughput vs the disk, reflow memory vs store size, input-pipeline cost.

  python benchmarks/pair_store_speed.py throughput [--pairs 20000]
  python benchmarks/pair_store_speed.py memory [--sizes 20000 200000]
  python benchmarks/pair_store_speed.py digits [--steps 60]

``throughput``: writes a CIFAR-shaped store (32×32×3 float32 x0 and x1, 24.6 KB per pair), then
measures in the same run (a) the raw sequential read rate of its files, through the page cache
and with ``O_DIRECT`` (the device itself), and (b) the reader: random global batches of 256 from
the stream of :mod:`simple_reflow.pair_mixing` (ρ = 0.4 over a backward and a forward store),
pairs/s and MB/s, median over batches — from the page cache, and cold (the store's pages
evicted with ``posix_fadvise(DONTNEED)``, so every read goes to the disk).

``memory``: peak host RSS of ``scripts/train.py`` running the reflow stage (CIFAR-shaped mock
config, a tiny DDPM++, batch 64, 30 steps) on stores of each size; the stores are synthetic (the
bytes do not matter to memory) but carry the manifest the stage checks.

``digits``: the digits reflow stage (digits DDPM++, batch 128) timed twice in one run — reading
every batch from the stores through the prefetching pipeline, and with the pair reads replaced
by one fixed in-memory batch — steady-state step time from ``metrics.jsonl``. Teacher: one
training step (its quality does not matter to speed); pairs: a 2-step solve.

Results go to ``benchmarks/results/pair_store_<mode>.json``. Time only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import evict_page_cache, run_metadata, write_json

from simple_reflow import pair_mixing, pair_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = (32, 32, 3)


def _synthetic(shape):
    def gen(idx):
        rng = np.random.default_rng(int(idx[0]))
        x = rng.standard_normal((len(idx), *shape), np.float32)
        return {"x0": x, "x1": x[:, ::-1]}

    return gen


def _write_synthetic(
    path, num, shape, chunk=1024, provenance=None, arrays=None, storage_dtype="float32"
):
    arrays = arrays or {"x0": (shape, "float32"), "x1": (shape, "float32")}
    t = time.perf_counter()
    pair_store.write_store(
        _synthetic(shape),
        path,
        num=num,
        chunk=chunk,
        arrays=arrays,
        provenance=provenance or {"kind": "synthetic"},
        storage_dtype=storage_dtype,
    )
    pair_store.finalize_store(path)
    return time.perf_counter() - t


def _files(path):
    return sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(path)
        for f in files
        if f.endswith(".array_record")
    )


def _sequential_read(files, direct):
    """Bytes/s reading every file start to end in 4 MiB blocks."""
    block = 1 << 22
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    total = 0
    t = time.perf_counter()
    for file in files:
        fd = os.open(file, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        try:
            while (n := os.readv(fd, [buf])) > 0:
                total += n
        finally:
            os.close(fd)
    return total / (time.perf_counter() - t)


def throughput(args):
    tmp = tempfile.mkdtemp(dir=args.dir)
    try:
        stores = {k: os.path.join(tmp, k) for k in ("backward", "forward")}
        write_s = sum(_write_synthetic(p, args.pairs, CIFAR) for p in stores.values())
        files = [f for p in stores.values() for f in _files(p)]
        size = sum(os.path.getsize(f) for f in files)
        seq_cached = [_sequential_read(files, direct=False) for _ in range(3)]
        try:
            seq_direct = [_sequential_read(files, direct=True) for _ in range(2)]
        except OSError as e:  # a file system without O_DIRECT
            seq_direct, direct_error = [], str(e)
        else:
            direct_error = None
        opened = {k: pair_store.PairStore(p) for k, p in stores.items()}
        sizes = {k: args.pairs for k in stores}
        fractions = pair_mixing.pair_fractions(0.4)

        def read_batches(first, count):
            times = []
            for step in range(first, first + count):
                t = time.perf_counter()
                src, idx = pair_mixing.stream_indices(0, step, args.batch, sizes, fractions)
                batch = pair_mixing.read_mixed(opened, src, idx)
                times.append(time.perf_counter() - t)
            assert batch["x0"].shape == (args.batch, *CIFAR)
            return times

        read_batches(0, 5)  # warm-up: permutations, file handles
        med = statistics.median(read_batches(5, args.batches))
        evict_page_cache(files)
        cold = statistics.median(read_batches(10_000, 20))
        pair_bytes = 2 * int(np.prod(CIFAR)) * 4
        result = {
            "pairs_per_store": args.pairs,
            "store_bytes": size,
            "bytes_per_pair": pair_bytes,
            "write_mb_per_s": size / write_s / 1e6,
            "sequential_read_cached_mb_per_s": statistics.median(seq_cached) / 1e6,
            "sequential_read_direct_mb_per_s": (
                statistics.median(seq_direct) / 1e6 if seq_direct else None
            ),
            "direct_error": direct_error,
            "reader_batch": args.batch,
            "reader_median_batch_s": med,
            "reader_pairs_per_s": args.batch / med,
            "reader_mb_per_s": args.batch * pair_bytes / med / 1e6,
            "reader_cold_median_batch_s": cold,
            "reader_cold_pairs_per_s": args.batch / cold,
            "reader_cold_mb_per_s": args.batch * pair_bytes / cold / 1e6,
        }
        print(json.dumps(result, indent=1))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_CHILD = """
import resource, runpy, sys
fixed = sys.argv.pop(1) == "fixed"
if fixed:  # the pair stream and reads replaced by one batch, computed once
    from simple_reflow import pair_mixing
    read, stream, cache = pair_mixing.read_mixed, pair_mixing.stream_indices, {}
    pair_mixing.stream_indices = lambda *a, **k: cache.setdefault("i", stream(*a, **k))
    pair_mixing.read_mixed = lambda *a: cache.setdefault("b", read(*a))
sys.argv = sys.argv[1:]
try:
    runpy.run_path("scripts/train.py", run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def _train(argv, fixed=False):
    """Runs scripts/train.py in a child; returns (wall s, the child's peak RSS in MB)."""
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, "fixed" if fixed else "store", "scripts/train.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    if out.returncode or "PEAK_RSS_KB" not in out.stdout:
        raise RuntimeError(f"train.py {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    kb = int(out.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return time.perf_counter() - t, kb / 1024


def memory(args):
    sys.path.insert(0, ROOT)
    from configs import cifar10
    from simple_reflow.train.images import _store_spec, _teacher_sha256
    from simple_reflow.train.stages import resolve

    tmp = tempfile.mkdtemp(dir=args.dir)
    common = [
        "--config.data.image_size=32",
        "--config.pairs.num_forward=0",
        "--config.pairs.rho=0.0",
    ]
    try:
        teacher = os.path.join(tmp, "teacher")
        _train(
            [
                "--config",
                "configs/cifar10.py:teacher,smoke",
                "--workdir",
                teacher,
                "--config.training.num_steps=1",
                *common,
            ]
        )
        rows = []
        for n in args.sizes:
            cfg = cifar10.get_config("reflow,smoke")
            cfg.data.image_size, cfg.pairs.num_backward = 32, n
            cfg.pairs.num_forward, cfg.pairs.rho, cfg.teacher.workdir = 0, 0.0, teacher
            num, arrays, prov = _store_spec(resolve(cfg), "backward", _teacher_sha256(cfg))
            pairs_dir = os.path.join(tmp, f"pairs_{n}")
            _write_synthetic(
                os.path.join(pairs_dir, "backward"), num, CIFAR, arrays=arrays, provenance=prov
            )
            wall, rss = _train(
                [
                    "--config",
                    "configs/cifar10.py:reflow,smoke",
                    "--workdir",
                    os.path.join(tmp, f"reflow_{n}"),
                    *common,
                    f"--config.pairs.num_backward={n}",
                    f"--config.teacher.workdir={teacher}",
                    f"--config.pairs.dir={pairs_dir}",
                    "--config.training.batch_size=64",
                    f"--config.training.num_steps={args.steps}",
                    "--config.training.log_every=10",
                    f"--config.training.ckpt_every={args.steps}",
                ]
            )
            rows.append(
                {"pairs": n, "store_gb": n * 2 * 3072 * 4 / 1e9, "peak_rss_mb": rss, "wall_s": wall}
            )
            print(rows[-1], flush=True)
            shutil.rmtree(pairs_dir)
        result = {
            "rows": rows,
            "rss_increase": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1.0,
        }
        print(json.dumps(result, indent=1))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _steady_step_s(workdir, batch):
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    rates = [r["train/examples_per_sec"] for r in rows[1:]]  # the first includes compilation
    return batch / statistics.median(rates)


def digits(args):
    tmp = tempfile.mkdtemp(dir=args.dir)
    try:
        teacher, pairs_dir = os.path.join(tmp, "teacher"), os.path.join(tmp, "pairs")
        _train(
            [
                "--config",
                "configs/digits.py:teacher",
                "--workdir",
                teacher,
                "--config.training.num_steps=1",
            ]
        )
        _train(
            [
                "--config",
                "configs/digits.py:pairs",
                "--workdir",
                pairs_dir,
                f"--config.teacher.workdir={teacher}",
                "--config.pairs.steps=2",
            ]
        )
        common = [
            "--config",
            "configs/digits.py:reflow",
            f"--config.teacher.workdir={teacher}",
            f"--config.pairs.dir={pairs_dir}",
            "--config.pairs.steps=2",
            f"--config.training.num_steps={args.steps}",
            "--config.training.log_every=10",
            f"--config.training.ckpt_every={args.steps}",
        ]
        out = {}
        for mode in ("fixed_batch", "store", "fixed_batch", "store"):  # interleaved twice
            wd = os.path.join(tmp, f"reflow_{mode}_{len(out)}")
            _train(["--workdir", wd, *common], fixed=mode == "fixed_batch")
            out.setdefault(mode, []).append(_steady_step_s(wd, 128))
            print(mode, out[mode][-1], flush=True)
        result = {k: statistics.median(v) for k, v in out.items()}
        result["runs"] = out
        result["input_overhead"] = result["store"] / result["fixed_batch"] - 1.0
        print(json.dumps(result, indent=1))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("throughput", "memory", "digits"))
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dir", default=None, help="scratch folder (default: $TMPDIR)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = {"throughput": throughput, "memory": memory, "digits": digits}[args.mode](args)
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"pair_store_{args.mode}.json")
    write_json(out, {"meta": run_metadata(vars(args)), "result": result})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
