"""The pair store: round trips, resumable and host-split writing, refusal of other pairs,
verification of missing/corrupt shards, and SIGKILLed writers resuming to the same store."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import ml_dtypes
import numpy as np
import pytest
from array_record.python import array_record_module

from simple_reflow import pair_store

SHAPE = (3, 2)
ARRAYS = {"x0": (SHAPE, "float32"), "x1": (SHAPE, "float32"), "cond": ((), "int32")}
PROV = {"kind": "backward", "teacher": "abc", "pairs.steps": 4}


def _gen(idx):
    """Pair i: x0 = i + k/10 over its 6 entries, x1 = −x0 + 0.001, cond = i mod 7."""
    idx = np.asarray(idx)
    x0 = idx[:, None, None] + np.arange(6, dtype=np.float32).reshape(SHAPE) / 10
    return {
        "x0": x0.astype(np.float32),
        "x1": (-x0 + 1e-3).astype(np.float32),
        "cond": (idx % 7).astype(np.int32),
    }


def _write(path, num=50, chunk=8, **kw):
    made = pair_store.write_store(
        _gen, str(path), num=num, chunk=chunk, arrays=ARRAYS, provenance=PROV, **kw
    )
    pair_store.finalize_store(str(path))
    return made


@pytest.mark.parametrize("dtype,rtol", [("float32", 0), ("float16", 2**-11), ("bfloat16", 2**-8)])
def test_round_trip_in_any_order_with_storage_dtypes(tmp_path, dtype, rtol):
    _write(tmp_path / "s", storage_dtype=dtype)
    idx = np.array([49, 3, 3, 17, 0, 48, 8, 9, 10, 11, 47])  # repeats, runs, shard edges
    with pair_store.PairStore(str(tmp_path / "s")) as store:
        got = store.read(idx)
        assert len(store) == 50 and set(got) == {"x0", "x1", "cond"}
    ref = _gen(idx)
    for k in ("x0", "x1"):  # 16-bit storage rounds to nearest: relative error ≤ half an ulp
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], ref[k], rtol=rtol, atol=0)
    np.testing.assert_array_equal(got["cond"], ref["cond"])
    perm = np.random.default_rng(0).permutation(np.tile(np.arange(50), 2))
    with pair_store.PairStore(str(tmp_path / "s"), threads=3) as store:  # concurrent reads
        many = store.read(perm)
    np.testing.assert_allclose(many["x0"], _gen(perm)["x0"], rtol=rtol, atol=0)
    np.testing.assert_array_equal(many["cond"], _gen(perm)["cond"])
    # on disk: one ArrayRecord record per pair, x0 | x1 | cond | index as raw little-endian bytes
    reader = array_record_module.ArrayRecordReader(
        str(tmp_path / "s" / "shard_0000000008" / "pairs.array_record")
    )
    records = reader.read_all()
    reader.close()
    storage = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    size = 6 * np.dtype(storage).itemsize
    assert len(records) == 8 and {len(r) for r in records} == {2 * size + 4 + 8}
    raw = np.frombuffer(b"".join(r[:size] for r in records), storage).reshape(8, *SHAPE)
    np.testing.assert_array_equal(raw, _gen(np.arange(8, 16))["x0"].astype(storage))
    index = np.frombuffer(b"".join(r[-8:] for r in records), "<i8")
    np.testing.assert_array_equal(index, np.arange(8, 16))


def test_a_store_is_a_grain_random_access_source_with_bounded_open_readers(tmp_path):
    _write(tmp_path / "s")
    with pair_store.PairStore(str(tmp_path / "s"), max_open=2, threads=1) as store:
        one = store[17]
        items = store.__getitems__([3, 49, 17])
        assert len(store._readers) <= 2
        open_files = len(os.listdir("/proc/self/fd"))
        store.read(np.arange(50))  # every shard (7), readers evicted and freed as it goes
        assert len(store._readers) <= 2
        assert len(os.listdir("/proc/self/fd")) <= open_files
    ref = _gen(np.array([3, 49, 17]))
    np.testing.assert_array_equal(one["x0"], ref["x0"][2])
    assert [int(i["cond"]) for i in items] == list(ref["cond"])
    np.testing.assert_array_equal(np.stack([i["x1"] for i in items]), ref["x1"])


def test_interrupted_write_resumes_without_loss_or_duplicates(tmp_path):
    calls = {"n": 0}

    def flaky(idx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the job is killed during the third chunk
        return _gen(idx)

    path = str(tmp_path / "s")
    with pytest.raises(KeyboardInterrupt):
        pair_store.write_store(flaky, path, num=50, chunk=8, arrays=ARRAYS, provenance=PROV)
    assert not pair_store.verify_store(path).complete
    with pytest.raises(ValueError, match="incomplete"):
        pair_store.PairStore(path)
    assert _write(tmp_path / "s") == 50 - 16  # the two finished shards were kept, not redone
    report = pair_store.verify_store(path)
    assert report.complete and report.ok == 7
    with pair_store.PairStore(path) as store:
        np.testing.assert_array_equal(store.read(np.arange(50), ["index"])["index"], np.arange(50))


def test_hosts_split_shards_and_together_make_the_same_store(tmp_path):
    kw = dict(num=40, chunk=8, arrays=ARRAYS, provenance=PROV)
    split = str(tmp_path / "split")
    n0 = pair_store.write_store(_gen, split, process_index=0, process_count=2, **kw)
    assert not pair_store.finalize_store(split)  # host 1's shards are not there yet
    n1 = pair_store.write_store(_gen, split, process_index=1, process_count=2, **kw)
    assert (n0, n1) == (24, 16) and pair_store.finalize_store(split)
    _write(tmp_path / "single", num=40)
    one, two = (pair_store.read_manifest(str(tmp_path / d)) for d in ("single", "split"))
    assert one == two  # same description, same checksum of every shard


def test_a_store_of_other_pairs_is_refused_naming_the_field(tmp_path):
    _write(tmp_path / "s")
    with pytest.raises(pair_store.StoreMismatch, match="provenance.pairs.steps"):
        pair_store.write_store(
            _gen,
            str(tmp_path / "s"),
            num=50,
            chunk=8,
            arrays=ARRAYS,
            provenance={**PROV, "pairs.steps": 5},
        )
    with pair_store.PairStore(str(tmp_path / "s")) as store:
        assert store.mismatches(num=50, arrays=ARRAYS, provenance=PROV) == []
        assert store.mismatches(num=20, arrays=ARRAYS, provenance=PROV) == []  # first 20
        bad = store.mismatches(
            num=60,
            arrays={**ARRAYS, "x0": ((2, 3), "float32")},
            provenance={**PROV, "teacher": "other"},
        )
    assert any("arrays.x0.shape" in d for d in bad)
    assert any("provenance.teacher" in d for d in bad)
    assert any("store has 50, asked for 60" in d for d in bad)


def test_truncated_and_bit_flipped_shards_are_named_and_repaired(tmp_path):
    path = str(tmp_path / "s")
    _write(tmp_path / "s")
    flipped = os.path.join(path, "shard_0000000016", "pairs.array_record")
    with open(flipped, "r+b") as f:  # one bit in the first record's data
        data = f.read()
        at = data.index(np.float32(16.1).tobytes())
        f.seek(at)
        f.write(bytes([data[at] ^ 0x10]))
    truncated = os.path.join(path, "shard_0000000032", "pairs.array_record")
    size = os.path.getsize(truncated)
    with open(truncated, "r+b") as f:
        f.truncate(size - 24)
    os.rename(os.path.join(path, "shard_0000000040"), os.path.join(path, "shard_0000000041"))
    report = pair_store.verify_store(path)
    assert [f for f, _ in report.corrupt] == [flipped, truncated]
    assert "SHA-256" in report.corrupt[0][1] and "truncated" in report.corrupt[1][1]
    assert report.missing == ["shard_0000000040"] and report.unexpected == ["shard_0000000041"]
    assert report.regenerate == [(16, 8), (32, 8), (40, 8)] and not report.complete
    # named when a reader opens the store, before any training: the flip lies in the file's
    # first 4 KiB, whose hash the manifest records (tests/test_store_faults.py: every class)
    with pytest.raises(pair_store.DamagedPairStore, match="shard_0000000016/.* first 4 KiB"):
        pair_store.PairStore(path).close()
    out = subprocess.run(
        [sys.executable, "scripts/verify_pairs.py", path], capture_output=True, text=True
    )
    assert (
        out.returncode == 1
        and flipped in out.stdout
        and "regenerate 3 shards (24 pairs)" in out.stdout
    ), out.stdout
    pair_store.verify_store(path, repair=True)
    os.rename(os.path.join(path, "shard_0000000041"), os.path.join(tmp_path, "moved"))
    assert _write(tmp_path / "s") == 24
    assert pair_store.verify_store(path).complete
    _write(tmp_path / "clean")
    assert pair_store.read_manifest(path) == pair_store.read_manifest(str(tmp_path / "clean"))


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from simple_reflow import pair_store

    def gen(idx):  # ~6 MB per shard, deterministic in the index
        x = np.sin(idx[:, None] * 0.001 + np.arange(24_000)[None]).astype(np.float32)
        time.sleep(0.02)
        return {"x0": x, "x1": -x}

    pair_store.write_store(gen, sys.argv[1], num=64 * 40, chunk=64,
                           arrays={"x0": ((24_000,), "float32"), "x1": ((24_000,), "float32")},
                           provenance={"kind": "test"})
    pair_store.finalize_store(sys.argv[1])
""")


@pytest.mark.slow
def test_sigkilled_writer_resumes_to_the_uninterrupted_store(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    path = str(tmp_path / "killed")
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(30):
        proc = subprocess.Popen([sys.executable, str(script), path], env=env)
        time.sleep(rng.uniform(0.3, 1.5))  # the import takes ~0.3 s; a shard ~0.05 s
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if kills >= 6:
            break
    assert kills >= 5
    assert subprocess.run([sys.executable, str(script), path], env=env).returncode == 0
    subprocess.run([sys.executable, str(script), str(tmp_path / "clean")], env=env, check=True)
    report = pair_store.verify_store(path)
    assert report.complete and report.ok == 40 and not report.unexpected
    assert pair_store.read_manifest(path) == pair_store.read_manifest(str(tmp_path / "clean"))
    leftovers = [n for n in os.listdir(path) if ".tmp" in n]
    assert leftovers == []
    with open(os.path.join(path, "manifest.json")) as f:
        assert len(json.load(f)["shards"]) == 40
