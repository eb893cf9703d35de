"""scikit-learn's bundled digits as a real image dataset that works offline.

``sklearn.datasets.load_digits`` ships 1,797 grayscale 8×8 handwritten digits with integer
intensities 0..16 inside the scikit-learn wheel, so the image pipeline can be exercised end to
end (teacher → pairs → reflow → samples) with no download and in minutes on a CPU.

We keep the native 8×8 resolution by default: upsampling adds no information but multiplies
the network's cost by four, and the pixel-space Fréchet distance used for evaluation needs a
well-estimated covariance — 64 dimensions are estimated well from the ~300 held-out images,
256 (16×16) would not be. ``image_size=16`` (bilinear upsampling) is available for a backbone
that needs more resolution levels.

Splits (fixed, independent of any seed): a permutation drawn once with
``np.random.default_rng(0)``; the first 1,500 images are ``"train"``, the remaining 297 are
``"test"`` (held out for evaluation); ``"all"`` is every image in the original order.
Digits are not mirror-symmetric, so their configs never use random flips.
"""

from __future__ import annotations

import numpy as np

from simple_reflow.data.images import ArraySource, resize_square

__all__ = ["DIGITS_SPLITS", "NUM_TRAIN", "digits_arrays", "digits_source"]

DIGITS_SPLITS = ("train", "test", "all")
NUM_TRAIN = 1500


def digits_arrays(split: str = "train"):
    """Digits as float32 ``[N, 8, 8, 1]`` in [−1, 1] (``v/8 − 1``, v in 0..16), labels ``[N]``."""
    if split not in DIGITS_SPLITS:
        raise ValueError(f"data.split={split!r} is not one of {DIGITS_SPLITS} for digits.")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    labels = bunch.target.astype(np.int32)
    if split == "all":
        return images, labels
    perm = np.random.default_rng(0).permutation(images.shape[0])
    idx = perm[:NUM_TRAIN] if split == "train" else perm[NUM_TRAIN:]
    return images[idx], labels[idx]


def digits_source(split: str = "train", image_size: int = 0, conditional: bool = False):
    """An :class:`ArraySource` over a digits split, optionally resized to ``image_size``.

    Args:
      split: ``"train"`` (1,500), ``"test"`` (297, held out) or ``"all"`` (1,797).
      image_size: 0 or 8 keeps 8×8; another size upsamples bilinearly (values stay in [−1, 1]).
      conditional: return the digit class (10 classes) as ``"cond"``.
    """
    images, labels = digits_arrays(split)
    if image_size and image_size != 8:
        images = np.stack([resize_square(im, image_size) for im in images])
        images = np.clip(images, -1.0, 1.0)
    return ArraySource(images, labels, 10 if conditional else 0)
