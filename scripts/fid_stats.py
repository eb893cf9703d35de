"""Computes FID reference statistics of a dataset, in EDM's ``.npz`` layout.

  python scripts/fid_stats.py --config configs/cifar10.py:eval --out refs/cifar10-32x32.npz \
      --inception pt_inception-2015-12-05-6726825d.pth [--split train] [--num 50000]

Reads the dataset through the config's data section (the library's sources: TFDS, image
folders, digits), feeds its uint8 images to the FID Inception over all devices (and hosts, with
``--multihost``), and writes ``mu`` and ``sigma`` (float64), as EDM's ``fid.py ref`` does, plus
``num_images``, ``resolution`` and ``dataset``. ``--inception`` defaults to
``$SIMPLE_REFLOW_INCEPTION``. EDM's published reference files can be used instead as they are.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A dataset's stage config.", lock_config=True
)
_OUT = flags.DEFINE_string("out", None, "Output .npz.")
_INCEPTION = flags.DEFINE_string("inception", "", "pytorch-fid Inception weights file.")
_SPLIT = flags.DEFINE_string("split", "train", "Dataset split (EDM: the training images).")
_NUM = flags.DEFINE_integer("num", 0, "Images to use (0 = all).")
_BATCH = flags.DEFINE_integer("batch", 256, "Global batch.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize().")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    del argv
    import jax

    if _MULTIHOST.value:
        jax.distributed.initialize()
    from simple_reflow.data import make_image_source
    from simple_reflow.metrics import inception
    from simple_reflow.metrics.fid import save_reference
    from simple_reflow.train import configure, sampling, sharding

    cfg = _CONFIG.value
    spec = configure.data_spec_from_config(cfg.data)  # a bad data field fails before Inception
    featurize = inception.uint8_features(inception.load_fid_inception(_INCEPTION.value or None))
    source = make_image_source(spec, split=_SPLIT.value)
    num = min(_NUM.value or len(source), len(source))
    stats = sampling.dataset_features(
        source,
        featurize,
        dim=inception.FEATURE_DIM,
        num=num,
        batch_size=_BATCH.value,
        mesh=sharding.make_mesh(cfg.get("mesh")),
    )
    mu, sigma = stats.mean_cov()
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        save_reference(
            _OUT.value,
            mu,
            sigma,
            num_images=stats.count,
            resolution=source.shape[0],
            dataset=cfg.data.name,
        )
        print(
            f"reference statistics of {stats.count} {cfg.data.name} images "
            f"({source.shape[0]}x{source.shape[1]}) -> {_OUT.value}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
