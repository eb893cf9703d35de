"""Every image config's smoke variant runs its stages via scripts/train.py: the whole chain
teacher → pairs → reflow → eval for CIFAR10 (DDPM++, with projected pairs) and ImageNet64 (ADM,
class-conditional, pairs also on 8 devices); teacher → eval for AFHQv2 and teacher → boss →
eval for FFHQ (the teacher's BOSS grids and the teacher straightened along one, scored with Euler
steps on them), whose smoke
configs differ from CIFAR10's only in the data set and in constants (dropout, learning rate,
EMA), so their pairs and reflow stages would run CIFAR10's programs again (measured 88 and
101 s each for the whole chain in the slow tier).

The smoke variants use a tiny backbone on 8×8 mock data, so each stage takes seconds; the
subprocesses share the session's persistent XLA compilation cache (``tests/conftest.py``), so
datasets with the same smoke network (CIFAR10, AFHQv2, FFHQ) compile it once.

What the FD can show at this size: two training steps teach the networks nothing measurable,
and a pixel FD from 8 samples in 192 dimensions is dominated by the covariance estimate (8 real
training images score ~53 against the 8 held-out ones). An untrained EDM-preconditioned model
already emits near-zero images at t = 0 (c_skip ≈ 0 at σ = 80), FD ~37, and so do the smoke
teacher and student (measured 37.1 at 1 NFE, 41.0 at 3); the initial noise x1 scores ~133. So
the test asserts what can fail here: the student's and the teacher's FD are below half the
noise's (a sampler or snapshot that hands back its noise fails), every (model, NFE) key is
present and finite, and the sample grids have the right size.
"""

import importlib
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_flags
from PIL import Image

from simple_reflow import pair_store, pairs
from simple_reflow.data import make_image_source
from simple_reflow.metrics.fid import to_uint8
from simple_reflow.metrics.frechet import frechet_distance_from_stats, gaussian_stats
from simple_reflow.train.configure import data_spec_from_config
from simple_reflow.train.sampling import pixel_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("teacher", "pairs", "reflow", "eval")
# DPM-Solver-2 (the smoke sampler) spends 2 NFE per interval and 1 (a denoiser call) on the
# last: 1 interval = 1 NFE, 2 intervals = 3, 3 intervals = 5. Budgets (1, 4) buy NFE 1 and 3.
EVAL_ARGS = ("--config.eval.nfe=(1,4)",)
EVAL_NFE = (1, 3)
# Sample grids of the 8 smoke samples (8×8): one row of ncols = 8, pad 1, upscaled 4×, so
# width (8·(8 + 1) − 1)·4 = 284 and height (8 + 1 − 1)·4 = 32 (viz.image_grid's docstring).
GRID_SIZE = (284, 32)


def _stage(dataset, stage, root, extra=(), *, pairs="pairs", devices=1, model="reflow"):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "--config",
        os.path.join(ROOT, "configs", f"{dataset}.py") + f":{stage},smoke",
        "--workdir",
        str(root / (pairs if stage == "pairs" else stage)),
        f"--config.teacher.workdir={root / 'teacher'}",
        f"--config.pairs.dir={root / pairs}",
        f"--config.eval.model_dir={root / model}",
        *extra,
    ]
    env = {  # with the session's compilation cache
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(devices),
    }
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert res.returncode == 0, f"{dataset}:{stage}\n{res.stderr[-3000:]}"
    return res


def _noise_fd(dataset):
    """Pixel FD of the eval stage's initial noise (sample i: ``fold_in(key(eval.seed), i)``),
    quantised to uint8 as the samples are, to the eval stage's reference (the first held-out
    images, as many as samples)."""
    cfg = importlib.import_module(f"configs.{dataset}").get_config("eval,smoke")
    spec = data_spec_from_config(cfg.data)
    held_out = make_image_source(spec, split=cfg.data.eval_split)
    n = min(cfg.eval.num_samples, len(held_out))
    ref = held_out.get(np.arange(n))["x0"].reshape(n, -1)
    x1 = pairs.noise_for_indices(jax.random.key(cfg.eval.seed), jnp.arange(n), tuple(spec.shape))
    noise = np.asarray(pixel_features(to_uint8(x1)))
    return frechet_distance_from_stats(*gaussian_stats(noise), *gaussian_stats(ref))


