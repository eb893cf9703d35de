"""Layers shared by the DDPM++ and ADM backbones (NHWC), after EDM's ``training/networks.py``.

Our Flax NNX re-implementation of the building blocks of EDM's SongUNet and DhariwalUNet
(Karras et al. 2022): EDM's weight initialisers, a linear and a 3×3/1×1 convolution with
optional 2× resampling, group normalisation with EDM's group rule, the sinusoidal noise
embedding, and the unified residual U-Net block with optional self-attention.

Resampling follows EDM: a depthwise strided convolution with the normalised outer product of a
1-D filter (``[1, 1]`` for DDPM++ and ADM, ``[1, 3, 3, 1]`` for NCSN++) for downsampling, and
its transposed convolution (filter × 4) for upsampling. With the box filter ``[1, 1]`` these
are exactly 2×2 average pooling and nearest-neighbour upsampling, which we compute directly
(cheaper on a CPU). Channel layouts (affine scale/shift order, the interleaved q/k/v split of
the attention projection, sin/cos order) follow EDM's so that checkpoints map one to one
(:mod:`simple_reflow.models.edm_import`).

Three pieces are written for speed, with the same results: group normalisation has a
hand-written derivative in per-channel form (:func:`group_norm`), the block's dropout draws
``nnx.Dropout``'s exact mask with an unrolled Threefry (:mod:`simple_reflow.models.dropout`),
and a block's output and a convolution's input and output are fusion barriers
(:func:`simple_reflow.compile_options.fusion_barrier`: XLA:CPU computes them and their
gradients once instead of in every consumer). Measured on the CIFAR10 DDPM++ training step on
the 2-core CPU in alternating runs in one process (``benchmarks/unet_speed.py`` for the
side-by-side figures): the barriers (with the dropout masks' and
:mod:`simple_reflow.compile_options`' scheduler) took it from 3.41 to 3.07 s.

Mixed precision: every layer computes in the dtype of its input (weights are cast to it, as
EDM's layers do); group normalisation computes its statistics and attention its softmax in
float32. Parameters stay float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simple_reflow import compile_options
from simple_reflow.models import winograd
from simple_reflow.models.dropout import Dropout

_DN = ("NHWC", "HWIO", "NHWC")

__all__ = [
    "CONV_ALGORITHMS",
    "Buffer",
    "edm_init",
    "Linear",
    "Conv2d",
    "GroupNorm",
    "group_norm",
    "positional_embedding",
    "second_time_input",
    "FourierEmbedding",
    "class_labels",
    "conv3x3",
    "downsample_2x",
    "upsample_2x",
    "UNetBlock",
]


def _per_channel(v, x):
    """A per-channel vector ``[C]`` as ``[1, …, 1, C]`` in ``x``'s rank and dtype, so it
    broadcasts over ``x [..., C]`` without implicit rank promotion."""
    return v.astype(x.dtype).reshape((1,) * (x.ndim - 1) + v.shape)


def edm_init(mode: str, fan_in: int, fan_out: int, gain: float = 1.0):
    """EDM's ``weight_init`` as a JAX initializer with fans fixed by the layer, scaled by ``gain``.

    Modes: ``xavier_uniform`` (√(6/(fan_in+fan_out))·U(−1, 1)), ``xavier_normal``,
    ``kaiming_uniform`` (√(3/fan_in)·U(−1, 1)) and ``kaiming_normal`` (√(1/fan_in)·N(0, 1)).
    The fans come from the layer, not from the shape, so the same rule serves the bias.
    """
    if mode == "xavier_uniform":
        scale, uniform = math.sqrt(6.0 / (fan_in + fan_out)), True
    elif mode == "xavier_normal":
        scale, uniform = math.sqrt(2.0 / (fan_in + fan_out)), False
    elif mode == "kaiming_uniform":
        scale, uniform = math.sqrt(3.0 / fan_in), True
    elif mode == "kaiming_normal":
        scale, uniform = math.sqrt(1.0 / fan_in), False
    else:
        raise ValueError(
            f"init mode must be one of xavier_uniform, xavier_normal, "
            f"kaiming_uniform, kaiming_normal; got {mode!r}"
        )

    def init(key, shape, dtype=jnp.float32):
        if gain == 0.0:
            return jnp.zeros(shape, dtype)
        if uniform:
            z = jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0)
        else:
            z = jax.random.normal(key, shape, dtype)
        return (scale * gain) * z

    return init


class Linear(nnx.Module):
    """Fully connected layer ``y = x W + b`` with EDM's initialisation.

    Args: ``in_features``, ``out_features``, ``bias``; ``init`` = dict(mode, weight, bias gains).
    Shapes: ``[..., in_features] -> [..., out_features]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.weight = nnx.Param(
            edm_init(mode, in_features, out_features, init_weight)(
                rngs.params(), (in_features, out_features)
            )
        )
        self.bias = (
            nnx.Param(
                edm_init(mode, in_features, out_features, init_bias)(rngs.params(), (out_features,))
            )
            if bias
            else None
        )

    def __call__(self, x):
        y = x @ self.weight[...].astype(x.dtype)
        return y + _per_channel(self.bias[...], y) if self.bias is not None else y


