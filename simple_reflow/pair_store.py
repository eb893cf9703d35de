"""A pair store on disk: any number of pairs, written resumably by every host, read by index.

One store per pair kind (``<pairs.dir>/backward``, ``forward``, ``projected``)::

  manifest.json          what the store holds: pair count, shard size, arrays (shape, storage
                         dtype) and provenance (teacher snapshot SHA-256, solver, grid, NFE,
                         seed); once every shard exists, also each shard's checksum
  shard_0000000000/      pairs [0, chunk): ``pairs.array_record`` (one record per pair) and
  shard_0000001024/      ``done.json`` (count, size, SHA-256 of the file and of its first
  …                      4 KiB); written in a temporary folder and renamed, so a shard exists
                         whole or not at all

The shards are ArrayRecord files (the format of TFDS's and Grain's random-access sources),
uncompressed, one record per pair (group size 1, so a pair is one read): the record is the raw
bytes of the pair's arrays in the manifest's order (x0, x1, cond, index), a fixed layout the
manifest describes, so decoding is a ``np.frombuffer``. Chosen by measurement
(``benchmarks/pair_store_speed.py throughput``, both formats in one session): random 256-pair
CIFAR reads ran 1.76× faster from a cold page cache than the ``.npy``-per-array shards this
store used before (24.7k vs 14.1k pairs/s; a pair is one read instead of one per array), 0.79×
from the page cache (63.5k vs 80.3k, both far above a training step's need). A shard's reader
holds the file's record index (8 bytes per pair) and a one-record buffer, at most ``max_open``
readers stay open, and reads do not go through a memory map, so a reader's footprint does not
grow with the store. :class:`PairStore` is a Grain random-access
source (``len``, ``[i]``, ``__getitems__``). Floating-point arrays are stored as ``float32``
(default), ``float16`` or ``bfloat16`` and read back as float32.

Chunk ``c`` (pairs ``[c·chunk, (c+1)·chunk)``) belongs to host ``c mod process_count``, so
hosts generate with no coordination; a restarted writer skips the finished shards and removes
the temporary folders a killed one left. :func:`verify_store` checks a store against its
manifest (missing, corrupt, unexpected shards) and says what a resume would regenerate.

Damage is never read silently: opening a :class:`PairStore` checks each shard file's size and
first 4 KiB against the manifest (cheap: a stat and one small read per shard), and every read
goes through Riegeli's block and chunk hashes and checks each record's size and pair index.
Whatever fails — the reader, the OS, a record — raises a :class:`DamagedPairStore` naming the
store, the shard file, its pairs and the repair (``scripts/verify_pairs.py STORE --repair``,
then the pairs stage again); ``tests/test_store_faults.py`` sweeps every class of position.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import threading

import ml_dtypes
import numpy as np
from array_record.python import array_record_module

from simple_reflow.errors import DamagedInput, reason

__all__ = [
    "STORAGE_DTYPES",
    "StoreMismatch",
    "DamagedPairStore",
    "repair_command",
    "write_store",
    "finalize_store",
    "read_manifest",
    "PairStore",
    "VerifyReport",
    "verify_store",
    "file_sha256",
]

FORMAT = "simple_reflow.pair_store/2"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
_MANIFEST = "manifest.json"
_DONE = "done.json"
_FILE = "pairs.array_record"
_WRITER_OPTIONS = "group_size:1,uncompressed"  # a record per pair: random access
_HEAD = 4096  # bytes of a shard file hashed for the cheap check at open (see PairStore)


class StoreMismatch(ValueError):
    """A store on disk describes other pairs than the ones asked for."""


def repair_command(store: str) -> str:
    """What a user runs to repair the pair store at ``store``: drop the damaged shards, then
    regenerate exactly those with the pairs stage (its workdir is the store's parent)."""
    return (
        f"run `python scripts/verify_pairs.py {store} --repair`, then rerun the pairs stage "
        f"with --workdir {os.path.dirname(os.path.normpath(store)) or '.'} (it regenerates "
        "only the removed shards)"
    )


class DamagedPairStore(DamagedInput):
    """A shard of a pair store cannot be read as its manifest describes it (corrupt, truncated,
    missing, moved, or another store's): names the store, the shard file, the pairs it holds
    and the repair command. Never skipped: a skipped shard would change the data silently.

    Attributes:
      store: the store's folder; ``path``: the shard file; ``start``, ``count``: its pairs.
    """

    def __init__(self, store: str, file: str, start: int, count: int, why: str):
        self.store, self.start, self.count = store, start, count
        super().__init__(
            file,
            f"pairs {start}–{start + count - 1} of the pair store {store}: {why}",
            repair_command(store),
        )


def _shard_name(start: int) -> str:
    return f"shard_{start:010d}"


def _disk_dtype(name: str) -> np.dtype:
    """The little-endian dtype an array of storage dtype ``name`` has in a record."""
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name).newbyteorder("<")


