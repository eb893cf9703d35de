"""Every image config's smoke variant runs teacher → pairs → reflow → eval via scripts/train.py.

The smoke variants use a tiny backbone on 8×8 mock data, so each stage takes seconds; the
subprocesses share a persistent XLA compilation cache, so datasets with the same smoke network
(CIFAR10, AFHQv2, FFHQ) compile it once.
"""

import json
import os
import subprocess
import sys

import pytest

from simple_reflow import pair_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("teacher", "pairs", "reflow", "eval")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


def _stage(dataset, stage, root, cache_dir, extra=()):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
           "--config", os.path.join(ROOT, "configs", f"{dataset}.py") + f":{stage},smoke",
           "--workdir", str(root / stage),
           f"--config.teacher.workdir={root / 'teacher'}",
           f"--config.pairs.dir={root / 'pairs'}",
           f"--config.eval.model_dir={root / 'reflow'}", *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert res.returncode == 0, f"{dataset}:{stage}\n{res.stderr[-3000:]}"
    return res


def _chain(dataset, tmp_path, cache_dir, extra=()):
    for stage in STAGES:
        _stage(dataset, stage, tmp_path, cache_dir, extra)
    assert (tmp_path / "teacher" / "ema.npz").exists()
    assert pair_store.verify_store(str(tmp_path / "pairs" / "backward")).complete
    assert (tmp_path / "reflow" / "ema.npz").exists()
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert any(k.startswith("eval/student/fd_pixel@nfe=") for k in metrics)
    assert all(v >= 0 for v in metrics.values())
    assert any(f.endswith(".png") for f in os.listdir(tmp_path / "eval"))


def test_cifar10_smoke_stages_with_projected_pairs(tmp_path, cache_dir):
    # The pairs stage also writes projected pairs (λ by Algorithm 2, budget from the forward
    # pairs) and the reflow stage mixes backward, forward and projected pairs.
    _chain("cifar10", tmp_path, cache_dir, ("--config.pairs.projection.fraction=0.25",
                                            "--config.pairs.projection.num=8",
                                            "--config.pairs.projection.lam=search"))
    report = pair_store.verify_store(str(tmp_path / "pairs" / "projected"))
    assert report.complete and report.ok == 2  # 8 pairs in shards of pairs.chunk = 4


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["afhqv2", "ffhq", "imagenet64"])
def test_other_smoke_stages(dataset, tmp_path, cache_dir):
    _chain(dataset, tmp_path, cache_dir)


@pytest.mark.slow
def test_loom_cfm_trains_an_image_1rf_through_the_cli(tmp_path, cache_dir):
    """``configs/cifar10.py:loom-cfm,smoke``: a 1-RF with LOOM-CFM's per-image assignment over
    the whole (mock) training set, paired inside the jitted step."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config",
           os.path.join(ROOT, "configs", "cifar10.py") + ":loom-cfm,smoke",
           "--workdir", str(tmp_path / "loom")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "loom" / "metrics.jsonl").open()]
    assert rows and all(r["coupling/invalid_batch"] == 0 for r in rows)
    # LOOM only ever improves the stored assignment of the batch it sees.
    assert all(r["coupling/cost_after"] <= r["coupling/cost_before"] + 1e-3 for r in rows)
    assert (tmp_path / "loom" / "ema.npz").exists()
