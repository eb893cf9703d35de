"""Compares this library's networks with EDM's outputs stored by ``make_edm_fixtures.py``.

  python scripts/check_edm_equivalence.py tests/fixtures/edm
  python scripts/check_edm_equivalence.py /tmp/edm_full     # full-size, from --full

For every ``NAME.npz`` (and the weights it names: ``w/`` keys, ``NAME.pkl`` or
``NAME_state_dict.pt``) it imports the weights, runs our denoiser and backbone on EDM's inputs
and prints the relative error ``max|ours − EDM| / max|EDM|`` of the denoiser ``D`` and of the
backbone ``F``, and our parameter count.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simple_reflow.models import count_parameters
from simple_reflow.models.edm_import import EDMNetwork, read_edm_network, read_state_dict
from simple_reflow.train.configure import model_from_config
from simple_reflow.train.edm import edm_model_config, model_params


def _weights(path, fx):
    base = path[: -len(".npz")]
    if os.path.exists(base + ".pkl"):
        return read_edm_network(base + ".pkl").state
    if os.path.exists(base + "_state_dict.pt"):
        return read_state_dict(base + "_state_dict.pt")
    return {k[2:]: np.asarray(fx[k], np.float32) for k in fx.files if k.startswith("w/")}


def _rel(ours, ref):
    ours = np.transpose(np.asarray(ours), (0, 3, 1, 2))
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def check(path):
    """Returns ``(name, model name, parameters, rel. error of D, rel. error of F)``."""
    fx = np.load(path)
    spec = json.loads(str(fx["spec"]))
    net = EDMNetwork.from_init_kwargs(spec["init_kwargs"], _weights(path, fx))
    cfg = edm_model_config(net)
    size = int(net.kwargs["img_resolution"])
    shape = (size, size, int(net.kwargs["img_channels"]))
    params = model_params(net.state, cfg, data_shape=shape, source=path)
    model = nnx.eval_shape(lambda: model_from_config(cfg, data_shape=shape, rngs=nnx.Rngs(0)))
    nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, params)))
    labels = jnp.asarray(fx["labels"]) if "labels" in fx.files else None
    aug = jnp.asarray(fx["aug"]) if "aug" in fx.files else None
    nhwc = lambda a: jnp.asarray(np.transpose(fx[a], (0, 2, 3, 1)))  # noqa: E731
    d = nnx.jit(lambda m, x, s, c: m.edm(x, s, c))(
        model, nhwc("x"), jnp.asarray(fx["sigma"]), labels
    )
    f = nnx.jit(lambda m, x, n, c, a: m.backbone(x, n, c, augment_labels=a))(
        model, nhwc("F_in"), jnp.asarray(fx["F_noise"]), labels, aug
    )
    name = os.path.basename(path)[: -len(".npz")]
    return name, cfg.name, count_parameters(model), _rel(d, fx["D"]), _rel(f, fx["F"])


def main(argv):
    if len(argv) != 2:
        raise SystemExit(__doc__)
    for path in sorted(glob.glob(os.path.join(argv[1], "*.npz"))):
        t0 = time.time()
        name, arch, n, rel_d, rel_f = check(path)
        print(
            f"{name:>24} {arch:>8} {n:>12,d} params  rel. error D {rel_d:.2e}  "
            f"F {rel_f:.2e}  ({time.time() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv)
