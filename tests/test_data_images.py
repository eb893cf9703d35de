"""Image sources and the (seed, step)-deterministic, host-sharded batch pipeline."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from PIL import Image

from simple_reflow.data import Prefetcher, batch_at, make_image_source
from simple_reflow.data.digits import digits_arrays
from simple_reflow.data.images import ArraySource
from simple_reflow.data.pipeline import flip_bits
from simple_reflow.train.configure import data_spec_from_config, validate_data_config

tfds = pytest.importorskip("tensorflow_datasets")


def _data(**kw):
    base = dict(name="cifar10", data_dir=None, split="train", random_flip=False, image_size=0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _spec(**kw):
    return data_spec_from_config(_data(**kw))


def _ramp_source(n=37, shape=(4, 6, 2), num_classes=0):
    """Example i is the constant image i/n, so a batch shows which examples it holds."""
    images = np.broadcast_to((np.arange(n) / n)[:, None, None, None], (n, *shape))
    images = images + np.linspace(0, 0.01, shape[1])[None, None, :, None]  # asymmetric in W
    return ArraySource(images, np.arange(n) % 5, num_classes)


def test_tfds_mock_data_flows_through_pipeline():
    with tfds.testing.mock_data(num_examples=12):
        raw = tfds.data_source("cifar10", split="train", download=False)
        source = make_image_source(_spec(random_flip=True))
        batch = batch_at(source, seed=3, step=2, batch_size=8, random_flip=True)
        expected = [np.asarray(raw[int(i)]["image"]) for i in batch["index"]]
    assert source.shape == (32, 32, 3) and len(source) == 12 and source.num_classes == 0
    assert batch["x0"].shape == (8, 32, 32, 3) and batch["x0"].dtype == np.float32
    assert set(batch) == {"x0", "index"}
    pos = np.arange(16, 24)  # step 2 of batch 8
    flips = flip_bits(3, pos)
    for k, image in enumerate(expected):
        image = image[:, ::-1] if flips[k] else image
        # u8 → u8/127.5 − 1 exactly (float32 rounding only).
        np.testing.assert_allclose(batch["x0"][k], image / 127.5 - 1.0, atol=1e-6)
    assert batch["x0"].min() >= -1.0 and batch["x0"].max() <= 1.0


def test_tfds_mock_conditional_imagenet64_and_resize():
    with tfds.testing.mock_data(num_examples=5):
        source = make_image_source(_spec(name="imagenet64"))
        batch = source.get(np.array([4, 0]))
        small = make_image_source(_spec(name="imagenet64", image_size=16))
    assert source.shape == (64, 64, 3) and source.num_classes == 1000
    assert batch["cond"].dtype == np.int32 and np.all((0 <= batch["cond"]) & (batch["cond"] < 1000))
    assert small.shape == (16, 16, 3)


def test_same_seed_step_same_batch_and_hosts_agree():
    source = _ramp_source(num_classes=5)
    kw = dict(batch_size=12, random_flip=True)
    a = batch_at(source, 7, 5, **kw)
    b = batch_at(source, 7, 5, **kw)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(batch_at(source, 7, 6, **kw)["index"], a["index"])
    assert not np.array_equal(batch_at(source, 8, 5, **kw)["index"], a["index"])
    for count in (2, 3, 4):
        parts = [
            batch_at(source, 7, 5, process_index=i, process_count=count, **kw) for i in range(count)
        ]
        for key in a:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), a[key])
    with pytest.raises(ValueError, match="batch_size=12"):
        batch_at(source, 7, 5, process_count=5, **kw)


def test_each_epoch_visits_every_example_once():
    n, bs = 37, 8  # batches straddle epoch boundaries
    source = _ramp_source(n)
    idx = np.concatenate(
        [batch_at(source, 1, s, bs, random_flip=False)["index"] for s in range(2 * n)]
    )  # 16 epochs' worth of positions
    for e in range(idx.size // n):
        assert sorted(idx[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert not np.array_equal(idx[:n], idx[n : 2 * n])  # a fresh permutation per epoch


def test_flips_mirror_width_and_are_fair():
    source = _ramp_source()
    flipped = batch_at(source, 2, 0, 30, random_flip=True)
    plain = batch_at(source, 2, 0, 30, random_flip=False)
    f = flip_bits(2, np.arange(30))
    np.testing.assert_array_equal(flipped["x0"][f], plain["x0"][f][:, :, ::-1])
    np.testing.assert_array_equal(flipped["x0"][~f], plain["x0"][~f])
    # A fair coin: over 20,000 positions the mean has std 0.0035; 0.02 is > 5 std.
    assert abs(flip_bits(0, np.arange(20_000)).mean() - 0.5) < 0.02
    assert np.mean(flip_bits(0, np.arange(2000)) != flip_bits(1, np.arange(2000))) > 0.4


def test_prefetcher_matches_batch_at_resumes_and_reraises():
    source = _ramp_source()
    kw = dict(batch_size=6, random_flip=True)
    calls = []

    def fn(step):
        calls.append(step)
        if step == 9:
            raise RuntimeError("read failed at 9")
        return batch_at(source, 4, step, **kw)

    with Prefetcher(fn, depth=2) as at:
        got = {s: at(s) for s in (3, 4, 5, 6)}
        got[2] = at(2)  # out of order (a resume): restarts there
        with pytest.raises(RuntimeError, match="at 9"):
            for s in range(3, 10):
                at(s)
    for s, batch in got.items():
        np.testing.assert_array_equal(batch["x0"], batch_at(source, 4, s, **kw)["x0"])
    assert calls[:4] == [3, 4, 5, 6]  # computed ahead, in order


def test_folder_source_crops_resizes_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    exact = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    Image.fromarray(exact).save(tmp_path / "cats" / "a.png")
    wide = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "dogs" / "b.png")
    source = make_image_source(
        _spec(name="folder", data_dir=str(tmp_path), image_size=8, conditional=True)
    )
    batch = source.get(np.array([0, 1]))
    assert source.shape == (8, 8, 3) and source.num_classes == 2 and len(source) == 2
    np.testing.assert_allclose(batch["x0"][0], exact / 127.5 - 1.0, atol=1e-6)  # untouched
    crop = np.asarray(Image.fromarray(wide[:, 2:12]).resize((8, 8), Image.LANCZOS))
    np.testing.assert_allclose(batch["x0"][1], crop / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(batch["cond"], [0, 1])


def test_digits_splits_are_disjoint_and_quantised():
    train, ytrain = digits_arrays("train")
    test, ytest = digits_arrays("test")
    full, _ = digits_arrays("all")
    assert train.shape == (1500, 8, 8, 1) and test.shape == (297, 8, 8, 1)
    assert ytrain.shape == (1500,) and set(np.unique(ytest)) == set(range(10))
    # v/8 − 1 for integer v in 0..16.
    v = (full + 1.0) * 8.0
    np.testing.assert_allclose(v, np.round(v), atol=1e-5)
    assert full.min() == -1.0 and full.max() == 1.0
    rows = {r.tobytes() for r in full.reshape(len(full), -1)}
    both = np.concatenate([train, test]).reshape(1797, -1)
    assert len({r.tobytes() for r in both}) == len(rows)  # train ∪ test covers every image
    source = make_image_source(_spec(name="digits", split="test"))
    assert len(source) == 297 and source.shape == (8, 8, 1)


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(name="cifar100"), "data.name='cifar100' is not one of"),
        (dict(name="digits", random_flip=True), "data.random_flip=True"),
        (dict(name="afhqv2"), "data.data_dir=None"),
        (dict(name="afhqv2", data_dir="/nonexistent/afhq"), "data.data_dir='/nonexistent/afhq'"),
        (dict(name="cifar10", image_size=-1), "data.image_size=-1"),
        (dict(name="cifar10", source="lmdb"), "data.source='lmdb'"),
        (dict(name="afhqv2", source="mock", conditional=True), "data.conditional=True"),
        (dict(name="digits", split="validation"), "data.split='validation'"),
    ],
)
def test_bad_data_config_names_the_field(fields, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(".", r"\.")):
        validate_data_config(_data(**fields))


def test_mock_source_is_deterministic_and_shaped():
    cfg = _data(name="imagenet64", source="mock", image_size=16, mock_examples=10)
    spec = data_spec_from_config(cfg)
    assert spec.shape == (16, 16, 3) and spec.num_classes == 1000
    a = make_image_source(spec).get(np.arange(10))
    b = make_image_source(spec).get(np.arange(10))
    np.testing.assert_array_equal(a["x0"], b["x0"])
    assert a["x0"].shape == (10, 16, 16, 3) and a["x0"].min() >= -1 and a["x0"].max() <= 1
    validate_data_config(_data(name="moons"))  # toy names pass through
    with pytest.raises(TypeError, match="takes a DataSpec, got ConfigDict"):
        make_image_source(cfg)  # the data layer reads no config