class Buffer(nnx.Param):
    """A fixed array stored with the parameters (EDM's registered buffers).

    It travels with the parameters (snapshots, checkpoints, EMA) so imported values survive,
    but layers read it through ``jax.lax.stop_gradient``: its gradient is zero, so training
    never changes it. Parameter counts exclude it, as ``torch.nn.Module.parameters()`` does.
    """


def _resample_kernel(resample_filter, channels, dtype):
    """EDM's 2-D resampling kernel ``f fᵀ / (Σf)²`` as a depthwise HWIO kernel ``[k, k, 1, C]``."""
    f = np.asarray(resample_filter, np.float32)
    f2 = np.outer(f, f) / np.square(f.sum())
    return jnp.asarray(np.tile(f2[:, :, None, None], (1, 1, 1, channels)), dtype)


def downsample_2x(x, resample_filter=(1, 1)):
    """EDM's ``down``: depthwise stride-2 convolution with the resampling filter, padding
    ``(len(f) − 1) // 2``; for ``[1, 1]`` exactly 2×2 average pooling.
    ``[B, H, W, C] -> [B, H/2, W/2, C]``."""
    b, h, w, c = x.shape
    if tuple(resample_filter) == (1, 1):
        return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    pad = (len(resample_filter) - 1) // 2
    return jax.lax.conv_general_dilated(
        x,
        _resample_kernel(resample_filter, c, x.dtype),
        (2, 2),
        [(pad, pad), (pad, pad)],
        dimension_numbers=_DN,
        feature_group_count=c,
    )


def upsample_2x(x, resample_filter=(1, 1)):
    """EDM's ``up``: depthwise stride-2 transposed convolution with 4× the resampling filter,
    padding ``(len(f) − 1) // 2``; for ``[1, 1]`` exactly nearest-neighbour upsampling.
    ``[B, H, W, C] -> [B, 2H, 2W, C]``."""
    b, h, w, c = x.shape
    if tuple(resample_filter) == (1, 1):
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
        return x.reshape(b, 2 * h, 2 * w, c)
    k = len(resample_filter)
    pad = k - 1 - (k - 1) // 2  # a transposed convolution as a convolution of the dilated input
    kernel = 4.0 * _resample_kernel(resample_filter, c, x.dtype)[::-1, ::-1]
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        [(pad, pad), (pad, pad)],
        lhs_dilation=(2, 2),
        dimension_numbers=_DN,
        feature_group_count=c,
    )


CONV_ALGORITHMS = ("auto", "xla", "chunked", "winograd")
_WGRAD_CONTRACTION = 1024  # batch·H·W per weight-gradient convolution on the CPU
_WGRAD_MAX_CHUNKS = 16  # at most this many (unrolled) chunks per layer
_AUTO_MIN_CHANNELS_SQ = 128 * 128  # "auto" chunks only wide layers (16–32 ch: XLA's is faster)


def _conv_same(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)


@jax.custom_vjp
def conv3x3(x, w):
    """Stride-1 "same" convolution whose weight gradient is computed in batch chunks.

    The forward pass and the input gradient are XLA's own convolutions. XLA's CPU weight
    gradient slows down sharply when the contraction (batch·H·W) is long — 56 GFLOP/s at
    batch 8 on 32×32×256 against 246 GFLOP/s for the forward pass on our 2-core Xeon — and
    recovers at ~1k rows (167–182 GFLOP/s per sample), so the backward pass sums weight
    gradients over (at most 16, unrolled) batch chunks of about ``_WGRAD_CONTRACTION`` rows.
    Same math; only reverse mode (``jax.grad``/``vjp``) is defined.
    Shapes: ``[B, H, W, I], [k, k, I, O] -> [B, H, W, O]``.
    """
    return _conv_same(x, w)


