"""Model-config presets for the image backbones (the ``model`` section of a stage config).

Fields of an image-model section (the options of ``simple_reflow.models.build_model``, except
``name`` and ``resolution``; read by ``simple_reflow.train.configure.model_from_config`` and
checked by ``validate_model_config`` there before anything is compiled):

- ``name``: ``"ddpmpp"`` or ``"ncsnpp"`` (EDM's SongUNet as EDM's ``--arch=ddpmpp`` /
  ``--arch=ncsnpp``, the "VP" / "VE" checkpoints), ``"songunet"`` (a SongUNet with any of
  EDM's options below) or ``"adm"`` (EDM's DhariwalUNet); ``"mlp"`` (the toy denoiser) reads
  ``hidden`` and ``depth`` instead.
- ``embedding_type`` (``"positional"`` | ``"fourier"``), ``channel_mult_noise``,
  ``encoder_type`` (``"standard"`` | ``"skip"`` | ``"residual"``), ``decoder_type``
  (``"standard"`` | ``"skip"``), ``resample_filter`` (``(1, 1)`` | ``(1, 3, 3, 1)``): EDM's
  SongUNet options; ``ddpmpp`` and ``ncsnpp`` require their own values (validation names a
  field that differs), ADM ignores them.
- ``resolution``: the image size the preset is built for; data must be
  ``[resolution, resolution, C]``. 0 = any size divisible by ``2**(len(channel_mult) - 1)``.
- ``model_channels``, ``channel_mult``, ``channel_mult_emb``, ``num_blocks``,
  ``attn_resolutions``: EDM's architecture options.
- ``channels_per_head``: ADM's attention head width (DDPM++ uses one head; ignored there).
- ``dropout``: dropout probability in the residual blocks, in [0, 1).
- ``num_classes``: class labels, 0 = unconditional; label ``num_classes`` is the null class.
- ``label_dropout``: probability of replacing the label by the null class in training (for
  classifier-free guidance), in [0, 1); needs ``num_classes > 0``.
- ``augment_dim``: EDM's augmentation-label input width (9 where EDM trained with its augment
  pipe); kept only so the parameter count and checkpoints match EDM's, the input is zero.
- ``sigma_data``: σ_d of EDM's preconditioning.
- ``dtype``: the backbone's compute dtype, ``"float32"`` (default) or ``"bfloat16"`` (mixed
  precision for accelerators: parameters, optimizer state and preconditioning stay float32).
- ``conv_algorithm``: how the 3×3 convolutions and their gradients are computed: ``"auto"``
  (on the CPU Winograd F(4×4, 3×3) for the large ones and XLA's convolution for the rest;
  XLA's on accelerators), ``"xla"``, ``"chunked"`` (batch-chunked weight gradient),
  ``"winograd"`` (float32 only). See :class:`simple_reflow.models.layers.Conv2d`.

Parameter counts (with EDM's preconditioning) equal EDM's own networks: CIFAR10 DDPM++
55,733,891, NCSN++ 56,397,827; AFHQv2/FFHQ 64² DDPM++ 61,805,571, NCSN++ 62,761,091;
ImageNet-64 ADM 295,899,267 (``tests/test_backbones.py``).
"""

from __future__ import annotations

import ml_collections

__all__ = [
    "ddpmpp_cifar10",
    "ncsnpp_cifar10",
    "ddpmpp_64",
    "ncsnpp_64",
    "adm_imagenet64",
    "ddpmpp_smoke",
    "adm_smoke",
]


def _image_model(**fields) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "ddpmpp"
    c.resolution = 0
    c.model_channels = 128
    c.channel_mult = (2, 2, 2)
    c.channel_mult_emb = 4
    c.num_blocks = 4
    c.attn_resolutions = (16,)
    c.channels_per_head = 64
    c.dropout = 0.13
    c.num_classes = 0
    c.label_dropout = 0.0
    c.augment_dim = 0
    c.sigma_data = 0.5
    c.dtype = "float32"
    c.conv_algorithm = "auto"
    c.embedding_type = "positional"
    c.channel_mult_noise = 1
    c.encoder_type = "standard"
    c.decoder_type = "standard"
    c.resample_filter = (1, 1)
    c.update(fields)
    return c


_NCSNPP = dict(
    name="ncsnpp",
    embedding_type="fourier",
    channel_mult_noise=2,
    encoder_type="residual",
    resample_filter=(1, 3, 3, 1),
)


def ddpmpp_cifar10(dropout: float = 0.13) -> ml_collections.ConfigDict:
    """EDM's CIFAR10 32² DDPM++ (``--arch=ddpmpp --cond=0``); EDM's dropout 0.13.

    Simple ReFlow's best CIFAR10 dropout is 0.09 (METHOD.md §3); the stage configs set it.
    """
    return _image_model(
        name="ddpmpp", resolution=32, channel_mult=(2, 2, 2), dropout=dropout, augment_dim=9
    )


def ncsnpp_cifar10(dropout: float = 0.13) -> ml_collections.ConfigDict:
    """EDM's CIFAR10 32² NCSN++ (``--arch=ncsnpp``, the ``*-ve.pkl`` checkpoints)."""
    return _image_model(
        resolution=32, channel_mult=(2, 2, 2), dropout=dropout, augment_dim=9, **_NCSNPP
    )


def ddpmpp_64(dropout: float = 0.05) -> ml_collections.ConfigDict:
    """EDM's 64² DDPM++ for AFHQv2 and FFHQ (``--cres=1,2,2,2``).

    EDM's dropout: 0.05 for FFHQ (the default here), 0.25 for AFHQv2.
    """
    return _image_model(
        name="ddpmpp", resolution=64, channel_mult=(1, 2, 2, 2), dropout=dropout, augment_dim=9
    )


def ncsnpp_64(dropout: float = 0.05) -> ml_collections.ConfigDict:
    """EDM's 64² NCSN++ for AFHQv2 and FFHQ (``--arch=ncsnpp --cres=1,2,2,2``)."""
    return _image_model(
        resolution=64, channel_mult=(1, 2, 2, 2), dropout=dropout, augment_dim=9, **_NCSNPP
    )


def adm_imagenet64(dropout: float = 0.10, label_dropout: float = 0.1) -> ml_collections.ConfigDict:
    """EDM's class-conditional ImageNet-64 ADM (``--arch=adm --cond=1``), label dropout 0.1."""
    return _image_model(
        name="adm",
        resolution=64,
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        num_blocks=3,
        attn_resolutions=(32, 16, 8),
        channels_per_head=64,
        dropout=dropout,
        num_classes=1000,
        label_dropout=label_dropout,
    )


def ddpmpp_smoke(dropout: float = 0.0) -> ml_collections.ConfigDict:
    """A tiny DDPM++ (16 channels, 2 levels, 1 block, attention at 4×4) for CPU smoke runs on
    8×8 data; sizes divisible by 2. Two levels, not three: XLA compiles its training step in
    about half the time, and compiling is most of what a smoke stage does."""
    return _image_model(
        name="ddpmpp",
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(4,),
        dropout=dropout,
    )


def adm_smoke(
    num_classes: int = 10, label_dropout: float = 0.1, dropout: float = 0.0
) -> ml_collections.ConfigDict:
    """A tiny class-conditional ADM (16 channels, 2 levels, 1 block, attention at 4×4, 16-wide
    heads) for CPU smoke runs on 8×8 data (two levels: :func:`ddpmpp_smoke`)."""
    return _image_model(
        name="adm",
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(4,),
        channels_per_head=16,
        dropout=dropout,
        num_classes=num_classes,
        label_dropout=label_dropout,
    )
