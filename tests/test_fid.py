"""FID as EDM and pytorch-fid compute it.

The Inception is compared with pytorch-fid's own network (``scripts/make_fid_fixtures.py``):
both sides generate the full-size network's weights from their names
(:func:`simple_reflow.metrics.seeded_weights.seeded_value`), so the fixture holds only images
and pytorch-fid's outputs. Tolerance: relative error ``max|ours − theirs| / max|theirs| ≤ 1e-4``
— float32 rounding (6e-8) accumulated over the 94 convolutions of 299² inputs, each summing up
to 3,456 products, in two frameworks' kernel orders (measured: ~1e-6).
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from conftest import xla_flags
from flax import nnx

from simple_reflow.metrics.fid import FeatureStats, load_reference, save_reference, to_uint8
from simple_reflow.metrics.frechet import frechet_distance_from_stats
from simple_reflow.metrics.inception import (
    inception_params,
    load_fid_inception,
    resize_matrix,
)
from simple_reflow.metrics.seeded_weights import seeded_value

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "fid", "inception_seeded.npz")


def seeded_state(names_shapes):
    """pytorch-fid's state dict with the seeded weights (integer counters left out)."""
    return {
        n: seeded_value(n, s)
        for n, s in names_shapes.items()
        if not n.endswith("num_batches_tracked")
    }


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def inception(fixture, tmp_path_factory):
    shapes = json.loads(str(fixture["state_shapes_json"]))
    path = str(tmp_path_factory.mktemp("inception") / "seeded_inception.npz")
    np.savez(path, **seeded_state(shapes))  # the converter reads a state dict file
    return load_fid_inception(path)


def _rel(ours, ref):
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("size", [32, 64])
def test_features_equal_pytorch_fid(inception, fixture, size):
    images = np.transpose(fixture[f"images{size}"], (0, 2, 3, 1)).astype(np.float32) / 255.0
    blocks = nnx.jit(lambda m, x: m.blocks(x))(inception, jnp.asarray(images))
    assert _rel(blocks[0].mean(axis=(1, 2)), fixture[f"block0_mean{size}"]) <= 1e-4
    assert _rel(blocks[2].mean(axis=(1, 2)), fixture[f"block2_mean{size}"]) <= 1e-4
    rel = _rel(blocks[3], fixture[f"features{size}"])
    assert rel <= 1e-4, rel
    # Features depend on the image (a network of zeros would match nothing above anyway).
    assert np.std(fixture[f"features{size}"]) > 1.0


def test_resize_matrix_is_bilinear_with_half_pixel_centres():
    m = resize_matrix(4, 8)  # 2× upsampling: weights 3/4, 1/4 away from the borders
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(m[1, 0:3], [0.75, 0.25, 0.0], atol=1e-6)  # source 0.25
    np.testing.assert_allclose(m[2, 0:3], [0.25, 0.75, 0.0], atol=1e-6)  # source 0.75
    np.testing.assert_allclose(m[0, 0], 1.0, atol=1e-6)  # clamped at the border
    ramp = np.arange(32, dtype=np.float32)
    up = resize_matrix(32, 299) @ ramp  # a linear ramp stays linear inside the borders
    src = (np.arange(299) + 0.5) * 32 / 299 - 0.5
    inner = (src >= 0) & (src <= 31)
    np.testing.assert_allclose(up[inner], src[inner], atol=1e-4)


def test_converter_rejects_other_weights(fixture):
    shapes = json.loads(str(fixture["state_shapes_json"]))
    state = seeded_state(shapes)
    missing = dict(state)
    del missing["Mixed_6b.branch7x7_2.conv.weight"]
    with pytest.raises(ValueError, match=r"missing key 'Mixed_6b\.branch7x7_2\.conv\.weight'"):
        inception_params(missing)
    with pytest.raises(ValueError, match="unexpected key 'AuxLogits.conv0.conv.weight'"):
        inception_params({**state, "AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1))})
    with pytest.raises(FileNotFoundError, match="no Inception weights at"):
        load_fid_inception("/nonexistent/pt_inception.pth")


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d)) / np.sqrt(rank or d)
    return a @ a.T