def _layout(spec: dict) -> tuple[dict, int]:
    """``({name: (byte offset in a record, bytes)}, record bytes)`` for the manifest's arrays."""
    out, at = {}, 0
    for name, s in spec.items():
        n = int(np.prod(s["shape"], dtype=np.int64)) * _disk_dtype(s["dtype"]).itemsize
        out[name] = (at, n)
        at += n
    return out, at


def _head_sha256(path: str) -> str:
    """SHA-256 of a file's first :data:`_HEAD` bytes: its Riegeli signature and the headers
    (with their data hashes) of its first records, a fingerprint of the shard's content."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(_HEAD)).hexdigest()


def file_sha256(path: str, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _describe(num, chunk, arrays, storage_dtype, provenance):
    """The manifest's description of a store (everything but the shard checksums)."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype={storage_dtype!r} is not one of {STORAGE_DTYPES}.")
    if not (isinstance(num, int) and num >= 1 and isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"num={num!r} and chunk={chunk!r} must be integers >= 1.")
    spec = {}
    for name, (shape, dtype) in arrays.items():
        floating = np.issubdtype(np.dtype(dtype), np.floating)
        spec[name] = {
            "shape": [int(s) for s in shape],
            "dtype": storage_dtype if floating else np.dtype(dtype).name,
        }
    spec["index"] = {"shape": [], "dtype": "int64"}
    return {
        "format": FORMAT,
        "num": num,
        "chunk": chunk,
        "arrays": spec,
        "provenance": dict(provenance or {}),
    }


