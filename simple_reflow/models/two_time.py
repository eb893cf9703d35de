"""Two-time (average-velocity) networks initialised from one-time teachers (METHOD.md §9).

A backbone built with ``two_time=True`` (:class:`~simple_reflow.models.mlp.MLPDenoiser`,
:class:`~simple_reflow.models.song_unet.SongUNet`,
:class:`~simple_reflow.models.dhariwal_unet.DhariwalUNet`, behind
:class:`~simple_reflow.models.precond.EDMDenoiser`) is called as

    model(x_t, t, cond=None, *, r=None, key=None) -> D_u(x_t, r, t),

the denoiser of the average velocity u(x_t, r, t) = (x_t − D_u)/t over [r, t] [recon], so
one step r ← t is z_r = (r/t)·z_t + (1 − r/t)·D_u and ``r=None`` (r = t) is the ordinary
denoiser. The second time enters as the interval t − r (MeanFlow's choice, Geng et al. 2025
§4.3 "conditioning on (r, t)", and both of the authors' codes: Gsunshine/meanflow embeds
(t, t − r) with a second timestep embedder, Gsunshine/py-meanflow's U-Net concatenates the two
embeddings before ``map_layer0``): at r = t the interval is 0 whatever t is, one fixed input
for the boundary condition u(z, t, t) = v(z, t). It goes through the backbone's own time
embedding and one new linear map, ``map_interval``, whose weights start at zero, added to the
first layer's pre-activation: the network is then exactly its one-time self for every r, so a
student initialised by :func:`init_from_one_time` gives u(z, r, t) = v_teacher(z, t) at step 0.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

__all__ = ["INTERVAL_MODULE", "init_from_one_time", "is_two_time"]

INTERVAL_MODULE = "map_interval"
"""The attribute name of the added, zero-initialised second-time embedding in every backbone."""


def _flat(module):
    return {path: var for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def is_two_time(model: nnx.Module) -> bool:
    """Whether ``model`` (or its backbone) takes the second time ``r``."""
    return any(INTERVAL_MODULE in path for path in _flat(model))


def init_from_one_time(student: nnx.Module, teacher: nnx.Module) -> nnx.Module:
    """Copies a one-time network's parameters into a two-time network, in place.

    The student must be the teacher's architecture built with ``two_time=True``; every
    teacher parameter (buffers included: NCSN++'s Fourier frequencies) is copied and the added
    ``map_interval`` weights are set to zero, so that afterwards
    ``student(x, t, cond, r=r) == teacher(x, t, cond)`` for every r.

    Args:
      student: the two-time network.
      teacher: the one-time network (a trained flow model, an imported EDM network).

    Returns:
      ``student``.

    Raises:
      ValueError: the architectures differ (a parameter missing or of another shape), or the
        student is not two-time.
    """
    s_flat, t_flat = _flat(student), _flat(teacher)
    extra = [p for p in s_flat if p not in t_flat]
    if not extra or not all(INTERVAL_MODULE in p for p in extra):
        raise ValueError(
            "student must be the teacher's network built with two_time=True; parameters "
            f"the teacher lacks: {sorted('.'.join(map(str, p)) for p in extra)[:4]}"
        )
    for path, var in t_flat.items():
        shape = var.get_value().shape
        got = s_flat[path].get_value().shape if path in s_flat else None
        if got != shape:
            raise ValueError(
                f"teacher parameter {'.'.join(map(str, path))} of shape {shape} has "
                f"no counterpart in the student (got {got}); build the student with the "
                "teacher's options and two_time=True."
            )
    nnx.update(student, nnx.state(teacher, nnx.Param))
    zeros = {p: jnp.zeros(s_flat[p].get_value().shape, s_flat[p].get_value().dtype) for p in extra}
    state = nnx.state(student, nnx.Param)
    flat = [(p, v.replace(zeros[p]) if p in zeros else v) for p, v in nnx.to_flat_state(state)]
    nnx.update(student, nnx.from_flat_state(flat))
    return student