@pytest.mark.slow
def test_frechet_distance_equals_scipy_sqrtm_in_2048_dims():
    """A full-rank covariance against a nearly singular one (rank 100 of 2048)."""
    rng = np.random.default_rng(0)
    d = 2048
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 0.1
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d, 100)
    ours = frechet_distance_from_stats(mu1, c1, mu2, c2)
    root = scipy.linalg.sqrtm(c1 @ c2)
    ref = float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root.real))
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_feature_stats_stream_equals_batch_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((301, 16)) * 3 + 1
    stats = FeatureStats(16)
    for part in np.array_split(x, 7):
        stats.update(part)
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    # A set against its own statistics scores 0 (up to float64 rounding of the sqrt).
    assert frechet_distance_from_stats(mu, sigma, mu, sigma) < 1e-8


def test_to_uint8_is_edms_quantisation():
    x = np.array([-1.5, -1.0, -0.0039, 0.0, 0.5, 0.99, 1.0, 2.0], np.float32)
    # EDM: (x * 127.5 + 128).clip(0, 255).to(torch.uint8), a truncating cast.
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 127, 128, 191, 254, 255, 255])
    np.testing.assert_array_equal(np.asarray(to_uint8(jnp.asarray(x))), to_uint8(x))


def test_reference_files_are_checked(tmp_path):
    path = str(tmp_path / "ref.npz")
    save_reference(path, np.zeros(2048), np.eye(2048), resolution=32, num_images=10)
    mu, sigma = load_reference(path, dim=2048, resolution=32)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    with pytest.raises(ValueError, match="32x32 images.*64x64"):
        load_reference(path, dim=2048, resolution=64)
    with pytest.raises(ValueError, match="2048-d statistics; the features are 64-d"):
        load_reference(path, dim=64)
    edm_style = str(tmp_path / "edm.npz")  # EDM's files: mu and sigma only
    np.savez(edm_style, mu=np.zeros(2048), sigma=np.eye(2048))
    load_reference(edm_style, dim=2048, resolution=64)
    with pytest.raises(FileNotFoundError, match="scripts/fid_stats.py"):
        load_reference(str(tmp_path / "missing.npz"))


def _mixture(shape=(8, 8, 3)):
    from simple_reflow.teachers import GaussianMixture

    means = jax.random.uniform(jax.random.key(3), (3, *shape), minval=-0.7, maxval=0.7)
    return GaussianMixture(means, jnp.array([0.2, 0.3, 0.25]), jnp.ones(3))


def test_same_seeds_give_the_same_samples_whatever_the_batch():
    from simple_reflow import grids
    from simple_reflow.train import sampling, sharding

    teacher = _mixture()
    fn = jax.jit(
        sampling.make_index_sampler(
            lambda _: teacher.denoise,  # closed form: no parameters to pass
            grids.uniform_grid(4),
            solver="heun",
            r=0.4,
            shape=(8, 8, 3),
            num_classes=0,
            key=jax.random.key(0),
        )
    )
    mesh = sharding.make_mesh()
    runs = {}
    for batch in (3, 8, 16):
        idx, images = [], []

        def on_batch(i, out, idx=idx, images=images):
            idx.append(i)
            images.append(out["images"])

        sampling.stream(
            lambda i: {"index": i.astype(np.int32)},
            lambda b: {"images": fn((), b["index"])},
            13,
            batch,
            mesh,
            on_batch=on_batch,
        )
        idx = np.concatenate(idx)
        np.testing.assert_array_equal(idx, np.arange(13))  # each index once, none past the end
        runs[batch] = np.concatenate(images).astype(np.int16)
    # uint8 rounding can flip a pixel whose float value differs in the last bits by batch size.
    for batch in (8, 16):
        assert np.max(np.abs(runs[batch] - runs[3])) <= 1
        assert np.mean(runs[batch] != runs[3]) < 1e-3
    assert np.std(runs[3]) > 10  # real images, not a constant


