"""Checkpoints (Orbax) and the EMA snapshot used for sampling.

The resumable checkpoint holds the whole :class:`TrainState` under ``workdir/checkpoints``;
the EMA snapshot ``workdir/ema.npz`` is a small flat file of the EMA parameters that teachers,
students and evaluation load (the EDM habit: keep the sampling weights apart from the state).
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from simple_reflow.errors import DamagedInput, reason
from simple_reflow.models.params import param_name, unflatten_params
from simple_reflow.train.step import TrainState

__all__ = [
    "make_manager",
    "restore_latest",
    "save_state",
    "save_params",
    "load_params",
    "save_model_config",
    "load_model_config",
    "check_model_config",
    "snapshot_repair",
]


def make_manager(workdir, keep=2):
    """An Orbax manager for ``workdir/checkpoints`` keeping the ``keep`` newest steps."""
    path = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(path, options=options)


_WEIGHT = np.uint32(2654435761)  # Knuth's multiplicative hash constant (odd)


def _bits(x) -> np.ndarray:
    """A leaf's bit pattern as a flat uint32 vector of this host's replica (PRNG keys by their
    data; 1/2-byte types widened; 8-byte types as two words each)."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.sharding.is_fully_replicated:
            raise ValueError(
                f"a checkpoint checksum needs replicated arrays; got one sharded as {x.sharding}"
            )
        x = x.addressable_data(0)
    a = np.ascontiguousarray(np.asarray(x)).reshape(-1)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype.itemsize in (1, 2):
        return a.view(np.dtype(f"uint{8 * a.dtype.itemsize}")).astype(np.uint32)
    return a.view(np.uint32)


def state_checksum(state) -> int:
    """The checksum of a train state's arrays, recorded at saving and checked at restoring
    (Orbax does not check its data: a flipped byte in a checkpoint restores silently).

    Σ over leaves i and elements j of bits_ij · (j·K + 2i | 1) mod 2³², every weight odd: a
    change of any one element changes it (the bits' change is 2^k·odd, times an odd weight,
    nonzero mod 2³²); several changes cancel with probability ~2⁻³². Integer sums: the same on
    any device or mesh. Computed with NumPy on this host's replica of the (replicated) state:
    as one XLA program the ~400 per-leaf reductions of a U-Net's state took 37 s to compile on
    CPU, more than the training stages of the smoke configs; the copy to the host is the one
    Orbax makes to save it.
    """
    total = 0
    for i, leaf in enumerate(jax.tree.leaves(state._asdict())):
        bits = _bits(leaf)
        w = (np.arange(bits.size, dtype=np.uint32) * _WEIGHT + np.uint32(2 * i)) | np.uint32(1)
        total += int(np.sum(bits * w, dtype=np.uint32))
    return total % 2**32


def _checksums_file(manager):
    return os.fspath(manager.directory).rstrip(os.sep) + ".checksums.json"


def _read_checksums(manager) -> dict:
    try:
        with open(_checksums_file(manager)) as f:
            return json.load(f)
    except (OSError, ValueError):  # none yet (or unreadable: the steps restore unchecked)
        return {}


def save_state(manager, state):
    """Saves ``state`` at its step (asynchronously; call ``manager.wait_until_finished``),
    recording its checksum first in ``checkpoints.checksums.json`` beside the folder."""
    step = int(state.step)
    checksum = state_checksum(state)
    if jax.process_index() == 0:
        kept = {str(s) for s in manager.all_steps()} | {str(step)}
        sums = {k: v for k, v in _read_checksums(manager).items() if k in kept}
        sums[str(step)] = checksum
        file = _checksums_file(manager)
        with open(file + ".tmp", "w") as f:
            json.dump(sums, f)
        os.replace(file + ".tmp", file)
    manager.save(step, args=ocp.args.StandardSave(state._asdict()))


