"""Mixed precision (``model.dtype="bfloat16"``): bfloat16 compute, float32 parameters.

Tolerance: bfloat16 keeps 8 significant bits, so each rounding has relative error up to
u = 2⁻⁸ ≈ 0.0039. The fixture networks have ≈ 16 layers on their longest path; independent
rounding errors accumulate like a random walk, √16·u ≈ 0.016 relative RMS error of the
backbone's output. We allow 2.5× that (0.04), and require more than 1e-4, which float32
compute (relative error ~1e-7) could not reach: the check fails if bfloat16 is not used.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import backbones
from simple_reflow.losses_edm import edm_loss
from simple_reflow.models.edm_import import EDMNetwork
from simple_reflow.train.configure import model_from_config
from simple_reflow.train.edm import edm_model_config, model_params
from simple_reflow.train.step import init_state, make_train_step, split_model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "edm")


def _rms_rel(a, ref):
    return float(np.sqrt(np.mean(np.square(a - ref)) / np.mean(np.square(ref))))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("ddpmpp_cond", marks=pytest.mark.slow),
        pytest.param("ncsnpp_uncond", marks=pytest.mark.slow),
        pytest.param("adm_cond", marks=pytest.mark.slow),
    ],
)
def test_bfloat16_forward_agrees_with_float32(name):
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as fx:
        fx = {k: fx[k] for k in fx.files}
    weights = {k[2:]: v.astype(np.float32) for k, v in fx.items() if k.startswith("w/")}
    net = EDMNetwork.from_init_kwargs(json.loads(str(fx["spec"]))["init_kwargs"], weights)
    labels = jnp.asarray(fx["labels"]) if "labels" in fx else None
    x = jnp.asarray(np.transpose(fx["x"], (0, 2, 3, 1)))
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = edm_model_config(net, dtype=dtype)
        model = nnx.eval_shape(
            lambda c=cfg: model_from_config(c, data_shape=(32, 32, 3), rngs=nnx.Rngs(0))
        )
        nnx.update(
            model,
            nnx.State(
                jax.tree.map(jnp.asarray, model_params(net.state, cfg, data_shape=(32, 32, 3)))
            ),
        )
        f = nnx.jit(lambda m, x, n, c: m.backbone(x, n, c))(
            model, x.astype(dtype), jnp.asarray(fx["F_noise"]), labels
        )
        d = nnx.jit(lambda m, x, s, c: m.edm(x, s, c))(model, x, jnp.asarray(fx["sigma"]), labels)
        assert f.dtype == jnp.dtype(dtype) and d.dtype == jnp.float32
        out[dtype] = np.asarray(f, np.float32), np.asarray(d)
    err_f = _rms_rel(out["bfloat16"][0], out["float32"][0])
    err_d = _rms_rel(out["bfloat16"][1], out["float32"][1])
    assert 1e-4 < err_f < 0.04, err_f
    assert err_d < 0.04, err_d


@pytest.mark.slow
def test_bfloat16_train_step_keeps_float32_params():
    cfg = backbones.ddpmpp_smoke(dropout=0.1)
    cfg.dtype = "bfloat16"
    model = model_from_config(cfg, data_shape=(8, 8, 3), rngs=nnx.Rngs(0))
    model_def, params = split_model(model)
    optimizer = optax.adam(1e-3)
    state = init_state(params, optimizer, seed=0)
    step = jax.jit(make_train_step(model_def, edm_loss, optimizer, ema_decay=0.9))
    batch = {"x0": jax.random.uniform(jax.random.key(1), (4, 8, 8, 3), minval=-1, maxval=1)}
    new, metrics = step(state, batch)
    assert np.isfinite(float(metrics["train/loss"]))
    assert np.isfinite(float(metrics["train/grad_norm"])) and metrics["train/grad_norm"] > 0
    leaves = jax.tree.leaves(new.params)
    assert all(v.dtype == jnp.float32 for v in leaves)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new.params, state.params)
    assert max(jax.tree.leaves(moved)) > 0
