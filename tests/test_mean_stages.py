"""MeanFlow / SplitMeanFlow stages and configs (issue 24, deliverable 4; METHOD.md §9).

- Bad config fields are named, before anything is built (well under a second).
- Guidance folded into the target: the authors' v_g = ω·v + (1 − ω − κ)·v_uncond + κ·v_cond on
  a model whose per-class velocity is known, and the dropped rows keep v and the null label.
- The toy configs run end to end through ``scripts/train.py``.
- ``configs/cifar10.py:splitmeanflow,distill,smoke`` and ``:meanflow,smoke`` train through
  ``scripts/train.py`` and the ``eval`` stage scores them; the distilled student at step 0
  (:func:`~simple_reflow.train.images.init_mean_student`) scores exactly the teacher's FD at
  every NFE: its average-velocity step is the teacher's Euler step (u = v while the interval
  embedding is zero), on the same grid, noise and quantisation.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simple_reflow import losses_mean
from simple_reflow.train.stages import validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _get(name, arg):
    return importlib.import_module(f"configs.{name}").get_config(arg)


# -- config errors -------------------------------------------------------------------------------


def _set(cfg, dotted, value):
    *path, last = dotted.split(".")
    section = cfg
    for p in path:
        section = section[p]
    section[last] = value


@pytest.mark.parametrize(
    "name, arg, field, value, message",
    [
        ("toy2d", "meanflow", "model.two_time", False, "model.two_time=False"),
        ("toy2d", "", "sampler.solver", "mean", "sampler.solver='mean'"),
        ("toy2d", "meanflow", "loss.equal_fraction", 1.5, "loss.equal_fraction=1.5"),
        ("toy2d", "splitmeanflow", "loss.boundary_fraction", -0.1, "loss.boundary_fraction=-0.1"),
        ("toy2d", "meanflow", "loss.norm_eps", 0.0, "loss.norm_eps=0.0"),
        ("toy2d", "meanflow", "loss.norm_p", -1.0, "loss.norm_p=-1.0"),
        ("toy2d", "meanflow", "loss.jvp_mode", "reverse", "loss.jvp_mode='reverse'"),
        ("toy2d", "meanflow", "loss.mean_tangent", "v", "loss.mean_tangent='v'"),
        ("toy2d", "splitmeanflow", "loss.mean_tangent", "model", "loss.kind='splitmeanflow'"),
        ("toy2d", "", "loss.distill", True, "loss.distill=True"),
        ("toy2d", "meanflow", "loss.class_dropout", 0.1, "loss.class_dropout=0.1"),
        ("toy2d", "meanflow", "loss.kind", "meanflows", "loss.kind='meanflows'"),
        ("toy2d", "meanflow", "eval.teacher_solver", "rk4", "eval.teacher_solver='rk4'"),
        ("toy2d", "meanflow", "training.ema_rampup", -0.05, "training.ema_rampup=-0.05"),
        ("cifar10", "meanflow,smoke", "training.ema_rampup", -1.0, "training.ema_rampup=-1.0"),
        ("cifar10", "meanflow,smoke", "guidance.kind", "autoguidance", "guidance.kind="),
        ("cifar10", "splitmeanflow,distill,smoke", "teacher.workdir", None, "teacher.workdir"),
        ("cifar10", "eval,meanflow,smoke", "model.two_time", False, "model.two_time=False"),
    ],
)
def test_bad_mean_fields_are_named(name, arg, field, value, message):
    cfg = _get(name, arg)
    _set(cfg, field, value)
    if field == "guidance.kind":
        cfg.guidance.w = 0.6
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_config(cfg)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "name, arg, message",
    [
        ("toy2d", "distill", "'distill' needs one of"),
        ("toy2d", "meanflow,splitmeanflow", "more than one"),
        ("cifar10", "distill,smoke", "'distill' needs one of"),
        ("cifar10", "reflow,meanflow", "no 'reflow' stage"),
    ],
)
def test_bad_mean_config_args_are_named(name, arg, message):
    with pytest.raises(ValueError, match=message):
        _get(name, arg)


def test_mean_configs_resolve_to_two_time_models():
    for name, arg in [
        ("toy2d", "meanflow"),
        ("toy2d", "splitmeanflow,distill,smoke"),
        ("cifar10", "meanflow,smoke"),
        ("cifar10", "eval,splitmeanflow,smoke"),
        ("digits", "splitmeanflow,smoke"),
        ("imagenet64", "meanflow,smoke"),
    ]:
        cfg = _get(name, arg)
        validate_config(cfg)
        assert (cfg.model.two_time, cfg.sampler.solver, cfg.eval.teacher_solver) == (
            True,
            "mean",
            "euler",
        ), (name, arg)
    c = _get("cifar10", "meanflow,cond")  # guidance in the target, labels dropped by the loss
    assert c.stage == "teacher" and c.model.label_dropout == 0.0
    assert (c.loss.class_dropout, c.loss.cfg_omega, c.loss.cfg_kappa) == (0.1, 1.0, 0.5)
    # MeanFlow's CIFAR10 U-Net settings (py-meanflow cifar10_v0.sh)
    assert (c.time.logit_mean, c.time.logit_std, c.loss.equal_fraction, c.loss.norm_p) == (
        -2.0,
        2.0,
        0.25,
        0.75,
    )


def test_improved_meanflow_tangent_reaches_the_loss():
    """``loss.mean_tangent`` is passed to MeanFlow's loss (the default: MeanFlow's own)."""
    from simple_reflow.train.configure import loss_fn_from_config

    cfg = _get("toy2d", "meanflow")
    assert loss_fn_from_config(cfg.loss, cfg.time).keywords["tangent"] == "target"
    cfg.loss.mean_tangent = "model"
    assert loss_fn_from_config(cfg.loss, cfg.time).keywords["tangent"] == "model"


# -- guidance folded into the target -------------------------------------------------------------

NUM_CLASSES = 3
# Per-class velocities of a two-time "model" with u(z, r, t | c) = A[c] (the null class: A[3]).
A = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0], [0.5, 0.25]])


def _class_model(x_t, t, cond=None, *, r=None, key=None):
    """D_u = x_t − t·A[cond]: average velocity A[cond] for every r."""
    del r, key
    return x_t - t[:, None] * A[cond]


@pytest.mark.parametrize("omega, kappa", [(1.0, 0.5), (2.0, 0.0), (1.5, 0.3)])
def test_guided_velocity_is_the_authors_mix(omega, kappa):
    n = 64
    k1, k2 = jax.random.split(jax.random.key(0))
    v = jax.random.normal(k1, (n, 2))
    cond = jax.random.randint(k2, (n,), 0, NUM_CLASSES)
    z, t = jnp.zeros((n, 2)), jnp.full((n,), 0.5)
    g = losses_mean.TrainingGuidance(
        null_class=NUM_CLASSES, omega=omega, kappa=kappa, class_dropout=0.0
    )
    v_g, c_in = losses_mean.guided_velocity(
        _class_model, z, t, v, cond, jax.random.key(1), guidance=g
    )
    want = omega * v + (1 - omega - kappa) * A[NUM_CLASSES][None] + kappa * A[cond]
    np.testing.assert_allclose(v_g, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(c_in, cond)


def test_dropped_labels_keep_the_unguided_velocity():
    n = 256
    v = jax.random.normal(jax.random.key(2), (n, 2))
    cond = jnp.arange(n, dtype=jnp.int32) % NUM_CLASSES
    g = losses_mean.TrainingGuidance(
        null_class=NUM_CLASSES, omega=2.0, kappa=0.0, class_dropout=0.25
    )
    v_g, c_in = losses_mean.guided_velocity(
        _class_model, jnp.zeros((n, 2)), jnp.full((n,), 0.5), v, cond, jax.random.key(3), guidance=g
    )
    dropped = np.asarray(c_in == NUM_CLASSES)
    k = int(dropped.sum())
    assert dropped[:k].all() and not dropped[k:].any()  # a prefix, as the authors' cond_drop
    # Binomial(256, 0.25): mean 64, std 6.9; ±5 std.
    assert 30 <= k <= 98, k
    np.testing.assert_array_equal(v_g[:k], v[:k])
    np.testing.assert_allclose(v_g[k:], 2.0 * v[k:] - A[NUM_CLASSES][None], rtol=1e-6, atol=1e-6)


def test_guidance_enters_the_boundary_target_of_both_objectives():
    """All rows on the boundary (fraction 1): loss = mean_i ‖A[c_i] − v_g,i‖², v_g = 2v − A[∅]
    (ω = 2, κ = 0, no dropout), v = x1 − x0; ω = 1 is the unguided loss."""
    n = 32
    k0, k1, k2 = jax.random.split(jax.random.key(4), 3)
    batch = {
        "x0": jax.random.normal(k0, (n, 2)),
        "x1": jax.random.normal(k1, (n, 2)),
        "cond": jax.random.randint(k2, (n,), 0, NUM_CLASSES),
    }
    v = batch["x1"] - batch["x0"]
    guided = 2.0 * v - A[NUM_CLASSES][None]
    want = float(jnp.mean(jnp.sum((A[batch["cond"]] - guided) ** 2, axis=1)))
    plain = float(jnp.mean(jnp.sum((A[batch["cond"]] - v) ** 2, axis=1)))
    for loss_fn, kw in (
        (losses_mean.meanflow_loss, dict(equal_fraction=1.0, norm_p=0.0)),
        (losses_mean.splitmeanflow_loss, dict(boundary_fraction=1.0)),
    ):
        for omega, expected in ((2.0, want), (1.0, plain)):
            g = losses_mean.TrainingGuidance(
                null_class=NUM_CLASSES, omega=omega, kappa=0.0, class_dropout=0.0
            )
            loss, _ = loss_fn(_class_model, batch, jax.random.key(5), guidance=g, **kw)
            np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


# -- end to end through scripts/train.py ---------------------------------------------------------


def _train(config, workdir, *extra):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "--config",
        os.path.join(ROOT, "configs", config),
        "--workdir",
        str(workdir),
        *extra,
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # with the session's compilation cache
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert res.returncode == 0, f"{config}\n{res.stderr[-3000:]}"
    return res


@pytest.mark.slow
@pytest.mark.parametrize("method", ["meanflow", "splitmeanflow"])
def test_toy_mean_configs_run(method, tmp_path):
    """200 steps on 8gaussians (smoke). The teacher's 1-NFE Euler sample is D(x1, 1) = the data
    mean (0), at W2 = the components' radius ≈ 4 (measured 4.02); a two-time model that learned
    anything of the one-step map lands far closer (MeanFlow measured 1.29)."""
    _train(f"toy2d.py:{method},smoke", tmp_path)
    m = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert m["eval/teacher/w2@nfe=1"] > 3.5
    assert m["eval/student/w2@nfe=1"] < m["eval/teacher/w2@nfe=1"] / 2, m
    assert all(math.isfinite(v) for k, v in m.items() if k.startswith("eval/"))
    # the average-velocity error against the analytic teacher: at 1 NFE the coupling error
    for who in ("teacher", "student"):
        ave, ce = m[f"eval/{who}/avg_velocity_error@nfe=1"], m[f"eval/{who}/coupling_error@nfe=1"]
        assert ave == pytest.approx(ce, rel=1e-3)
    assert m["eval/student/avg_velocity_error@nfe=1"] < m["eval/teacher/avg_velocity_error@nfe=1"]
    assert (tmp_path / "student" / "ema.npz").exists()


def _scores(workdir):
    return json.loads((workdir / "eval_metrics.json").read_text())


def _step_zero_student(tmp_path):
    """The distilled SplitMeanFlow student before training, written as the training stage
    writes a snapshot."""
    from simple_reflow.train import checkpoint
    from simple_reflow.train.images import init_mean_student
    from simple_reflow.train.stages import resolve

    cfg = _get("cifar10", "splitmeanflow,distill,smoke")
    cfg.teacher.workdir = str(tmp_path / "teacher")
    run = resolve(cfg)
    _, params, teacher_fn = init_mean_student(run)
    assert teacher_fn is not None
    out = tmp_path / "step0"
    checkpoint.save_model_config(str(out), cfg.model)
    checkpoint.save_params(str(out / "ema.npz"), params)
    return out


def _teacher_snapshot(tmp_path):
    """A randomly initialised smoke teacher, written as the teacher stage writes its snapshot
    (the teacher stage itself runs through ``scripts/train.py`` in tests/test_image_smoke.py;
    two smoke training steps leave it as untrained as this)."""
    from flax import nnx

    from simple_reflow.train import checkpoint
    from simple_reflow.train.configure import model_from_config
    from simple_reflow.train.step import split_model

    cfg = _get("cifar10", "teacher,smoke")
    model = model_from_config(cfg.model, data_shape=(8, 8, 3), rngs=nnx.Rngs(cfg.seed))
    out = tmp_path / "teacher"
    checkpoint.save_model_config(str(out), cfg.model)
    checkpoint.save_params(str(out / "ema.npz"), split_model(model)[1])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["splitmeanflow,distill", "meanflow"])
def test_cifar10_mean_smoke_stages(arg, tmp_path):
    """Train through ``scripts/train.py``, score with the eval stage; for the distilled
    SplitMeanFlow student also its step-0 snapshot, which must score the teacher's FD exactly.
    One test per method, so that pytest-xdist runs them side by side."""
    teacher = _teacher_snapshot(tmp_path)
    t_flag = f"--config.teacher.workdir={teacher}"
    _train(f"cifar10.py:{arg},smoke", tmp_path / "student", t_flag)
    assert (tmp_path / "student" / "ema.npz").exists()
    _train(
        f"cifar10.py:eval,{arg},smoke",
        tmp_path / "eval",
        t_flag,
        f"--config.eval.model_dir={tmp_path / 'student'}",
    )
    scores = _scores(tmp_path / "eval")
    keys = {f"eval/{m}/fd_pixel@nfe={n}" for m in ("student", "teacher") for n in (1, 2)}
    assert set(scores) == keys
    # a sampler that hands back its noise scores ~133 (tests/test_image_smoke.py)
    assert all(math.isfinite(v) and 0 < v < 66 for v in scores.values()), scores
    if arg != "splitmeanflow,distill":
        return
    step0 = _step_zero_student(tmp_path)
    _train(
        "cifar10.py:eval,splitmeanflow,distill,smoke",
        tmp_path / "step0_eval",
        t_flag,
        f"--config.eval.model_dir={step0}",
    )
    scores = _scores(tmp_path / "step0_eval")
    for n in (1, 2):  # bit-identical samples: the same FD, exactly
        assert scores[f"eval/student/fd_pixel@nfe={n}"] == scores[f"eval/teacher/fd_pixel@nfe={n}"]
