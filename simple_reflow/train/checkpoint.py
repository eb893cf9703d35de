"""Checkpoints (Orbax) and the EMA snapshot used for sampling.

The resumable checkpoint holds the whole :class:`TrainState` under ``workdir/checkpoints``;
the EMA snapshot ``workdir/ema.npz`` is a small flat file of the EMA parameters that teachers,
students and evaluation load (the EDM habit: keep the sampling weights apart from the state).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from simple_reflow.train.step import TrainState

__all__ = ["make_manager", "restore_latest", "save_state", "save_params", "load_params"]


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
    np.savez(tmp, **{_name(p): np.asarray(v) for p, v in leaves})
    os.replace(tmp, path)


def load_params(path, like):
    """Loads a snapshot written by :func:`save_params` into the structure of ``like``.

    Raises:
      FileNotFoundError: no snapshot at ``path``.
      ValueError: the snapshot's names or shapes differ from the model's.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no parameter snapshot at {path!r}.")
    data = np.load(path)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    out = []
    for p, v in leaves:
        name = _name(p)
        if name not in data:
            raise ValueError(f"{path!r} has no parameter {name!r}: it belongs to another model.")
        if data[name].shape != v.shape:
            raise ValueError(f"{path!r}: parameter {name!r} has shape {data[name].shape}, "
                             f"the model expects {v.shape}.")
        out.append(data[name])
    return jax.tree_util.tree_unflatten(treedef, out)


def _name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