def restore_latest(manager, state):
    """Restores the newest readable checkpoint into the structure of ``state``; returns it, or
    ``state`` when there is none.

    A step that fails to restore (a truncated, missing or garbled file) or whose arrays differ
    from the checksum recorded when it was saved (:func:`save_state`) is moved aside to
    ``checkpoints/damaged_<step>.<time in ns>`` with a warning naming it, and the previous step is
    tried: the run then recomputes the steps since (deterministically, so it continues exactly).

    Raises:
      DamagedInput: every step is damaged (names the folder; removing it restarts from step 0).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state._asdict())
    folder = os.fspath(manager.directory)
    damaged = []
    recorded = _read_checksums(manager)
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
            if (
                str(step) in recorded
                and state_checksum(TrainState(**restored)) != recorded[str(step)]
            ):
                raise ValueError(f"its arrays' checksum differs from {_checksums_file(manager)}")
        except Exception as e:  # noqa: BLE001 (Orbax and TensorStore errors are untyped)
            damaged.append(f"step {step}: {reason(e)}")
            aside = os.path.join(folder, f"damaged_{step}.{time.time_ns()}")
            if jax.process_index() == 0:
                os.rename(os.path.join(folder, str(step)), aside)
            if jax.process_count() > 1:  # every host lists the steps after the move
                multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
            message = (
                f"checkpoint step {step} in {folder} is damaged ({reason(e)}); moved it to "
                f"{aside} and falling back to the previous step"
            )
            logging.warning(message)
            continue
        if damaged:
            manager.reload()  # the damaged steps are gone from its list: they are saved anew
        return TrainState(**restored)
    if damaged:
        raise DamagedInput(
            folder,
            "; ".join(damaged),
            f"no step restores: remove {folder} to restart the run from step 0",
        )
    return state


def save_params(path, params):
    """Writes a pure param dict as a flat ``.npz`` (keys joined by '/'), atomically."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(params))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{param_name(p): np.asarray(v) for p, v in leaves})
    os.replace(tmp, path)


def load_params(path, like):
    """Loads a snapshot written by :func:`save_params` into the structure of ``like``.

    Raises:
      FileNotFoundError: no snapshot at ``path``.
      ValueError: the snapshot's names or shapes differ from the model's.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no parameter snapshot at {path!r}.")
    try:
        with np.load(path) as data:  # reading each array to its end checks its CRC-32
            flat = {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 (zipfile, zlib, pickle refusals, short reads)
        raise DamagedInput(path, reason(e), snapshot_repair(os.path.dirname(path))) from e
    return unflatten_params(flat, like, source=repr(path))


def snapshot_repair(workdir) -> str:
    """The command that rewrites ``workdir``'s snapshot (``ema.npz``, ``model.json``): the EDM
    import for an imported teacher (``import.json``), else the stage that trained it."""
    try:
        with open(os.path.join(workdir, "import.json")) as f:
            source = json.load(f)["source"]
        return (
            f"rewrite it with `python scripts/import_edm.py --checkpoint {source} "
            f"--workdir {workdir}`"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return (
            f"rewrite it by rerunning the stage that trained it with --workdir {workdir} (it "
            f"restores the newest checkpoint in {os.path.join(workdir, 'checkpoints')} and "
            "writes ema.npz and model.json again)"
        )


def save_model_config(workdir, model_cfg):
    """Writes the model section beside a snapshot (``workdir/model.json``), so that a stage
    loading the snapshot can check that its config builds the same architecture."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "model.json")
    with open(path + ".tmp", "w") as f:
        json.dump(model_cfg.to_dict(), f, indent=1, default=list)
    os.replace(path + ".tmp", path)


def check_model_config(workdir, model_cfg, *, data_shape, field):
    """Checks that ``model_cfg`` builds the architecture of the snapshot in ``workdir``.

    Args:
      workdir: a stage's workdir (or an imported EDM checkpoint's); nothing is checked when it
        has no ``model.json`` (snapshots written before it existed).
      model_cfg: the config's model section.
      data_shape: one image's shape from the data config.
      field: the config field that named ``workdir`` (``teacher.workdir``, ...).

    Raises:
      ValueError: naming the first model field that differs, or the image size.
    """
    from simple_reflow.train.configure import check_same_architecture

    saved = load_model_config(workdir) if workdir else None
    if saved is None:
        return
    what = f"the snapshot in {field}={workdir!r}"
    check_same_architecture(saved, model_cfg, what=what)
    size = saved.get("resolution") or 0
    if size and tuple(data_shape[:2]) != (size, size):
        raise ValueError(
            f"the data's images are {data_shape[0]}x{data_shape[1]}, but {what} "
            f"is a {size}x{size} network (model.resolution={size})"
        )


def load_model_config(workdir):
    """The model section written by :func:`save_model_config`, or ``None`` if there is none."""
    path = os.path.join(workdir, "model.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            saved = json.loads(f.read().decode("utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a model section")
    except (OSError, ValueError) as e:
        raise DamagedInput(path, reason(e), snapshot_repair(workdir)) from e
    return saved
