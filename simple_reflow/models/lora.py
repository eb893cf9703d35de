"""Low-rank adapters on a split model's weights (LoRA, Hu et al. 2021), for short fine-tunes.

Each selected weight W (``[..., in, out]``: a linear kernel ``[in, out]``, a convolution
``[kh, kw, in, out]``) is read as the matrix ``[m, n]`` = ``[prod(shape[:-1]), shape[-1]]``
and replaced by W + s·A·B with A ``[m, r]``, B ``[r, n]``; only A and B are trained. B starts
at zero, so the adapted model equals the base model at step 0; A starts uniform in
±1/√m (minlora's ``LoRAParametrization``, the library the BOSS authors fine-tune with; their
scale s = α/r with α = 1 is the default here).

Why not ``flax.nnx.LoRA``: it is a layer (``base_module(x) + x·A·B``) that replaces a linear
layer in the module graph, so every model would need rebuilding around it, and it has no
convolution. The update here is the same for a linear layer (x·W + x·A·B = x·(W + A·B)) and
covers convolutions as minlora does (a rank-r update of the reshaped kernel), on the pure param
dict of :func:`simple_reflow.train.step.split_model`, for any model, without touching its graph.

:class:`LoRADef` is a drop-in for :class:`~simple_reflow.train.step.ModelDef` whose params are
the adapters: ``fit(LoRADef(...), adapters, ...)`` trains them alone (the base weights are
closed over by the compiled step, not trained, not in the optimiser state).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from simple_reflow.models.params import param_name

__all__ = ["is_adapted", "init_adapters", "merge_adapters", "LoRADef"]


def is_adapted(name: str, leaf) -> bool:
    """The default selection: every weight of rank ≥ 2 named ``kernel`` (Flax) or ``weight``
    (the library's EDM layers); biases, norms and 1-D buffers are left alone."""
    return leaf.ndim >= 2 and name.rsplit("/", 1)[-1] in ("kernel", "weight")


def _selected(params, select):
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return [i for i, (p, v) in enumerate(leaves) if select(param_name(p), v)]


def init_adapters(params, rank: int, key, *, select=is_adapted):
    """Adapters for the selected weights of ``params``: a list (in flattening order) of
    ``{"a": [m, r], "b": [r, n]}``, A uniform in ±1/√m, B zero.

    Args:
      params: a pure param dict.
      rank: r ≥ 1.
      key: PRNG key for A.
      select: ``select(name, leaf) -> bool`` (default :func:`is_adapted`).
    """
    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"lora rank={rank!r} must be an integer >= 1.")
    leaves = jax.tree.leaves(params)
    chosen = _selected(params, select)
    if not chosen:
        raise ValueError("no weight of the model is selected for low-rank adapters.")
    out = []
    for k, i in zip(jax.random.split(key, len(chosen)), chosen, strict=True):
        w = leaves[i]
        m, n = math.prod(w.shape[:-1]), w.shape[-1]
        bound = 1.0 / math.sqrt(m)
        a = jax.random.uniform(k, (m, rank), w.dtype, -bound, bound)
        out.append({"a": a, "b": jnp.zeros((rank, n), w.dtype)})
    return out


def merge_adapters(params, adapters, scale: float, *, select=is_adapted):
    """``params`` with W + scale·A·B in place of each selected weight (the same selection
    that made ``adapters``); jittable."""
    leaves, treedef = jax.tree.flatten(params)
    chosen = _selected(params, select)
    if len(chosen) != len(adapters):
        raise ValueError(
            f"{len(adapters)} adapters for {len(chosen)} selected weights: they were made for "
            "another model or selection."
        )
    leaves = list(leaves)
    for i, ad in zip(chosen, adapters, strict=True):
        w = leaves[i]
        delta = (ad["a"] @ ad["b"]).reshape(w.shape)
        leaves[i] = w + jnp.asarray(scale, w.dtype) * delta.astype(w.dtype)
    return jax.tree.unflatten(treedef, leaves)


class LoRADef(NamedTuple):
    """A :class:`~simple_reflow.train.step.ModelDef` stand-in whose params are adapters.

    Attributes:
      model_def: the base model's definition.
      base: the base model's pure params (frozen).
      scale: s in W + s·A·B (minlora: α/r with α = 1).
      select: the weight selection of :func:`init_adapters`.
    """

    model_def: Any
    base: Any
    scale: float
    select: Any = is_adapted

    def merge(self, adapters):
        """The base module with the adapted weights in place."""
        return self.model_def.merge(self.merged_params(adapters))

    def merged_params(self, adapters):
        """The full pure params W + s·A·B (a snapshot any loader of the base model reads)."""
        return merge_adapters(self.base, adapters, self.scale, select=self.select)

    def denoiser(self, adapters):
        """``denoise_fn(x_t, t, cond)`` of the adapted model (eval mode)."""
        return self.model_def.denoiser(self.merged_params(adapters))