def _differences(have: dict, want: dict, prefix="") -> list[str]:
    out = []
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: store has {a!r}, asked for {b!r}")
    return out


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(path: str) -> dict:
    """The manifest of the store at ``path`` (FileNotFoundError when there is none; a
    :class:`~simple_reflow.errors.DamagedInput` naming it when it is not a manifest)."""
    file = os.path.join(path, _MANIFEST)
    try:
        with open(file, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        if not isinstance(manifest, dict) or not {"num", "chunk", "arrays"} <= set(manifest):
            raise ValueError("not a pair store manifest")
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # JSON, UTF-8 and I/O errors
        raise DamagedInput(
            file,
            reason(e),
            f"remove it and rerun the pairs stage with --workdir "
            f"{os.path.dirname(os.path.normpath(path)) or '.'} (it rewrites the manifest and "
            f"keeps the shards), then check the store with `python scripts/verify_pairs.py "
            f"{path}`",
        ) from e
    return manifest


def _starts(num: int, chunk: int) -> range:
    return range(0, num, chunk)


def write_store(
    generate_fn,
    path,
    *,
    num,
    chunk,
    arrays,
    provenance=None,
    storage_dtype="float32",
    process_index=0,
    process_count=1,
    progress=None,
):
    """Generates this host's chunks of a store of ``num`` pairs, resumably.

    Args:
      generate_fn: ``generate_fn(indices int32 [chunk]) -> {name: array [chunk, ...]}``; the last
        chunk is padded to full size (one compilation) and trimmed.
      path: the store's folder.
      num, chunk: pairs in the store and per shard.
      arrays: ``{name: (shape of one pair, dtype)}`` of the generated arrays; floating arrays
        are stored in ``storage_dtype``, others as given. ``index`` is added.
      provenance: JSON-able facts that make these pairs (teacher SHA-256, solver, grid, seed…);
        a store on disk with another description is refused (:class:`StoreMismatch`).
      process_index, process_count: this host's share (chunk c → host c mod count).
      progress: optional ``progress(pairs)`` called per shard, made or found.

    Returns:
      The number of pairs this call generated (0 when all of this host's shards existed).
    """
    desc = _describe(num, chunk, arrays, storage_dtype, provenance)
    os.makedirs(path, exist_ok=True)
    try:
        have = read_manifest(path)
    except FileNotFoundError:
        have = None
    if have is not None:
        diff = _differences({k: have.get(k) for k in desc}, desc)
        if diff:
            raise StoreMismatch(
                f"the pair store {path} holds other pairs ({'; '.join(diff)}): "
                "point pairs.dir at a new folder, or delete this one."
            )
    else:
        _write_json(os.path.join(path, _MANIFEST), desc)  # every host writes the same bytes
    mine = [s for c, s in enumerate(_starts(num, chunk)) if c % process_count == process_index]
    for name in os.listdir(path):  # temporary folders of a killed writer of this host
        if ".tmp-" in name and name.startswith("shard_"):
            start = int(name[6:16])
            if start in mine:
                shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    made = 0
    for start in mine:
        n = min(chunk, num - start)
        final = os.path.join(path, _shard_name(start))
        if os.path.exists(os.path.join(final, _DONE)):
            problem = _check_shard(final, n, start, desc["arrays"], None, checksums=False)
            if problem is not None:  # cheap: done.json and the file's size, never skipped
                file, why = _named(problem, final)
                raise DamagedPairStore(path, file, start, n, why)
            if progress:
                progress(n)
            continue
        idx = np.arange(start, start + chunk, dtype=np.int32)
        out = {k: np.asarray(v)[:n] for k, v in generate_fn(idx).items()}
        out["index"] = idx[:n].astype(np.int64)
        if set(out) != set(desc["arrays"]):
            raise ValueError(
                f"generate_fn returned {sorted(out)}, the store holds {sorted(desc['arrays'])}."
            )
        _write_shard(final, out, desc["arrays"], n)
        made += n
        if progress:
            progress(n)
    return made


def _write_shard(final, out, spec, n):
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    columns = []
    for name, s in spec.items():
        x = np.asarray(out[name]).astype(_disk_dtype(s["dtype"]))
        if x.shape != (n, *s["shape"]):
            raise ValueError(
                f"array {name!r} has shape {x.shape[1:]}, the store holds {tuple(s['shape'])}."
            )
        columns.append(x.reshape(n, -1).view(np.uint8))
    records = np.concatenate(columns, axis=1)  # row i: pair i's record
    file = os.path.join(tmp, _FILE)
    writer = array_record_module.ArrayRecordWriter(file, _WRITER_OPTIONS)
    for row in records:
        writer.write(row.tobytes())
    writer.close()
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    done = {
        "count": n,
        "bytes": os.path.getsize(file),
        "sha256": file_sha256(file),
        "head_sha256": _head_sha256(file),
    }
    _write_json(os.path.join(tmp, _DONE), done)
    if os.path.exists(final):  # a partial folder without done.json (cannot happen via rename)
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic: the shard exists whole or not at all


def finalize_store(path) -> bool:
    """Copies every shard's checksums into the manifest once all exist (call on one host,
    after every host finished writing). Returns whether the store is complete."""
    manifest = read_manifest(path)
    shards = {}
    for start in _starts(manifest["num"], manifest["chunk"]):
        try:
            with open(os.path.join(path, _shard_name(start), _DONE)) as f:
                shards[_shard_name(start)] = json.load(f)
        except FileNotFoundError:
            return False
    if manifest.get("shards") != shards:
        _write_json(os.path.join(path, _MANIFEST), {**manifest, "shards": shards})
    return True


class PairStore:
    """Reads pairs of a complete store by global index, with bounded memory.

    ``store.read(indices)`` returns ``{name: array [n, ...]}`` (floats as float32). Shard
    readers are opened lazily and at most ``max_open`` stay open; the shards one read touches
    are read by ``threads`` threads at once (the reads release the GIL; on a cold disk random
    reads are latency-bound, and several in flight multiply the throughput). Opening checks
    that the manifest is complete and every shard file has its recorded size (a truncated
    shard is named at once); the checksums are checked by :func:`verify_store`.

    It is also a Grain random-access data source: ``len(store)``, ``store[i]`` and
    ``store.__getitems__(indices)`` give pairs as ``{name: array}``.
    """

    def __init__(self, path: str, *, max_open: int = 256, threads: int = 8):
        self.path = path
        try:
            manifest = read_manifest(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is not a pair store (no {_MANIFEST}).") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{path}/{_MANIFEST} has format {manifest.get('format')!r}, this library "
                f"reads {FORMAT!r}: regenerate the store with this version's pairs stage."
            )
        if "shards" not in manifest:
            report = verify_store(path, checksums=False)
            raise ValueError(
                f"the pair store {path} is incomplete ({report.summary()}): rerun "
                "the pairs stage to finish it."
            )
        self.manifest = manifest
        self.num, self.chunk = manifest["num"], manifest["chunk"]
        self.arrays = manifest["arrays"]
        self.provenance = manifest["provenance"]
        self._layout, self._record = _layout(self.arrays)
        for start in _starts(self.num, self.chunk):  # cheap: a stat and a 4 KiB read each
            why = _file_problem(self._file(start), manifest["shards"][_shard_name(start)])
            if why:
                raise self._damaged(start, why)
        self._readers = collections.OrderedDict()
        self._max_open = max_open
        self._threads = threads
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(threads, "pair_store") if threads > 1 else None
        )
        self._lock = threading.Lock()

    def __len__(self):
        return self.num

    def __getitem__(self, i):
        return {k: v[0] for k, v in self.read([int(i)]).items()}

    def __getitems__(self, indices):
        batch = self.read(indices)
        return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]

    def mismatches(self, *, num, arrays, provenance, ignore=()) -> list[str]:
        """How this store differs from the pairs asked for (``arrays``: ``{name: (shape,
        dtype)}``; ``provenance`` as given to :func:`write_store`, minus the keys in
        ``ignore``); empty when it serves them. The storage dtype and shard size are free; a
        larger store serves its first ``num``."""
        want = _describe(
            num,
            self.chunk,
            arrays,
            self.arrays["x0"]["dtype"] if "x0" in self.arrays else "float32",
            {k: v for k, v in provenance.items() if k not in ignore},
        )
        have = {
            "arrays": self.arrays,
            "provenance": {k: v for k, v in self.provenance.items() if k not in ignore},
        }
        out = _differences(have, {k: want[k] for k in have})
        if self.num < num:
            out.append(f"pairs: store has {self.num}, asked for {num}")
        return out

    def _file(self, start):
        return os.path.join(self.path, _shard_name(start), _FILE)

    def _reader(self, start):
        with self._lock:  # readers are shared by the pool's threads
            reader = self._readers.get(start)
            if reader is None:
                reader = _open_reader(self._file(start), self._record)
                self._readers[start] = reader
                if len(self._readers) > self._max_open:  # dropped, not closed: a thread may
                    self._readers.popitem(last=False)  # still read it; freed (closed) after
            else:
                self._readers.move_to_end(start)
            return reader

    def _damaged(self, start, why):
        return DamagedPairStore(
            self.path, self._file(start), start, min(self.chunk, self.num - start), why
        )

    def _read_shard(self, start, positions, dest, where):
        """Records ``positions`` of shard ``start`` into ``dest[where]`` (one copy each).

        Any failure — the reader's (Riegeli hash mismatches, a bad index), the OS's (EIO, a
        file gone), a record of the wrong size, a record of another pair — is a
        :class:`DamagedPairStore` naming the shard: fatal, never skipped."""
        try:
            records = self._reader(start).read(positions)
            if len(records) != len(positions):
                raise ValueError(f"{len(records)} records for {len(positions)} positions")
        except Exception as e:  # noqa: BLE001 (the reader's errors are untyped RuntimeErrors)
            with self._lock:
                reader = self._readers.pop(start, None)
            if reader is not None:
                _close_quietly(reader)
            raise self._damaged(start, f"reading records failed: {reason(e)}") from e
        for j, position, record in zip(where, positions, records, strict=True):
            if len(record) != self._record:
                raise self._damaged(
                    start,
                    f"record {position} has {len(record)} bytes, the manifest describes "
                    f"{self._record}",
                )
            dest[j] = np.frombuffer(record, np.uint8)
        at, size = self._layout["index"]  # every record carries its pair's global index
        got = np.ascontiguousarray(dest[where, at : at + size]).view("<i8").reshape(-1)
        want = start + np.asarray(positions, np.int64)
        if not np.array_equal(got, want):
            k = int(np.flatnonzero(got != want)[0])
            raise self._damaged(
                start, f"record {positions[k]} holds pair {got[k]}, not pair {want[k]}"
            )

    def read(self, indices, keys=None) -> dict:
        """Pairs ``indices`` (any order, repeats allowed): ``{name: [n, ...]}``."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num):
            raise IndexError(f"pair indices must lie in [0, {self.num}) for {self.path}.")
        keys = [k for k in self.arrays if k != "index"] if keys is None else list(keys)
        start = (idx // self.chunk) * self.chunk
        jobs = [(int(s), np.flatnonzero(start == s)) for s in np.unique(start)]
        rows = np.empty((len(idx), self._record), np.uint8)

        def fill(job):
            s, where = job
            self._read_shard(s, (idx[where] - s).tolist(), rows, where.tolist())

        if self._pool is None or len(jobs) < 2:
            for job in jobs:
                fill(job)
        else:  # one shard per task; the records' reads release the GIL
            list(self._pool.map(fill, jobs))
        out = {}
        for k in keys:
            spec = self.arrays[k]
            at, n = self._layout[k]
            x = rows[:, at : at + n].view(_disk_dtype(spec["dtype"]))  # rows stay contiguous
            x = x.reshape(len(idx), *spec["shape"])  # the one copy per array
            out[k] = x.astype(np.float32, copy=False) if spec["dtype"] in STORAGE_DTYPES else x
        return out

    def close(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown()
            self._pool = None
        while getattr(self, "_readers", None):
            _close_quietly(self._readers.popitem()[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


def _file_problem(file, recorded) -> str | None:
    """Why the shard ``file`` is not the one the manifest recorded (``recorded``: its
    ``done.json`` entry) by the cheap checks — existence, size, the first 4 KiB's SHA-256
    (when recorded) — or None. A shard moved from another position or another store fails
    the last; damage further in is caught when a record is read (Riegeli's chunk hashes)."""
    try:
        size = os.path.getsize(file)
    except FileNotFoundError:
        return "the file is missing"
    except OSError as e:
        return f"cannot stat it ({reason(e)})"
    if size != recorded["bytes"]:
        return f"{size} bytes, the manifest records {recorded['bytes']} (truncated or padded)"
    if "head_sha256" in recorded:
        try:
            head = _head_sha256(file)
        except OSError as e:
            return f"cannot read it ({reason(e)})"
        if head != recorded["head_sha256"]:
            return "its first 4 KiB differ from the manifest's record (corrupt, or another file)"
    return None


def _named(problem, folder):
    """``(file, why)`` of a :func:`_check_shard` result ("missing" names done.json)."""
    return (
        (os.path.join(folder, _DONE), "done.json is missing") if problem == "missing" else problem
    )


def _close_quietly(reader):
    """Closes a shard reader; a damaged shard's reader re-raises its failure on close, which
    its read already reported as a :class:`DamagedPairStore`."""
    try:
        reader.close()
    except Exception:  # noqa: BLE001, S110
        pass


def _open_reader(file, record_bytes):
    """A random-access reader of one shard: no read-ahead, a buffer of one record (random
    256-pair CIFAR reads from the page cache: ≈ 95k pairs/s vs 85k with a 64 KiB buffer)."""
    return array_record_module.ArrayRecordReader(
        file,
        "readahead_buffer_size:0,max_parallelism:0",
        file_reader_buffer_size=record_bytes + 1024,  # measured: smaller reads faster
    )


@dataclasses.dataclass
class VerifyReport:
    """What :func:`verify_store` found. ``regenerate``: (start, count) a resume would make once
    the corrupt shards are removed (``verify_store(..., repair=True)`` removes them)."""

    path: str
    expected: int = 0
    ok: int = 0
    missing: list = dataclasses.field(default_factory=list)
    corrupt: list = dataclasses.field(default_factory=list)  # (file or folder, why)
    unexpected: list = dataclasses.field(default_factory=list)
    regenerate: list = dataclasses.field(default_factory=list)
    complete: bool = False

    @property
    def healthy(self) -> bool:
        return not (self.missing or self.corrupt or self.unexpected)

    def summary(self) -> str:
        n = sum(c for _, c in self.regenerate)
        return (
            f"{self.ok}/{self.expected} shards ok, {len(self.missing)} missing, "
            f"{len(self.corrupt)} corrupt, {len(self.unexpected)} unexpected; a resume "
            f"would regenerate {len(self.regenerate)} shards ({n} pairs)"
        )


def verify_store(path, *, checksums=True, repair=False) -> VerifyReport:
    """Checks a store against its manifest.

    Every expected shard must exist with ``done.json``, the right count and a file of the
    recorded size; with ``checksums`` (not ``--fast``) also the file's SHA-256 equal to the one
    recorded when it was written (and in the manifest, once finalized), and its records
    ``count`` records of the manifest's layout whose ``index`` is the shard's range. Folders
    that are not expected shards are reported as unexpected (temporary folders of a killed
    writer are removed by the next run). ``repair`` deletes corrupt shards, so that a resume
    regenerates them.
    """
    report = VerifyReport(path)
    manifest = read_manifest(path)
    num, chunk, spec = manifest["num"], manifest["chunk"], manifest["arrays"]
    recorded = manifest.get("shards", {})
    expected = {_shard_name(s): s for s in _starts(num, chunk)}
    report.expected = len(expected)
    for name in sorted(os.listdir(path)):
        if name.startswith("shard_") and name not in expected:
            report.unexpected.append(name)
    for name, start in expected.items():
        n = min(chunk, num - start)
        folder = os.path.join(path, name)
        problem = _check_shard(folder, n, start, spec, recorded.get(name), checksums)
        if problem is None:
            report.ok += 1
            continue
        if problem == "missing":
            report.missing.append(name)
        else:
            report.corrupt.append(problem)
            if repair:
                shutil.rmtree(folder)
        report.regenerate.append((start, n))
    report.complete = report.healthy and "shards" in manifest
    return report


def _check_shard(folder, n, start, spec, recorded, checksums):
    """None when the shard is sound; "missing"; or (file, why)."""
    done_file = os.path.join(folder, _DONE)
    if not os.path.exists(done_file):
        return "missing"
    try:
        with open(done_file) as f:
            done = json.load(f)
    except (OSError, ValueError) as e:
        return (done_file, f"unreadable ({e})")
    if done.get("count") != n:
        return (done_file, f"count {done.get('count')} != {n}")
    if recorded is not None and recorded != done:
        return (done_file, "differs from the manifest's record (another shard's or store's)")
    file = os.path.join(folder, _FILE)
    try:
        if not os.path.isfile(file):
            return (file, "missing file")
        if os.path.getsize(file) != done.get("bytes"):
            return (
                file,
                f"truncated or padded ({os.path.getsize(file)} bytes, "
                f"done.json records {done.get('bytes')})",
            )
        if not checksums:
            return None
        if file_sha256(file) != done.get("sha256"):
            return (file, "SHA-256 differs from done.json (corrupt)")
    except OSError as e:  # EIO, permissions: the file cannot be read
        return (file, f"unreadable ({reason(e)})")
    layout, record = _layout(spec)
    at, size = layout["index"]
    index = []
    try:
        reader = _open_reader(file, record)
        try:
            count = reader.num_records()
            for lo in range(0, min(count, n), 64):  # a bounded block of records at a time
                for r in reader.read(lo, min(lo + 64, count)):
                    if len(r) != record:
                        return (file, f"a record of {len(r)} bytes, expected {record}")
                    index.append(r[at : at + size])
        finally:
            reader.close()
    except Exception as e:  # noqa: BLE001 (the reader's errors are not typed)
        return (file, f"not a readable ArrayRecord file ({reason(e)})")
    if count != n:
        return (file, f"{count} records, expected {n}")
    if not np.array_equal(np.frombuffer(b"".join(index), "<i8"), np.arange(start, start + n)):
        return (file, "indices are not the shard's range")
    return None
