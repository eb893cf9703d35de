"""A missing input (dataset, teacher snapshot, pair store) is one line naming the path and the
command that creates it, before anything is built or compiled."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from configs import cifar10
from simple_reflow.errors import MissingInput
from simple_reflow.train.stages import run_stage, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    res = subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            "--config",
            "configs/cifar10.py:teacher",
            "--workdir",
            str(tmp_path / "w"),
            f"--config.data.data_dir={empty}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("missing input:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "'cifar10'" in lines[0] and str(empty) in lines[0]
    assert "tfds build cifar10 --file_format=array_record" in lines[0]


def _cfg(stage, tmp_path):
    c = cifar10.get_config(f"{stage},smoke")
    c.teacher.workdir = str(tmp_path / "teacher")
    c.pairs.dir = str(tmp_path / "pairs")
    return c


def _fails_fast(cfg, workdir, pattern):
    validate_config(cfg)
    start = time.perf_counter()
    with pytest.raises(MissingInput, match=pattern):
        run_stage(cfg, str(workdir))
    assert time.perf_counter() - start < 1.0  # refused before any model is built or compiled


def test_missing_teacher_snapshot_and_pairs_name_the_command(tmp_path):
    _fails_fast(
        _cfg("pairs", tmp_path),
        tmp_path / "p",
        r"teacher\.workdir=.*teacher' holds no snapshot \(ema\.npz\): create it with "
        r"`python scripts/train\.py --config configs/cifar10\.py:teacher.*"
        r"scripts/import_edm\.py",
    )
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "ema.npz").write_bytes(b"")  # exists; its content is read later
    _fails_fast(
        _cfg("reflow", tmp_path),
        tmp_path / "r",
        r"pairs\.dir=.*pairs' has no backward pairs .*: create them with `python "
        r"scripts/train\.py --config configs/cifar10\.py:pairs --workdir .*pairs "
        r"--config\.teacher\.workdir=",
    )
    _fails_fast(
        _cfg("eval", tmp_path),
        tmp_path / "e",
        r"eval\.model_dir=.*holds no snapshot .*configs/cifar10\.py:reflow",
    )
