"""ADM (EDM's ``DhariwalUNet``, Dhariwal & Nichol 2021) as a Flax NNX module, NHWC.

Our re-implementation of EDM's DhariwalUNet: positional noise embedding, adaptive
scale/shift conditioning, 64 channels per attention head, GroupNorm ε = 1e-5, parameter-free
resampling skips, class labels added to the embedding after the mapping layers. Sub-modules
carry EDM's names (``enc["64x64_conv"]``, ``dec["8x8_in0"]``, ...) so checkpoints map one to
one.

The paper's configuration (EDM's ``train.py --arch=adm --cond=1`` for ImageNet-64):
``model_channels=192, channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(32, 16, 8),
num_classes=1000, augment_dim=0`` — 295,899,267 parameters with EDM's preconditioning.

``two_time=True`` adds MeanFlow's second time (METHOD.md §9): the interval t − r goes through
the positional embedding and a zero-initialised ``map_interval`` added to ``map_layer0``'s
pre-activation, as in :class:`~simple_reflow.models.song_unet.SongUNet`.
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
    second_time_input,
)

__all__ = ["DhariwalUNet"]


class DhariwalUNet(nnx.Module):
    """EDM's ADM U-Net ``F(x, c_noise, cond) -> [B, H, W, out_channels]``.

    Args:
      img_resolution: input height = width; must be divisible by ``2**(len(channel_mult)-1)``.
      in_channels, out_channels: image channels.
      num_classes: number of class labels, 0 = unconditional (EDM's ``label_dim``).
      augment_dim: EDM's augmentation-label width (0 = none).
      model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions: EDM's.
      channels_per_head: attention head width (heads = width // channels_per_head).
      dropout: dropout probability inside each residual block.
      label_dropout: probability of dropping the class label to the null class in training.
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
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        channels_per_head: int = 64,
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        conv_algorithm: str = "auto",
        two_time: bool = False,
        rngs: nnx.Rngs,
    ):
        self.num_classes, self.augment_dim = num_classes, augment_dim
        self.label_dropout = label_dropout
        self.noise_channels = model_channels
        emb_channels = model_channels * channel_mult_emb
        gain = float(np.sqrt(1 / 3))
        init = {"mode": "kaiming_uniform", "init_weight": gain, "init_bias": gain}
        init_zero = {"mode": "kaiming_uniform", "init_weight": 0.0, "init_bias": 0.0}
        block_kw = dict(
            emb_channels=emb_channels,
            channels_per_head=channels_per_head,
            dropout=dropout,
            init=init,
            init_zero=init_zero,
            conv_algorithm=conv_algorithm,
            rngs=rngs,
        )

        # Mapping network.
        self.map_augment = (
            Linear(augment_dim, model_channels, bias=False, rngs=rngs, **init_zero)
            if augment_dim
            else None
        )
        self.map_layer0 = Linear(model_channels, emb_channels, rngs=rngs, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, rngs=rngs, **init)
        self.map_label = (
            Linear(
                num_classes,
                emb_channels,
                bias=False,
                mode="kaiming_normal",
                init_weight=float(np.sqrt(num_classes)),
                rngs=rngs,
            )
            if num_classes
            else None
        )

        # Encoder and decoder in EDM's order, with EDM's module names.
        enc = nnx.Dict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                enc[f"{res}x{res}_conv"] = Conv2d(
                    cout, model_channels * mult, 3, conv_algorithm=conv_algorithm, rngs=rngs, **init
                )
                cout = model_channels * mult
            else:
                enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kw)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block_kw
                )
        self.enc = enc
        self.enc_order = tuple(enc.keys())  # graph round trips sort the Dict's keys
        skips = [
            m.out_channels if isinstance(m, UNetBlock) else model_channels * channel_mult[0]
            for m in enc.values()
        ]

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
                dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block_kw
                )
        self.dec = dec
        self.dec_order = tuple(dec.keys())
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(
            cout, out_channels, 3, conv_algorithm=conv_algorithm, rngs=rngs, **init_zero
        )
        # Built last, so the other parameters draw the same random numbers with or without it.
        self.map_interval = (
            Linear(model_channels, emb_channels, bias=False, rngs=rngs, **init_zero)
            if two_time
            else None
        )

    def __call__(self, x, noise_labels, cond=None, *, key=None, augment_labels=None, interval=None):
        """Applies the network.

        Args:
          x: ``[B, H, W, in_channels]`` (already scaled by EDM's c_in), in the compute dtype.
          noise_labels: ``[B]`` EDM's c_noise.
          cond: ``[B]`` int labels (``num_classes`` = null class), ``[B, num_classes]`` label
            vectors, or ``None``; ignored when unconditional.
          key: PRNG key; dropout and label dropout are active iff it is given.
          augment_labels: ``[B, augment_dim]`` or ``None`` (no augmentation input).
          interval: ``[B]`` the second time t − r of a two-time network (``None``: r = t);
            a one-time network rejects it.

        Returns:
          ``[B, H, W, out_channels]`` in the dtype of ``x``.
        """
        batch = x.shape[0]
        interval = second_time_input(self.map_interval is not None, interval, batch)
        keys = dict.fromkeys([*self.enc_order, *self.dec_order, "label"])
        if key is not None:
            keys = dict(zip(keys, jax.random.split(key, len(keys)), strict=True))
        emb = positional_embedding(noise_labels, self.noise_channels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(jnp.asarray(augment_labels, jnp.float32))
        emb = self.map_layer0(emb)
        if interval is not None:
            emb = emb + self.map_interval(positional_embedding(interval, self.noise_channels))
        emb = jax.nn.silu(emb)
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            labels = class_labels(
                cond, self.num_classes, batch, label_dropout=self.label_dropout, key=keys["label"]
            )
            emb = emb + self.map_label(labels)
        emb = jax.nn.silu(emb)

        skips = []
        for name, block in ((n, self.enc[n]) for n in self.enc_order):
            x = block(x, emb, key=keys[name]) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for name, block in ((n, self.dec[n]) for n in self.dec_order):
            if x.shape[-1] != block.in_channels:
                x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = block(x, emb, key=keys[name])
        return self.out_conv(jax.nn.silu(self.out_norm(x)))
