"""Reading PyTorch files without PyTorch: EDM's network pickles and ``torch.save`` state dicts.

Three layouts are read, all as NumPy arrays:

- **Plain pickles of modules** (EDM's ``network-snapshot-*.pkl`` and the published
  ``edm-*.pkl``): every tensor is pickled as ``torch._utils._rebuild_tensor_v2`` of a storage
  that is itself a small legacy ``torch.save`` stream (``torch.storage._load_from_bytes``:
  magic number, protocol 1001, system info, the storage's pickle, its key list, then for each
  key the element count as int64 and the raw little-endian bytes). EDM's modules are
  ``torch_utils.persistence`` objects: ``_reconstruct_persistent_obj(meta)`` with
  ``meta = {type, version, module_src, class_name, state}``, ``state`` being the module's
  ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, ...).
- **``torch.save`` zip archives** (``torch.save(net.state_dict(), f)``, PyTorch ≥ 1.6):
  ``<archive>/data.pkl`` whose storages are persistent ids
  ``("storage", storage_type, key, location, numel)`` read from ``<archive>/data/<key>``.
- **legacy ``torch.save`` streams** (before PyTorch 1.6, e.g. pytorch-fid's Inception weights):
  the layout of the storages above, for a whole object.

The unpickler admits only the handful of names these layouts use (tensor and storage
rebuilders, ``OrderedDict``, EDM's persistence hook and ``EasyDict``, NumPy scalars), so a
hostile pickle cannot run code, and EDM's embedded source (``module_src``) is never executed:
:class:`PersistentObject` keeps the class name and state only.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["PersistentObject", "TorchFileError", "load_torch_file", "module_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


class TorchFileError(ValueError):
    """A file that is not a readable PyTorch pickle or state dict (the message names it)."""


@dataclasses.dataclass
class PersistentObject:
    """A pickled module (EDM's ``torch_utils.persistence`` objects and ``torch.nn`` containers
    such as ``ModuleDict``): its class name and pickled ``__dict__``, nothing executable."""

    class_name: str
    state: dict

    def __setstate__(self, state):  # BUILD of a pickled torch.nn module
        self.state = dict(state)

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: Any


@dataclasses.dataclass
class _Storage:
    data: np.ndarray | None  # 1-D; None until a legacy stream's raw data has been read
    key: str = ""
    dtype: Any = None


@dataclasses.dataclass
class _LazyTensor:
    """A tensor of a legacy stream, whose storage bytes follow the pickle."""

    storage: _Storage
    args: tuple


class _Parameter(np.ndarray):
    """Marks arrays that were ``torch.nn.Parameter`` (behaves as the array it views)."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    if storage.data is None:
        return _LazyTensor(storage, (offset, size, stride))
    flat = storage.data
    if not size:
        return flat[offset].copy()
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
    )
    return np.ascontiguousarray(view)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_):
    data = storage.data.view(np.uint8).view(dtype)
    return _rebuild_tensor(_Storage(data), offset, size, stride)


def _rebuild_parameter(data, *_):
    return data if isinstance(data, _LazyTensor) else np.asarray(data)


def _rebuild_from_type(func, _type, args, _state):
    return func(*args)


