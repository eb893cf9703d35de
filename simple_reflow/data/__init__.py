"""Data: toy 2-D sets (``toy.py``) and image sources behind one protocol.

``make_image_source(spec)`` builds the source a resolved :class:`DataSpec` describes. The
config's ``data`` section becomes a ``DataSpec`` in the config adapter,
:func:`simple_reflow.train.configure.data_spec_from_config`, which checks every field (raising
``ValueError`` naming it) and reads no image, so the model can be checked against the data
before anything is opened or compiled.

Image datasets (``data.name``), their default source and TFDS names:

=============  ========  ==========================  ==========  =========
name           source    TFDS name                   shape       classes
=============  ========  ==========================  ==========  =========
``cifar10``    tfds      ``cifar10``                 32×32×3     10 (unused by default)
``imagenet64`` tfds      ``imagenet_resized/64x64``  64×64×3     1000 (conditional)
``afhqv2``     folder    none in TFDS 4.9.10         64×64×3     0
``ffhq``       folder    none in TFDS 4.9.10         64×64×3     0
``digits``     digits    (scikit-learn, offline)     8×8×1       10 (unused by default)
``folder``     folder    —                           image_size  0 or sub-folders
``tfds``       tfds      ``data.tfds_name``          native      ``data.num_classes``
=============  ========  ==========================  ==========  =========

TFDS 4.9.10 has no AFHQ or FFHQ builder: use EDM's ``dataset_tool.py`` output (or any folder of
PNG/JPEG files) with ``data.data_dir``. ``imagenet_resized/64x64`` is Chrabaszcz et al.'s
box-resized labelled ImageNet; ``downsampled_imagenet/64x64`` (van den Oord et al.) has no
labels and can be used with ``data.name="tfds"``. Any dataset can be replaced by ``"mock"``
data of the same shape with ``data.source="mock"`` (smoke runs).

The optional ``data`` fields beyond ``configs/common.py`` (``source``, ``tfds_name``,
``image_key``, ``label_key``, ``conditional``, ``num_classes``, ``eval_split``,
``mock_examples``) and their defaults are documented with the adapter.
"""

from __future__ import annotations

import dataclasses

from simple_reflow.data.digits import digits_source
from simple_reflow.data.images import (
    ArraySource,
    FolderSource,
    TfdsSource,
    mock_images,
)
from simple_reflow.data.pipeline import Prefetcher, batch_at
from simple_reflow.data.toy import TOY_DATASETS, make_toy_sampler, sample_toy, toy_mixture

__all__ = [
    "TOY_DATASETS",
    "IMAGE_DATASETS",
    "SOURCES",
    "DataSpec",
    "make_image_source",
    "batch_at",
    "Prefetcher",
    "ArraySource",
    "make_toy_sampler",
    "sample_toy",
    "toy_mixture",
]

SOURCES = ("tfds", "folder", "digits", "mock")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A resolved image ``data`` section: where the images come from and what they look like."""

    name: str
    source: str
    shape: tuple  # (H, W, C)
    num_classes: int  # 0 = unconditional
    tfds_name: str = ""
    image_key: str = "image"
    label_key: str = "label"
    split: str = "train"
    data_dir: str | None = None
    mock_examples: int = 256


# name: (source, tfds_name, native size, channels, classes, conditional by default)
IMAGE_DATASETS = {
    "cifar10": ("tfds", "cifar10", 32, 3, 10, False),
    "imagenet64": ("tfds", "imagenet_resized/64x64", 64, 3, 1000, True),
    "afhqv2": ("folder", "", 64, 3, 0, False),
    "ffhq": ("folder", "", 64, 3, 0, False),
    "digits": ("digits", "", 8, 1, 10, False),
    "folder": ("folder", "", 0, 3, 0, False),
    "tfds": ("tfds", "", 0, 3, 0, False),
}


def make_image_source(spec: DataSpec, *, split: str | None = None):
    """Builds the image source a resolved :class:`DataSpec` describes.

    Args:
      spec: the data, resolved (``configure.data_spec_from_config(cfg.data)``, or a stage's
        ``run.data``).
      split: overrides ``spec.split`` (e.g. ``cfg.data.eval_split`` for held-out data).

    Returns:
      A source with ``shape``, ``num_classes``, ``__len__`` and ``get(indices)``.
    """
    if not isinstance(spec, DataSpec):
        raise TypeError(
            f"make_image_source takes a DataSpec, got {type(spec).__name__}: resolve a config's "
            "data section with simple_reflow.train.configure.data_spec_from_config."
        )
    split = split or spec.split
    size = spec.shape[0]
    if spec.source == "mock":
        seed = 0 if split == "train" else 1
        return mock_images(spec.mock_examples, spec.shape, spec.num_classes, seed=seed)
    if spec.source == "digits":
        return digits_source(split, size, conditional=bool(spec.num_classes))
    if spec.source == "folder":
        return FolderSource(
            spec.data_dir, size, channels=spec.shape[2], conditional=bool(spec.num_classes)
        )
    native = IMAGE_DATASETS[spec.name][2]
    return TfdsSource(
        spec.tfds_name,
        split,
        spec.data_dir,
        image_key=spec.image_key,
        label_key=spec.label_key,
        num_classes=spec.num_classes,
        image_size=0 if size == native else size,
    )
