"""Samples any snapshot (an imported EDM teacher, a trained teacher or student) to images.

  python scripts/sample.py --config configs/cifar10.py:eval --snapshot runs/cifar10/reflow \
      --nfe 9 --num 64 --out runs/cifar10/samples
  python scripts/sample.py --config configs/cifar10.py:eval --snapshot runs/cifar10/edm-teacher \
      --nfe 35 --config.sampler.solver=heun --config.sampler.grid=edm --num 50000 --out W

The config gives the architecture (checked against the snapshot's ``model.json``), the image
shape and the sampler (``--config.sampler.{solver,grid,kappa,rho,r,t_max}``); ``--nfe`` is the
network-evaluation budget (the largest grid that fits). Sample i is seeded by its index from
``--seed`` (EDM's ``--seeds``), whatever the batch or device count. Writes ``OUT/grid.png``
(the first 64) and ``OUT/samples.npz`` (uint8 ``images`` [N, H, W, C], ``indices``, ``labels``
for class-conditional models), ready for external FID tools; with several processes each
writes ``samples_<process>.npz`` with its rows.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The dataset's stage config.", lock_config=True
)
_SNAPSHOT = flags.DEFINE_string("snapshot", None, "Workdir holding ema.npz (and model.json).")
_NFE = flags.DEFINE_integer("nfe", 9, "Network-evaluation budget.")
_NUM = flags.DEFINE_integer("num", 64, "Number of samples.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Sample i uses fold_in(key(seed), i).")
_BATCH = flags.DEFINE_integer("batch", 256, "Global batch (divisible by the device count).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize().")
flags.mark_flags_as_required(["config", "snapshot", "out"])


def main(argv):
    del argv
    import jax
    import numpy as np
    from flax import nnx

    if _MULTIHOST.value:
        jax.distributed.initialize()
    from simple_reflow import grids, sampler
    from simple_reflow.train import checkpoint, configure, sampling, sharding
    from simple_reflow.train.step import split_model
    from simple_reflow.viz import save_image_grid

    cfg, snap = _CONFIG.value, _SNAPSHOT.value
    spec = configure.data_spec_from_config(cfg.data)
    shape, num_classes = tuple(spec.shape), spec.num_classes
    configure.validate_model_config(cfg.model, data_shape=shape)
    checkpoint.check_model_config(snap, cfg.model, data_shape=shape, field="--snapshot")
    s = cfg.sampler
    grid, nfe = sampler.grid_for_budget(
        _NFE.value,
        s.solver,
        lambda k: grids.make_grid(s.grid, k, kappa=s.kappa, rho=s.rho, t_max=s.t_max),
    )
    model_def, like = split_model(
        configure.model_from_config(cfg.model, data_shape=shape, rngs=nnx.Rngs(0))
    )
    params = checkpoint.load_params(os.path.join(snap, "ema.npz"), like)
    key = jax.random.key(_SEED.value)
    fn = jax.jit(
        sampling.make_index_sampler(
            model_def.denoiser,
            grid,
            solver=s.solver,
            r=s.r,
            shape=shape,
            num_classes=num_classes,
            key=key,
        )
    )
    mesh = sharding.make_mesh(cfg.get("mesh"))
    params = jax.device_put(params, sharding.replicated(mesh))  # an input, not constants
    rows = {"indices": [], "images": []}

    def on_batch(idx, out):
        rows["indices"].append(idx)
        rows["images"].append(out["images"])

    sampling.stream(
        lambda idx: {"index": idx.astype(np.int32)},
        lambda b: {"images": fn(params, b["index"])},
        _NUM.value,
        _BATCH.value,
        mesh,
        on_batch=on_batch,
        desc=f"{s.solver} NFE {nfe}",
    )
    indices, images = np.concatenate(rows["indices"]), np.concatenate(rows["images"])
    out = {"images": images, "indices": indices}
    if num_classes:
        out["labels"] = np.asarray(sampling.index_labels(key, indices, num_classes))
    os.makedirs(_OUT.value, exist_ok=True)
    pid, n_proc = jax.process_index(), jax.process_count()
    name = "samples.npz" if n_proc == 1 else f"samples_{pid}.npz"
    np.savez(os.path.join(_OUT.value, name), **out)
    if pid == 0:
        save_image_grid(
            os.path.join(_OUT.value, "grid.png"),
            images[:64].astype(np.float32) / 127.5 - 1.0,
            ncols=8,
            scale=4 if shape[0] <= 16 else 1,
            pad=1,
        )
        print(f"{len(images)} samples ({s.solver}, {s.grid} grid, {nfe} NFE) -> {_OUT.value}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