class _EasyDict(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict)."""


def _storage_type(name):
    return _StorageType(_STORAGE_DTYPES[name])


class _Unpickler(pickle.Unpickler):
    """Admits only the names PyTorch and EDM's persistence put in their pickles."""

    def __init__(self, file, *, storages=None, source=""):
        super().__init__(file)
        self._storages = storages  # key -> bytes reader, for zip archives
        self._source = source

    def find_class(self, module, name):
        allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
            ("torch.nn.parameter", "Parameter"): _Parameter,
            ("torch", "Tensor"): np.ndarray,
            ("torch.storage", "_load_from_bytes"): _load_legacy_bytes,
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct,
            ("dnnlib.util", "EasyDict"): _EasyDict,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "scalar"): _numpy_scalar,
            ("numpy._core.multiarray", "scalar"): _numpy_scalar,
            ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__new__,
            ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__new__,
            ("numpy", "ndarray"): np.ndarray,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module.startswith("torch.nn.modules."):  # containers (ModuleDict, ...): data only
            return type(name, (PersistentObject,), {"class_name": name})
        if module == "builtins" and name in ("set", "frozenset"):
            return {"set": set, "frozenset": frozenset}[name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _storage_type(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module == "torch" and name == "UntypedStorage":
            return _StorageType(np.uint8)
        raise TorchFileError(
            f"{self._source}: holds a {module}.{name} object, which is not part "
            "of an EDM network pickle or a PyTorch state dict"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"{self._source}: unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if self._storages is None:
            raise TorchFileError(f"{self._source}: storage {key!r} outside a torch.save file")
        return self._storages(str(key), storage_type.dtype, int(numel))


def _numpy_scalar(dtype, data):
    return np.frombuffer(data, dtype=dtype)[0]


def _reconstruct(meta):
    if meta.get("type") != "class":
        raise TorchFileError(f"unsupported persistent object type {meta.get('type')!r}")
    return PersistentObject(str(meta["class_name"]), dict(meta["state"] or {}))


def _resolve(obj):
    """Replaces the lazy tensors of a legacy stream by arrays, through containers."""
    if isinstance(obj, _LazyTensor):
        return _rebuild_tensor(obj.storage, *obj.args)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _resolve(v)
        return obj
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    if isinstance(obj, PersistentObject):
        obj.state = _resolve(obj.state)
    return obj


def _load_legacy(f, source: str) -> Any:
    """The rest of a legacy ``torch.save`` stream after its magic number: protocol, system
    info, the object's pickle, its storage keys, then each storage as an int64 element count
    and raw little-endian bytes."""
    if pickle.load(f) != _LEGACY_PROTOCOL:
        raise TorchFileError(f"{source}: unknown PyTorch serialization protocol")
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise TorchFileError(f"{source}: big-endian PyTorch storages are not supported")
    storages: dict[str, _Storage] = {}

    def load(key, dtype, numel):
        return storages.setdefault(key, _Storage(None, key, np.dtype(dtype)))

    obj = _Unpickler(f, storages=load, source=source).load()
    for key in pickle.load(f):
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        raw = f.read(numel * storage.dtype.itemsize)
        if len(raw) != numel * storage.dtype.itemsize:
            raise TorchFileError(f"{source}: storage {key} is truncated")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if isinstance(obj, _Storage):  # torch.storage._load_from_bytes: the stream is one storage
        return obj
    return _resolve(obj)


def _load_legacy_bytes(data: bytes) -> _Storage:
    """A storage pickled inside a tensor (``torch.storage._load_from_bytes``)."""
    f = io.BytesIO(data)
    if pickle.load(f) != _LEGACY_MAGIC:
        raise TorchFileError("a tensor's storage is not in PyTorch's legacy serialization format")
    return _load_legacy(f, "storage")


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchFileError(
                f"{path}: a zip file without one data.pkl is not a torch.save file"
            )
        prefix = pkl[0][: -len("data.pkl")]

        def storage(key, dtype, numel):
            raw = z.read(f"{prefix}data/{key}")
            dtype = np.dtype(dtype)
            if len(raw) < numel * dtype.itemsize:
                raise TorchFileError(f"{path}: storage {key} is truncated")
            return _Storage(np.frombuffer(raw, dtype=dtype, count=numel))

        with z.open(pkl[0]) as f:
            return _Unpickler(f, storages=storage, source=path).load()


def load_torch_file(path: str) -> Any:
    """Loads a pickle of (EDM) modules or a ``torch.save`` file; tensors become NumPy arrays.

    Args:
      path: an EDM network pickle (``edm-*.pkl``, ``network-snapshot-*.pkl``) or a file written
        by ``torch.save`` (typically a state dict).

    Returns:
      The unpickled object: dicts, lists, NumPy arrays and :class:`PersistentObject` s.

    Raises:
      FileNotFoundError: no file at ``path``.
      TorchFileError: the file is truncated, corrupt, or holds objects of other kinds.
    """
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            first = _Unpickler(f, source=path).load()
            if isinstance(first, int) and first == _LEGACY_MAGIC:  # torch.save before 1.6
                return _load_legacy(f, path)
            return _resolve(first)
    except FileNotFoundError:
        raise
    except TorchFileError as e:
        raise TorchFileError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        struct.error,
        KeyError,
        AttributeError,
        TypeError,
        ValueError,
        IndexError,
        MemoryError,
    ) as e:
        raise TorchFileError(
            f"{path}: not a complete PyTorch pickle or torch.save file "
            f"(truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None


def module_state_dict(obj: PersistentObject, prefix: str = "") -> dict[str, np.ndarray]:
    """The ``state_dict()`` of a pickled module: parameters and persistent buffers by name."""
    state = obj.state
    out = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is not None and name not in skip:
                out[prefix + name] = np.asarray(value)
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PersistentObject):
            out.update(module_state_dict(child, f"{prefix}{name}."))
        elif child is not None:
            raise TorchFileError(f"module {prefix}{name} is not an EDM persistent module")
    return out
