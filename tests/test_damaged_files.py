"""The other files a run reads, damaged: each gives one error naming the file and the command
that rewrites it, and a damaged checkpoint step falls back to the previous one, saying so.

Damage: the file cut to half its length, or one bit flipped in its middle (inside the data: only
a checksum can see that), or replaced by garbage.
"""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simple_reflow.errors import DamagedInput
from simple_reflow.metrics import fid, inception
from simple_reflow.train import checkpoint, loop
from simple_reflow.train.step import init_state

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _damage(path, how):
    data = bytearray(open(path, "rb").read())
    if how == "cut":
        data = data[: len(data) // 2]
    elif how == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = bytearray(b"\x93NUMPY garbage" * 8)
    with open(path, "wb") as f:
        f.write(bytes(data))


HOW = ["cut", "flip", "garbage"]


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_snapshot_names_itself_and_the_command(tmp_path, how):
    params = {"dense": {"kernel": np.arange(4096, dtype=np.float32).reshape(64, 64)}}
    path = str(tmp_path / "ema.npz")
    checkpoint.save_params(path, params)
    _damage(path, how)
    with pytest.raises(DamagedInput, match="rerunning the stage that trained it") as e:
        checkpoint.load_params(path, params)
    assert e.value.path == path and str(e.value).startswith(f"{path} is damaged (")
    assert f"--workdir {tmp_path}" in str(e.value)
    (tmp_path / "import.json").write_text(json.dumps({"source": "/ckpt/edm-cifar10.pkl"}))
    with pytest.raises(DamagedInput, match="import_edm.py --checkpoint /ckpt/edm-cifar10.pkl"):
        checkpoint.load_params(path, params)


def test_a_damaged_model_json_names_itself(tmp_path):
    (tmp_path / "model.json").write_text('{"name": "ddpmpp", "channel')
    with pytest.raises(DamagedInput, match=r"model.json is damaged \(JSONDecodeError"):
        checkpoint.load_model_config(str(tmp_path))


@pytest.mark.parametrize("how", HOW)
def test_damaged_fid_statistics_and_inception_weights(tmp_path, how):
    ref = str(tmp_path / "ref.npz")
    fid.save_reference(ref, np.zeros(64), np.eye(64))
    _damage(ref, how)
    with pytest.raises(DamagedInput, match=f"{ref} is damaged .*scripts/fid_stats.py"):
        fid.load_reference(ref)
    weights = str(tmp_path / "inception.npz")
    shutil.copy(os.path.join(FIXTURES, "fid", "inception_seeded.npz"), weights)
    _damage(weights, how)
    with pytest.raises(DamagedInput, match=f"{weights} is damaged .*pt_inception-2015-12-05"):
        inception.load_fid_inception(weights)


def _state(value):
    w = value * jax.random.normal(jax.random.key(0), (64, 64))  # incompressible: 16 KiB on disk
    params = {"w": w, "b": jnp.arange(3.0)}
    return init_state(params, optax.adam(1e-3), seed=0)


def _flip_largest_data_file(step_dir):
    files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
    _damage(max(files, key=os.path.getsize), "flip")  # the arrays' data


def _step(state):  # deterministic: a resumed run continues exactly
    params = jax.tree.map(lambda p: p * 0.5 + 1.0, state.params)
    return state._replace(step=state.step + 1, params=params, ema=params), {
        "train/loss": jnp.sum(params["w"])
    }


def test_a_damaged_checkpoint_step_falls_back_to_the_previous_one(tmp_path, caplog):
    step = jax.jit(_step)
    kw = dict(log_every=1, ckpt_every=2, keep=2)
    straight = loop.train_loop(_state(1.0), step, num_steps=6, workdir=str(tmp_path / "a"), **kw)
    loop.train_loop(_state(1.0), step, num_steps=4, workdir=str(tmp_path / "b"), **kw)
    folder = tmp_path / "b" / "checkpoints"
    assert sorted(os.listdir(folder)) == ["2", "4"]
    _flip_largest_data_file(folder / "4")  # Orbax restores a flipped byte without complaint
    with caplog.at_level(logging.WARNING):
        resumed = loop.train_loop(_state(1.0), step, num_steps=6, workdir=str(tmp_path / "b"), **kw)
    assert f"checkpoint step 4 in {folder} is damaged" in caplog.text
    assert "checksum differs" in caplog.text and "falling back to the previous step" in caplog.text
    assert any(n.startswith("damaged_4.") for n in os.listdir(folder))
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)  # steps 3-4 recomputed: the same run
    for name in sorted(os.listdir(folder)):  # every step left damaged: one error, the command
        if name.isdigit():
            shutil.rmtree(folder / name / "default")
    with pytest.raises(DamagedInput, match=f"{folder} is damaged .*remove {folder} to restart"):
        checkpoint.restore_latest(checkpoint.make_manager(str(tmp_path / "b")), _state(1.0))


def test_checkpoint_checksum_sees_any_one_element_change():
    state = _state(1.0)
    base = checkpoint.state_checksum(state)
    assert checkpoint.state_checksum(_state(1.0)) == base
    w = np.asarray(state.params["w"]).copy()
    for i, bit in [(0, 0), (5, 31), (127, 17)]:  # one bit of one element, anywhere
        bad = w.copy().reshape(-1).view(np.uint32)
        bad[i] ^= np.uint32(1 << bit)
        params = {**state.params, "w": jnp.asarray(bad.view(np.float32).reshape(w.shape))}
        assert checkpoint.state_checksum(state._replace(params=params)) != base
    swapped = {**state.params, "b": state.params["b"][::-1]}  # same values, other places
    assert checkpoint.state_checksum(state._replace(params=swapped)) != base