SCALING_SCRIPT = """
import json, sys
import jax
pid, n, port, fixture = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if n > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid)
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from simple_reflow import grids
from simple_reflow.metrics.frechet import frechet_distance_from_stats
from simple_reflow.metrics.inception import inception_params, FIDInception, uint8_features
from simple_reflow.metrics.seeded_weights import seeded_value
from simple_reflow.teachers import GaussianMixture
from simple_reflow.train import sampling, sharding
shapes = json.loads(str(np.load(fixture)["state_shapes_json"]))
net = nnx.eval_shape(FIDInception)
state = {k: seeded_value(k, s) for k, s in shapes.items() if not k.endswith("tracked")}
nnx.update(net, nnx.State(jax.tree.map(jnp.asarray, inception_params(state))))
featurize = uint8_features(net)
means = jax.random.uniform(jax.random.key(3), (3, 8, 8, 3), minval=-0.7, maxval=0.7)
teacher = GaussianMixture(means, jnp.array([0.2, 0.3, 0.25]), jnp.ones(3))
out = {}
for seed in (0, 1):
    stats, _ = sampling.sample_features(
        lambda _: teacher.denoise, (), grids.uniform_grid(3), solver="euler", r=0.4,
        shape=(8, 8, 3), num_classes=0, key=jax.random.key(seed), featurize=featurize,
        dim=2048, num=24, batch_size=8, mesh=sharding.make_mesh())
    out[seed] = stats
mu0, s0 = out[0].mean_cov()
mu1, s1 = out[1].mean_cov()
print(json.dumps({"fid": frechet_distance_from_stats(mu0, s0, mu1, s1),
                  "self": frechet_distance_from_stats(mu0, s0, mu0, s0),
                  "count": out[0].count, "mu0": float(mu0.sum()),
                  "sigma0": float(np.abs(s0).sum())}))
"""


def _scaled_fid(processes=1, devices=1):
    import socket
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(devices),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCALING_SCRIPT, str(i), str(processes), port, FIXTURE],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert all(o == outs[0] for o in outs)  # every process gets the merged statistics
    return outs[0]


@pytest.mark.slow
def test_fid_is_independent_of_device_and_host_count():
    """One process on one device against two processes of four devices each (8 in all), so
    that one run changes both the device and the host count. The merged statistics agree to
    float32 rounding of the features (XLA's kernels differ with the per-device batch; measured
    1e-8 relative on 8 devices; over processes the float64 sums travel as bytes, exactly). FID
    is a little looser (measured 4e-7): with 24 samples in 2048 dimensions the covariances have
    rank 23, and the square roots of their near-zero eigenvalues magnify those differences."""
    one = _scaled_fid()
    assert one["count"] == 24 and one["fid"] > 1.0 and one["self"] < 1e-6
    run = _scaled_fid(processes=2, devices=4)
    assert run["count"] == 24
    assert run["mu0"] == pytest.approx(one["mu0"], rel=1e-5)
    assert run["sigma0"] == pytest.approx(one["sigma0"], rel=1e-5)
    assert run["fid"] == pytest.approx(one["fid"], rel=1e-5)


