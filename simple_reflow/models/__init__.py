"""Denoiser networks: the toy MLP and EDM's image backbones behind EDM's preconditioning.

:func:`build_model` builds a named network as an NNX module whose
``__call__(x_t, t, cond=None, *, key=None)`` is a flow-time denoiser; its keyword options are
those of the backbone (:class:`MLPDenoiser`, :class:`SongUNet`, :class:`DhariwalUNet`) and of
:class:`EDMDenoiser`. :func:`model_options` checks them against the data shape in pure Python,
so a bad value fails in milliseconds with a message naming the argument, before anything
compiles. (``simple_reflow.train.configure`` builds a model from a config's ``model`` section.)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from simple_reflow.models.dhariwal_unet import DhariwalUNet
from simple_reflow.models.layers import CONV_ALGORITHMS, Buffer
from simple_reflow.models.mlp import MLPDenoiser
from simple_reflow.models.precond import COMPUTE_DTYPES, EDMDenoiser, edm_coefficients
from simple_reflow.models.song_unet import (
    DECODER_TYPES,
    EMBEDDING_TYPES,
    ENCODER_TYPES,
    SongUNet,
)

__all__ = [
    "MODEL_NAMES",
    "SONGUNET_VARIANTS",
    "SONGUNET_OPTIONS",
    "build_model",
    "model_options",
    "count_parameters",
    "EDMDenoiser",
    "edm_coefficients",
    "MLPDenoiser",
    "SongUNet",
    "DhariwalUNet",
]

# "ddpmpp" and "ncsnpp" are SongUNets with the options of SONGUNET_VARIANTS; "songunet" is a
# SongUNet with any of EDM's options (embedding_type, encoder_type, ...).
MODEL_NAMES = ("mlp", "ddpmpp", "ncsnpp", "songunet", "adm")
SONGUNET_VARIANTS = {
    "ddpmpp": dict(
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=(1, 1),
    ),
    "ncsnpp": dict(
        embedding_type="fourier",
        channel_mult_noise=2,
        encoder_type="residual",
        decoder_type="standard",
        resample_filter=(1, 3, 3, 1),
    ),
}
SONGUNET_OPTIONS = tuple(SONGUNET_VARIANTS["ddpmpp"])


def count_parameters(model: nnx.Module) -> int:
    """Trainable parameters, as EDM counts them (``parameters()``: buffers excluded)."""
    state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(Buffer)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def _defaults(module, names=None) -> dict:
    """The keyword defaults of an NNX module's ``__init__`` (all, or those in ``names``)."""
    return {
        k: p.default
        for k, p in inspect.signature(module.__init__).parameters.items()
        if p.default is not p.empty and (names is None or k in names)
    }


def _check(ok, message):
    if not ok:
        raise ValueError(message)


def _check_songunet(name, o) -> None:
    for field, value in SONGUNET_VARIANTS.get(name, {}).items():
        _check(
            o[field] == value,
            f"{field}={o[field]!r} is not {name}'s {value!r}; use "
            "name='songunet' for other SongUNet variants",
        )
    _check(
        o["embedding_type"] in EMBEDDING_TYPES,
        f"embedding_type must be one of {EMBEDDING_TYPES}, got {o['embedding_type']!r}",
    )
    _check(
        o["encoder_type"] in ENCODER_TYPES,
        f"encoder_type must be one of {ENCODER_TYPES}, got {o['encoder_type']!r}",
    )
    _check(
        o["decoder_type"] in DECODER_TYPES,
        f"decoder_type must be one of {DECODER_TYPES}, got {o['decoder_type']!r}",
    )
    _check(
        o["channel_mult_noise"] >= 1,
        f"channel_mult_noise must be >= 1, got {o['channel_mult_noise']}",
    )
    f = o["resample_filter"]
    _check(
        f and not len(f) % 2 and all(int(v) >= 0 for v in f) and sum(f) > 0,
        "resample_filter must be an even-length list of non-negative ints with a positive "
        f"sum, like (1, 1) or (1, 3, 3, 1); got {f}",
    )


