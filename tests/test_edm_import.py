"""EDM checkpoints: our networks compute what EDM's own PyTorch networks compute.

The fixtures in ``tests/fixtures/edm`` were written by ``scripts/make_edm_fixtures.py`` from
NVlabs/edm's ``training/networks.py`` (PyTorch 2.13): reduced-width networks with EDM's
structure and every parameter perturbed to non-zero values, their inputs and EDM's outputs
(the denoiser ``D`` and the backbone alone ``F``). Each network's weights come in one of the
formats users have: an EDM training-snapshot pickle (``.pkl``), ``torch.save(state_dict)``
(``.pt``), or EDM state_dict names in the ``.npz``. Nothing here needs PyTorch.

Tolerance: relative error ``max|ours − EDM| / max|EDM| ≤ 1e-5`` in float32 — a few units of
float32 rounding (6e-8) accumulated through ~30 layers and two frameworks' kernel orders.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simple_reflow.models.edm_import import EDMNetwork, read_edm_network, read_state_dict
from simple_reflow.models.torch_files import TorchFileError, load_torch_file
from simple_reflow.train.configure import model_from_config
from simple_reflow.train.edm import edm_model_config, import_edm, model_params

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "edm")
NETWORKS = (
    "ddpmpp_uncond",
    "ddpmpp_cond",
    "ncsnpp_uncond",
    "ncsnpp_cond",
    "songunet_skip",
    "adm_cond",
)
RTOL = 1e-5


def _fixture(name):
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as data:
        return {k: data[k] for k in data.files}


def _weights(name, fx):
    """The EDM state_dict of a fixture network, read from the format it ships in."""
    pkl = os.path.join(FIXTURES, f"{name}.pkl")
    pt = os.path.join(FIXTURES, f"{name}_state_dict.pt")
    if os.path.exists(pkl):
        return read_edm_network(pkl).state
    if os.path.exists(pt):
        return read_state_dict(pt)
    return {k[2:]: v.astype(np.float32) for k, v in fx.items() if k.startswith("w/")}


def _rel(ours, ref):
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def _nhwc(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


@pytest.fixture(scope="module", params=NETWORKS)
def imported(request):
    name = request.param
    fx = _fixture(name)
    spec = json.loads(str(fx["spec"]))
    net = EDMNetwork.from_init_kwargs(spec["init_kwargs"], _weights(name, fx))
    cfg = edm_model_config(net)
    size = int(net.kwargs["img_resolution"])
    params = model_params(net.state, cfg, data_shape=(size, size, 3), source=name)
    model = nnx.eval_shape(
        lambda: model_from_config(cfg, data_shape=(size, size, 3), rngs=nnx.Rngs(0))
    )
    nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, params)))
    return name, cfg, model, fx


def test_architecture_read_from_the_network(imported):
    name, cfg, _, _ = imported
    expected = {"ddpmpp": "ddpmpp", "ncsnpp": "ncsnpp", "songunet": "songunet", "adm": "adm"}
    assert cfg.name == expected[name.split("_")[0]]
    assert cfg.num_classes == (10 if name.endswith("cond") and "uncond" not in name else 0)


def test_denoiser_equals_edm(imported):
    name, _, model, fx = imported
    labels = jnp.asarray(fx["labels"]) if "labels" in fx else None
    d = nnx.jit(lambda m, x, s, c: m.edm(x, s, c))(
        model, _nhwc(fx["x"]), jnp.asarray(fx["sigma"]), labels
    )
    rel = _rel(_nchw(d), fx["D"])
    assert rel <= RTOL, f"{name}: relative error {rel:.2e} of D"


def test_backbone_equals_edm(imported):
    name, _, model, fx = imported
    labels = jnp.asarray(fx["labels"]) if "labels" in fx else None
    aug = jnp.asarray(fx["aug"]) if "aug" in fx else None
    f = nnx.jit(lambda m, x, n, c, a: m.backbone(x, n, c, augment_labels=a))(
        model, _nhwc(fx["F_in"]), jnp.asarray(fx["F_noise"]), labels, aug
    )
    rel = _rel(_nchw(f), fx["F"])
    assert rel <= RTOL, f"{name}: relative error {rel:.2e} of F"
    # The perturbed weights make F a real function of its input, not the skip path.
    assert np.std(fx["F"]) > 0.1


def test_pickle_is_read_without_edm_code():
    net = read_edm_network(os.path.join(FIXTURES, "ddpmpp_uncond.pkl"))
    assert net.kwargs["model_type"] == "SongUNet" and net.kwargs["augment_dim"] == 9
    assert net.kwargs["num_blocks"] == 1 and net.kwargs["sigma_data"] == 0.5
    # Every parameter and the resampling buffers, named as EDM's state_dict names them.
    assert "model.enc.32x32_conv.weight" in net.state
    assert "model.enc.16x16_down.conv0.resample_filter" in net.state
    assert net.state["model.enc.32x32_conv.weight"].shape == (8, 3, 3, 3)


def test_import_edm_checks_config_and_resolution():
    path = os.path.join(FIXTURES, "ddpmpp_uncond.pkl")
    cfg, params = import_edm(path)
    assert cfg.name == "ddpmpp" and cfg.resolution == 32 and cfg.augment_dim == 9
    other = cfg.copy_and_resolve_references()
    other.channel_mult = (1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"model\.channel_mult"):
        import_edm(path, model_cfg=other)
    with pytest.raises(ValueError, match=r"32x32x3 network.*\(64, 64, 3\)"):
        import_edm(path, data_shape=(64, 64, 3))
    # A state_dict needs the architecture from a config.
    pt = os.path.join(FIXTURES, "ncsnpp_cond_state_dict.pt")
    with pytest.raises(ValueError, match="state_dict"):
        import_edm(pt)


def test_bad_files_fail_with_one_line_naming_the_problem(tmp_path):
    vp = os.path.join(FIXTURES, "vp_precond.pkl")
    with pytest.raises(ValueError, match="VPPrecond"):
        read_edm_network(vp)
    data = open(os.path.join(FIXTURES, "ddpmpp_uncond.pkl"), "rb").read()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TorchFileError, match="cut.pkl.*truncated or corrupt"):
        read_edm_network(str(cut))
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps(shutil.rmtree))  # a pickle that would call a function
    with pytest.raises(TorchFileError, match="shutil.rmtree"):
        load_torch_file(str(hostile))
    with pytest.raises(FileNotFoundError):
        import_edm(str(tmp_path / "missing.pkl"))


def test_state_dict_missing_or_extra_key_is_named():
    fx = _fixture("ncsnpp_cond")
    spec = json.loads(str(fx["spec"]))
    state = read_state_dict(os.path.join(FIXTURES, "ncsnpp_cond_state_dict.pt"))
    cfg = edm_model_config(EDMNetwork.from_init_kwargs(spec["init_kwargs"], {}))
    shape = (32, 32, 3)
    missing = dict(state)
    del missing["model.map_label.weight"]
    with pytest.raises(ValueError, match=r"missing key 'model\.map_label\.weight'"):
        model_params(missing, cfg, data_shape=shape)
    extra = {**state, "model.enc.32x32_block9.conv0.weight": np.zeros((8, 8, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected key 'model\.enc\.32x32_block9"):
        model_params(extra, cfg, data_shape=shape)
    wrong = {**state, "model.map_layer0.weight": np.zeros((32, 7), np.float32)}
    with pytest.raises(ValueError, match=r"model\.map_layer0\.weight has shape"):
        model_params(wrong, cfg, data_shape=shape)
    # The same state_dict with its own architecture imports.
    _, params = import_edm(os.path.join(FIXTURES, "ncsnpp_cond_state_dict.pt"), model_cfg=cfg)
    assert params["backbone"]["map_noise"]["freqs"].shape == (8,)


@pytest.mark.slow
def test_imported_teacher_feeds_pairs_and_reflow(tmp_path):
    """scripts/import_edm.py → pairs → reflow, as with a teacher the library trained."""
    import subprocess
    import sys

    from configs import cifar10
    from simple_reflow.train import checkpoint
    from simple_reflow.train.stages import run_stage, validate_config

    teacher = str(tmp_path / "teacher")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [
            sys.executable,
            os.path.join(root, "scripts", "import_edm.py"),
            "--checkpoint",
            os.path.join(FIXTURES, "ddpmpp_uncond.pkl"),
            "--workdir",
            teacher,
        ],
        check=True,
        cwd=root,
        capture_output=True,
    )
    imported = checkpoint.load_model_config(teacher)

    def stage(name):
        c = cifar10.get_config(f"{name},smoke")
        c.data.image_size = 32  # the fixture network is 32×32
        c.model.update(
            {
                k: tuple(v) if isinstance(v, list) else v
                for k, v in imported.items()
                if k not in ("dropout", "label_dropout")
            }
        )
        c.teacher.workdir = teacher
        c.pairs.dir = str(tmp_path / "pairs")
        return c

    # A config with another architecture or image size is refused before anything runs.
    bad = stage("pairs")
    bad.model.num_blocks = 2
    with pytest.raises(ValueError, match=r"model\.num_blocks=2 does not match the snapshot"):
        validate_config(bad)
    bad = stage("pairs")
    bad.data.image_size = 16
    bad.model.resolution = 0
    with pytest.raises(ValueError, match="16x16.*32x32 network"):
        validate_config(bad)

    pairs_cfg = stage("pairs")
    validate_config(pairs_cfg)
    run_stage(pairs_cfg, str(tmp_path / "pairs"))
    reflow_cfg = stage("reflow")
    reflow_cfg.training.num_steps = 1
    reflow_cfg.optim.lr = 1e-12  # Adam moves each weight by ~lr: the student stays the teacher
    validate_config(reflow_cfg)
    run_stage(reflow_cfg, str(tmp_path / "reflow"))
    with (
        np.load(os.path.join(teacher, "ema.npz")) as t,
        np.load(str(tmp_path / "reflow" / "ema.npz")) as s,
    ):
        assert sorted(t.files) == sorted(s.files)
        # Adam moves a weight by ~lr = 1e-12, and the EMA's β·w + (1 − β)·w' rounds in
        # float32: three roundings (two products, one sum) of half an ulp each, an ulp being
        # at most 2⁻²³ of the weight (whether XLA contracts them into an FMA depends on its
        # optimisation level), plus lr.
        for k in t.files:
            bound = 3.0 * 2.0**-24 * np.abs(t[k].astype(np.float64)) + 1e-11
            assert np.all(np.abs(t[k].astype(np.float64) - s[k]) <= bound), k
        assert float(np.max(np.abs(t["backbone/enc/32x32_conv/weight"]))) > 0.1
