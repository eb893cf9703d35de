"""Imports an NVIDIA EDM checkpoint as a teacher snapshot the image stages take.

  python scripts/import_edm.py --checkpoint edm-cifar10-32x32-uncond-vp.pkl \
      --workdir runs/cifar10/edm-teacher [--config configs/cifar10.py:pairs]
  python scripts/import_edm.py --checkpoint my_state_dict.pt --workdir W \
      --config configs/cifar10.py:pairs,ve        # a state_dict: the config gives the network

Writes ``WORKDIR/ema.npz`` (the parameters, as a teacher stage writes them), ``model.json``
(the architecture, read from the pickle; the stages refuse a config that differs) and
``import.json`` (source file, its SHA-256, EDM's constructor arguments). Then pass
``--config.teacher.workdir=WORKDIR`` to the ``pairs``, ``reflow`` and ``eval`` stages, exactly
as for a teacher the library trained; ``reflow`` initialises the student from it.

With ``--config``, the checkpoint must match the config's ``model`` section and image shape
(one line naming the field otherwise), checked before anything is written. Reading needs
neither PyTorch nor EDM's code.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "EDM network pickle or state_dict file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the teacher snapshot is written.")
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Optional stage config whose model and data the checkpoint must match "
    "(required for a state_dict).",
    lock_config=True,
)
flags.mark_flags_as_required(["checkpoint", "workdir"])


def main(argv):
    del argv
    from flax import nnx

    from simple_reflow.models import count_parameters
    from simple_reflow.models.edm_import import read_edm_network
    from simple_reflow.pair_store import file_sha256
    from simple_reflow.train import checkpoint
    from simple_reflow.train.configure import model_from_config
    from simple_reflow.train.edm import import_edm

    path, workdir, cfg = _CHECKPOINT.value, _WORKDIR.value, _CONFIG.value
    model_cfg = data_shape = None
    if cfg is not None:
        from simple_reflow.train.stages import validate_config

        model_cfg, data_shape = cfg.model, tuple(validate_config(cfg).shape)
    try:
        model_cfg, params = import_edm(path, model_cfg=model_cfg, data_shape=data_shape)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"import_edm: {e}") from None
    try:
        edm_kwargs = read_edm_network(path).kwargs
    except ValueError:
        edm_kwargs = None  # a state_dict
    shape = data_shape or (model_cfg.resolution, model_cfg.resolution, 3)
    model = nnx.eval_shape(lambda: model_from_config(model_cfg, data_shape=shape, rngs=nnx.Rngs(0)))

    os.makedirs(workdir, exist_ok=True)
    checkpoint.save_params(os.path.join(workdir, "ema.npz"), params)
    checkpoint.save_model_config(workdir, model_cfg)
    record = {
        "source": os.path.abspath(path),
        "sha256": file_sha256(path),
        "edm_kwargs": edm_kwargs,
        "parameters": count_parameters(model),
    }
    with open(os.path.join(workdir, "import.json"), "w") as f:
        json.dump(record, f, indent=1, default=str)
    cond = f", {model_cfg.num_classes} classes" if model_cfg.num_classes else ""
    print(
        f"imported {path}: model.name={model_cfg.name!r} {shape[0]}x{shape[1]}{cond}, "
        f"{record['parameters']:,} parameters, σ_data {model_cfg.sigma_data}\n"
        f"teacher snapshot: {os.path.join(workdir, 'ema.npz')} (+ model.json, import.json)\n"
        f"next: python scripts/train.py --config configs/<dataset>.py:pairs "
        f"--workdir <pairs dir> --config.teacher.workdir={workdir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
