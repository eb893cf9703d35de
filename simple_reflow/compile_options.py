"""XLA compiler options of the library's compiled programs: convolutions on XLA:CPU.

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

:func:`jit` is ``jax.jit`` with these options; :func:`cpu_conv_options` says whether they apply.
``SIMPLE_REFLOW_CPU_CONV=xla`` in the environment turns them off (XLA's default routing), e.g.
to compare both on another CPU: ``SIMPLE_REFLOW_CPU_CONV=xla python benchmarks/speed_report.py``.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

__all__ = ["CPU_CONV_OPTIONS", "cpu_conv_options", "jit"]

# YNNPACK for dots and reductions, not for convolutions (Eigen's then).
CPU_CONV_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


@functools.cache
def _supported() -> bool:
    """Whether this jax/jaxlib compiles a CPU program with :data:`CPU_CONV_OPTIONS`."""
    try:
        fn = jax.jit(lambda x: x + 1, compiler_options=CPU_CONV_OPTIONS)
        fn.lower(np.float32(0)).compile()
    except Exception:  # noqa: BLE001 (no such argument, or an option this XLA does not know)
        return False
    return True


def cpu_conv_options() -> dict:
    """The compiler options for convolutional programs on the default backend: the CPU ones
    when the default backend is the CPU and this jaxlib knows them, else none."""
    choice = os.environ.get("SIMPLE_REFLOW_CPU_CONV", "eigen")
    if choice not in ("eigen", "xla"):
        raise ValueError(f"SIMPLE_REFLOW_CPU_CONV={choice!r} must be 'eigen' or 'xla'.")
    if choice == "xla" or jax.default_backend() != "cpu" or not _supported():
        return {}
    return dict(CPU_CONV_OPTIONS)


def jit(fn, **kwargs):
    """``jax.jit(fn, **kwargs)`` with :func:`cpu_conv_options` (none off the CPU)."""
    options = cpu_conv_options()
    if options:
        kwargs["compiler_options"] = {**options, **kwargs.get("compiler_options", {})}
    return jax.jit(fn, **kwargs)
