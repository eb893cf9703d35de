"""Checkpoints (Orbax) and the EMA snapshot used for sampling.

The resumable checkpoint holds the whole :class:`TrainState` under ``workdir/checkpoints``;
the EMA snapshot ``workdir/ema.npz`` is a small flat file of the EMA parameters that teachers,
students and evaluation load (the EDM habit: keep the sampling weights apart from the state).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

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
]


def make_manager(workdir, keep=2):
    """An Orbax manager for ``workdir/checkpoints`` keeping the ``keep`` newest steps."""
    path = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(path, options=options)


def save_state(manager, state):
    """Saves ``state`` at its step (asynchronously; call ``manager.wait_until_finished``)."""
    manager.save(int(state.step), args=ocp.args.StandardSave(state._asdict()))


def restore_latest(manager, state):
    """Restores the newest checkpoint into the structure of ``state``; returns it or ``state``."""
    step = manager.latest_step()
    if step is None:
        return state
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state._asdict())
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return TrainState(**restored)


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
    with np.load(path) as data:
        return unflatten_params({k: data[k] for k in data.files}, like, source=repr(path))


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
    with open(path) as f:
        return json.load(f)
