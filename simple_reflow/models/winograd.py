"""Winograd F(4×4, 3×3) convolution: the 3×3 "same" convolution with 4× fewer multiplications.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). The output is
cut into 4×4 tiles; each needs the 6×6 input tile ``d`` around it, and

    Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A

with the matrices ``Bᵀ`` (6×6), ``G`` (6×3) and ``Aᵀ`` (4×6) below (interpolation points
0, ±1, ±2, ∞). The channel sum is one batched matmul ``[36, tiles, I] @ [36, I, O]``: 36
products per 16 outputs instead of 9·16, so 4× fewer multiply-adds than the direct
convolution, at the price of the transforms (memory-bound passes) and a larger rounding error.

Speed (XLA:CPU, jaxlib 0.10, the 2-core EPYC, library compiler options, run with
``SIMPLE_REFLOW_MALLOC=keep`` so that an op timed alone does not page-fault its temporaries;
medians): a 256→256 kernel on ``[8, 32, 32, 256]`` takes 11.4 ms forward against 22.8 ms for
XLA's convolution, and 33.0 vs 46.5 ms for both gradients (input gradient by Winograd, weight
gradient XLA's); at ``[4, 32, 32, 256]`` 5.9 vs 10.9 and 19.7 vs 24.9 ms; a 128→128 kernel on
``[8, 32, 32, 128]`` (batch·H·W·I·O = 2²⁷) breaks even (5.7 vs 5.4, 11.9 vs 12.0 ms), and at
batch 1 XLA's is faster (fwd 3.0 vs 4.0 ms). :class:`~simple_reflow.models.layers.Conv2d`'s
``conv_algorithm="auto"`` uses Winograd on the CPU from batch·H·W·I·O ≥ 2²⁸
(:func:`winograd_pays`). In the CIFAR10 DDPM++ training step at batch 8 (in-process A/B,
glibc's default allocator) that took 2.54 to 3.06 img/s.

Accuracy: the products are formed from transformed values up to ~10× and ~20× larger than the
inputs (the rows of ``Bᵀ`` and ``Aᵀ``), so float32 rounding is ~20× that of the direct
convolution (measured: 1.5e-5 vs 6.5e-7 relative to the largest output on random data). The
bound tested in ``tests/test_winograd.py`` is the standard one for sums of products,
``n·u·E`` with ``E`` the same algorithm on absolute values. Float32 only: in bfloat16 the error
was 0.13 of the largest output, against 0.0034 for the direct convolution (``[2, 16, 16, 256]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import compile_options

__all__ = ["BT", "G", "AT", "TILE", "winograd_conv3x3", "winograd_pays"]

TILE = 4  # output tile edge; the input tile is TILE + 2
BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float32,
)
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float32,
)
AT = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    np.float32,
)

_MIN_WORK = 2**28  # batch·H·W·I·O from which Winograd beats XLA:CPU's convolution here
_DN = ("NHWC", "HWIO", "NHWC")


def winograd_pays(x_shape, w_shape, dtype, backend: str) -> bool:
    """Whether ``conv_algorithm="auto"`` computes this 3×3 convolution by Winograd: on the
    CPU, in float32, when batch·H·W·I·O ≥ 2²⁸ (measured, module docstring).
    Accelerators keep their own convolution (cuDNN and the TPU pick their algorithms)."""
    b, h, w, i = x_shape
    return (
        backend == "cpu"
        and tuple(w_shape[:2]) == (3, 3)
        and jnp.dtype(dtype) == jnp.float32
        and b * h * w * i * w_shape[3] >= _MIN_WORK
    )


def _combine(mat, xs):
    """``[Σ_j mat[i, j] xs[j] for i]`` with the constants unrolled (zeros skipped, ±1 as
    additions), so XLA fuses each transform into one elementwise pass."""
    out = []
    for row in mat:
        acc = None
        for c, v in zip(row.tolist(), xs, strict=True):
            if c == 0:
                continue
            term = v if c == 1 else -v if c == -1 else v * np.asarray(c, v.dtype)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _forward(x, w, *, transposed: bool = False):
    """The convolution of ``x`` with ``w``, or with ``w``'s in/out transpose if ``transposed``
    (contracted as such in the matmul: transposing the kernel first costs 10 ms more on a
    256→256 kernel at ``[8, 32, 32, 256]``, against 11.5 ms for the whole convolution)."""
    b, h, wd, ci = x.shape
    a = TILE + 2
    th, tw = -(-h // TILE), -(-wd // TILE)
    # "same" padding of 1, plus what completes the last tile (cropped at the end).
    xp = jnp.pad(x, ((0, 0), (1, th * TILE + 1 - h), (1, tw * TILE + 1 - wd), (0, 0)))
    # Bᵀ d B in two passes, rows then columns, each one elementwise fusion: 1.6 ms against
    # 2.7 ms in one pass on [8, 32, 32, 256] (the one pass reads each input 36 times).
    rows = [xp[:, i : i + TILE * th : TILE] for i in range(a)]  # [B, th, W + 4, I] each
    bd = compile_options.fusion_barrier(jnp.stack(_combine(BT, rows)))  # [6, B, th, W + 4, I]
    v = jnp.stack(_combine(BT, [bd[..., j : j + TILE * tw : TILE, :] for j in range(a)]), axis=1)
    v = v.reshape(a * a, b * th * tw, ci)
    # G g Gᵀ unrolled too (an einsum with G takes 6.1 ms on a 256→256 kernel, this 0.6 ms).
    gw = _combine(G, [w[k] for k in range(3)])  # [6] of [3, I, O]
    u = jnp.stack([ul for gk in gw for ul in _combine(G, [gk[l] for l in range(3)])])
    m = jnp.einsum("tno,tio->tni" if transposed else "tni,tio->tno", v, u)
    m = m.reshape(a, a, b, th, tw, -1)
    cols = [_combine(AT, [m[p, q] for p in range(a)]) for q in range(a)]  # (Aᵀ m)[q][i]
    y = [_combine(AT, [cols[q][i] for q in range(a)]) for i in range(TILE)]  # y[i][j]
    y = jnp.stack([jnp.stack(yi, axis=3) for yi in y], axis=2)  # [B, th, i, tw, j, O]
    return y.reshape(b, th * TILE, tw * TILE, -1)[:, :h, :wd]


@jax.custom_vjp
def winograd_conv3x3(x, w):
    """Stride-1 "same" 3×3 convolution by Winograd F(4×4, 3×3), for float32 NHWC/HWIO.

    Its input gradient is the same algorithm applied to the cotangent with the flipped,
    transposed kernel; its weight gradient is XLA's (a correlation of the input with the
    cotangent, which Winograd does not shorten at 3×3). Only reverse mode is defined.
    Shapes: ``[B, H, W, I], [3, 3, I, O] -> [B, H, W, O]``.
    """
    if w.shape[:2] != (3, 3):
        raise ValueError(f"winograd_conv3x3 needs a 3×3 kernel, got {w.shape[:2]}")
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise ValueError(f"winograd_conv3x3 is float32 only, got {x.dtype} and {w.dtype}")
    return _forward(x, w)


def _fwd(x, w):
    return winograd_conv3x3(x, w), (x, w)


def _bwd(res, g):
    x, w = res
    dx = _forward(g, jnp.flip(w, (0, 1)), transposed=True)
    same = lambda v: jax.lax.conv_general_dilated(x, v, (1, 1), "SAME", dimension_numbers=_DN)
    dw = jax.vjp(same, w)[1](g)[0]
    return dx, dw


winograd_conv3x3.defvjp(_fwd, _bwd)
