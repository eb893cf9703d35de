"""Fault injection over a pair store's ArrayRecord shards: every damage is named, never read.

A store of three shards, each a Riegeli file of three 64 KiB blocks, is damaged in one shard at
every class of position — found by walking the file's Riegeli structure (block headers every
64 KiB; chunks of a 40-byte header and data), not by guessing offsets — and by whole-file
faults (truncation, zero length, deletion, swaps, another store's shard). For each damage:

- ``verify_store`` (what ``scripts/verify_pairs.py`` prints) reports exactly that shard, and
  ``repair=True`` removes exactly it;
- the reader the reflow stage uses (``PairStore`` opened, then every pair read) raises a
  :class:`~simple_reflow.pair_store.DamagedPairStore` naming the shard file and its pairs, or —
  only where the damaged bytes are ones no read depends on (padding, the first block's header,
  the signature) — returns pairs byte-identical to the undamaged store's; never other pairs;
- after the repair, rerunning the writer makes a store equal to the undamaged one byte for byte.
"""

import collections
import filecmp
import importlib.util
import os
import shutil
import struct

import numpy as np
import pytest

from simple_reflow import pair_store
from simple_reflow.errors import DamagedInput

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPE = (8, 8, 3)  # a record is 2·768 + 8 bytes: a 64-pair shard spans three 64 KiB blocks
ARRAYS = {"x0": (SHAPE, "float32"), "x1": (SHAPE, "float32")}
NUM, CHUNK = 192, 64
BLOCK, BLOCK_HEADER, CHUNK_HEADER = 1 << 16, 24, 40  # Riegeli's records format


def _gen(idx):
    idx = np.asarray(idx)
    x0 = idx[:, None, None, None] + np.linspace(0, 1, 192, dtype=np.float32).reshape(SHAPE)
    return {"x0": x0.astype(np.float32), "x1": np.sin(x0).astype(np.float32)}


def _write(path, gen=_gen):
    made = pair_store.write_store(
        gen, str(path), num=NUM, chunk=CHUNK, arrays=ARRAYS, provenance={"kind": "test"}
    )
    pair_store.finalize_store(str(path))
    return made


def _regions(data):
    """``[(class, start, length)]`` covering a Riegeli file: its block headers and chunks."""
    out, pos = [], 0
    while pos < len(data):
        if pos % BLOCK == 0:
            out.append(("block header" if pos else "file header", pos, BLOCK_HEADER))
            pos += BLOCK_HEADER
            continue
        header, p = bytearray(), pos  # a chunk header may straddle a block boundary
        while len(header) < CHUNK_HEADER:
            if p % BLOCK == 0:
                p += BLOCK_HEADER
                continue
            header.append(data[p])
            p += 1
        size = struct.unpack_from("<Q", header, 8)[0]
        kind = chr(struct.unpack_from("<Q", header, 24)[0] & 0xFF)
        out.append((f"chunk header {kind}", pos, p - pos))
        start, n = p, 0
        while n < size:
            if p % BLOCK == 0:
                out.append(("block header", p, BLOCK_HEADER))
                p += BLOCK_HEADER
                continue
            step = min(size - n, BLOCK - p % BLOCK)
            p, n = p + step, n + step
        out.append((f"chunk data {kind}", start, p - start))
        pos = p
    return out


