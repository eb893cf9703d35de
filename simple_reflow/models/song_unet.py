"""DDPM++ (EDM's ``SongUNet``, Song et al. 2021) as a Flax NNX module, NHWC.

Our re-implementation of the DDPM++ configuration of EDM's SongUNet (positional noise
embedding, standard encoder and decoder, box resampling filter, resampling 1×1 projections,
additive embedding, skip scale √½, GroupNorm ε = 1e-6). The NCSN++ variants (Fourier
embedding, residual encoder, [1, 3, 3, 1] filter) are not implemented.

Configurations used by the paper (EDM's ``train.py --arch=ddpmpp``):

- CIFAR10 32²: ``model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
  attn_resolutions=(16,), augment_dim=9`` — 55,733,891 parameters with EDM's preconditioning.
- AFHQv2 / FFHQ 64²: the same with ``channel_mult=(1, 2, 2, 2)`` — 61,805,571 parameters.

The network is the raw ``F_θ(c_in·x; c_noise, labels)`` of EDM; the preconditioning lives in
:mod:`simple_reflow.models.precond`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simple_reflow.models.layers import (
    Conv2d,
    GroupNorm,
    Linear,
    UNetBlock,
    class_labels,
    positional_embedding,
)

__all__ = ["SongUNet"]


class SongUNet(nnx.Module):
    """EDM's DDPM++ U-Net ``F(x, c_noise, cond) -> [B, H, W, out_channels]``.

    Args:
      img_resolution: input height = width; must be divisible by ``2**(len(channel_mult)-1)``.
      in_channels, out_channels: image channels.
      num_classes: number of class labels, 0 = unconditional (EDM's ``label_dim``).
      augment_dim: EDM's augmentation-label width (9 with EDM's augment pipe, 0 = none); the
        layer exists for parameter parity with EDM's checkpoints and sees zeros by default.
      model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions: EDM's.
      dropout: dropout probability inside each residual block.
      label_dropout: probability of dropping the class label to the null class in training.
      conv_grad: weight gradient of the 3×3 convolutions, "auto" | "chunked" | "xla"
        (:class:`~simple_reflow.models.layers.Conv2d`).
      rngs: parameter initialisation.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, *,
                 num_classes: int = 0, augment_dim: int = 0, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0, conv_grad: str = "auto",
                 rngs: nnx.Rngs):
        self.num_classes, self.augment_dim = num_classes, augment_dim
        self.label_dropout = label_dropout
        self.noise_channels = model_channels
        emb_channels = model_channels * channel_mult_emb
        init = {"mode": "xavier_uniform"}
        init_zero = {"mode": "xavier_uniform", "init_weight": 1e-5}
        init_attn = {"mode": "xavier_uniform", "init_weight": float(np.sqrt(0.2))}
        block_kw = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout,
                        skip_scale=float(np.sqrt(0.5)), eps=1e-6, resample_proj=True,
                        adaptive_scale=False, init=init, init_zero=init_zero,
                        init_attn=init_attn, conv_grad=conv_grad, rngs=rngs)

        # Mapping network.
        self.map_label = (Linear(num_classes, model_channels, rngs=rngs, **init)
                          if num_classes else None)
        self.map_augment = (Linear(augment_dim, model_channels, bias=False, rngs=rngs, **init)
                            if augment_dim else None)
        self.map_layer0 = Linear(model_channels, emb_channels, rngs=rngs, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, rngs=rngs, **init)

        # Encoder: the input conv, then per level an optional down block and num_blocks blocks.
        enc, skips = [], []
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                enc.append(Conv2d(cout, model_channels, 3, conv_grad=conv_grad, rngs=rngs,
                                   **init))
                cout = model_channels
            else:
                enc.append(UNetBlock(cout, cout, down=True, **block_kw))
            skips.append(cout)
            for _ in range(num_blocks):
                cin, cout = cout, model_channels * mult
                enc.append(UNetBlock(cin, cout, attention=res in attn_resolutions, **block_kw))
                skips.append(cout)
        self.enc = nnx.List(enc)

        # Decoder: per level (coarsest first) in0/in1 or an up block, then num_blocks + 1
        # blocks that each take a concatenated encoder skip.
        dec, concat = [], []
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                dec.append(UNetBlock(cout, cout, attention=True, **block_kw))
                dec.append(UNetBlock(cout, cout, **block_kw))
                concat += [False, False]
            else:
                dec.append(UNetBlock(cout, cout, up=True, **block_kw))
                concat.append(False)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                dec.append(UNetBlock(cin, cout, attention=attn, **block_kw))
                concat.append(True)
        self.dec = nnx.List(dec)
        self.dec_concat = tuple(concat)
        self.out_norm = GroupNorm(cout, eps=1e-6)
        self.out_conv = Conv2d(cout, out_channels, 3, conv_grad=conv_grad, rngs=rngs,
                               **init_zero)

    def __call__(self, x, noise_labels, cond=None, *, key=None, augment_labels=None):
        """Applies the network.

        Args:
          x: ``[B, H, W, in_channels]`` (already scaled by EDM's c_in).
          noise_labels: ``[B]`` EDM's c_noise.
          cond: ``[B]`` int labels (``num_classes`` = null class), ``[B, num_classes]`` label
            vectors, or ``None``; ignored when unconditional.
          key: PRNG key; dropout and label dropout are active iff it is given.
          augment_labels: ``[B, augment_dim]`` or ``None`` (zeros).

        Returns:
          ``[B, H, W, out_channels]``.
        """
        batch = x.shape[0]
        keys = [None] * (len(self.enc) + len(self.dec) + 1)
        if key is not None:
            keys = list(jax.random.split(key, len(keys)))
        emb = positional_embedding(noise_labels, self.noise_channels, endpoint=True)
        half = self.noise_channels // 2
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=1)  # EDM's sin/cos swap
        if self.map_label is not None:
            labels = class_labels(cond, self.num_classes, batch,
                                  label_dropout=self.label_dropout, key=keys[-1])
            emb = emb + self.map_label(labels * np.sqrt(self.num_classes))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = jax.nn.silu(self.map_layer0(emb))
        emb = jax.nn.silu(self.map_layer1(emb))

        skips = []
        for i, block in enumerate(self.enc):
            x = block(x) if i == 0 else block(x, emb, key=keys[i])
            skips.append(x)
        offset = len(self.enc)
        for i, block in enumerate(self.dec):
            if self.dec_concat[i]:
                x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = block(x, emb, key=keys[offset + i])
        return self.out_conv(jax.nn.silu(self.out_norm(x)))
