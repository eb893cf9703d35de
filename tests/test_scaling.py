"""Results do not depend on the device or host count.

The same short teacher run (digits, MLP, EDM loss) on 1 device, on 8 virtual CPU devices, and
as 2 processes over loopback with gloo CPU collectives (each reading its half of every global
batch) must log the same losses. Only the order of the batch reduction differs, so they agree
to float32 rounding of a mean over 16 terms (rtol 1e-5), not just roughly.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4

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
c.training.num_steps = STEPS
c.training.log_every = 1
c.training.ckpt_every = 100
run_image_stage(c, workdir)
""".replace("STEPS", str(STEPS))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(workdir, *, processes=1, devices=1):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(devices),
    }
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(i), str(processes), port, str(workdir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return np.array([r["train/loss"] for r in rows])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _losses(tmp_path_factory.mktemp("one"))


@pytest.mark.slow
@pytest.mark.xdist_group("scaling_reference")  # one worker: the reference run is made once
def test_eight_devices_train_like_one(reference, tmp_path):
    eight = _losses(tmp_path, devices=8)
    assert len(reference) == len(eight) == STEPS
    np.testing.assert_allclose(reference, eight, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.xdist_group("scaling_reference")
def test_two_processes_train_like_one(reference, tmp_path):
    two = _losses(tmp_path, processes=2)
    assert len(two) == STEPS
    np.testing.assert_allclose(reference, two, rtol=1e-5)


PAIRS_SCRIPT = """
import os, sys
import jax
pid, n, port, workdir, stages = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
if n > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid)
from configs.common import base_config
from simple_reflow.train.images import run_image_stage
c = base_config()
c.data.name = "digits"
c.model.hidden, c.model.depth = 64, 2
c.training.batch_size = 16
c.training.log_every = 1
c.training.ckpt_every = 100
c.teacher.workdir = os.path.join(os.path.dirname(workdir), "teacher")
c.pairs.dir = os.path.join(workdir, "pairs")
c.pairs.num_backward, c.pairs.num_forward, c.pairs.chunk, c.pairs.steps = 48, 24, 16, 2
c.pairs.rho = 0.4
for stage in stages.split(","):
    c.stage = stage
    c.loss.kind = "edm" if stage == "teacher" else "flow"
    c.training.num_steps = 2 if stage == "teacher" else 4
    run_image_stage(c, c.teacher.workdir if stage == "teacher" else os.path.join(workdir, stage))
"""


def _run_stages(workdir, stages, *, processes=1, devices=1):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(devices),
    }
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PAIRS_SCRIPT,
                str(i),
                str(processes),
                port,
                str(workdir),
                stages,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]


def _pairs_and_losses(workdir, **kw):
    from simple_reflow import pair_store

    _run_stages(workdir, "pairs,reflow", **kw)
    stores = {}
    for kind in ("backward", "forward"):
        path = os.path.join(workdir, "pairs", kind)
        assert pair_store.verify_store(path).complete
        with pair_store.PairStore(path) as s:
            stores[kind] = (pair_store.read_manifest(path)["shards"], s.read(np.arange(len(s))))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "reflow", "metrics.jsonl"))]
    return stores, np.array([r["train/loss"] for r in rows])


@pytest.mark.slow
def test_pair_stores_and_reflow_are_the_same_on_8_devices_and_2_processes(tmp_path):
    """One teacher; its pairs generated and trained on by 1 device, 8 devices and 2 processes:
    byte-identical shards (same checksums in the manifests), the same reflow losses."""
    _run_stages(tmp_path / "one", "teacher")
    ref_stores, ref_loss = _pairs_and_losses(tmp_path / "one")
    assert len(ref_loss) == 4
    for name, kw in (("eight", dict(devices=8)), ("two", dict(processes=2))):
        stores, loss = _pairs_and_losses(tmp_path / name, **kw)
        for kind, (shards, arrays) in stores.items():
            for k in ("x0", "x1"):
                diff = np.abs(arrays[k] - ref_stores[kind][1][k]).max()
                assert diff == 0, f"{name}: {kind} {k} differs by up to {diff}"
            assert shards == ref_stores[kind][0]
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
