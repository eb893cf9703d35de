"""Random 256-pair reads: Grain's ArrayRecord data source vs the library's pair store.

  python -m venv --system-site-packages /tmp/grainvenv
  /tmp/grainvenv/bin/pip install grain array-record      # not dependencies of the library
  /tmp/grainvenv/bin/python benchmarks/pair_store_vs_grain.py [--dir SCRATCH]

The same 20,000 CIFAR-shaped pairs (x0, x1 float32) are written as pair-store shards and as
ArrayRecord files (one per 1,024-pair shard, one record per pair, group size 1: random
access), checked equal, then read in random 256-pair batches by both, alternating twice:
median pairs/s from the page cache and cold (pages evicted with posix_fadvise(DONTNEED)).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from array_record.python import array_record_data_source, array_record_module

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simple_reflow import pair_store  # noqa: E402

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
    files = []
    for s in range(0, N, 1024):  # one ArrayRecord file per shard; a record = x0 and x1 bytes
        f = os.path.join(root, f"ar_{s:06d}.array_record")
        files.append(f)
        if not os.path.exists(f):
            d = gen(np.arange(s, s + 1024))
            w = array_record_module.ArrayRecordWriter(f, "group_size:1")
            for i in range(min(1024, N - s)):
                w.write(d["x0"][i].tobytes() + d["x1"][i].tobytes())
            w.close()
    return store, files


def main():
    os.makedirs(args.dir, exist_ok=True)
    store, files = write(args.dir)
    src = array_record_data_source.ArrayRecordDataSource(files)
    ps = pair_store.PairStore(store)

    def read_grain(idx):
        recs = src.__getitems__([int(i) for i in idx])
        a = np.frombuffer(b"".join(recs), np.float32).reshape(len(idx), 2, *SHAPE)
        return a[:, 0], a[:, 1]

    def read_store(idx):
        d = ps.read(idx)
        return d["x0"], d["x1"]

    rng = np.random.default_rng(0)
    i = rng.integers(0, N, B)
    for a, b in zip(read_grain(i), read_store(i), strict=True):
        assert np.array_equal(a, b)  # the same pairs from both
    on_disk = files + [os.path.join(r, x) for r, _, fs in os.walk(store) for x in fs]

    def timed(fn, n):
        times = []
        for _ in range(n):
            idx = rng.integers(0, N, B)
            start = time.perf_counter()
            fn(idx)
            times.append(time.perf_counter() - start)
        return B / statistics.median(times)

    out = {}
    for name, fn in (("grain_array_record", read_grain), ("pair_store", read_store)) * 2:
        for f in on_disk:  # everything into the page cache (the previous round evicted it)
            with open(f, "rb") as fh:
                while fh.read(1 << 22):
                    pass
        timed(fn, 5)  # warm-up
        cached = timed(fn, 40)
        for f in on_disk:  # evict: the next reads go to the disk
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        cold = timed(fn, 10)
        out.setdefault(name, []).append({"cached_pairs_per_s": cached, "cold_pairs_per_s": cold})
        print(name, out[name][-1], flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