def _groups(channels: int) -> int:
    """EDM's GroupNorm rule: min(32, C // 4) groups."""
    return max(1, min(32, channels // 4))


def _check_image(name, o, data_shape) -> None:
    _check(
        0.0 <= o["label_dropout"] < 1.0,
        f"label_dropout must be in [0, 1), got {o['label_dropout']}",
    )
    _check(
        o["num_classes"] >= 0,
        f"num_classes must be >= 0 (0 = unconditional), got {o['num_classes']}",
    )
    _check(
        not (o["label_dropout"] > 0 and o["num_classes"] == 0),
        f"label_dropout={o['label_dropout']} needs class labels, but num_classes is 0 "
        "(unconditional)",
    )
    _check(
        len(data_shape) == 3 and data_shape[0] == data_shape[1],
        f"name={name!r} needs square images [H, H, C]; data_shape is {tuple(data_shape)}",
    )
    size, mults = int(data_shape[0]), o["channel_mult"]
    _check(
        mults and all(int(m) >= 1 for m in mults),
        f"channel_mult must be a non-empty list of positive ints, got {mults}",
    )
    factor = 2 ** (len(mults) - 1)
    _check(
        size % factor == 0,
        f"channel_mult has {len(mults)} levels, so the image size must be "
        f"divisible by {factor}; data_shape is {tuple(data_shape)}",
    )
    channels = o["model_channels"]
    _check(
        channels >= 1 and o["channel_mult_emb"] >= 1,
        "model_channels and channel_mult_emb must be positive, got "
        f"{channels} and {o['channel_mult_emb']}",
    )
    _check(o["num_blocks"] >= 1, f"num_blocks must be >= 1, got {o['num_blocks']}")
    widths = {channels * m for m in mults}
    for c in widths | {a + b for a in widths for b in widths}:
        _check(
            c % _groups(c) == 0,
            f"model_channels={channels} with channel_mult={mults} gives {c} channels, not "
            f"divisible into EDM's {_groups(c)} normalisation groups",
        )
    if name == "adm":
        # EDM's rule: a block of width w attends with w // channels_per_head heads (none if 0).
        per_head = o["channels_per_head"]
        heads = {w: w // per_head for w in widths} if per_head else {}
        _check(
            per_head >= 1 and not any(h and w % h for w, h in heads.items()),
            f"channels_per_head={per_head} must be >= 1 and split every level's width "
            f"{sorted(widths)} into equal heads",
        )
    else:
        _check_songunet(name, o)
    _check(
        o["dtype"] in COMPUTE_DTYPES, f"dtype must be one of {COMPUTE_DTYPES}, got {o['dtype']!r}"
    )
    _check(o["augment_dim"] >= 0, f"augment_dim must be >= 0, got {o['augment_dim']}")
    _check(
        o["conv_algorithm"] in CONV_ALGORITHMS,
        f"conv_algorithm must be one of {CONV_ALGORITHMS}, got {o['conv_algorithm']!r}",
    )
    _check(
        o["conv_algorithm"] != "winograd" or o["dtype"] == "float32",
        f"conv_algorithm='winograd' needs dtype='float32' (in bfloat16 its error was 0.13 of "
        f"the output, models/winograd.py), got dtype={o['dtype']!r}",
    )
    _check(o["sigma_data"] > 0, f"sigma_data must be positive, got {o['sigma_data']}")


def model_options(name: str, *, data_shape: Sequence[int], **options) -> dict:
    """The options :func:`build_model` uses for ``name``: the defaults completed by
    ``options``, checked against the data shape in pure Python (no compilation).

    Raises:
      ValueError: whose message starts with the offending argument (``name``, ``dropout``,
        ``channel_mult``, ...) and says what would be valid.
    """
    _check(name in MODEL_NAMES, f"name must be one of {MODEL_NAMES}, got {name!r}")
    if name == "mlp":
        defaults = _defaults(MLPDenoiser)
    else:
        defaults = {
            **_defaults(DhariwalUNet if name == "adm" else SongUNet),
            **_defaults(EDMDenoiser, ("sigma_data", "dtype")),
            **SONGUNET_VARIANTS.get(name, {}),
        }
    for field in options:
        _check(
            field in defaults,
            f"{field} is not an option of name={name!r}; the options are {sorted(defaults)}",
        )
    o = {**defaults, **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}}
    _check(0.0 <= o["dropout"] < 1.0, f"dropout must be in [0, 1), got {o['dropout']}")
    _check(
        all(int(d) >= 1 for d in data_shape),
        f"data_shape must be positive, got {tuple(data_shape)}",
    )
    if name == "mlp":
        _check(
            o["hidden"] >= 1 and o["depth"] >= 1,
            f"hidden and depth must be positive, got {o['hidden']} and {o['depth']}",
        )
    else:
        _check_image(name, o, data_shape)
    return o


def build_model(name: str, *, data_shape: Sequence[int], rngs: nnx.Rngs, **options) -> nnx.Module:
    """Builds the flow-time denoiser ``model(x_t, t, cond=None, *, key=None)`` named ``name``.

    Args:
      name: one of :data:`MODEL_NAMES`.
      data_shape: one example's shape (``[H, W, C]`` images, ``[dim]`` vectors).
      rngs: parameter initialisation.
      **options: for ``"mlp"`` the options of :class:`MLPDenoiser` (``hidden``, ``depth``,
        ``dropout``); otherwise those of the backbone (:class:`SongUNet` or
        :class:`DhariwalUNet`: ``model_channels``, ``channel_mult``, ...) and ``sigma_data``
        and ``dtype`` of :class:`EDMDenoiser`. ``"ddpmpp"`` and ``"ncsnpp"`` fix the SongUNet
        options of :data:`SONGUNET_VARIANTS`. Checked by :func:`model_options`.

    Returns:
      ``MLPDenoiser`` for ``"mlp"`` (on ``prod(data_shape)`` features), otherwise
      :class:`EDMDenoiser` around :class:`SongUNet` (``"ddpmpp"``, ``"ncsnpp"``,
      ``"songunet"``) or :class:`DhariwalUNet` (``"adm"``).
    """
    o = model_options(name, data_shape=data_shape, **options)
    if name == "mlp":
        return MLPDenoiser(math.prod(data_shape), **o, rngs=rngs)
    sigma_data, dtype = o.pop("sigma_data"), o.pop("dtype")
    size, _, channels = (int(d) for d in data_shape)
    backbone = (DhariwalUNet if name == "adm" else SongUNet)(
        size, channels, channels, **o, rngs=rngs
    )
    return EDMDenoiser(backbone, sigma_data=sigma_data, dtype=dtype)
