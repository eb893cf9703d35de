"""A pair store on disk: any number of pairs, written resumably by every host, read by index.

One store per pair kind (``<pairs.dir>/backward``, ``forward``, ``projected``)::

  manifest.json          what the store holds: pair count, shard size, arrays (shape, storage
                         dtype) and provenance (teacher snapshot SHA-256, solver, grid, NFE,
                         seed); once every shard exists, also each shard's checksums
  shard_0000000000/      pairs [0, chunk): one ``.npy`` per array (x0, x1, cond, index) and
  shard_0000001024/      ``done.json`` (count, SHA-256 per file); written in a temporary folder
  …                      and renamed, so a shard exists whole or not at all

Why this format (measured in ``benchmarks/pair_store_speed.py``): pair i of a shard is one
``pread`` at a computed offset of an uncompressed ``.npy`` — no decoding, no record index, no
dependency, and the files open with ``np.load`` for inspection. Reads go through ``pread``, not
``mmap``: the page cache then serves repeated reads without counting toward the process's
memory, so a reader's footprint does not grow with the store (a memory map's touched pages
would). Floating-point arrays are stored as ``float32`` (default), ``float16`` or ``bfloat16``
(kept as its uint16 bits, since ``.npy`` has no bfloat16) and read back as float32.

Chunk ``c`` (pairs ``[c·chunk, (c+1)·chunk)``) belongs to host ``c mod process_count``, so
hosts generate with no coordination; a restarted writer skips the finished shards and removes
the temporary folders a killed one left. :func:`verify_store` checks a store against its
manifest (missing, corrupt, unexpected shards) and says what a resume would regenerate.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil

import ml_dtypes
import numpy as np

__all__ = [
    "STORAGE_DTYPES",
    "StoreMismatch",
    "write_store",
    "finalize_store",
    "read_manifest",
    "PairStore",
    "VerifyReport",
    "verify_store",
    "file_sha256",
]

FORMAT = "simple_reflow.pair_store/1"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
_MANIFEST = "manifest.json"
_DONE = "done.json"


class StoreMismatch(ValueError):
    """A store on disk describes other pairs than the ones asked for."""


def _shard_name(start: int) -> str:
    return f"shard_{start:010d}"


def _disk_dtype(name: str) -> np.dtype:
    """The ``.npy`` dtype of a storage dtype name (bfloat16 as its bits)."""
    return np.dtype(np.uint16) if name == "bfloat16" else np.dtype(name)


def _to_disk(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if name == "bfloat16":
        return np.ascontiguousarray(x.astype(ml_dtypes.bfloat16).view(np.uint16))
    return np.ascontiguousarray(x.astype(name))


def _from_disk(x: np.ndarray, name: str) -> np.ndarray:
    if name == "bfloat16":
        return x.view(ml_dtypes.bfloat16).astype(np.float32)
    if name in ("float16",):
        return x.astype(np.float32)
    return x


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
    """The manifest of the store at ``path`` (FileNotFoundError when there is none)."""
    with open(os.path.join(path, _MANIFEST)) as f:
        return json.load(f)


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
    sums, offsets = {}, {}
    for name, s in spec.items():
        x = _to_disk(out[name], s["dtype"])
        if x.shape != (n, *s["shape"]):
            raise ValueError(
                f"array {name!r} has shape {x.shape[1:]}, the store holds {tuple(s['shape'])}."
            )
        file = os.path.join(tmp, f"{name}.npy")
        with open(file, "wb") as f:
            np.lib.format.write_array(f, x, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
            offsets[name] = f.tell() - x.nbytes  # the header's length (depends on the shape)
        sums[name] = file_sha256(file)
    _write_json(os.path.join(tmp, _DONE), {"count": n, "sha256": sums, "offset": offsets})
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


def _item_bytes(spec) -> int:
    return int(np.prod(spec["shape"], dtype=np.int64)) * _disk_dtype(spec["dtype"]).itemsize


def _header_size(file) -> int:
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"{file}: .npy format version {version} is not written here")
        return f.tell()


class PairStore:
    """Reads pairs of a complete store by global index, with bounded memory.

    ``store.read(indices)`` returns ``{name: array [n, ...]}`` (floats as float32). Files are
    opened lazily and at most ``max_open`` stay open; ``threads`` reads run concurrently (on a
    cold disk random reads are latency-bound, and several in flight multiply the throughput).
    Opening checks the manifest is complete and every shard file has its expected size (a
    truncated shard is named at once); the checksums are checked by :func:`verify_store`.
    """

    def __init__(self, path: str, *, max_open: int = 1024, threads: int = 8):
        self.path = path
        try:
            manifest = read_manifest(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is not a pair store (no {_MANIFEST}).") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{path}/{_MANIFEST} has format {manifest.get('format')!r}, "
                f"this library reads {FORMAT!r}."
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
        self._item = {k: _item_bytes(s) for k, s in self.arrays.items()}
        self._offset = {}  # (shard start, array): where its data begins (after the header)
        for start in _starts(self.num, self.chunk):
            n = min(self.chunk, self.num - start)
            offsets = manifest["shards"][_shard_name(start)]["offset"]
            for k in self.arrays:
                file = self._file(start, k)
                self._offset[(start, k)] = offsets[k]
                size = os.path.getsize(file) if os.path.exists(file) else None
                want = offsets[k] + n * self._item[k]
                if size != want:
                    what = "missing" if size is None else f"{size} bytes, expected {want}"
                    raise ValueError(
                        f"pair store shard file {file} is {what}: run `python "
                        f"scripts/verify_pairs.py {path} --repair` and rerun the "
                        "pairs stage."
                    )
        self._fds = collections.OrderedDict()
        self._max_open = max_open
        self._threads = threads
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(threads, "pair_store") if threads > 1 else None
        )

    def __len__(self):
        return self.num

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

    def _file(self, start, key):
        return os.path.join(self.path, _shard_name(start), f"{key}.npy")

    def _fd(self, start, key):
        fd = self._fds.get((start, key))
        if fd is None:
            fd = os.open(self._file(start, key), os.O_RDONLY)
            self._fds[(start, key)] = fd
            if len(self._fds) > self._max_open:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end((start, key))
        return fd

    def read(self, indices, keys=None) -> dict:
        """Pairs ``indices`` (any order, repeats allowed): ``{name: [n, ...]}``."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num):
            raise IndexError(f"pair indices must lie in [0, {self.num}) for {self.path}.")
        keys = [k for k in self.arrays if k != "index"] if keys is None else list(keys)
        order = np.argsort(idx, kind="stable")  # file order: sequential runs become one read
        sidx = idx[order]
        start = (sidx // self.chunk) * self.chunk
        row = sidx - start
        # runs of consecutive rows of one shard
        breaks = np.flatnonzero((np.diff(sidx) != 1) | (np.diff(start) != 0)) + 1
        bounds = np.concatenate([[0], breaks, [len(sidx)]])
        out, reads = {}, []
        for k in keys:
            spec = self.arrays[k]
            disk = _disk_dtype(spec["dtype"])
            buf = np.empty((len(sidx), *spec["shape"]), disk)
            raw = buf.reshape(len(sidx), -1).view(np.uint8)
            item = self._item[k]
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                where = (int(start[a]), k)
                reads.append(
                    (self._fd(*where), raw[a:b], self._offset[where] + int(row[a]) * item, where)
                )
            out[k] = buf
        if self._pool is None or len(reads) < 2 * self._threads:
            for r in reads:
                self._pread(*r)
        else:  # concurrent reads: the disk serves several requests at once (GIL released)
            groups = [reads[i :: self._threads] for i in range(self._threads)]
            list(self._pool.map(lambda g: [self._pread(*r) for r in g], groups))
        for k, buf in out.items():
            x = np.empty_like(buf)
            x[order] = buf
            out[k] = _from_disk(x, self.arrays[k]["dtype"])
        return out

    def _pread(self, fd, dest, offset, where):
        got = os.preadv(fd, [dest], offset)
        if got != dest.nbytes:
            raise OSError(
                f"short read from {self._file(*where)} ({got} of {dest.nbytes} "
                "bytes): the file changed on disk."
            )

    def close(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown()
            self._pool = None
        while getattr(self, "_fds", None):
            os.close(self._fds.popitem()[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


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

    Every expected shard must exist with ``done.json``, the right count, files of the right size,
    ``index`` equal to its range and (``checksums``) each file's SHA-256 equal to the one
    recorded when it was written (and in the manifest, once finalized). Folders that are not
    expected shards are reported as unexpected (temporary folders of a killed writer are removed
    by the next run). ``repair`` deletes corrupt shards, so that a resume regenerates them.
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
        return (done_file, "checksums differ from the manifest's")
    for k, s in spec.items():
        file = os.path.join(folder, f"{k}.npy")
        if not os.path.exists(file):
            return (file, "missing file")
        item = _item_bytes(s)
        try:
            header = _header_size(file)
        except ValueError as e:
            return (file, f"bad .npy header ({e})")
        if done.get("offset", {}).get(k) != header:
            return (
                file,
                f"header of {header} bytes, done.json records {done.get('offset', {}).get(k)}",
            )
        size_ok = os.path.getsize(file) == header + n * item
        if not size_ok:
            return (file, f"truncated or padded ({os.path.getsize(file)} bytes)")
        if checksums and file_sha256(file) != done["sha256"].get(k):
            return (file, "SHA-256 differs from done.json (corrupt)")
    index = np.load(os.path.join(folder, "index.npy"))
    if not np.array_equal(index, np.arange(start, start + n)):
        return (os.path.join(folder, "index.npy"), "indices are not the shard's range")
    return None
