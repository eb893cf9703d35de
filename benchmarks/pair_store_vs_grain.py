"""The pair store's reader and loader vs Grain's, on the same ArrayRecord shards.

  python -m venv --system-site-packages /tmp/grainvenv
  /tmp/grainvenv/bin/pip install grain                 # not a dependency of the library
  /tmp/grainvenv/bin/python benchmarks/pair_store_vs_grain.py [--dir SCRATCH]

One store of 20,000 CIFAR-shaped pairs (x0, x1 float32; 1,024 per ArrayRecord shard) is read
in the same run, alternating twice, from the page cache and cold (pages evicted with
posix_fadvise(DONTNEED)), median pairs/s:

- ``source``: random 256-pair batches — ``PairStore.read`` vs Grain's
  ``ArrayRecordDataSource.__getitems__`` over the store's shard files (+ the same decoding);
- ``loader``: an epoch-shuffled stream of 256-pair batches — the reflow stage's
  (``pair_mixing.stream_indices`` + ``read_mixed``, one batch at a time; the stage reads it in a
  background thread) vs Grain's ``MapDataset.source(store).shuffle(seed).batch(256)``
  ``.to_iter_dataset()`` (16 reader threads, 16 batches prefetched; measured last, since its
  threads keep reading in the background), pairs per second.
"""

import argparse
import json
import os
import statistics
import sys
import time

import grain
import numpy as np
from array_record.python import array_record_data_source
from common import evict_page_cache

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simple_reflow import pair_mixing, pair_store  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--dir", default="/tmp/pair_store_vs_grain")
parser.add_argument(
    "--out",
    default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "pair_store_vs_grain.json"
    ),
)
args = parser.parse_args()

N, SHAPE, B = 20_000, (32, 32, 3), 256


def gen(idx):
    rng = np.random.default_rng(int(idx[0]))
    x = rng.standard_normal((len(idx), *SHAPE), np.float32)
    return {"x0": x, "x1": x[:, ::-1]}


def write(root):
    store = os.path.join(root, "store")
    if not os.path.exists(os.path.join(store, "manifest.json")):
        pair_store.write_store(
            gen,
            store,
            num=N,
            chunk=1024,
            arrays={"x0": (SHAPE, "float32"), "x1": (SHAPE, "float32")},
        )
        pair_store.finalize_store(store)
    files = sorted(
        os.path.join(store, d, "pairs.array_record")
        for d in os.listdir(store)
        if d.startswith("shard_")
    )
    return store, files


def decode(records):
    """Grain's records → (x0, x1): the store's layout, x0 | x1 | index."""
    a = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), -1)
    n = int(np.prod(SHAPE)) * 4
    return (
        a[:, :n].copy().view(np.float32).reshape(-1, *SHAPE),
        a[:, n : 2 * n].copy().view(np.float32).reshape(-1, *SHAPE),
    )


def warm(files):
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 22):
                pass


def main():
    os.makedirs(args.dir, exist_ok=True)
    path, files = write(args.dir)
    ps = pair_store.PairStore(path)
    src = array_record_data_source.ArrayRecordDataSource(files)
    rng = np.random.default_rng(0)

    def source_grain(idx):
        return decode(src.__getitems__([int(i) for i in idx]))

    def source_store(idx):
        d = ps.read(idx)
        return d["x0"], d["x1"]

    i = rng.integers(0, N, B)
    for a, b in zip(source_grain(i), source_store(i), strict=True):
        assert np.array_equal(a, b)  # the same pairs from both

    def timed_source(fn, n):
        times = []
        for _ in range(n):
            idx = rng.integers(0, N, B)
            start = time.perf_counter()
            fn(idx)
            times.append(time.perf_counter() - start)
        return B / statistics.median(times)

    fractions = {"backward": 1.0, "forward": 0.0, "projected": 0.0}

    def loader_store(first, n):
        start = time.perf_counter()
        for step in range(first, first + n):
            s, idx = pair_mixing.stream_indices(0, step, B, {"backward": N}, fractions)
            batch = pair_mixing.read_mixed({"backward": ps}, s, idx)
        assert batch["x0"].shape == (B, *SHAPE)
        return n * B / (time.perf_counter() - start)

    def stack(items):
        return {k: np.stack([it[k] for it in items]) for k in ("x0", "x1")}

    def loader_grain(first, n):
        del first
        start = time.perf_counter()
        for _ in range(n):
            batch = next(grain_it)
        assert batch["x0"].shape == (B, *SHAPE)
        return n * B / (time.perf_counter() - start)

    def measure(name, fn, first):
        warm(files)
        fn(first, 3)
        cached = fn(first + 3, 30)
        evict_page_cache(files)
        cold = fn(first + 33, 15)
        out.setdefault(name, []).append({"cached_pairs_per_s": cached, "cold_pairs_per_s": cold})
        print(name, out[name][-1], flush=True)

    out = {"pairs": N, "batch": B, "pair_bytes": 2 * int(np.prod(SHAPE)) * 4}
    for _ in range(2):  # the sources, alternating
        for name, fn in (("grain_source", source_grain), ("store_source", source_store)):
            warm(files)
            timed_source(fn, 5)
            cached = timed_source(fn, 40)
            evict_page_cache(files)
            cold = timed_source(fn, 10)
            out.setdefault(name, []).append(
                {"cached_pairs_per_s": cached, "cold_pairs_per_s": cold}
            )
            print(name, out[name][-1], flush=True)
    for r in range(2):
        measure("store_loader", loader_store, 48 * r)
    # Grain's loader last: its reader threads keep prefetching in the background
    grain_it = iter(
        grain.MapDataset.source(ps)
        .shuffle(seed=0)
        .repeat(4)  # two rounds of 48 batches: more than an epoch of 78
        .batch(B, drop_remainder=True, batch_fn=stack)
        .to_iter_dataset(grain.ReadOptions(num_threads=16, prefetch_buffer_size=16))
    )
    for r in range(2):
        measure("grain_loader", loader_grain, 48 * r)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
