"""The functional train step and the loop: one trace, exact EMA, exact resume."""

import json
import os

import chex
import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs.toy2d import get_config
from simple_reflow.models.mlp import MLPDenoiser
from simple_reflow.train import checkpoint
from simple_reflow.train.step import ema_decay_at, init_state, make_train_step, split_model
from simple_reflow.train.toy import ONE_RF_LOSS, train_flow

B = 32


def _batch(step):
    k0, k1 = jax.random.split(jax.random.fold_in(jax.random.key(0), step))
    return {"x0": jax.random.normal(k0, (B, 2)) + 3.0, "x1": jax.random.normal(k1, (B, 2))}


def _setup(decay=0.9):
    model_def, params = split_model(MLPDenoiser(2, hidden=32, depth=2, rngs=nnx.Rngs(0)))
    opt = optax.adam(1e-3)
    return (
        model_def,
        init_state(params, opt, 0),
        make_train_step(model_def, ONE_RF_LOSS, opt, ema_decay=decay),
    )


def test_train_step_traces_once_and_learns():
    _, state, step = _setup()
    step = jax.jit(chex.assert_max_traces(step, n=1))
    first = None
    for i in range(60):
        state, metrics = step(state, _batch(i))
        first = float(metrics["train/loss"]) if first is None else first
    assert int(state.step) == 60
    # The velocity target has mean (−3, −3)·1: a model that learns it reduces the loss a lot.
    assert float(metrics["train/loss"]) < 0.5 * first


def test_ema_is_the_exponential_average():
    _, state, step = _setup(decay=0.9)
    p0 = state.params
    state, _ = jax.jit(step)(state, _batch(0))
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, p0, state.params)
    chex.assert_trees_all_close(state.ema, expected, rtol=1e-6, atol=1e-7)


def test_ema_rampup_is_edms_in_steps():
    """EDM's training loop in images (``ema_rampup_ratio``), recomputed here in float64:
    half-life = min(halflife of ema_decay, ratio · images seen), β = 0.5^(batch / half-life),
    with the images counted after the step. Decay 0.9 (half-life 6.6 steps) and ratio 0.5: the
    ramp covers the first 13 steps; the first step's EMA is the new weights (β = 2^-2)."""
    decay, ratio = 0.9, 0.5
    model_def, params = split_model(MLPDenoiser(2, hidden=32, depth=2, rngs=nnx.Rngs(0)))
    opt = optax.adam(1e-3)
    state = init_state(params, opt, 0)
    step = jax.jit(make_train_step(model_def, ONE_RF_LOSS, opt, ema_decay=decay, ema_rampup=ratio))
    halflife_images = B * np.log(0.5) / np.log(decay)
    expected = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)
    for i in range(20):
        state, _ = step(state, _batch(i))
        beta = 0.5 ** (B / min(halflife_images, (i + 1) * B * ratio))
        expected = jax.tree.map(
            lambda e, p, b=beta: b * e + (1 - b) * np.asarray(p, np.float64),
            expected,
            state.params,
        )
        chex.assert_trees_all_close(state.ema, expected, rtol=1e-5, atol=1e-6)
    assert float(ema_decay_at(0, decay, ratio)) == pytest.approx(0.25)
    assert float(ema_decay_at(99, decay, ratio)) == pytest.approx(decay)
    assert ema_decay_at(0, decay) == decay  # no ramp-up: the constant


def _toy_cfg(steps):
    cfg = get_config("smoke")
    cfg.model.hidden, cfg.model.depth = 32, 2
    cfg.training.batch_size = B
    cfg.training.log_every = 10
    cfg.training.ckpt_every = 10
    cfg.training.steps_per_call = 10
    cfg.training.num_steps = steps
    return cfg


def _train(cfg, workdir, steps):
    return train_flow(
        cfg,
        workdir,
        batch_fn=lambda s, d: _batch(s),
        loss_fn=ONE_RF_LOSS,
        num_steps=steps,
        seed=0,
        desc="t",
    )[1]


def test_interrupted_run_resumes_exactly(tmp_path):
    cfg = _toy_cfg(40)
    straight = _train(cfg, str(tmp_path / "a"), 40)
    _train(cfg, str(tmp_path / "b"), 20)  # "interrupted" after 20 steps
    resumed = _train(cfg, str(tmp_path / "b"), 40)  # same workdir: resumes at 20
    assert int(resumed.step) == 40
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
    chex.assert_trees_all_equal(resumed.ema, straight.ema)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # logged at 10, 20 (first run), 30, 40 (resumed)
    # The same scalars as TensorBoard events (one file per run segment).
    events = _tensorboard_scalars(tmp_path / "b" / "tensorboard")
    rows = [json.loads(line) for line in lines]
    assert sorted(events["train/loss"]) == [
        (r["step"], pytest.approx(r["train/loss"], rel=1e-6)) for r in rows
    ]


