"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph, as pytorch-fid ports it) in Flax NNX.

FID (Heusel et al. 2017) compares the 2048-d pool features of this network. We re-implement
the network of pytorch-fid's ``InceptionV3(output_blocks=[3])`` (the one EDM's ``fid.py``
scores with, through its TorchScript copy): torchvision's Inception-v3 stem and blocks with
pytorch-fid's FID patches — average pools that do not count padding (``Mixed_5*``, ``6b–6e``,
``7b``) and a 3×3 max pool in ``Mixed_7c``'s pool branch. Inputs are resized to 299² by
bilinear interpolation with half-pixel centres (PyTorch's ``align_corners=False``, computed
here as two interpolation matrices) and mapped from [0, 1] to [−1, 1].

Each ``BasicConv2d`` (convolution without bias, batch norm with ε = 0.001, ReLU) is stored with
its batch norm folded into the convolution (``w·γ/√(v+ε)``, ``β − m·γ/√(v+ε)``, computed in
float64), which is exact up to float32 rounding. Module names are torchvision's
(``Mixed_6b.branch7x7_2``), so :func:`inception_params` maps a pytorch-fid weights file
(``pt_inception-2015-12-05-6726825d.pth``) one to one. The weights are the user's file, read
without PyTorch (:func:`load_fid_inception`); nothing is downloaded.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simple_reflow import compile_options
from simple_reflow.errors import DamagedInput, MissingInput, reason
from simple_reflow.models.params import flat_params, unflatten_params
from simple_reflow.models.torch_files import load_torch_file

__all__ = [
    "FIDInception",
    "inception_params",
    "load_fid_inception",
    "uint8_features",
    "resize_matrix",
    "FEATURE_DIM",
    "INCEPTION_SIZE",
    "WEIGHTS_ENV",
]

FEATURE_DIM = 2048
INCEPTION_SIZE = 299
WEIGHTS_ENV = "SIMPLE_REFLOW_INCEPTION"  # default path of the weights file
_BN_EPS = 1e-3
_DN = ("NHWC", "HWIO", "NHWC")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
    """Convolution (no bias) + batch norm, folded into ``weight`` (HWIO) and ``bias``; ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        kh, kw = _pair(kernel)
        self.stride, self.padding = _pair(stride), _pair(padding)
        self.weight = nnx.Param(jnp.zeros((kh, kw, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,)))

    def __call__(self, x):
        (ph, pw) = self.padding
        y = jax.lax.conv_general_dilated(
            x, self.weight[...], self.stride, [(ph, ph), (pw, pw)], dimension_numbers=_DN
        )
        return jax.nn.relu(y + self.bias[...].reshape(1, 1, 1, -1))  # [C] over NHWC, explicitly


def _max_pool(x, stride, padding=0):
    p = [(0, 0), (padding, padding), (padding, padding), (0, 0)]
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), p)


def _avg_pool_no_pad(x):
    """3×3 stride-1 average pool, padding 1, padded zeros not counted (``count_include_pad``
    False, TensorFlow's convention)."""
    p = [(0, 0), (1, 1), (1, 1), (0, 0)]
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), p)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), p)
    return total / count


class InceptionA(nnx.Module):
    """``Mixed_5b–5d``: 1×1, 5×5, double 3×3 and pool branches (FID pool: padding not counted)."""

    def __init__(self, cin: int, pool_features: int):
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def __call__(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_avg_pool_no_pad(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, pool], axis=-1)


class InceptionB(nnx.Module):
    """``Mixed_6a``: stride-2 3×3, double 3×3 and max-pool branches."""

    def __init__(self, cin: int):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def __call__(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, _max_pool(x, 2)], axis=-1)