def _chain(dataset, tmp_path, extra=(), stages=STAGES):
    for stage in stages:
        _stage(dataset, stage, tmp_path, (*extra, *(EVAL_ARGS * (stage == "eval"))))
    assert (tmp_path / "teacher" / "ema.npz").exists()
    if "reflow" in stages:
        assert pair_store.verify_store(str(tmp_path / "pairs" / "backward")).complete
        assert (tmp_path / "reflow" / "ema.npz").exists()
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    models = ("student", "teacher")
    assert set(metrics) == {f"eval/{m}/fd_pixel@nfe={n}" for m in models for n in EVAL_NFE}
    assert all(math.isfinite(v) and v > 0 for v in metrics.values()), metrics
    noise_fd = _noise_fd(dataset)  # measured ~133; the models ~37-41 (module docstring)
    for m in models:
        for n in EVAL_NFE:
            assert metrics[f"eval/{m}/fd_pixel@nfe={n}"] < noise_fd / 2, (metrics, noise_fd)
            with Image.open(tmp_path / "eval" / f"samples_{m}_nfe{n}.png") as im:
                assert (im.size, im.mode) == (GRID_SIZE, "RGB")


@pytest.mark.slow
def test_cifar10_smoke_stages_with_projected_pairs(tmp_path):
    # The pairs stage also writes projected pairs (λ by Algorithm 2, budget from the forward
    # pairs) and the reflow stage mixes backward, forward and projected pairs.
    _chain(
        "cifar10",
        tmp_path,
        (
            "--config.pairs.projection.fraction=0.25",
            "--config.pairs.projection.num=8",
            "--config.pairs.projection.lam=search",
        ),
    )
    report = pair_store.verify_store(str(tmp_path / "pairs" / "projected"))
    assert report.complete and report.ok == 2  # 8 pairs in shards of pairs.chunk = 4


@pytest.mark.slow
def test_imagenet64_smoke_stages_and_pairs_on_8_devices(tmp_path):
    _chain("imagenet64", tmp_path)
    # its convolutional, class-conditional teacher, reused
    _pairs_on_8_devices_equal_one_to_float_rounding("imagenet64", tmp_path)


