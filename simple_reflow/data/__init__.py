"""Data: toy 2-D sets (``toy.py``) and image sources behind one protocol.

``make_image_source(cfg.data)`` builds the source a config names; ``validate_data_config``
checks a ``data`` section (raising ``ValueError`` naming the field) before anything is opened
or compiled, and ``data_spec`` resolves a section to its shape and class count without reading
any image, so the model can be checked against the data up front.

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

Optional ``data`` fields beyond ``configs/common.py`` (read with defaults): ``source``
(``""`` = the dataset's default), ``tfds_name``, ``image_key``, ``label_key``,
``conditional`` (bool, None = the dataset's default), ``num_classes`` (for ``"tfds"``),
``eval_split``, ``mock_examples``.
"""

from __future__ import annotations

import dataclasses
import os

from simple_reflow.data.digits import DIGITS_SPLITS, digits_source
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
    "data_spec",
    "validate_data_config",
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


def _fail(field: str, value, valid: str):
    raise ValueError(f"data.{field}={value!r} {valid}")


def data_spec(cfg_data) -> DataSpec:
    """Resolves and validates an image ``data`` section; reads no image.

    Raises:
      ValueError: naming the offending ``data.<field>``, for an unknown dataset or source, a
        bad image size, a missing folder, flips on digits, or a conditional set with no labels.
    """
    get = cfg_data.get
    name = get("name")
    if name not in IMAGE_DATASETS:
        _fail("name", name, f"is not one of {sorted(TOY_DATASETS) + sorted(IMAGE_DATASETS)}.")
    default_source, tfds_name, native, channels, classes, cond_default = IMAGE_DATASETS[name]
    source = get("source", "") or default_source
    if source not in SOURCES:
        _fail("source", source, f"is not one of {list(SOURCES)} (or '' for the default).")
    tfds_name = get("tfds_name", "") or tfds_name
    if name == "tfds" and not tfds_name:
        _fail("tfds_name", tfds_name, "must name a TFDS dataset when data.name='tfds'.")
    classes = int(get("num_classes", 0) or classes)
    size = get("image_size", 0)
    if not isinstance(size, int) or size < 0:
        _fail("image_size", size, "must be a non-negative int (0 = the dataset's native size).")
    size = size or native
    if source == "folder" and not size:
        _fail("image_size", 0, f"must be set (> 0) for data.name={name!r}.")
    if name == "tfds" and not size and source == "mock":
        _fail("image_size", 0, "must be set (> 0) to mock data.name='tfds'.")
    if source == "digits" and name != "digits":
        _fail("source", source, f"only serves data.name='digits', not {name!r}.")
    if name == "digits" and source not in ("digits", "mock"):
        _fail("source", source, "must be 'digits' (or 'mock') for data.name='digits'.")
    flip = get("random_flip", False)
    if not isinstance(flip, bool):
        _fail("random_flip", flip, "must be a bool.")
    if name == "digits" and flip:
        _fail("random_flip", flip, "is not allowed for digits (they are not mirror-symmetric).")
    conditional = get("conditional", None)
    conditional = cond_default if conditional is None else conditional
    if not isinstance(conditional, bool):
        _fail("conditional", conditional, "must be a bool (or None for the dataset's default).")
    if conditional and not classes and source != "folder":
        _fail("conditional", conditional, f"but data.name={name!r} has no class labels.")
    split = get("split", "train")
    if name == "digits" and source == "digits" and split not in DIGITS_SPLITS:
        _fail("split", split, f"is not one of {DIGITS_SPLITS} for digits.")
    data_dir = get("data_dir", None)
    if source == "folder":
        if not data_dir:
            _fail(
                "data_dir",
                data_dir,
                f"must name a folder of images for data.name={name!r} "
                "(TFDS has no builder for it; unzip EDM's dataset_tool.py output there).",
            )
        if not os.path.isdir(data_dir):
            _fail("data_dir", data_dir, "is not an existing directory.")
    if source == "folder" and conditional:
        classes = len([d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d))])
    mock_examples = int(get("mock_examples", 256))
    if source == "mock" and mock_examples < 1:
        _fail("mock_examples", mock_examples, "must be positive.")
    return DataSpec(
        name=name,
        source=source,
        shape=(size, size, channels),
        num_classes=classes if conditional else 0,
        tfds_name=tfds_name,
        image_key=get("image_key", "image") or "image",
        label_key=get("label_key", "label") or "label",
        split=split,
        data_dir=data_dir,
        mock_examples=mock_examples,
    )


def validate_data_config(cfg_data) -> None:
    """Checks a ``data`` section (toy or image); raises ``ValueError`` naming the field."""
    if cfg_data.get("name") in TOY_DATASETS:
        return
    data_spec(cfg_data)


def make_image_source(cfg_data, *, split: str | None = None):
    """Builds the image source a ``data`` section names.

    Args:
      cfg_data: the config's ``data`` section.
      split: overrides ``data.split`` (e.g. ``cfg.data.eval_split`` for held-out data).

    Returns:
      A source with ``shape``, ``num_classes``, ``__len__`` and ``get(indices)``.
    """
    spec = data_spec(cfg_data)
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