@pytest.mark.slow
def test_eval_stage_scores_fid_against_reference_statistics(fixture, tmp_path):
    """scripts/fid_stats.py → reference; the eval stage → FID per NFE; bad inputs refused."""
    import subprocess
    import sys

    from configs import cifar10
    from simple_reflow.train import checkpoint
    from simple_reflow.train.configure import model_from_config
    from simple_reflow.train.stages import run_stage, validate_config
    from simple_reflow.train.step import split_model

    weights = str(tmp_path / "seeded_inception.npz")
    np.savez(weights, **seeded_state(json.loads(str(fixture["state_shapes_json"]))))
    cfg = cifar10.get_config("eval,smoke")
    cfg.eval.inception_weights = weights
    cfg.eval.fid_ref = str(tmp_path / "ref.npz")
    cfg.eval.num_samples = 12
    cfg.eval.batch_size = 8
    cfg.teacher.workdir = ""
    model_dir = str(tmp_path / "student")
    _, params = split_model(model_from_config(cfg.model, data_shape=(8, 8, 3), rngs=nnx.Rngs(0)))
    os.makedirs(model_dir)
    checkpoint.save_params(os.path.join(model_dir, "ema.npz"), params)
    cfg.eval.model_dir = model_dir

    with pytest.raises(ValueError, match=r"eval\.fid_ref: no FID reference statistics"):
        validate_config(cfg)  # no reference yet: refused before anything is sampled
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(
        [
            sys.executable,
            "scripts/fid_stats.py",
            "--config",
            "configs/cifar10.py:eval,smoke",
            "--out",
            cfg.eval.fid_ref,
            "--inception",
            weights,
            "--batch",
            "16",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(cfg.eval.fid_ref) as ref:
        assert ref["mu"].shape == (2048,) and int(ref["resolution"]) == 8
        assert int(ref["num_images"]) == 32  # the smoke mock training set

    validate_config(cfg)
    run_stage(cfg, str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert "eval/student/fid@nfe=1" in metrics  # (budget 2 buys the same DPM-2 grid here)
    assert all(k.startswith("eval/student/fid@nfe=") and v > 0 for k, v in metrics.items())

    bad = cfg.copy_and_resolve_references()
    bad.eval.inception_weights = str(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"eval\.inception_weights=.*does not exist"):
        validate_config(bad)
    small = str(tmp_path / "ref16.npz")
    save_reference(small, np.zeros(2048), np.eye(2048), resolution=16)
    bad = cfg.copy_and_resolve_references()
    bad.eval.fid_ref = small
    with pytest.raises(ValueError, match=r"eval\.fid_ref: .*16x16 images.*8x8"):
        validate_config(bad)


def _largest_constant(lowered_text):
    """Element count of the largest dense constant in a lowered (StableHLO) program."""
    sizes = [1]
    for shape in re.findall(
        r"stablehlo\.constant dense<.*?> : tensor<([0-9x]+)x[a-z]", lowered_text
    ):
        sizes.append(int(np.prod([int(d) for d in shape.split("x")])))
    return max(sizes)


@pytest.mark.slow
def test_sampler_takes_the_weights_as_an_input_not_as_constants():
    """A compiled sampler holds no copy of the weights: they are an argument, so one program
    serves every snapshot (teacher, student, any checkpoint) and the persistent cache's key does
    not carry 56M CIFAR10 weights. Two snapshots run through one compilation."""
    from simple_reflow import grids
    from simple_reflow.models import build_model
    from simple_reflow.train import sampling
    from simple_reflow.train.step import split_model

    model = build_model(
        "ddpmpp",
        data_shape=(8, 8, 3),
        rngs=nnx.Rngs(0),
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
    )
    model_def, params = split_model(model)
    fn = jax.jit(
        sampling.make_index_sampler(
            model_def.denoiser,
            grids.uniform_grid(2),
            solver="euler",
            r=0.4,
            shape=(8, 8, 3),
            num_classes=0,
            key=jax.random.key(0),
        )
    )
    idx = jnp.arange(4, dtype=jnp.int32)
    sizes = [x.size for x in jax.tree.leaves(params)]
    largest = _largest_constant(fn.lower(params, idx).as_text())
    assert largest < max(sizes), (largest, max(sizes))
    other = jax.tree.map(lambda x: x + 0.01, params)
    a, b = fn(params, idx), fn(other, idx)
    assert fn._cache_size() == 1
    assert np.any(np.asarray(a) != np.asarray(b))  # the weights were read, not ignored