@pytest.mark.slow
def test_teacher_boss_straightening_and_eval_smoke_stages(tmp_path):
    """FFHQ's teacher, then the ``boss`` stage (``:boss,smoke`` with ``boss.model='student'``,
    which reads ``eval.model_dir``, here the teacher): BOSS grids measured on the teacher's own
    reference trajectories and saved beside its snapshot, then the teacher straightened along
    its K = 4 grid (the smoke config's 2 steps of Adam) into the stage's workdir, the same grids
    saved beside the straightened snapshot. A second run of the stage finds it done and writes
    nothing. The eval stage then samples the straightened snapshot (as the student) and the
    teacher with Euler steps on their BOSS grids (``sampler.grid='boss'``). AFHQv2's config is
    FFHQ's with other numbers (tests/test_configs.py checks them), so its chain would run the
    same programs again."""
    from simple_reflow.train import boss as train_boss

    dataset, root = "ffhq", tmp_path
    _stage(dataset, "teacher", root)
    _stage(dataset, "boss", root, model="teacher")
    _check_boss_grids(dataset, root / "teacher")
    _check_boss_grids(dataset, root / "boss")  # the teacher's cost: its grids, not new ones
    teacher, straight = (train_boss.read_grid(str(root / f)) for f in ("teacher", "boss"))
    np.testing.assert_array_equal(teacher["cost"], straight["cost"])
    assert straight["info"]["straightened_from"] == str(root / "teacher")
    assert straight["info"]["straighten_k"] == 4 and straight["info"]["straighten_steps"] == 2
    with np.load(root / "teacher" / "ema.npz") as a, np.load(root / "boss" / "ema.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert any(not np.array_equal(a[k], b[k]) for k in a.files)  # it was trained
    files = {p.name: p.read_bytes() for p in (root / "boss").iterdir() if p.is_file()}
    again = _stage(dataset, "boss", root, model="teacher")
    assert "already done" in again.stdout + again.stderr
    assert {p.name: p.read_bytes() for p in (root / "boss").iterdir() if p.is_file()} == files
    extra = (*EVAL_ARGS, "--config.sampler.grid=boss", "--config.sampler.solver=euler")
    _stage(dataset, "eval", root, extra, model="boss")
    metrics = json.loads((root / "eval" / "eval_metrics.json").read_text())
    noise_fd = _noise_fd(dataset)
    nfes = (1, 4)  # Euler on the BOSS grids: one call per interval
    assert set(metrics) == {
        f"eval/{m}/fd_pixel@nfe={n}" for m in ("student", "teacher") for n in nfes
    }
    for n in nfes:
        for m in ("student", "teacher"):
            assert 0 < metrics[f"eval/{m}/fd_pixel@nfe={n}"] < noise_fd / 2, (metrics, noise_fd)


def _check_boss_grids(dataset, folder):
    """The saved grids (K = 2, 4, 6 of the smoke config) are paths of K steps through the
    candidate times from t_max to 0, each the cheapest under the saved cost matrix."""
    from simple_reflow import boss
    from simple_reflow.train import boss as train_boss
    from simple_reflow.train.boss_stage import candidate_times

    cfg = importlib.import_module(f"configs.{dataset}").get_config("boss,smoke")
    times = candidate_times(cfg)
    rec = train_boss.read_grid(str(folder))  # checked against the snapshot's SHA-256
    np.testing.assert_array_equal(rec["times"], times)
    assert sorted(rec["grids"]) == [2, 4, 6]
    for k, grid in rec["grids"].items():
        assert len(grid) == k + 1 and np.all(np.isin(grid, times))
        assert grid[0] == times[0] and grid[-1] == 0.0
        np.testing.assert_array_equal(grid, boss.optimal_grid(rec["cost"], times, k))
    assert rec["info"]["num_noises"] == cfg.boss.num_noises


def _pairs_on_8_devices_equal_one_to_float_rounding(dataset, root):
    """The chain's pairs regenerated on 8 virtual devices (each convolving 1 of a chunk's 4
    images instead of 4): labels identical, images equal to float32 rounding, not bit for bit —
    XLA:CPU's convolutions round differently at another per-device batch. Measured with the
    smoke DDPM++ on digits: backward pairs identical, 32 of 1,536 forward x1 values off by
    <= 3.6e-12 (values ~1e-5), and one device at batch 2 vs 16 changes 25 of 1,024 values by
    as much; the MLP teacher's stores are byte-identical (``tests/test_scaling.py``). The bound
    is a few float32 ulps at the data's scale (|x| <= ~4)."""
    _stage(dataset, "pairs", root, pairs="pairs_8", devices=8)
    for kind in ("backward", "forward"):
        with (
            pair_store.PairStore(str(root / "pairs" / kind)) as one,
            pair_store.PairStore(str(root / "pairs_8" / kind)) as eight,
        ):
            assert len(one) == len(eight) > 0
            ref, got = (s.read(np.arange(len(s)), sorted(s.arrays)) for s in (one, eight))
            assert set(ref) == {"x0", "x1", "cond", "index"}, ref.keys()
            for k in ("cond", "index"):
                np.testing.assert_array_equal(got[k], ref[k])
            for k in ("x0", "x1"):
                np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=2e-6)


@pytest.mark.slow
def test_loom_cfm_trains_an_image_1rf_through_the_cli(tmp_path):
    """``configs/cifar10.py:loom-cfm,smoke``: a 1-RF with LOOM-CFM's per-image assignment over
    the whole (mock) training set, paired inside the jitted step."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "--config",
        os.path.join(ROOT, "configs", "cifar10.py") + ":loom-cfm,smoke",
        "--workdir",
        str(tmp_path / "loom"),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # with the session's compilation cache
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "loom" / "metrics.jsonl").open()]
    assert rows and all(r["coupling/invalid_batch"] == 0 for r in rows)
    # LOOM only ever improves the stored assignment of the batch it sees.
    assert all(r["coupling/cost_after"] <= r["coupling/cost_before"] + 1e-3 for r in rows)
    assert (tmp_path / "loom" / "ema.npz").exists()