def _conv3x3_fwd(x, w):
    return _conv_same(x, w), (x, w)


def _conv3x3_bwd(res, g):
    x, w = res
    # Input gradient: the correlation with the flipped, transposed kernel (a forward conv).
    dx = _conv_same(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
    b, h, wd = x.shape[:3]
    chunk = min(b, max(1, _WGRAD_CONTRACTION // (h * wd), -(-b // _WGRAD_MAX_CHUNKS)))

    def wgrad(xc, gc):
        return jax.vjp(lambda v: _conv_same(xc, v), w)[1](gc)[0]

    # Unrolled on purpose: inside a lax.scan XLA's CPU convolution is ~90x slower.
    dw = wgrad(x[:chunk], g[:chunk])
    for start in range(chunk, b, chunk):
        dw = dw + wgrad(x[start : start + chunk], g[start : start + chunk])
    return dx, dw


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


class Conv2d(nnx.Module):
    """Square convolution, stride 1, "same" padding, with optional 2× up/downsampling first.

    ``kernel = 0`` gives a parameter-free resampling layer (EDM's ``kernel=0``). The kernel is
    stored HWIO. ``resample_filter`` is EDM's 1-D resampling filter; ``fused_resample`` (down
    only, as NCSN++'s residual encoder uses it) convolves first with padding
    ``kernel // 2 + (len(f) − 1) // 2`` and then resamples without padding, as EDM's fused path
    does. ``conv_algorithm`` picks how k×k kernels are computed: ``"xla"`` (XLA's own
    convolution and gradients), ``"chunked"`` (XLA's forward pass and input gradient, the weight
    gradient summed over batch chunks, :func:`conv3x3`), ``"winograd"`` (float32: Winograd
    F(4×4, 3×3) for the forward pass and the input gradient of 3×3 kernels,
    :func:`~simple_reflow.models.winograd.winograd_conv3x3`; other kernels XLA's), or
    ``"auto"``: on the CPU Winograd where it is faster
    (:func:`~simple_reflow.models.winograd.winograd_pays`), else chunked iff in·out channels
    ≥ 128² and the CPU convolutions are YNNPACK's (with the library's compiler options,
    :mod:`simple_reflow.compile_options`, they are Eigen's, whose own weight gradient is
    faster: 2.19 vs 1.94 img/s for the CIFAR10 DDPM++ training step), else XLA's; on
    accelerators always XLA's. All compute the same convolution; Winograd's
    float32 rounding is ~20× larger (:mod:`simple_reflow.models.winograd`).
    Shapes: ``[B, H, W, in_channels] -> [B, H', W', out_channels]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter=(1, 1),
        fused_resample: bool = False,
        mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
        conv_algorithm: str = "auto",
        rngs: nnx.Rngs,
    ):
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        if conv_algorithm not in CONV_ALGORITHMS:
            raise ValueError(
                f"conv_algorithm must be one of {CONV_ALGORITHMS}, got {conv_algorithm!r}"
            )
        if fused_resample and (up or not kernel):
            raise ValueError("fused_resample is defined for a downsampling k×k convolution only")
        self.up, self.down, self.kernel = up, down, kernel
        self.resample_filter = tuple(int(v) for v in resample_filter)
        self.fused_resample = fused_resample and down
        self.conv_algorithm = conv_algorithm
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        self.weight = (
            nnx.Param(
                edm_init(mode, fan_in, fan_out, init_weight)(
                    rngs.params(), (kernel, kernel, in_channels, out_channels)
                )
            )
            if kernel
            else None
        )
        self.bias = (
            nnx.Param(edm_init(mode, fan_in, fan_out, init_bias)(rngs.params(), (out_channels,)))
            if kernel and bias
            else None
        )

    def _conv(self, x, w):
        if self.kernel == 1:
            return x @ w[0, 0]
        barrier = compile_options.fusion_barrier
        return barrier(self._conv_kxk(barrier(x), w))

    def _conv_kxk(self, x, w):
        algorithm = self.conv_algorithm
        if algorithm == "auto":
            backend = jax.default_backend()
            if winograd.winograd_pays(x.shape, w.shape, x.dtype, backend):
                algorithm = "winograd"
            elif (
                backend == "cpu"
                # With the library's options they are Eigen's, whose own weight gradient is faster.
                and "xla_cpu_experimental_ynn_fusion_type" not in compile_options.cpu_conv_options()
                and w.shape[2] * w.shape[3] >= _AUTO_MIN_CHANNELS_SQ
            ):
                algorithm = "chunked"
        if algorithm == "winograd" and w.shape[:2] == (3, 3):
            return winograd.winograd_conv3x3(x, w)
        if algorithm == "chunked":
            return conv3x3(x, w)
        return _conv_same(x, w)

    def __call__(self, x):
        w = self.weight[...].astype(x.dtype) if self.weight is not None else None
        if self.fused_resample:
            pad = self.kernel // 2 + (len(self.resample_filter) - 1) // 2
            x = jax.lax.conv_general_dilated(
                x, w, (1, 1), [(pad, pad), (pad, pad)], dimension_numbers=_DN
            )
            c = x.shape[-1]
            x = jax.lax.conv_general_dilated(
                x,
                _resample_kernel(self.resample_filter, c, x.dtype),
                (2, 2),
                "VALID",
                dimension_numbers=_DN,
                feature_group_count=c,
            )
        else:
            if self.up:
                x = upsample_2x(x, self.resample_filter)
            if self.down:
                x = downsample_2x(x, self.resample_filter)
            if w is not None:
                x = self._conv(x, w)
        if self.bias is not None:
            x = x + _per_channel(self.bias[...], x)
        return x


def _group_mean(v, groups: int):
    """Per-(sample, channel) values ``[B, C]`` -> their group means, repeated per channel."""
    b, c = v.shape
    m = v.reshape(b, groups, c // groups).mean(axis=-1, keepdims=True)
    return jnp.broadcast_to(m, (b, groups, c // groups)).reshape(b, c)


def _per_sample_channel(v):
    return v[:, None, None, :]  # [B, C] -> [B, 1, 1, C]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x, weight, bias, groups: int, eps: float):
    """Group normalisation of ``x [B, H, W, C]`` in float32, returned in ``x``'s dtype.

    ``μ, σ²`` are the mean and (biased) variance over each sample's group of ``C / groups``
    channels and all positions (two passes: the variance is the mean of ``(x − μ)²``), and
    ``y = (x − μ) · (γ / √(σ² + ε)) + β``. Statistics are formed per channel and averaged within
    each group, so that every full-size operation broadcasts a ``[B, 1, 1, C]`` vector along the
    channel axis, which XLA vectorises well.

    The reverse-mode derivative is written out (Ioffe & Szegedy 2015, eq. for the batch-norm
    gradient, applied per group): with ``x̂ = (x − μ) r``, ``r = 1/√(σ² + ε)``, ``N`` elements per
    group and ``g`` the output cotangent,
    ``∂β = Σ g``, ``∂γ = Σ g x̂``, ``∂x = r (γ g − mean_group(γ g) − x̂ · mean_group(γ g x̂))``,
    computed from two per-channel sums over positions (``Σ g`` and ``Σ g (x − μ)``) and one
    elementwise pass. Tested against autodiff of the direct formula. Only reverse mode is defined.
    """
    return _group_norm_fwd(x, weight, bias, groups, eps)[0]


def _group_norm_fwd(x, weight, bias, groups, eps):
    x32 = x.astype(jnp.float32)
    mean = _group_mean(x32.mean(axis=(1, 2)), groups)  # [B, C]
    centred = x32 - _per_sample_channel(mean)
    rstd = jax.lax.rsqrt(_group_mean(jnp.square(centred).mean(axis=(1, 2)), groups) + eps)
    y = centred * _per_sample_channel(rstd * weight[None, :]) + _per_channel(bias, centred)
    return y.astype(x.dtype), (x, mean, rstd, weight)


def _group_norm_bwd(groups, eps, res, g):
    del eps
    x, mean, rstd, weight = res
    positions = x.shape[1] * x.shape[2]
    g32 = g.astype(jnp.float32)
    centred = x.astype(jnp.float32) - _per_sample_channel(mean)
    sum_g = g32.sum(axis=(1, 2))  # [B, C]
    sum_gc = (g32 * centred).sum(axis=(1, 2))  # [B, C]
    w = weight[None, :]
    mean_dxhat = _group_mean(w * sum_g, groups) / positions
    mean_dxhat_xhat = _group_mean(w * sum_gc * rstd, groups) / positions
    dx = (
        g32 * _per_sample_channel(w * rstd)
        - centred * _per_sample_channel(rstd * rstd * mean_dxhat_xhat)
        - _per_sample_channel(rstd * mean_dxhat)
    )
    return dx.astype(x.dtype), (sum_gc * rstd).sum(axis=0), sum_g.sum(axis=0)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nnx.Module):
    """Group normalisation with EDM's rule ``groups = min(32, C // 4)`` (:func:`group_norm`).
    ``[B,H,W,C] -> same``."""

    def __init__(
        self,
        num_channels: int,
        *,
        num_groups: int = 32,
        min_channels_per_group: int = 4,
        eps: float = 1e-5,
    ):
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((num_channels,)))
        self.bias = nnx.Param(jnp.zeros((num_channels,)))

    def __call__(self, x):
        return group_norm(x, self.weight[...], self.bias[...], self.num_groups, self.eps)


def class_labels(cond, num_classes: int, batch: int, *, label_dropout: float = 0.0, key=None):
    """EDM's class-label input: one-hot labels, the null class as all zeros, with label dropout.

    Args:
      cond: ``[B]`` integer labels in ``[0, num_classes]`` (``num_classes`` is the null class,
        whose one-hot vector is zero), or ``[B, num_classes]`` float label vectors, or ``None``
        (every sample gets the null class, as EDM does when no labels are passed).
      num_classes: number of classes (> 0).
      batch: batch size B.
      label_dropout: probability of replacing a sample's labels by the null class; applied only
        when ``key`` is given (training).
      key: PRNG key for label dropout, or ``None``.

    Returns:
      ``[B, num_classes]`` float32.
    """
    if cond is None:
        labels = jnp.zeros((batch, num_classes), jnp.float32)
    elif jnp.ndim(cond) == 1:
        labels = jax.nn.one_hot(cond, num_classes, dtype=jnp.float32)  # out of range -> 0
    else:
        labels = jnp.asarray(cond, jnp.float32).reshape(batch, num_classes)
    if key is not None and label_dropout > 0:
        keep = jax.random.uniform(key, (batch, 1)) >= label_dropout
        labels = labels * keep.astype(labels.dtype)
    return labels


def second_time_input(two_time: bool, interval, batch: int, dtype=jnp.float32):
    """The second time a backbone embeds: the interval t − r of a two-time network (METHOD.md §9).

    Args:
      two_time: whether the backbone was built with ``two_time=True``.
      interval: ``[B]`` t − r, or ``None`` (r = t: the instantaneous velocity).
      batch: B.
      dtype: of the zeros for ``None`` and of a non-floating ``interval``.

    Returns:
      ``[B]`` (zeros for ``None``) for a two-time backbone, ``None`` for a one-time one.

    Raises:
      ValueError: a second time given to a one-time backbone.
    """
    if not two_time:
        if interval is not None:
            raise ValueError(
                "r was given, but this network takes one time; build it with two_time=True "
                "(and initialise it from the one-time weights, models.two_time) for MeanFlow or "
                "SplitMeanFlow."
            )
        return None
    if interval is None:
        return jnp.zeros((batch,), dtype)
    interval = jnp.asarray(interval)
    if not jnp.issubdtype(interval.dtype, jnp.floating):
        interval = interval.astype(dtype)
    return jnp.broadcast_to(interval, (batch,))


def positional_embedding(
    x, num_channels: int, *, max_positions: int = 10000, endpoint: bool = False
):
    """Sinusoidal embedding ``[cos(x f), sin(x f)]`` of EDM's ``PositionalEmbedding``.

    ``f_i = (1/max_positions)^(i / (C/2 − endpoint))``. Shapes: ``[B] -> [B, num_channels]``.
    """
    half = num_channels // 2
    freqs = jnp.arange(half, dtype=jnp.float32) / (half - (1 if endpoint else 0))
    freqs = (1.0 / max_positions) ** freqs
    x = x.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


class FourierEmbedding(nnx.Module):
    """NCSN++'s random Fourier noise embedding ``[cos(2π f x), sin(2π f x)]`` (EDM's).

    ``f ~ N(0, scale²)`` of shape ``[num_channels // 2]`` is a :class:`Buffer` (fixed, stored with
    the parameters so that imported checkpoints keep theirs). As in EDM, ``2π f`` is rounded to
    float32 before the outer product. Shapes: ``[B] -> [B, num_channels]``.
    """

    def __init__(self, num_channels: int, *, scale: float = 16.0, rngs: nnx.Rngs):
        self.freqs = Buffer(scale * jax.random.normal(rngs.params(), (num_channels // 2,)))

    def __call__(self, x):
        freqs = jax.lax.stop_gradient(self.freqs[...]).astype(jnp.float32)
        x = x.astype(jnp.float32)[:, None] * (2 * np.pi * freqs)[None, :]
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


class UNetBlock(nnx.Module):
    """EDM's unified residual block (DDPM++, NCSN++ and ADM), with optional resampling and
    attention; ``resample_filter`` is the up/downsampling filter of ``conv0`` and the skip.

    ``x -> conv0(silu(norm0(x)))``, conditioned on the embedding by an affine map (adaptive
    scale/shift for ADM, additive for DDPM++), ``conv1(dropout(silu(norm1(·))))``, plus the
    (projected, resampled) skip, times ``skip_scale``; then optional multi-head self-attention
    with its own residual. Shapes: ``x [B, H, W, in_channels]``, ``emb [B, emb_channels]`` ->
    ``[B, H', W', out_channels]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter=(1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict | None = None,
        init_zero: dict | None = None,
        init_attn: dict | None = None,
        conv_algorithm: str = "auto",
        rngs: nnx.Rngs,
    ):
        init = init or {}
        init_zero = init_zero if init_zero is not None else {"init_weight": 0.0}
        init_attn = init_attn if init_attn is not None else init
        self.in_channels, self.out_channels = in_channels, out_channels
        if num_heads is None:
            num_heads = out_channels // channels_per_head
        self.num_heads = num_heads if attention else 0
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(
            in_channels,
            out_channels,
            3,
            up=up,
            down=down,
            resample_filter=resample_filter,
            conv_algorithm=conv_algorithm,
            rngs=rngs,
            **init,
        )
        self.affine = Linear(
            emb_channels, out_channels * (2 if adaptive_scale else 1), rngs=rngs, **init
        )
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.dropout = Dropout(dropout)
        self.conv1 = Conv2d(
            out_channels, out_channels, 3, conv_algorithm=conv_algorithm, rngs=rngs, **init_zero
        )
        needs_skip = out_channels != in_channels or up or down
        kernel = 1 if resample_proj or out_channels != in_channels else 0
        self.skip = (
            Conv2d(
                in_channels,
                out_channels,
                kernel,
                up=up,
                down=down,
                resample_filter=resample_filter,
                rngs=rngs,
                **init,
            )
            if needs_skip
            else None
        )
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, rngs=rngs, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, 1, rngs=rngs, **init_zero)

    def __call__(self, x, emb, *, key=None):
        orig = x
        x = self.conv0(jax.nn.silu(self.norm0(x)))
        params = self.affine(emb)[:, None, None, :].astype(x.dtype)
        if self.adaptive_scale:
            scale, shift = jnp.split(params, 2, axis=-1)
            x = jax.nn.silu(shift + self.norm1(x) * (scale + 1.0))
        else:
            x = jax.nn.silu(self.norm1(x + params))
        x = self.dropout(x, deterministic=key is None, rngs=key)
        x = self.conv1(x)
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale

        if self.num_heads:
            b, h, w, c = x.shape
            heads, ch = self.num_heads, c // self.num_heads
            # EDM's layout: the 3C projection channels are [head, channel, (q, k, v)].
            qkv = self.qkv(self.norm2(x)).reshape(b, h * w, heads, ch, 3)
            q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
            logits = jnp.einsum(
                "bqhc,bkhc->bhqk", q.astype(jnp.float32), (k / math.sqrt(ch)).astype(jnp.float32)
            )
            weights = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
            a = jnp.einsum("bhqk,bkhc->bqhc", weights, v).reshape(b, h, w, c)
            x = (self.proj(a) + x) * self.skip_scale
        return compile_options.fusion_barrier(x)
