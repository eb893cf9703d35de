"""Image data sources: TFDS array-record, image folders, in-memory arrays (and a mock).

Every source follows one protocol, which the batch pipeline (:mod:`.pipeline`) relies on:

- ``source.shape``: ``(H, W, C)``; ``source.num_classes``: 0 when unconditional;
- ``len(source)``: the number of examples;
- ``source.get(indices)`` with ``indices`` int ``[n]`` returns, deterministically,
  ``{"x0": float32 [n, H, W, C] in [-1, 1], "index": int32 [n]}`` and ``"cond": int32 [n]``
  when the source is conditional.

TFDS is read through ``tfds.data_source`` (array-record files, random access), which needs no
TensorFlow at run time and never downloads (``download=False``): prepare the dataset once
with ``tfds build`` and point ``data.data_dir`` at it. Images are NHWC, ``x0 = u8/127.5 − 1``.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from simple_reflow.errors import MissingInput

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "TfdsSource",
    "FolderSource",
    "to_unit_range",
    "resize_square",
    "mock_images",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def to_unit_range(images_u8: np.ndarray) -> np.ndarray:
    """uint8 ``[..., H, W, C]`` in {0..255} → float32 in [−1, 1] (``u8/127.5 − 1``)."""
    return images_u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Center-crops an image ``[H, W, C]`` to a square and resizes it to ``[size, size, C]``.

    uint8 images go through Pillow's Lanczos filter (as EDM's ``dataset_tool.py``); float
    images through Pillow's float mode ("F"), bilinear, channel by channel. An image already
    of the requested size is returned unchanged.
    """
    h, w = image.shape[:2]
    if h == w == size:
        return image
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    image = image[top : top + s, left : left + s]
    if image.dtype == np.uint8:
        mode = "L" if image.shape[2] == 1 else "RGB"
        pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode)
        out = np.asarray(pil.resize((size, size), Image.LANCZOS))
        return out.reshape(size, size, image.shape[2])
    chans = [
        np.asarray(
            Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
                (size, size), Image.BILINEAR
            )
        )
        for c in range(image.shape[2])
    ]
    return np.stack(chans, axis=-1).astype(image.dtype)


def _batch(x0: np.ndarray, labels, indices: np.ndarray, num_classes: int) -> dict:
    out = {
        "x0": np.ascontiguousarray(x0, dtype=np.float32),
        "index": np.asarray(indices, dtype=np.int32),
    }
    if num_classes:
        out["cond"] = np.asarray(labels, dtype=np.int32)
    return out


def _check_indices(indices, n: int) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(f"indices must lie in [0, {n}), got [{indices.min()}, {indices.max()}]")
    return indices


class ArraySource:
    """An in-memory source over float images already in [−1, 1] (digits, mock data, caches).

    Args:
      images: float ``[N, H, W, C]`` in [−1, 1].
      labels: int ``[N]`` or None.
      num_classes: 0 for an unconditional source (labels are then not returned).
    """

    def __init__(self, images: np.ndarray, labels=None, num_classes: int = 0):
        self.images = np.asarray(images, dtype=np.float32)
        if self.images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, C], got shape {self.images.shape}")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int32)
        if num_classes and self.labels is None:
            raise ValueError("a conditional ArraySource needs labels")
        self.num_classes = int(num_classes)
        self.shape = tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def get(self, indices) -> dict:
        idx = _check_indices(indices, len(self))
        labels = None if self.labels is None else self.labels[idx]
        return _batch(self.images[idx], labels, idx, self.num_classes)


