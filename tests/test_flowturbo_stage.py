"""The image ``flowturbo`` stage and the eval stage's plan sampling, in process.

The network is a small MLP denoiser on the FFHQ smoke config's 8×8×3 mock images, with random
weights written as the teacher's snapshot (no training step to compile): the stage's own work
(the plan run with the network in the refiner's place, two refiner steps, the record) is what
runs. Config validation of the ``flowturbo`` section: ``tests/test_configs.py``.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import ffhq
from simple_reflow import pairs, sampler
from simple_reflow.train import checkpoint, configure
from simple_reflow.train import flowturbo_stage as fs
from simple_reflow.train.stages import run_stage
from simple_reflow.train.step import split_model

SHAPE = (8, 8, 3)


def _config(root):
    cfg = ffhq.get_config("flowturbo,smoke")  # plan H1R2, 8 noises, 2 refiner steps
    cfg.model = ml_collections.ConfigDict(
        {
            "name": "mlp",
            "hidden": 32,
            "depth": 2,
            "dropout": 0.0,
            "sigma_data": 0.5,
            "two_time": False,
            "num_classes": 0,
            "label_dropout": 0.0,
        }
    )
    cfg.teacher.workdir = str(root / "teacher")
    cfg.flowturbo.model = "teacher"
    return cfg


def _teacher(cfg):
    """The MLP with every weight perturbed (its zero-initialised output layer would make D = 0,
    a straight flow whose velocity never changes, and the refiner's targets trivial)."""
    model_def, params = split_model(
        configure.model_from_config(cfg.model, data_shape=SHAPE, rngs=nnx.Rngs(0))
    )
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten(
        [
            x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
            for k, x in zip(keys, leaves, strict=True)
        ]
    )
    os.makedirs(cfg.teacher.workdir, exist_ok=True)
    checkpoint.save_params(os.path.join(cfg.teacher.workdir, "ema.npz"), params)
    return model_def, params


def test_flowturbo_stage_saves_the_plan_and_a_rerun_does_nothing(tmp_path):
    cfg = _config(tmp_path)
    model_def, params = _teacher(cfg)
    workdir = tmp_path / "flowturbo"
    summary = run_stage(cfg, str(workdir))
    assert "2 NFE + 3 refiner calls, 24 training rows" in summary  # H1R2: 3 calls × 8 noises
    rec = json.loads((workdir / fs.PLAN_FILE).read_text())
    # H: 2 network calls; R into t = 0: 2 refiner calls, then 1 on the first-order last step
    assert (rec["plan"], rec["nfe"], rec["refiner_calls"]) == ("H1R2", 2, 3)
    assert rec["refiner"] == {"kind": "conv", "channels": 3, "width": 8, "depth": 1}
    times = np.asarray(rec["times"])
    assert times.shape == (4,) and times[0] == cfg.sampler.t_max and times[-1] == 0.0
    assert np.all(np.diff(times) < 0)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    assert rows[-1]["step"] == 2 and rows[-1]["train/reuse_distance"] > 0
    stamp = {f: os.stat(workdir / f).st_mtime_ns for f in ("ema.npz", fs.PLAN_FILE)}
    assert "already done" in run_stage(cfg, str(workdir))
    assert stamp == {f: os.stat(workdir / f).st_mtime_ns for f in stamp}
    cfg.flowturbo.plan = "H1P1R1"  # its checkpoints would resume as this plan's refiner
    with pytest.raises(ValueError, match=r"settings that differ from this config's \(plan\)"):
        run_stage(cfg, str(workdir))
    cfg.flowturbo.plan = "H1R2"

    # The eval path, with the refiner zeroed (as at initialisation, zero output layer): an R
    # step reuses the carried velocity v₂ of the H step, so H1R2 on (t₀, t₁, t₂, 0) moves
    # x₁ + (t₂ − t₁)·v₂ + (0 − t₂)·v₂ — the pseudo-corrector's Heun step and its last, Euler,
    # step into 0 on (t₀, t₁, 0) (simple_reflow.sampler, its own code), at the same 2 NFE.
    loaded, refiner_def, trained = fs.read_plan(str(workdir), SHAPE, cfg.teacher.workdir)
    zero = jax.tree.map(jnp.zeros_like, trained)
    sample = jax.jit(
        fs.make_plan_sample_fn(model_def.denoiser, refiner_def, loaded["plan"], loaded["times"])
    )
    x1 = pairs.noise_for_indices(jax.random.key(0), jnp.arange(16), SHAPE)
    got = sample({"model": params, "refiner": zero}, x1, None)
    short = np.delete(loaded["times"], 2)
    want, nfe = jax.jit(
        lambda p, x1: sampler.sample(model_def.denoiser(p), x1, short, solver="pseudo_heun")
    )(params, x1)
    assert nfe == loaded["nfe"] == 2
    # float32: two Euler moves round apart from one; measured 2.4e-7 with max |x0| = 4.1, so
    # allow ~8 ulps (2^-23 ≈ 1.2e-7) of the largest value
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(want))))
    # the trained refiner is what the eval stage loads: other weights, other samples
    assert float(jnp.max(jnp.abs(sample({"model": params, "refiner": trained}, x1, None) - got)))
    # a refiner trained for another snapshot is refused, naming both folders
    with pytest.raises(ValueError, match="trained for the snapshot in .*teacher.*not for eval"):
        fs.read_plan(str(workdir), SHAPE, str(workdir))

    # the eval stage samples the plan at its NFE, the refiner calls reported beside it, and
    # the teacher with Heun (eval.teacher_solver's default) at each budget
    ev = ffhq.get_config("eval,smoke")
    ev.model, ev.teacher.workdir = cfg.model, cfg.teacher.workdir
    ev.eval.model_dir = cfg.teacher.workdir
    ev.sampler.solver, ev.eval.refiner_dir, ev.eval.nfe = "flowturbo", str(workdir), (1,)
    print(run_stage(ev, str(tmp_path / "eval")))
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert set(metrics) == {
        "eval/student/fd_pixel@nfe=2",
        "eval/student/refiner_calls@nfe=2",
        "eval/teacher/fd_pixel@nfe=1",
    }
    assert metrics["eval/student/refiner_calls@nfe=2"] == 3