class InceptionC(nnx.Module):
    """``Mixed_6b–6e``: factorised 7×7 branches (FID pool: padding not counted)."""

    def __init__(self, cin: int, c7: int):
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def __call__(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            d = conv(d)
        pool = self.branch_pool(_avg_pool_no_pad(x))
        return jnp.concatenate([self.branch1x1(x), b7, d, pool], axis=-1)


class InceptionD(nnx.Module):
    """``Mixed_7a``: stride-2 reductions and a max-pool branch."""

    def __init__(self, cin: int):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """``Mixed_7b`` (average pool, padding not counted) and ``Mixed_7c`` (3×3 max pool, the
    FID graph's quirk): expanded 1×3 / 3×1 branches."""

    def __init__(self, cin: int, pool: str):
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = jnp.concatenate([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], axis=-1)
        pooled = _max_pool(x, 1, padding=1) if self.pool == "max" else _avg_pool_no_pad(x)
        return jnp.concatenate([self.branch1x1(x), b3, d, self.branch_pool(pooled)], axis=-1)


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` bilinear interpolation with half-pixel centres, as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)`` (no antialiasing): output pixel ``o``
    samples ``(o + ½)·size_in/size_out − ½``, clamped at 0, between its two neighbours."""
    scale = size_in / size_out
    src = np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    m = np.zeros((size_out, size_in))
    np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(size_out), hi), frac)
    return m.astype(np.float32)


class FIDInception(nnx.Module):
    """``features(images) -> [N, 2048]``: the FID Inception's final average-pool features.

    Build it with :func:`load_fid_inception`; a freshly constructed one has zero weights.
    """

    def __init__(self):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")

    def blocks(self, images):
        """pytorch-fid's four blocks: ``[block0, block1, block2, pool features]``.

        Args:
          images: ``[N, H, W, 3]`` float in [0, 1] (``uint8 / 255``), any size.
        """
        x = jnp.asarray(images, jnp.float32)
        rh = jnp.asarray(resize_matrix(x.shape[1], INCEPTION_SIZE))
        rw = jnp.asarray(resize_matrix(x.shape[2], INCEPTION_SIZE))
        x = jnp.einsum("ph,nhwc->npwc", rh, x)
        x = jnp.einsum("qw,npwc->npqc", rw, x)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        b0 = _max_pool(x, 2)
        b1 = _max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(b0)), 2)
        x = b1
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
        ):
            x = block(x)
        b2 = x
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return [b0, b1, b2, x.mean(axis=(1, 2))]

    def __call__(self, images):
        """``[N, H, W, 3]`` in [0, 1] → ``[N, 2048]`` pool features."""
        return self.blocks(images)[-1]


def inception_params(state: dict, *, source: str = "weights"):
    """pytorch-fid weights (torchvision names) → the parameters of :class:`FIDInception`.

    Args:
      state: ``{name: array}`` of ``fid_inception_v3().state_dict()`` (``fc.*`` and
        ``num_batches_tracked`` are ignored).
      source: for messages.

    Raises:
      ValueError: a missing or unexpected ``BasicConv2d`` tensor, or a shape mismatch.
    """
    like = nnx.to_pure_dict(nnx.state(nnx.eval_shape(FIDInception), nnx.Param))
    shapes = {n: tuple(v.shape) for n, v in flat_params(like).items()}
    prefixes = {n.rpartition("/")[0] for n in shapes}
    known = {
        f"{p.replace('/', '.')}.{leaf}"
        for p in prefixes
        for leaf in (
            "conv.weight",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked",
        )
    }
    extra = [k for k in state if k not in known and not k.startswith("fc.")]
    if extra:
        raise ValueError(
            f"{source}: unexpected key {extra[0]!r}: not the FID Inception-v3 "
            "(pytorch-fid's pt_inception-2015-12-05 weights)"
        )
    flat = {}
    for prefix in sorted(prefixes):
        torch_name = prefix.replace("/", ".")
        try:
            w = np.asarray(state[f"{torch_name}.conv.weight"], np.float64)
            gamma, beta, mean, var = (
                np.asarray(state[f"{torch_name}.bn.{k}"], np.float64)
                for k in ("weight", "bias", "running_mean", "running_var")
            )
        except KeyError as e:
            raise ValueError(
                f"{source}: missing key {e.args[0]!r} of the FID Inception-v3"
            ) from None
        scale = gamma / np.sqrt(var + _BN_EPS)
        weight = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)
        if weight.shape != shapes[f"{prefix}/weight"]:
            raise ValueError(
                f"{source}: {torch_name}.conv.weight has shape {w.shape}, "
                f"not the FID Inception-v3's"
            )
        flat[f"{prefix}/weight"] = weight.astype(np.float32)
        flat[f"{prefix}/bias"] = (beta - mean * scale).astype(np.float32)
    return unflatten_params(flat, like, source=source)


def load_fid_inception(path: str | None = None) -> FIDInception:
    """The FID Inception with the weights of ``path`` (default: ``$SIMPLE_REFLOW_INCEPTION``).

    Args:
      path: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or a state dict with its
        names: ``torch.save`` file or ``.npz``).

    Raises:
      FileNotFoundError: no path given and the variable unset, or no file there.
      ValueError: not that network's weights (the message names the file and the key).
    """
    path = path or os.environ.get(WEIGHTS_ENV)
    if not path:
        raise MissingInput(
            f"no Inception weights: set eval.inception_weights or "
            f"${WEIGHTS_ENV} to pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth"
        )
    if not os.path.exists(path):
        raise MissingInput(f"no Inception weights at {path!r}")
    try:
        if path.endswith(".npz"):
            with np.load(path) as data:
                state = {k: data[k] for k in data.files}
        else:
            state = load_torch_file(path)
    except Exception as e:  # noqa: BLE001 (zipfile, zlib, unpickling, short reads)
        raise DamagedInput(
            path,
            reason(e),
            "replace it with an intact copy of pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth (its SHA-256 begins 6726825d, as its name "
            "says)",
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict of the FID Inception-v3")
    params = inception_params(state, source=path)
    model = nnx.eval_shape(FIDInception)
    nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, params)))
    return model


def uint8_features(model: FIDInception):
    """``fn(images_u8) -> [N, 2048]``, compiled once, the weights passed as an argument (not
    baked into the program as constants): what FID feeds its generated and reference images."""
    graphdef, state = nnx.split(model)
    fn = compile_options.jit(lambda st, u8: nnx.merge(graphdef, st)(u8.astype(jnp.float32) / 255.0))
    return lambda images_u8: fn(state, images_u8)
