"""Denoiser networks: the toy MLP and EDM's image backbones behind EDM's preconditioning.

:func:`build_model` turns the ``model`` section of a config (presets in
``configs/backbones.py``, field meanings documented there) into an NNX module whose
``__call__(x_t, t, cond=None, *, key=None)`` is a flow-time denoiser.
:func:`validate_model_config` checks that section against the data shape in pure Python, so a
bad value fails in milliseconds with a message naming the field, before anything compiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from simple_reflow.models.dhariwal_unet import DhariwalUNet
from simple_reflow.models.layers import Buffer
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
    "build_model",
    "validate_model_config",
    "count_parameters",
    "check_same_architecture",
    "ARCHITECTURE_FIELDS",
    "EDMDenoiser",
    "edm_coefficients",
    "SongUNet",
    "DhariwalUNet",
]

# "ddpmpp" and "ncsnpp" are SongUNets with the options of SONGUNET_VARIANTS; "songunet" is a
# SongUNet with any of EDM's options (model.embedding_type, encoder_type, ...).
MODEL_NAMES = ("mlp", "ddpmpp", "ncsnpp", "songunet", "adm")
SONGUNET_VARIANTS = {
    "ddpmpp": dict(embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                   decoder_type="standard", resample_filter=(1, 1)),
    "ncsnpp": dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                   decoder_type="standard", resample_filter=(1, 3, 3, 1)),
}
_SONGUNET_FIELDS = ("embedding_type", "channel_mult_noise", "encoder_type", "decoder_type",
                    "resample_filter")
_IMAGE_FIELDS = ("resolution", "model_channels", "channel_mult", "channel_mult_emb",
                 "num_blocks", "attn_resolutions", "channels_per_head", "dropout",
                 "num_classes", "label_dropout", "augment_dim", "sigma_data", "dtype",
                 *_SONGUNET_FIELDS)
_CONV_GRADS = ("auto", "chunked", "xla")


# Fields that define the function a snapshot computes (dropout, dtype and conv_grad do not).
ARCHITECTURE_FIELDS = ("name", "resolution", "model_channels", "channel_mult",
                       "channel_mult_emb", "num_blocks", "attn_resolutions", "num_classes",
                       "augment_dim", "sigma_data", "channels_per_head", *_SONGUNET_FIELDS)


def check_same_architecture(expected, cfg, *, what: str) -> None:
    """Raises a ValueError naming the first architecture field where ``cfg`` differs.

    Args:
      expected: the model section a snapshot was made with (a ConfigDict or dict).
      cfg: the config's model section.
      what: where ``expected`` comes from, for the message (a path, a config field).
    """
    def norm(v):
        return tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v

    adm = expected.get("name") == "adm"
    fields = [f for f in ARCHITECTURE_FIELDS if not (f in _SONGUNET_FIELDS and adm)
              and not (f == "channels_per_head" and not adm)]
    for field in fields:
        want = norm(expected.get(field))
        got = norm(cfg.get(field)) if field in cfg else None
        if field == "resolution" and not got:
            continue  # 0 = any size; the data shape is checked when the model is built
        if want != got:
            raise ValueError(f"model.{field}={got!r} does not match {what}, which has "
                             f"model.{field}={want!r}")


def count_parameters(model: nnx.Module) -> int:
    """Trainable parameters, as EDM counts them (``parameters()``: buffers excluded)."""
    state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(Buffer)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def _validate_songunet(cfg) -> None:
    variant = SONGUNET_VARIANTS.get(cfg.name)
    if variant:
        for field, value in variant.items():
            got = tuple(cfg[field]) if field == "resample_filter" else cfg[field]
            if got != value:
                raise ValueError(f"model.{field}={got!r} is not {cfg.name}'s {value!r}; use "
                                 "model.name='songunet' for other SongUNet variants")
    if cfg.embedding_type not in EMBEDDING_TYPES:
        raise ValueError(f"model.embedding_type must be one of {EMBEDDING_TYPES}, "
                         f"got {cfg.embedding_type!r}")
    if cfg.encoder_type not in ENCODER_TYPES:
        raise ValueError(f"model.encoder_type must be one of {ENCODER_TYPES}, "
                         f"got {cfg.encoder_type!r}")
    if cfg.decoder_type not in DECODER_TYPES:
        raise ValueError(f"model.decoder_type must be one of {DECODER_TYPES}, "
                         f"got {cfg.decoder_type!r}")
    if cfg.channel_mult_noise < 1:
        raise ValueError(f"model.channel_mult_noise must be >= 1, got {cfg.channel_mult_noise}")
    f = tuple(cfg.resample_filter)
    if not f or len(f) % 2 or any(int(v) < 0 for v in f) or sum(f) <= 0:
        raise ValueError(f"model.resample_filter must be an even-length list of non-negative "
                         f"ints with a positive sum, like (1, 1) or (1, 3, 3, 1); got {f}")


def _groups(channels: int) -> int:
    """EDM's GroupNorm rule: min(32, C // 4) groups."""
    return max(1, min(32, channels // 4))


def _validate_image(cfg, data_shape: Sequence[int]) -> None:
    for field in _IMAGE_FIELDS:
        if field not in cfg:
            raise ValueError(f"model.{field} is missing for model.name={cfg.name!r}; start from "
                             "a preset in configs/backbones.py")
    if len(data_shape) != 3 or data_shape[0] != data_shape[1]:
        raise ValueError(f"model.name={cfg.name!r} needs square images [H, H, C]; the data "
                         f"shape is {tuple(data_shape)}")
    size = int(data_shape[0])
    if cfg.resolution and size != cfg.resolution:
        raise ValueError(f"model.resolution={cfg.resolution} does not match the data's image "
                         f"size {size}; use a preset for {size}x{size} or set model.resolution")
    mults = tuple(cfg.channel_mult)
    if not mults or any(int(m) < 1 for m in mults):
        raise ValueError(f"model.channel_mult must be a non-empty list of positive ints, "
                         f"got {mults}")
    factor = 2 ** (len(mults) - 1)
    if size % factor:
        raise ValueError(f"model.channel_mult has {len(mults)} levels, so the image size must be "
                         f"divisible by {factor}; the data's image size is {size}")
    if cfg.model_channels < 1 or cfg.channel_mult_emb < 1:
        raise ValueError("model.model_channels and model.channel_mult_emb must be positive, got "
                         f"{cfg.model_channels} and {cfg.channel_mult_emb}")
    if cfg.num_blocks < 1:
        raise ValueError(f"model.num_blocks must be >= 1, got {cfg.num_blocks}")
    widths = {cfg.model_channels * m for m in mults}
    for c in widths | {a + b for a in widths for b in widths}:
        if c % _groups(c):
            raise ValueError(f"model.model_channels={cfg.model_channels} with model.channel_mult="
                             f"{mults} gives {c} channels, not divisible into EDM's "
                             f"{_groups(c)} normalisation groups")
    if cfg.name != "adm":
        _validate_songunet(cfg)
    if cfg.dtype not in COMPUTE_DTYPES:
        raise ValueError(f"model.dtype must be one of {COMPUTE_DTYPES}, got {cfg.dtype!r}")
    if cfg.name == "adm":
        # EDM's rule: a block of width w attends with w // channels_per_head heads (none if 0).
        heads = {w: w // cfg.channels_per_head for w in widths} if cfg.channels_per_head else {}
        if cfg.channels_per_head < 1 or any(h and w % h for w, h in heads.items()):
            raise ValueError(f"model.channels_per_head={cfg.channels_per_head} must be >= 1 and "
                             f"split every level's width {sorted(widths)} into equal heads")
    if cfg.augment_dim < 0:
        raise ValueError(f"model.augment_dim must be >= 0, got {cfg.augment_dim}")
    if cfg.get("conv_grad", "auto") not in _CONV_GRADS:
        raise ValueError(f"model.conv_grad must be one of {_CONV_GRADS}, got {cfg.conv_grad!r}")
    if cfg.sigma_data <= 0:
        raise ValueError(f"model.sigma_data must be positive, got {cfg.sigma_data}")


def validate_model_config(cfg, *, data_shape: Sequence[int]) -> None:
    """Checks a ``model`` config section against the data, in pure Python (no compilation).

    Args:
      cfg: the ``model`` ConfigDict (fields in ``configs/backbones.py``).
      data_shape: one example's shape, ``[H, W, C]`` for images, ``[dim]`` for vectors.

    Raises:
      ValueError: naming the offending field (``model.name``, ``model.dropout``,
        ``model.label_dropout``, ``model.num_classes``, ``model.resolution``,
        ``model.channel_mult``, ...) and what would be valid.
    """
    name = cfg.get("name", None)
    if name not in MODEL_NAMES:
        raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {name!r}")
    dropout = cfg.get("dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    label_dropout = cfg.get("label_dropout", 0.0)
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"model.label_dropout must be in [0, 1), got {label_dropout}")
    num_classes = cfg.get("num_classes", 0)
    if num_classes < 0:
        raise ValueError(f"model.num_classes must be >= 0 (0 = unconditional), got {num_classes}")
    if label_dropout > 0 and num_classes == 0:
        raise ValueError(f"model.label_dropout={label_dropout} needs class labels, but "
                         "model.num_classes is 0 (unconditional)")
    if any(int(d) < 1 for d in data_shape):
        raise ValueError(f"the data shape must be positive, got {tuple(data_shape)}")
    if name == "mlp":
        if cfg.get("hidden", 1) < 1 or cfg.get("depth", 1) < 1:
            raise ValueError("model.hidden and model.depth must be positive, got "
                             f"{cfg.get('hidden')} and {cfg.get('depth')}")
        return
    _validate_image(cfg, data_shape)


def build_model(cfg, *, data_shape: Sequence[int], rngs: nnx.Rngs) -> nnx.Module:
    """Builds the flow-time denoiser ``model(x_t, t, cond=None, *, key=None)`` a config names.

    Args:
      cfg: the ``model`` ConfigDict; ``name`` in :data:`MODEL_NAMES`.
      data_shape: one example's shape (``[H, W, C]`` images, ``[dim]`` vectors).
      rngs: parameter initialisation.

    Returns:
      ``MLPDenoiser`` for ``"mlp"`` (on ``prod(data_shape)`` features), otherwise
      :class:`EDMDenoiser` around :class:`SongUNet` (``"ddpmpp"``, ``"ncsnpp"``,
      ``"songunet"``) or :class:`DhariwalUNet` (``"adm"``).
    """
    validate_model_config(cfg, data_shape=data_shape)
    if cfg.name == "mlp":
        from simple_reflow.models.mlp import MLPDenoiser

        return MLPDenoiser(math.prod(data_shape), hidden=cfg.get("hidden", 256),
                           depth=cfg.get("depth", 3), dropout=cfg.get("dropout", 0.0), rngs=rngs)
    size, _, channels = data_shape
    backbone_cls = DhariwalUNet if cfg.name == "adm" else SongUNet
    kwargs = dict(
        num_classes=cfg.num_classes, augment_dim=cfg.augment_dim,
        model_channels=cfg.model_channels, channel_mult=tuple(cfg.channel_mult),
        channel_mult_emb=cfg.channel_mult_emb, num_blocks=cfg.num_blocks,
        attn_resolutions=tuple(cfg.attn_resolutions), dropout=cfg.dropout,
        label_dropout=cfg.label_dropout, conv_grad=cfg.get("conv_grad", "auto"), rngs=rngs)
    if cfg.name == "adm":
        kwargs["channels_per_head"] = cfg.channels_per_head
    else:
        kwargs.update({f: cfg[f] for f in _SONGUNET_FIELDS})
        kwargs["resample_filter"] = tuple(cfg.resample_filter)
    backbone = backbone_cls(int(size), int(channels), int(channels), **kwargs)
    return EDMDenoiser(backbone, sigma_data=cfg.sigma_data, dtype=cfg.dtype)