class TfdsSource:
    """A TFDS dataset read by random access through ``tfds.data_source`` (no TensorFlow).

    Args:
      name: TFDS name with config, e.g. ``"cifar10"`` or ``"imagenet_resized/64x64"``.
      split: TFDS split (``"train"``, ``"test"``, ``"train[:90%]"``...).
      data_dir: TFDS data directory (None: TFDS's default, ``~/tensorflow_datasets``).
      image_key, label_key: feature names of the image and the label.
      num_classes: 0 for unconditional use (labels are then not read).
      image_size: output size (0: the dataset's native size); otherwise center-crop and
        Lanczos-resize each image.
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        data_dir=None,
        *,
        image_key: str = "image",
        label_key: str = "label",
        num_classes: int = 0,
        image_size: int = 0,
    ):
        import tensorflow_datasets as tfds  # imported here: TFDS is slow to import

        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            record = self._ds[0]
        except Exception as e:  # TFDS says "not supported", "splits is empty", "not found"...
            where = data_dir or "~/tensorflow_datasets"
            raise MissingInput(
                f"TFDS dataset {name!r} (split {split!r}) is not prepared as array_record files "
                f"under {where}: run `tfds build {name} --file_format=array_record"
                f"{' --data_dir ' + str(data_dir) if data_dir else ''}` once, or set "
                f"data.data_dir to where it is ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        self.image_key, self.label_key = image_key, label_key
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        first = self._image(record)
        self.shape = tuple(first.shape)

    def _image(self, record) -> np.ndarray:
        image = np.asarray(record[self.image_key])
        if image.ndim == 2:
            image = image[..., None]
        if self.image_size:
            image = resize_square(image, self.image_size)
        return image

    def __len__(self) -> int:
        return len(self._ds)

    def get(self, indices) -> dict:
        idx = _check_indices(indices, len(self))
        # One record at a time: TFDS 4.9's `mock_data` breaks `__getitems__`, and on real
        # array-record files per-record reads cost about the same as a batched read.
        records = [self._ds[int(i)] for i in idx]
        images = (
            np.stack([self._image(r) for r in records])
            if len(idx)
            else np.zeros((0, *self.shape), np.uint8)
        )
        labels = [int(r[self.label_key]) for r in records] if self.num_classes else None
        return _batch(to_unit_range(images), labels, idx, self.num_classes)


def list_images(root: str) -> list[str]:
    """Image files under ``root`` (recursively), as sorted paths relative to ``root``."""
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(found)


class FolderSource:
    """PNG/JPEG images under a folder (recursively), read with Pillow.

    Args:
      root: the folder (for AFHQv2/FFHQ: EDM's ``dataset_tool.py`` output, unzipped).
      image_size: output size; each image is center-cropped to a square and Lanczos-resized
        (0: keep the size of the first image, which all images must then share).
      channels: 3 (RGB) or 1 (grayscale).
      conditional: labels from the first sub-folder name (ImageFolder convention), classes
        numbered in sorted order.
    """

    def __init__(
        self, root: str, image_size: int = 0, *, channels: int = 3, conditional: bool = False
    ):
        if not os.path.isdir(root):
            raise ValueError(f"data.data_dir={root!r} is not a directory of images.")
        self.root = root
        self.files = list_images(root)
        if not self.files:
            raise ValueError(f"data.data_dir={root!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files.")
        self.channels = int(channels)
        self.labels = None
        self.num_classes = 0
        if conditional:
            tops = [f.split(os.sep)[0] if os.sep in f else "" for f in self.files]
            names = sorted(set(tops))
            self.labels = np.array([names.index(t) for t in tops], dtype=np.int32)
            self.num_classes = len(names)
        self.image_size = int(image_size) or self._load(0).shape[0]
        self.shape = (self.image_size, self.image_size, self.channels)

    def _load(self, i: int) -> np.ndarray:
        with Image.open(os.path.join(self.root, self.files[i])) as im:
            image = np.asarray(im.convert("L" if self.channels == 1 else "RGB"))
        return image.reshape(image.shape[0], image.shape[1], self.channels)

    def __len__(self) -> int:
        return len(self.files)

    def get(self, indices) -> dict:
        idx = _check_indices(indices, len(self))
        images = np.zeros((len(idx), *self.shape), np.uint8)
        for k, i in enumerate(idx):
            images[k] = resize_square(self._load(int(i)), self.image_size)
        labels = None if self.labels is None else self.labels[idx]
        return _batch(to_unit_range(images), labels, idx, self.num_classes)


def mock_images(num_examples: int, shape, num_classes: int = 0, seed: int = 0) -> ArraySource:
    """Deterministic stand-in data of a given shape (smoke runs without the real dataset).

    Smooth random images (a random 4×4 pattern per channel, bilinearly upsampled) in
    [−1, 1], labels uniform over ``num_classes``.
    """
    h, w, c = shape
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.0, 1.0, size=(num_examples, 4, 4, c)).astype(np.float32)
    images = np.stack([resize_square(im, h) for im in coarse]) if h != 4 else coarse
    images = np.clip(images[:, :h, :w], -1.0, 1.0)
    labels = rng.integers(0, max(num_classes, 1), size=num_examples)
    return ArraySource(images, labels, num_classes)
