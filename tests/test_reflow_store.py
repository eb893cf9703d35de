"""The reflow stage on a pair store: refuses pairs of another config; SIGKILLed, it resumes.

Every batch is a function of (seed, step) read from the store, so a run killed without warning
(no checkpoint at the kill) and restarted from its newest checkpoint ends with parameters
bit-identical to an uninterrupted run.
"""

import os
import shutil
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
    c.teacher.workdir = os.path.join(os.environ["RUN_ROOT"], os.environ.get("TEACHER", "teacher"))
    c.pairs.dir = os.path.join(os.environ["RUN_ROOT"], "pairs")
    return c
"""


def _start(root, stage, workdir, *flags, teacher="teacher"):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": ROOT,
        "RUN_ROOT": str(root),
        "TEACHER": teacher,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "scripts/train.py",
            "--config",
            f"{root / 'config.py'}:{stage}",
            "--workdir",
            str(workdir),
            *flags,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, code=0):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    return err


# The tests share the module's teacher and pair stores (two subprocess stages): one
# pytest-xdist worker runs them all, so the fixture is built once (``--dist loadgroup``,
# pyproject.toml), not once per worker.
pytestmark = pytest.mark.xdist_group("reflow_store")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A teacher and its pair stores (backward + forward), made once."""
    root = tmp_path_factory.mktemp("reflow_store")
    (root / "config.py").write_text(CONFIG)
    for stage in ("teacher", "pairs"):
        _finish(_start(root, stage, root / stage))
    return root


@pytest.mark.slow
def test_reflow_refuses_pairs_of_another_teacher_or_grid(root):
    err = _finish(_start(root, "reflow", root / "r1", "--config.pairs.steps=3"), code=2)
    assert "pair store mismatch" in err and "pairs.steps: store has 2, asked for 3" in err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    _finish(_start(root, "teacher", root / "teacher2", "--config.seed=5", teacher="teacher2"))
    err = _finish(_start(root, "reflow", root / "r2", teacher="teacher2"), code=2)
    assert "teacher.workdir (ema.npz SHA-256)" in err
    assert not os.path.exists(root / "r1" / "metrics.jsonl")  # refused before training


@pytest.mark.slow
def test_a_damaged_shard_stops_reflow_with_its_name_and_repair(root, tmp_path):
    """The flip that once surfaced as the ArrayRecord library's own "Corrupted Riegeli/records
    file" error: one byte in the middle of the first shard's file."""
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("r1", "r2", "straight", "cut"))
    file = copy / "pairs" / "backward" / "shard_0000000000" / "pairs.array_record"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x10
    file.write_bytes(bytes(data))
    err = _finish(_start(copy, "reflow", copy / "student"), code=2)
    lines = [x for x in err.strip().splitlines() if not x.startswith("student (ReFlow):")]
    assert len(lines) == 1, err  # one line besides the progress bar, no traceback
    assert lines[0].startswith(f"damaged input: {file} is damaged (pairs 0–15 of the pair store")
    assert f"`python scripts/verify_pairs.py {copy / 'pairs' / 'backward'} --repair`" in err
    assert "Traceback" not in err and not (copy / "student" / "ema.npz").exists()
    out = subprocess.run(
        [sys.executable, "scripts/verify_pairs.py", str(copy / "pairs"), "--repair"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and f"corrupt   {file}" in out.stdout, out.stdout
    _finish(_start(copy, "pairs", copy / "pairs"))  # regenerates the removed shard only
    for kind in ("backward", "forward"):
        a, b = root / "pairs" / kind, copy / "pairs" / kind
        for name in sorted(os.listdir(a)):
            for f in ("manifest.json",) if name == "manifest.json" else os.listdir(a / name):
                path = name if name == "manifest.json" else os.path.join(name, f)
                assert (a / path).read_bytes() == (b / path).read_bytes(), path


@pytest.mark.slow
def test_sigkilled_reflow_resumes_bit_identical(root):
    tmp_path = root
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
    with (
        np.load(tmp_path / "straight" / "ema.npz") as a,
        np.load(tmp_path / "cut" / "ema.npz") as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
