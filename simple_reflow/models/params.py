"""Flat names for parameter trees: the keys of snapshots (``ema.npz``) and of imports."""

from __future__ import annotations

import jax

__all__ = ["param_name", "flat_params", "unflatten_params"]


def param_name(path) -> str:
    """The '/'-joined name of a parameter's pytree path, e.g. ``backbone/enc/32x32_conv/weight``."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flat_params(tree) -> dict:
    """``{name: leaf}`` of a parameter tree, in its flattening order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {param_name(p): v for p, v in leaves}


def unflatten_params(flat, like, *, source="snapshot"):
    """Arranges a flat ``{name: array}`` in the structure of ``like``.

    Raises:
      ValueError: a parameter of ``like`` is missing from ``flat`` or has another shape
        (the message names it and ``source``).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    out = []
    for p, v in leaves:
        name = param_name(p)
        if name not in flat:
            raise ValueError(f"{source} has no parameter {name!r}: it belongs to another model.")
        if tuple(flat[name].shape) != tuple(v.shape):
            raise ValueError(
                f"{source}: parameter {name!r} has shape {flat[name].shape}, "
                f"the model expects {v.shape}."
            )
        out.append(flat[name])
    return jax.tree_util.tree_unflatten(treedef, out)
