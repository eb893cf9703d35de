"""The one fit loop: both batch protocols train identically, fusion and resume are exact."""

import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from simple_reflow.models.mlp import MLPDenoiser
from simple_reflow.train.fit import DeviceBatches, HostBatches, fit
from simple_reflow.train.step import split_model
from simple_reflow.train.toy import ONE_RF_LOSS

B = 16


def _device_batch(step, data):
    k0, k1 = jax.random.split(jax.random.fold_in(jax.random.key(0), step))
    return {"x0": jax.random.normal(k0, (B, 2)) + data, "x1": jax.random.normal(k1, (B, 2))}


def _host_batch(step):  # the same values, computed outside any step
    return jax.tree.map(np.asarray, _device_batch(np.int32(step), np.float32(3.0)))


def _fit(workdir, batches, *, steps=8, k=1, seed=0):
    model_def, params = split_model(MLPDenoiser(2, hidden=16, depth=2, rngs=nnx.Rngs(0)))
    state = fit(
        model_def,
        params,
        loss_fn=ONE_RF_LOSS,
        optimizer=optax.adam(1e-2),
        batches=batches,
        num_steps=steps,
        workdir=str(workdir),
        seed=seed,
        ema_decay=0.9,
        steps_per_call=k,
        log_every=4,
        ckpt_every=4,
        desc="test",
    )
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    return state, [r["train/loss"] for r in rows]


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)


@pytest.mark.slow
def test_device_and_host_batches_train_the_same_with_and_without_fusion(tmp_path):
    ref, losses = _fit(tmp_path / "dev1", DeviceBatches(_device_batch, np.float32(3.0)))
    assert losses[-1] < losses[0]
    for name, batches, k in [
        ("dev4", DeviceBatches(_device_batch, np.float32(3.0)), 4),
        ("host1", HostBatches(_host_batch), 1),
        ("host4", HostBatches(_host_batch), 4),
    ]:
        state, got = _fit(tmp_path / name, batches, k=k)
        assert int(state.step) == 8
        np.testing.assert_allclose(got, losses, rtol=2e-5, err_msg=name)
        _close(state, ref)


@pytest.mark.parametrize("k", [1, 2])
def test_host_batches_resume_exactly(tmp_path, k):
    whole, _ = _fit(tmp_path / "whole", HostBatches(_host_batch), k=k)
    _fit(tmp_path / "split", HostBatches(_host_batch), steps=4, k=k)
    resumed, _ = _fit(tmp_path / "split", HostBatches(_host_batch), steps=8, k=k)
    for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_workdir_past_the_step_count_is_refused_not_returned(tmp_path):
    _fit(tmp_path / "run", HostBatches(_host_batch), steps=8)
    with pytest.raises(ValueError, match=r"checkpoint at step 8, past the run's 4 steps"):
        _fit(tmp_path / "run", HostBatches(_host_batch), steps=4)


def test_steps_per_call_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"training\.steps_per_call=3 must divide"):
        _fit(tmp_path / "a", HostBatches(_host_batch), k=3)
    with pytest.raises(ValueError, match=r"training\.steps_per_call=0"):
        _fit(tmp_path / "b", HostBatches(_host_batch), k=0)
