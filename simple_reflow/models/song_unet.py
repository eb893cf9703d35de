"""DDPM++ and NCSN++ (EDM's ``SongUNet``, Song et al. 2021) as a Flax NNX module, NHWC.

Our re-implementation of EDM's SongUNet with all of its options:

- DDPM++ (EDM's ``--arch=ddpmpp``): positional noise embedding, standard encoder and decoder,
  box resampling filter ``[1, 1]``, ``channel_mult_noise=1``;
- NCSN++ (EDM's ``--arch=ncsnpp``, its "VE" checkpoints): random Fourier noise embedding
  (scale 16), residual encoder, standard decoder, filter ``[1, 3, 3, 1]``,
  ``channel_mult_noise=2``;
- EDM's remaining choices: the ``skip`` encoder and the ``skip`` decoder.

Every variant has resampling 1×1 projections, additive embedding, skip scale √½ and
GroupNorm ε = 1e-6. The sub-modules carry EDM's names (``enc["32x32_conv"]``,
``dec["16x16_block3"]``, ``dec["32x32_aux_conv"]``, ...), so a checkpoint maps one to one.

Configurations used by the paper (EDM's ``train.py``), parameter counts with EDM's
preconditioning (equal to EDM's own networks):

- CIFAR10 32²: ``model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
  attn_resolutions=(16,), augment_dim=9`` — DDPM++ 55,733,891, NCSN++ 56,397,827.
- AFHQv2 / FFHQ 64²: the same with ``channel_mult=(1, 2, 2, 2)`` — DDPM++ 61,805,571, NCSN++
  62,761,091 (checked in ``tests/test_backbones.py``).

The network is the raw ``F_θ(c_in·x; c_noise, labels)`` of EDM; the preconditioning lives in
:mod:`simple_reflow.models.precond`.

``two_time=True`` adds MeanFlow's second time (METHOD.md §9): the interval t − r goes through
the same noise embedding as c_noise and a zero-initialised ``map_interval`` (noise channels →
embedding channels, no bias) added to ``map_layer0``'s pre-activation — the authors' CIFAR10
U-Net (Gsunshine/py-meanflow) feeds ``map_layer0`` the concatenation of both embeddings, which
is the same map with that block of the weight zero at initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simple_reflow.models.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    UNetBlock,
    class_labels,
    positional_embedding,
    second_time_input,
)

__all__ = ["SongUNet", "EMBEDDING_TYPES", "ENCODER_TYPES", "DECODER_TYPES"]

EMBEDDING_TYPES = ("positional", "fourier")
ENCODER_TYPES = ("standard", "skip", "residual")
DECODER_TYPES = ("standard", "skip")


class SongUNet(nnx.Module):
    """EDM's SongUNet ``F(x, c_noise, cond) -> [B, H, W, out_channels]`` (DDPM++ / NCSN++).

    Args:
      img_resolution: input height = width; must be divisible by ``2**(len(channel_mult)-1)``.
      in_channels, out_channels: image channels.
      num_classes: number of class labels, 0 = unconditional (EDM's ``label_dim``).
      augment_dim: EDM's augmentation-label width (9 with EDM's augment pipe, 0 = none); the
        layer exists for parity with EDM's checkpoints and sees no input when sampling.
      model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions: EDM's.
      dropout: dropout probability inside each residual block.
      label_dropout: probability of dropping the class label to the null class in training.
      embedding_type: ``"positional"`` (DDPM++) or ``"fourier"`` (NCSN++).
      channel_mult_noise: noise-embedding width as a multiple of ``model_channels``.
      encoder_type: ``"standard"`` | ``"skip"`` | ``"residual"`` (NCSN++).
      decoder_type: ``"standard"`` | ``"skip"``.
      resample_filter: 1-D up/downsampling filter, ``(1, 1)`` or ``(1, 3, 3, 1)``.
      fourier_scale: std of the Fourier frequencies at initialisation (EDM: 16).
      conv_algorithm: how the 3×3 convolutions are computed, "auto" | "xla" | "chunked" |
        "winograd"
        (:class:`~simple_reflow.models.layers.Conv2d`).
      two_time: also take the interval t − r through a zero-initialised embedding (MeanFlow,
        SplitMeanFlow); off by default (no extra parameters).
      rngs: parameter initialisation.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        *,
        num_classes: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
        fourier_scale: float = 16.0,
        conv_algorithm: str = "auto",
        two_time: bool = False,
        rngs: nnx.Rngs,
    ):
        if embedding_type not in EMBEDDING_TYPES:
            raise ValueError(
                f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}"
            )
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_type must be one of {ENCODER_TYPES}, got {encoder_type!r}")
        if decoder_type not in DECODER_TYPES:
            raise ValueError(f"decoder_type must be one of {DECODER_TYPES}, got {decoder_type!r}")
        self.num_classes, self.augment_dim = num_classes, augment_dim
        self.label_dropout = label_dropout
        self.embedding_type = embedding_type
        noise_channels = model_channels * channel_mult_noise
        self.noise_channels = noise_channels
        emb_channels = model_channels * channel_mult_emb
        resample_filter = tuple(int(v) for v in resample_filter)
        init = {"mode": "xavier_uniform"}
        init_zero = {"mode": "xavier_uniform", "init_weight": 1e-5}
        init_attn = {"mode": "xavier_uniform", "init_weight": float(np.sqrt(0.2))}
        block_kw = dict(
            emb_channels=emb_channels,
            num_heads=1,
            dropout=dropout,
            skip_scale=float(np.sqrt(0.5)),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=init_zero,
            init_attn=init_attn,
            conv_algorithm=conv_algorithm,
            rngs=rngs,
        )
        conv_kw = dict(conv_algorithm=conv_algorithm, rngs=rngs)

        # Mapping network.
        self.map_noise = (
            FourierEmbedding(noise_channels, scale=fourier_scale, rngs=rngs)
            if embedding_type == "fourier"
            else None
        )
        self.map_label = (
            Linear(num_classes, noise_channels, rngs=rngs, **init) if num_classes else None
        )
        self.map_augment = (
            Linear(augment_dim, noise_channels, bias=False, rngs=rngs, **init)
            if augment_dim
            else None
        )
        self.map_layer0 = Linear(noise_channels, emb_channels, rngs=rngs, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, rngs=rngs, **init)

        # Encoder, in EDM's order and names; "aux" modules act on the auxiliary input path.
        enc = nnx.Dict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3, **conv_kw, **init)
                cout = model_channels
            else:
                enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kw)
                if encoder_type == "skip":
                    enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, 0, down=True, resample_filter=resample_filter, **conv_kw
                    )
                    enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **conv_kw, **init)
                if encoder_type == "residual":
                    enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux,
                        cout,
                        3,
                        down=True,
                        resample_filter=resample_filter,
                        fused_resample=True,
                        **conv_kw,
                        **init,
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block_kw
                )
        self.enc = enc
        self.enc_order = tuple(enc.keys())  # graph round trips sort the Dict's keys
        skips = [
            m.out_channels if isinstance(m, UNetBlock) else model_channels
            for name, m in enc.items()
            if "aux" not in name
        ]

        # Decoder: per level (coarsest first) in0/in1 or an up block, then num_blocks + 1
        # blocks that each take a concatenated encoder skip; output heads ("aux") at level 0
        # (standard) or at every level, summed over upsampled levels (skip).
        dec = nnx.Dict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kw)
                dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kw)
            else:
                dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kw)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kw)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels,
                        out_channels,
                        0,
                        up=True,
                        resample_filter=resample_filter,
                        **conv_kw,
                    )
                dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **conv_kw, **init_zero)
        self.dec = dec
        self.dec_order = tuple(dec.keys())
        # Built last, so the other parameters draw the same random numbers with or without it.
        self.map_interval = (
            Linear(
                noise_channels, emb_channels, bias=False, rngs=rngs, **{**init, "init_weight": 0.0}
            )
            if two_time
            else None
        )

    def _embed_noise(self, labels):
        """The noise embedding ``[B] -> [B, noise_channels]``, with EDM's sin/cos swap."""
        if self.map_noise is not None:
            emb = self.map_noise(labels)
        else:
            emb = positional_embedding(labels, self.noise_channels, endpoint=True)
        half = self.noise_channels // 2
        return jnp.concatenate([emb[:, half:], emb[:, :half]], axis=1)  # EDM's sin/cos swap

    def __call__(self, x, noise_labels, cond=None, *, key=None, augment_labels=None, interval=None):
        """Applies the network.

        Args:
          x: ``[B, H, W, in_channels]`` (already scaled by EDM's c_in), in the compute dtype.
          noise_labels: ``[B]`` EDM's c_noise.
          cond: ``[B]`` int labels (``num_classes`` = null class), ``[B, num_classes]`` label
            vectors, or ``None``; ignored when unconditional.
          key: PRNG key; dropout and label dropout are active iff it is given.
          augment_labels: ``[B, augment_dim]`` or ``None`` (no augmentation input, EDM's
            sampling).
          interval: ``[B]`` the second time t − r of a two-time network (``None``: r = t);
            a one-time network rejects it.

        Returns:
          ``[B, H, W, out_channels]`` in the dtype of ``x``.
        """
        batch = x.shape[0]
        interval = second_time_input(self.map_interval is not None, interval, batch)
        names = [n for n in (*self.enc_order, *self.dec_order) if "aux" not in n]
        keys = dict.fromkeys([*names, "label"])
        if key is not None:
            keys = dict(zip(keys, jax.random.split(key, len(keys)), strict=True))

        # Mapping network (float32, as EDM's; each block casts its affine output to x's dtype).
        emb = self._embed_noise(noise_labels)
        if self.map_label is not None:
            labels = class_labels(
                cond, self.num_classes, batch, label_dropout=self.label_dropout, key=keys["label"]
            )
            emb = emb + self.map_label(labels * np.sqrt(self.num_classes))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(jnp.asarray(augment_labels, jnp.float32))
        emb = self.map_layer0(emb)
        if interval is not None:
            emb = emb + self.map_interval(self._embed_noise(interval))
        emb = jax.nn.silu(emb)
        emb = jax.nn.silu(self.map_layer1(emb))

        skips, aux = [], x
        for name, block in ((n, self.enc[n]) for n in self.enc_order):
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / float(np.sqrt(2))
            elif isinstance(block, UNetBlock):
                x = block(x, emb, key=keys[name])
                skips.append(x)
            else:
                x = block(x)
                skips.append(x)

        aux = tmp = None
        for name, block in ((n, self.dec[n]) for n in self.dec_order):
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(jax.nn.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[-1] != block.in_channels:
                    x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = block(x, emb, key=keys[name])
        return aux