def _tensorboard_scalars(folder):
    """{tag: [(step, value)]} read from TensorBoard event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for name in sorted(os.listdir(folder)):
        data = (folder / name).read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_param_snapshot_round_trip_and_mismatch(tmp_path):
    _, state, _ = _setup()
    path = str(tmp_path / "ema.npz")
    checkpoint.save_params(path, state.params)
    chex.assert_trees_all_equal(checkpoint.load_params(path, state.params), state.params)
    _, other = split_model(MLPDenoiser(2, hidden=16, depth=2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="shape"):
        checkpoint.load_params(path, other)
    with pytest.raises(FileNotFoundError):
        checkpoint.load_params(str(tmp_path / "missing.npz"), other)


def test_steps_per_call_must_divide():
    cfg = _toy_cfg(45)
    with pytest.raises(ValueError, match="steps_per_call"):
        train_flow(
            cfg,
            "/nonexistent",
            batch_fn=lambda s, d: _batch(s),
            loss_fn=ONE_RF_LOSS,
            num_steps=45,
            seed=0,
            desc="t",
        )


def test_optimizer_config_errors():
    from simple_reflow.train.step import make_optimizer

    bad = ml_collections.ConfigDict(
        dict(lr=-1.0, b1=0.9, b2=0.999, eps=1e-8, warmup_steps=0, grad_clip=0.0)
    )
    with pytest.raises(ValueError, match="optim.lr"):
        make_optimizer(bad)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from simple_reflow.train.loop import NonFiniteLoss, train_loop

    _, state, step = _setup()

    def batch_at(s):  # the data turns to NaN at step 25
        b = _batch(s)
        return {**b, "x0": b["x0"] * (float("nan") if s >= 25 else 1.0)}

    workdir = str(tmp_path / "run")
    with pytest.raises(
        NonFiniteLoss,
        match=r"train/loss is nan at step 30; the newest "
        r"checkpoint \(step 20\)",
    ):
        train_loop(
            state,
            jax.jit(step),
            num_steps=60,
            workdir=workdir,
            batch_at=batch_at,
            log_every=10,
            ckpt_every=10,
        )
    manager = checkpoint.make_manager(workdir)
    assert manager.latest_step() == 20
    restored = checkpoint.restore_latest(manager, state)
    assert all(bool(jax.numpy.isfinite(x).all()) for x in jax.tree.leaves(restored.params))
    assert not os.path.exists(os.path.join(workdir, "ema.npz"))


SIGTERM_CONFIG = """
from configs.common import base_config


def get_config():
    c = base_config()  # the digits teacher with a small MLP (as tests/test_scaling.py)
    c.stage = "teacher"
    c.data.name = "digits"
    c.model.hidden, c.model.depth = 64, 2
    c.loss.kind = "edm"
    c.training.batch_size = 16
    c.training.num_steps = 1500
    c.training.log_every = 50
    c.training.ckpt_every = 100000
    return c
"""


def _run(workdir, *, sigterm_after_rows=None):
    """``python scripts/train.py`` on the digits MLP teacher, optionally SIGTERMed mid-run."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = workdir.parent / "sigterm_config.py"
    config.write_text(SIGTERM_CONFIG)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
    proc = subprocess.Popen(
        [sys.executable, "scripts/train.py", "--config", str(config), "--workdir", str(workdir)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if sigterm_after_rows:
        metrics = workdir / "metrics.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= sigterm_after_rows:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_restart_resumes_exactly(tmp_path):
    import numpy as np

    code, out, err = _run(tmp_path / "straight")
    assert code == 0, err[-2000:]
    code, out, err = _run(tmp_path / "cut", sigterm_after_rows=3)  # a real signal mid-run
    assert code == 143, (code, err[-2000:])
    assert "SIGTERM at step" in out and "checkpoint saved" in out
    saved = checkpoint.make_manager(str(tmp_path / "cut")).latest_step()
    assert 150 <= saved < 1500  # stopped where it was, not at a checkpoint period
    code, out, err = _run(tmp_path / "cut")  # the same command resumes
    assert code == 0, err[-2000:]
    with (
        np.load(tmp_path / "straight" / "ema.npz") as a,
        np.load(tmp_path / "cut" / "ema.npz") as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_normalised_loss_shows_the_raw_distance_beside_it(tmp_path, capsys):
    """Simple ReFlow's normalised loss is ≈ 1 whatever the fit; the raw per-sample distance
    beside it (bar, JSONL, TensorBoard) is what falls as the model learns."""
    import functools

    from simple_reflow import losses

    cfg = _toy_cfg(60)
    loss_fn = functools.partial(losses.flow_loss, normalize=True)
    train_flow(
        cfg,
        str(tmp_path),
        batch_fn=lambda s, d: _batch(s),
        loss_fn=loss_fn,
        num_steps=60,
        seed=0,
        desc="t",
    )
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # mean_i d_i / (d_i + δ) ∈ (1 − max_i δ/d_i, 1], δ = 2e-8: ≈ 1 at any fit
        assert 1 - 1e-3 < r["train/loss"] <= 1
    assert rows[-1]["train/raw_distance"] < 0.8 * rows[0]["train/raw_distance"]
    events = _tensorboard_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in events["train/raw_distance"]] == [r["step"] for r in rows]
    assert f"raw_distance={rows[-1]['train/raw_distance']:.4g}" in capsys.readouterr().err
