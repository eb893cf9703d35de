"""The reflow stage streaming from a pair store, SIGKILLed mid-run, resumes to the same model.

Every batch is a function of (seed, step) read from the store, so a run killed without warning
(no checkpoint at the kill) and restarted from its newest checkpoint ends with parameters
bit-identical to an uninterrupted run.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
import os
from configs.common import base_config


def get_config(stage):
    c = base_config()  # digits with a small MLP (as tests/test_scaling.py)
    c.stage = stage
    c.data.name = "digits"
    c.model.hidden, c.model.depth = 64, 2
    c.loss.kind = "edm" if stage == "teacher" else "flow"
    c.training.batch_size = 16
    c.training.num_steps = 2 if stage == "teacher" else 600
    c.training.log_every = 25
    c.training.ckpt_every = 50
    c.pairs.num_backward, c.pairs.num_forward, c.pairs.chunk, c.pairs.steps = 64, 32, 16, 2
    c.pairs.rho = 0.4
    c.teacher.workdir = os.path.join(os.environ["RUN_ROOT"], "teacher")
    c.pairs.dir = os.path.join(os.environ["RUN_ROOT"], "pairs")
    return c
"""


def _start(root, stage, workdir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "RUN_ROOT": str(root)}
    return subprocess.Popen([sys.executable, "scripts/train.py", "--config",
                             f"{root / 'config.py'}:{stage}", "--workdir", str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_sigkilled_reflow_resumes_bit_identical(tmp_path):
    (tmp_path / "config.py").write_text(CONFIG)
    for stage in ("teacher", "pairs"):
        _finish(_start(tmp_path, stage, tmp_path / stage))
    _finish(_start(tmp_path, "reflow", tmp_path / "straight"))
    proc = _start(tmp_path, "reflow", tmp_path / "cut")
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 9:  # past step 200
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "cut" / "ema.npz").exists()
    _finish(_start(tmp_path, "reflow", tmp_path / "cut"))  # the same command resumes
    with np.load(tmp_path / "straight" / "ema.npz") as a, \
            np.load(tmp_path / "cut" / "ema.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
