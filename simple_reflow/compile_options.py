"""XLA compiler options of the library's compiled programs on XLA:CPU: which library runs the
convolutions, fusion barriers, and the scheduler.

XLA:CPU (jaxlib 0.10) hands 2-D float32 NHWC convolutions to YNNPACK by default
(``xla_cpu_experimental_ynn_fusion_type`` = individual dot, individual convolution, reduce).
Eigen's convolution, its fallback, is faster on the CIFAR10 DDPM++ here: measured with
``benchmarks/unet_speed.py`` on a 2-core AMD EPYC (same session, one process per setting), the
training step at batch 8 ran 1.86 img/s with YNNPACK's convolutions and 2.19 img/s with Eigen's
(XLA's own weight gradient), the forward denoiser at batch 64 6.24 vs 7.62–8.03 img/s. So the
library's convolutional programs (train step, samplers, pair generators, FID features) compile
on the CPU with YNNPACK kept for dots and reductions only, as a per-program compiler option (not
``XLA_FLAGS``: a user's own programs are unaffected, and a jaxlib without the option compiles
as before instead of aborting on an unknown flag).

The same programs keep their optimisation barriers through fusion. XLA:CPU normally deletes
them before fusing (its ``cse_barrier_expander`` pass), and then fuses long elementwise chains
into *every* consumer: in the DDPM++ backward pass the gradient flowing along the residual
stream, a sum over several blocks' group-norm derivatives, was recomputed from up to 116
inputs inside each of its consumers, some of them transposing copies for weight gradients
(87 ms for one of them), and each dropout mask was re-hashed wherever it was used. With the
barriers kept, :func:`fusion_barrier` marks the tensors that are written to memory once (a
block's output, a convolution's input and output, a dropout mask, and their cotangents): wide
fusions (20 or more inputs) in that program went from 65 to 7. The concurrency-optimised
scheduler is the third option. Measured on the CIFAR10 DDPM++ training step at batch 8,
alternating in one process (medians of 12 steps): 3.41 s before, 3.07 s with both.

:func:`jit` is ``jax.jit`` with these options; :func:`cpu_conv_options` says whether they apply.
``SIMPLE_REFLOW_CPU_CONV=xla`` in the environment turns them off (XLA's default routing), e.g.
to compare both on another CPU: ``SIMPLE_REFLOW_CPU_CONV=xla python benchmarks/speed_report.py``.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

__all__ = ["CPU_CONV_OPTIONS", "cpu_conv_options", "fusion_barrier", "jit"]

CPU_CONV_OPTIONS = {
    # YNNPACK for dots and reductions, not for convolutions (Eigen's then).
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    ),
    # Optimisation barriers survive until fusion (fusion_barrier).
    "xla_disable_hlo_passes": "cse_barrier_expander",
    # The same temporary memory here; 1-3 % off the DDPM++ training step in three A/Bs.
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
}


@functools.cache
def _supported() -> dict:
    """The options of :data:`CPU_CONV_OPTIONS` that this jax/jaxlib compiles a CPU program with
    (an older or newer XLA may lack one, or one of its values)."""
    kept = {}
    for name, value in CPU_CONV_OPTIONS.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(0)).compile()
        except Exception:  # noqa: BLE001 (no such argument, option or value in this XLA)
            continue
        kept[name] = value
    return kept


def cpu_conv_options() -> dict:
    """The compiler options for convolutional programs on the default backend: those of
    :data:`CPU_CONV_OPTIONS` this jaxlib knows when the default backend is the CPU, else none."""
    choice = os.environ.get("SIMPLE_REFLOW_CPU_CONV", "eigen")
    if choice not in ("eigen", "xla"):
        raise ValueError(f"SIMPLE_REFLOW_CPU_CONV={choice!r} must be 'eigen' or 'xla'.")
    if choice == "xla" or jax.default_backend() != "cpu":
        return {}
    return dict(_supported())


def fusion_barrier(x):
    """``x`` unchanged; in the library's CPU programs it and its cotangent are computed once and
    written to memory, not fused into (and recomputed by) each of their consumers.

    ``jax.lax.optimization_barrier``, whose transpose is a barrier too, applied only where
    :func:`cpu_conv_options` apply (elsewhere ``x`` itself: the effect was measured on XLA:CPU
    only, and XLA:CPU without the options deletes barriers before fusion anyway). Works on
    any dtype and pytree."""
    if "xla_disable_hlo_passes" not in cpu_conv_options():
        return x
    return jax.lax.optimization_barrier(x)


def jit(fn, **kwargs):
    """``jax.jit(fn, **kwargs)`` with :func:`cpu_conv_options` (none off the CPU)."""
    options = cpu_conv_options()
    if options:
        kwargs["compiler_options"] = {**options, **kwargs.get("compiler_options", {})}
    return jax.jit(fn, **kwargs)