def _classes(data, records, per_class=None):
    """Positions to damage per class: ``{class: [offsets]}``.

    Classes: the file header (first block header and the signature chunk), the inner block
    headers, the records' chunk headers, record payloads, ArrayRecord's chunk index (the chunk
    after the last record) and its footer (the last chunk), and padding chunks. Headers and
    the index's header and the footer are hit at every byte, the index's data, payloads and
    padding at 24 offsets each; ``per_class`` thins every class to that many, evenly spread."""
    regions = _regions(data)
    chunks = [r for r in regions if r[0] in ("chunk header r", "chunk data r")]
    assert len(chunks) == 2 * (records + 2), [r[0] for r in regions]
    index, footer = chunks[-4:-2], chunks[-2:]
    out = collections.defaultdict(list)
    for name, start, n in regions:
        every = range(start, start + n)
        if name in ("file header", "chunk header s", "chunk data s"):
            out["file header"] += every
        elif name == "block header":
            out["block header"] += every
        elif (name, start, n) in index:
            out["chunk index"] += every if n == CHUNK_HEADER else every[:: max(1, n // 24)]
        elif (name, start, n) in footer:
            out["footer"] += every
        elif name == "chunk header r":
            out["record chunk header"].append((start, n))
        elif name == "chunk data r":
            out["record payload"].append((start, n))
        else:
            out["padding"] += every
    heads = out.pop("record chunk header")
    out["record chunk header"] = [o for s, n in heads[:: len(heads) // 3] for o in range(s, s + n)]
    payloads = out.pop("record payload")
    pick = np.linspace(0, len(payloads) - 1, 24).astype(int)
    out["record payload"] = [payloads[i][0] + (7 * i) % payloads[i][1] for i in pick]
    pads = out["padding"]
    out["padding"] = [pads[i] for i in np.linspace(0, len(pads) - 1, 24).astype(int)]
    if per_class:
        out = {
            k: [v[i] for i in np.linspace(0, len(v) - 1, per_class).astype(int)]
            for k, v in out.items()
        }
    return dict(out)


VICTIM = "shard_0000000064"  # the middle shard: pairs 64–127


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """An undamaged store, written once; each test damages a copy."""
    path = tmp_path_factory.mktemp("faults") / "clean"
    _write(path)
    return path


def _files(path):
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
    )


def _assert_same_tree(a, b):
    assert _files(a) == _files(b)
    for f in _files(a):
        assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False), f


def _read_outcome(path):
    """What the reflow stage's reader makes of the store: the DamagedPairStore it raises, or
    "identical" when every pair equals the undamaged store's (anything else fails)."""
    try:
        with pair_store.PairStore(str(path)) as store:
            got = store.read(np.arange(NUM))
    except pair_store.DamagedPairStore as e:
        assert f"verify_pairs.py {path} --repair" in str(e) and "rerun the pairs stage" in str(e)
        assert e.store == str(path) and str(e).startswith(e.path)
        assert f"pairs {e.start}–{e.start + e.count - 1} of the pair store" in str(e)
        return e
    ref = _gen(np.arange(NUM))
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg="silently read other pairs")
    return "identical"


def _check_repair(clean, path, shards):
    """verify names exactly ``shards``, repair removes exactly them, and rewriting restores
    the undamaged store byte for byte."""
    report = pair_store.verify_store(str(path))
    named = {os.path.relpath(f, path).split(os.sep)[0] for f, _ in report.corrupt}
    assert named | set(report.missing) == set(shards) and not report.complete, report
    kept = {n: os.listdir(path / n) for n in os.listdir(path) if n.startswith("shard_")}
    pair_store.verify_store(str(path), repair=True)
    after = {n for n in os.listdir(path) if n.startswith("shard_")}
    assert after == set(kept) - named  # exactly the corrupt shards are removed
    assert _write(path) == CHUNK * len(shards)  # only those are regenerated
    _assert_same_tree(path, clean)


@pytest.mark.parametrize(
    "per_class", [8, pytest.param(None, marks=pytest.mark.slow, id="every-header-byte")]
)
def test_every_damaged_position_is_named_or_harmless_and_repaired(clean, tmp_path, per_class):
    path = tmp_path / "s"
    shutil.copytree(clean, path)
    file = path / VICTIM / "pairs.array_record"
    data = file.read_bytes()
    classes = _classes(data, CHUNK, per_class)
    assert set(classes) == {
        "file header",
        "block header",
        "record chunk header",
        "record payload",
        "chunk index",
        "footer",
        "padding",
    }
    table = {}
    for name, offsets in classes.items():
        outcomes = collections.Counter()
        for i, at in enumerate(offsets):
            damaged = bytearray(data)
            damaged[at] ^= 0x10
            file.write_bytes(bytes(damaged))
            got = _read_outcome(path)
            if got != "identical":
                assert got.path == str(file) and got.start == 64 and got.count == 64, got
            outcomes["named" if got != "identical" else "identical"] += 1
            assert pair_store.verify_store(str(path)).corrupt == [
                (str(file), "SHA-256 differs from done.json (corrupt)")
            ]
            if i == 0:  # the whole repair once per class: remove, regenerate, compare
                _check_repair(clean, path, [VICTIM])
            else:
                file.write_bytes(data)
        table[name] = dict(outcomes, positions=len(offsets))
    print("\nbyte flips per class:", table)
    # reads that depend on the bytes always notice: the records' chunks, the index, the
    # footer and the inner block headers are covered by Riegeli's hashes
    for name in ("record chunk header", "record payload", "chunk index", "footer"):
        assert table[name] == {
            "named": table[name]["positions"],
            "positions": table[name]["positions"],
        }, (name, table[name])
    assert table["block header"]["named"] == table["block header"]["positions"]
    # the head hash checked at open catches the file header, which no read uses
    assert table["file header"]["named"] == table["file header"]["positions"]


def _verify_pairs_script():
    """``scripts/verify_pairs.py`` as a module: its ``main(argv)`` runs in this process."""
    spec = importlib.util.spec_from_file_location(
        "verify_pairs", os.path.join(ROOT, "scripts", "verify_pairs.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _swap(a, b):
    tmp = f"{a}.swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def _other_store(tmp_path):
    """A store of the same shape and indices with other pairs (another teacher's)."""
    other = tmp_path / "other"
    _write(other, gen=lambda idx: {k: v + 1 for k, v in _gen(idx).items()})
    return other


def _truncate(n):
    def damage(path, tmp_path):
        file = path / VICTIM / "pairs.array_record"
        size = file.stat().st_size
        with open(file, "r+b") as f:
            f.truncate(n if n >= 0 else size + n)
        return [VICTIM]

    return damage


def _delete_shard(path, tmp_path):
    shutil.rmtree(path / VICTIM)
    return [VICTIM]


def _delete_file(path, tmp_path):
    os.remove(path / VICTIM / "pairs.array_record")
    return [VICTIM]


def _swap_shards(path, tmp_path):
    _swap(path / "shard_0000000000", path / VICTIM)
    return ["shard_0000000000", VICTIM]


def _swap_files(path, tmp_path):
    _swap(path / "shard_0000000000" / "pairs.array_record", path / VICTIM / "pairs.array_record")
    return ["shard_0000000000", VICTIM]


def _shard_of_another_store(path, tmp_path):
    shutil.rmtree(path / VICTIM)
    shutil.copytree(_other_store(tmp_path) / VICTIM, path / VICTIM)
    return [VICTIM]


def _file_of_another_store(path, tmp_path):
    shutil.copy(_other_store(tmp_path) / VICTIM / "pairs.array_record", path / VICTIM)
    return [VICTIM]


def _garbled_done(path, tmp_path):
    (path / VICTIM / "done.json").write_text('{"count": 64, "by')
    return [VICTIM]


FAULTS = {
    "zero-length": _truncate(0),
    "truncated to 1 byte": _truncate(1),
    "truncated to 4095 bytes": _truncate(4095),
    "truncated at the 2nd block": _truncate(BLOCK),
    "truncated inside the 2nd block header": _truncate(BLOCK + 12),
    "one byte short": _truncate(-1),
    "shard folder deleted": _delete_shard,
    "shard file deleted": _delete_file,
    "two shards swapped": _swap_shards,
    "two shard files swapped": _swap_files,
    "a shard of another store": _shard_of_another_store,
    "a shard file of another store": _file_of_another_store,
    "done.json garbled": _garbled_done,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_whole_file_faults_are_named_and_repaired(clean, tmp_path, fault):
    path = tmp_path / "s"
    shutil.copytree(clean, path)
    shards = FAULTS[fault](path, tmp_path)
    got = _read_outcome(path)
    if fault == "done.json garbled":  # the pairs are intact: read as written, verify names it
        assert got == "identical"
    else:
        assert got != "identical", "the reader read a damaged store"
        assert os.path.relpath(got.path, path).split(os.sep)[0] in shards, got
    _check_repair(clean, path, shards)


def test_os_errors_and_bad_records_are_named(clean, tmp_path, monkeypatch):
    """Failures the files cannot show: EIO from the disk, a record of the wrong size, fewer
    records than asked (the reader is replaced to produce them)."""
    path = tmp_path / "s"
    shutil.copytree(clean, path)
    real = pair_store._open_reader

    class Faulty:
        def __init__(self, reader, fault):
            self.reader, self.fault = reader, fault

        def read(self, positions):
            records = self.reader.read(positions)
            if self.fault == "eio":
                raise OSError(5, "Input/output error")
            if self.fault == "short record":
                return [r[:-1] for r in records]
            return records[:-1]

        def close(self):
            self.reader.close()

    for fault, why in [
        ("eio", "reading records failed: OSError: [Errno 5] Input/output error"),
        ("short record", "record 0 has 1543 bytes, the manifest describes 1544"),
        ("missing records", "reading records failed: ValueError: 63 records for 64"),
    ]:
        monkeypatch.setattr(
            pair_store, "_open_reader", lambda f, n, fault=fault: Faulty(real(f, n), fault)
        )
        with pair_store.PairStore(str(path)) as store:
            with pytest.raises(pair_store.DamagedPairStore, match="shard_0000000064") as e:
                store.read(np.arange(64, 128))
        assert why in str(e.value)


def test_a_damaged_manifest_is_named_with_its_repair(clean, tmp_path, capsys):
    verify_pairs = _verify_pairs_script()
    path = tmp_path / "s"
    shutil.copytree(clean, path)
    (path / "manifest.json").write_bytes((path / "manifest.json").read_bytes()[:-30])
    with pytest.raises(DamagedInput, match="manifest.json is damaged .*JSONDecodeError"):
        pair_store.PairStore(str(path))
    assert verify_pairs.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "manifest.json is damaged" in out and "rerun the pairs stage" in out
    os.remove(path / "manifest.json")  # the repair it names
    _write(path)
    _assert_same_tree(path, clean)


def test_verify_pairs_names_the_shard_and_repairs_it(clean, tmp_path, capsys):
    verify_pairs = _verify_pairs_script()
    path = tmp_path / "s"
    shutil.copytree(clean, path)
    file = path / VICTIM / "pairs.array_record"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x10
    file.write_bytes(bytes(data))
    assert verify_pairs.main([str(path), "--repair"]) == 1
    out = capsys.readouterr().out
    assert f"corrupt   {file}: SHA-256 differs" in out and "(deleted)" in out
    assert f"rerun the pairs stage with --workdir {tmp_path}" in out
    assert not (path / VICTIM).exists() and _write(path) == CHUNK
    assert verify_pairs.main([str(path)]) == 0
    _assert_same_tree(path, clean)
