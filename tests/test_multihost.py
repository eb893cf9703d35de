"""Two processes over loopback (gloo CPU collectives) train exactly like one.

Each process runs ``jax.distributed.initialize`` with its id, reads its half of every global
batch (``batch_at`` with ``process_index``), and the jitted step sees the same global arrays
as a single process would; the logged losses must agree.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
import jax
pid, n, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if n > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid)
from configs.common import base_config
from simple_reflow.train.images import run_image_stage
c = base_config()
c.stage = "teacher"
c.data.name = "digits"
c.model.hidden, c.model.depth = 64, 2
c.loss.kind = "edm"
c.training.batch_size = 16
c.training.num_steps = 4
c.training.log_every = 1
c.training.ckpt_every = 100
run_image_stage(c, workdir)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(workdir, n):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(i), str(n), port, str(workdir)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return np.array([r["train/loss"] for r in rows])


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    one = _run(tmp_path / "one", 1)
    two = _run(tmp_path / "two", 2)
    assert len(one) == len(two) == 4
    np.testing.assert_allclose(one, two, rtol=1e-5)
