"""Results do not depend on the device count: 1 vs 8 virtual CPU devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
from configs.common import base_config
from simple_reflow.train.images import run_image_stage
c = base_config()
c.stage = "teacher"
c.data.name = "digits"
c.model.hidden, c.model.depth = 64, 2
c.loss.kind = "edm"
c.training.batch_size = 16
c.training.num_steps = 6
c.training.log_every = 1
c.training.ckpt_every = 100
run_image_stage(c, sys.argv[1])
"""


def _losses(workdir, devices):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return np.array([r["train/loss"] for r in rows])


@pytest.mark.slow
def test_training_losses_identical_on_1_and_8_devices(tmp_path):
    one = _losses(tmp_path / "one", 1)
    eight = _losses(tmp_path / "eight", 8)
    assert len(one) == 6
    # Same data, same keys, same math; only the order of the batch reduction differs, so the
    # losses agree to float32 rounding of a mean over 16 terms (a few ulps), not just roughly.
    np.testing.assert_allclose(one, eight, rtol=1e-5)
