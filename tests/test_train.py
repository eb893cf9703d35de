"""The functional train step and the loop: one trace, exact EMA, exact resume."""

import chex
import jax
import ml_collections
import optax
import pytest
from flax import nnx

from configs.toy2d import get_config
from simple_reflow import losses
from simple_reflow.models.mlp import MLPDenoiser
from simple_reflow.train import checkpoint
from simple_reflow.train.step import init_state, make_train_step, split_model
from simple_reflow.train.toy import ONE_RF_LOSS, ONE_RF_TIME, train_flow

B = 32


def _batch(step):
    k0, k1 = jax.random.split(jax.random.fold_in(jax.random.key(0), step))
    return {"x0": jax.random.normal(k0, (B, 2)) + 3.0, "x1": jax.random.normal(k1, (B, 2))}


def _setup(decay=0.9):
    model_def, params = split_model(MLPDenoiser(2, hidden=32, depth=2, rngs=nnx.Rngs(0)))
    opt = optax.adam(1e-3)
    loss_fn = lambda m, b, k: losses.flow_loss(m, b, k, ONE_RF_LOSS, ONE_RF_TIME)  # noqa: E731
    return model_def, init_state(params, opt, 0), make_train_step(model_def, loss_fn, opt,
                                                                   ema_decay=decay)


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
    return train_flow(cfg, workdir, batch_fn=lambda s, d: _batch(s), loss_cfg=ONE_RF_LOSS,
                      time_cfg=ONE_RF_TIME, num_steps=steps, seed=0, desc="t")[1]


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
        train_flow(cfg, "/nonexistent", batch_fn=lambda s, d: _batch(s), loss_cfg=ONE_RF_LOSS,
                   time_cfg=ONE_RF_TIME, num_steps=45, seed=0, desc="t")


def test_optimizer_config_errors():
    from simple_reflow.train.step import make_optimizer

    bad = ml_collections.ConfigDict(dict(lr=-1.0, b1=0.9, b2=0.999, eps=1e-8, warmup_steps=0,
                                         grad_clip=0.0))
    with pytest.raises(ValueError, match="optim.lr"):
        make_optimizer(bad)
