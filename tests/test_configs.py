"""Every dataset config builds for each stage and its smoke variant, and validates."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

pytest.importorskip("simple_reflow.couplings", reason="configs/common.py needs the couplings")

from configs.image_stages import edm_ema_decay, parse_arg  # noqa: E402
from simple_reflow.train.configure import data_spec_from_config, validate_data_config  # noqa: E402

DATASETS = ("cifar10", "afhqv2", "ffhq", "imagenet64", "digits")
STAGES = ("teacher", "pairs", "reflow", "boss", "flowturbo", "eval")


def _get(name, arg):
    return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("stage", STAGES)
def test_smoke_configs_build_and_validate(name, stage):
    c = _get(name, f"{stage},smoke")
    assert c.stage == stage and c.data.name == name
    validate_data_config(c.data)  # smoke data (mock or digits) needs no download or folder
    spec = data_spec_from_config(c.data)
    assert spec.num_classes == c.model.num_classes
    assert c.training.num_steps <= 5 and c.training.batch_size <= 8
    from simple_reflow.train.configure import validate_model_config

    validate_model_config(c.model, data_shape=spec.shape)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("stage", STAGES)
def test_full_configs_build(name, stage):
    c = _get(name, stage)
    assert c.stage == stage
    assert c.loss.kind == ("edm" if stage == "teacher" else "flow")
    if name in ("afhqv2", "ffhq"):  # folder datasets: data_dir must be given
        with pytest.raises(ValueError, match="data.data_dir=None"):
            validate_data_config(c.data)
    else:
        validate_data_config(c.data)
    from simple_reflow.train.configure import validate_model_config

    if name != "digits":
        validate_model_config(c.model, data_shape=(c.model.resolution,) * 2 + (3,))


def test_paper_hyper_parameters():
    c = _get("cifar10", "reflow")
    assert (c.loss.distance, c.loss.hpf_weight, c.loss.normalize) == ("hpf", 10.0, True)
    assert (c.model.dropout, c.pairs.rho, c.time.dist) == (0.09, 0.4, "exp10")
    assert (c.sampler.solver, c.sampler.grid, c.sampler.kappa, c.sampler.r) == (
        "dpm2",
        "sigmoid",
        20.0,
        0.4,
    )
    assert (c.guidance.kind, c.guidance.w) == ("autoguidance", 0.6)
    assert (c.optim.lr, c.training.ema_decay, c.training.num_steps, c.training.batch_size) == (
        2e-4,
        0.9999,
        200_000,
        512,
    )
    assert (c.pairs.num_backward, c.pairs.num_forward, c.pairs.steps) == (1_000_000, 50_000, 18)
    t = _get("cifar10", "teacher")
    assert (t.model.dropout, t.optim.lr, t.training.batch_size) == (0.13, 1e-3, 512)
    assert t.training.num_steps == 390_625  # 200 Mimg / 512
    i = _get("imagenet64", "reflow")
    assert (i.pairs.num_backward, i.pairs.num_forward, i.pairs.steps) == (8_000_000, 4_000_000, 40)
    assert (i.model.num_classes, i.model.label_dropout, i.guidance.kind) == (1000, 0.1, "cfg")
    assert (i.training.batch_size, i.training.num_steps) == (1024, 500_000)
    assert _get("afhqv2", "teacher").model.dropout == 0.25
    assert _get("ffhq", "pairs").pairs.num_forward == 70_000


def test_edm_ema_half_life():
    # After one half-life of images the EMA weight of the start is exactly 1/2.
    beta = edm_ema_decay(0.5, 512)
    assert beta ** (0.5e6 / 512) == pytest.approx(0.5, rel=1e-12)


def test_bad_arg_is_rejected():
    assert parse_arg("") == ("reflow", False, frozenset())
    assert parse_arg("teacher,smoke") == ("teacher", True, frozenset())
    assert parse_arg("pairs,ve,cond", options=("ve", "cond")) == (
        "pairs",
        False,
        frozenset({"ve", "cond"}),
    )
    with pytest.raises(ValueError, match="'distill'"):
        parse_arg("distill")
    with pytest.raises(ValueError, match="'ve'"):
        parse_arg("pairs,ve")  # a dataset without that option


def test_architecture_and_cond_variants():
    from configs import cifar10

    ve = cifar10.get_config("pairs,ve,cond")
    assert ve.model.name == "ncsnpp" and ve.model.resample_filter == (1, 3, 3, 1)
    assert ve.model.num_classes == 10 and ve.data.conditional is True
    assert ve.model.augment_dim == 9  # EDM's CIFAR10 networks have the augment input
    loom = cifar10.get_config("loom-cfm")  # a coupling alone means the teacher stage
    assert loom.stage == "teacher" and loom.coupling.name == "loom" and loom.loss.kind == "flow"
    with pytest.raises(ValueError, match="one coupling"):
        cifar10.get_config("teacher,ot-cfm,loom-cfm")
    smoke = cifar10.get_config("reflow,ve,smoke")
    assert smoke.model.name == "ncsnpp" and smoke.model.model_channels == 16
    assert cifar10.get_config("reflow").model.name == "ddpmpp"


def test_projection_on_conditional_data_is_rejected():
    from simple_reflow.train.stages import validate_config

    cfg = _get("imagenet64", "reflow,smoke")
    cfg.pairs.projection.fraction = 0.2
    with pytest.raises(ValueError, match="pairs.projection.fraction=0.2"):
        validate_config(cfg)
    cfg = _get("cifar10", "reflow,smoke")
    cfg.pairs.projection.fraction = 0.2
    validate_config(cfg)


def test_a_coupling_needs_the_flow_loss():
    from configs import cifar10
    from simple_reflow.train.stages import validate_config

    c = cifar10.get_config("teacher,smoke")
    c.coupling.name = "ot"
    with pytest.raises(ValueError, match=r"coupling\.name='ot'.*loss\.kind='edm'"):
        validate_config(c)
    validate_config(cifar10.get_config("ot-cfm,smoke"))


def test_imagenet64_pair_stores_at_the_papers_scale():
    """8M backward + 4M forward pairs: the stores' description, shard count, and the reflow
    stream at the last step of 500k (batch 1024) over 8M/4M pairs, per host of 8."""
    from simple_reflow import pair_mixing
    from simple_reflow.train.images import _store_spec
    from simple_reflow.train.stages import resolve

    cfg = _get("imagenet64", "pairs")
    run = resolve(cfg)
    back, arrays, prov = _store_spec(run, "backward", "sha")
    fwd = _store_spec(run, "forward", "sha")[0]
    assert (back, fwd) == (8_000_000, 4_000_000)
    assert arrays == {
        "x0": ((64, 64, 3), "float32"),
        "x1": ((64, 64, 3), "float32"),
        "cond": ((), "int32"),
    }
    assert prov["nfe"] == 79 and -(-back // cfg.pairs.chunk) == 7813
    r = _get("imagenet64", "reflow")
    sizes = {"backward": back, "forward": fwd}
    fractions = pair_mixing.pair_fractions(r.pairs.rho)
    src, idx = pair_mixing.stream_indices(
        r.seed,
        r.training.num_steps - 1,
        r.training.batch_size,
        sizes,
        fractions,
        process_index=7,
        process_count=8,
    )
    assert len(src) == 128 and 0.2 < np.mean(src == 1) < 0.6
    assert np.all(idx < np.where(src == 1, fwd, back))


@pytest.mark.parametrize("name", ["cifar10", "imagenet64", "digits"])
def test_sigma_data_and_class_count_have_one_source(name):
    """σ_data lives in ``model`` only (the EDM loss weights with the preconditioning's σ_data);
    the class count comes from the data and the model must agree with it."""
    from simple_reflow.losses_edm import edm_loss
    from simple_reflow.train.configure import loss_fn_from_config
    from simple_reflow.train.stages import validate_config

    cfg = importlib.import_module(f"configs.{name}").get_config("teacher,smoke")
    assert "sigma_data" not in cfg.loss and "sigma_data" in cfg.model
    cfg.model.sigma_data = 0.37
    fn = loss_fn_from_config(cfg.loss, cfg.time, sigma_data=cfg.model.sigma_data)
    assert fn.func is edm_loss and fn.keywords["sigma_data"] == 0.37
    assert cfg.model.num_classes == data_spec_from_config(cfg.data).num_classes
    cfg.model.num_classes = cfg.model.num_classes + 3
    with pytest.raises(ValueError, match="model.num_classes"):
        validate_config(cfg)


def _boss(name="cifar10", **fields):
    cfg = _get(name, "boss,smoke")
    cfg.eval.model_dir = "/nonexistent/reflow"  # no model.json there: nothing to compare
    for field, value in fields.items():
        setattr(cfg.boss, field, value)
    return cfg


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"candidates": 1}, "boss.candidates=1"),
        ({"candidate_grid": "log"}, "boss.candidate_grid='log'"),
        ({"num_steps": (2, 9)}, r"boss.num_steps=\(2, 9\).*boss.candidates=8"),
        ({"substeps": 0}, "boss.substeps=0"),
        ({"num_noises": 12}, "boss.num_noises=12.*boss.batch_size=8"),
        ({"straighten_k": 9}, "boss.straighten_k=9"),
        ({"straighten_noises": 4}, "boss.straighten_noises=4"),
        ({"lr": 0.0}, "boss.lr=0.0"),
        ({"ema_decay": 1.0}, "boss.ema_decay=1.0"),
        ({"lora_rank": -1}, "boss.lora_rank=-1"),
        ({"model": "reflow"}, "boss.model='reflow'"),
    ],
)
def test_bad_boss_config_fails_fast_naming_the_field(fields, match):
    import time

    from simple_reflow.train.stages import validate_config

    validate_config(_boss())  # the smoke config as built is valid
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        validate_config(_boss(**fields))
    assert time.perf_counter() - start < 1.0


def test_boss_stage_names_the_snapshot_it_needs():
    from simple_reflow.train.stages import validate_config

    cfg = _boss()
    cfg.eval.model_dir = None
    with pytest.raises(
        ValueError, match="boss.model='student' reads the snapshot in eval.model_dir"
    ):
        validate_config(cfg)
    cfg.boss.model = "teacher"
    with pytest.raises(ValueError, match="teacher.workdir, which is not set"):
        validate_config(cfg)
    cfg.teacher.workdir = "/nonexistent/teacher"
    validate_config(cfg)
    assert _get("digits", "boss").eval.model_dir == "runs/digits/reflow"  # the default chain
    assert _get("digits", "eval").eval.model_dir is None
    with pytest.raises(ValueError, match="no 'boss' stage"):
        _get("cifar10", "boss,meanflow")


def test_toy_boss_token():
    from configs import toy2d
    from simple_reflow.train.stages import validate_config

    assert not toy2d.get_config("").boss.enabled
    cfg = toy2d.get_config("boss,smoke")
    assert cfg.boss.enabled and cfg.stage == "pipeline"
    validate_config(cfg)
    cfg.boss.straighten_steps = 30  # the toy fuses training.steps_per_call = 50 steps per call
    with pytest.raises(ValueError, match="boss.straighten_steps=30.*steps_per_call=50"):
        validate_config(cfg)
    with pytest.raises(ValueError, match="'boss' chooses Euler steps"):
        toy2d.get_config("boss,meanflow")


def _flowturbo(name="ffhq", **fields):
    cfg = _get(name, "flowturbo,smoke")
    cfg.eval.model_dir = "/nonexistent/reflow"  # no model.json there: nothing to compare
    for field, value in fields.items():
        setattr(cfg.flowturbo, field, value)
    return cfg


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"plan": "H2P3"}, "flowturbo.plan='H2P3' has no refiner"),
        ({"plan": "R1H2"}, "flowturbo.plan: plan 'R1H2': the first block 'R1' is a refiner"),
        ({"plan": "H1Q2R1"}, "flowturbo.plan: plan 'H1Q2R1': bad block 'Q2'"),
        ({"plan": ""}, "flowturbo.plan: a sampling plan must be a non-empty string"),
        ({"grid": "log"}, "flowturbo.grid='log'"),
        ({"width": 0}, "flowturbo.width=0"),
        ({"depth": -1}, "flowturbo.depth=-1"),
        ({"num_steps": 0}, "flowturbo.num_steps=0"),
        ({"train_batch": 0}, "flowturbo.train_batch=0"),
        ({"num_noises": 12}, "flowturbo.num_noises=12.*flowturbo.batch_size=8"),
        ({"lr": 0.0}, "flowturbo.lr=0.0"),
        ({"ema_decay": 1.0}, "flowturbo.ema_decay=1.0"),
        ({"model": "reflow"}, "flowturbo.model='reflow'"),
    ],
)
def test_bad_flowturbo_config_fails_fast_naming_the_field(fields, match):
    import time

    from simple_reflow.train.stages import validate_config

    validate_config(_flowturbo())  # the smoke config as built is valid
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        validate_config(_flowturbo(**fields))
    assert time.perf_counter() - start < 1.0


def test_flowturbo_stage_and_eval_name_what_they_need():
    from simple_reflow.train.stages import validate_config

    cfg = _flowturbo()
    cfg.eval.model_dir = None
    with pytest.raises(ValueError, match="flowturbo.model='student' reads the snapshot in eval"):
        validate_config(cfg)
    cfg.flowturbo.model = "teacher"
    with pytest.raises(ValueError, match="teacher.workdir, which is not set"):
        validate_config(cfg)
    cfg.teacher.workdir = "/nonexistent/teacher"
    validate_config(cfg)
    cfg.training.steps_per_call = 4  # 2 refiner steps cannot fuse 4 per call
    with pytest.raises(ValueError, match="flowturbo.num_steps=2 must be a multiple"):
        validate_config(cfg)
    assert _get("digits", "flowturbo").eval.model_dir == "runs/digits/reflow"  # default chain
    with pytest.raises(ValueError, match="no 'flowturbo' stage"):
        _get("cifar10", "flowturbo,meanflow")
    # the eval stage: the plan's solver and the refiner's folder go together, nowhere else
    ev = _get("ffhq", "eval,smoke")
    ev.sampler.solver = "flowturbo"
    with pytest.raises(ValueError, match="set eval.refiner_dir"):
        validate_config(ev)
    ev.eval.refiner_dir = "/nonexistent/flowturbo"
    validate_config(ev)
    ev.sampler.solver = "heun"
    with pytest.raises(ValueError, match="eval.refiner_dir='/nonexistent/flowturbo' is read"):
        validate_config(ev)
    tr = _get("ffhq", "teacher,smoke")
    tr.sampler.solver = "flowturbo"
    with pytest.raises(ValueError, match="'flowturbo'.*is for the eval stage"):
        validate_config(tr)


def test_toy_flowturbo_token():
    from configs import toy2d
    from simple_reflow.train.stages import validate_config

    assert not toy2d.get_config("").flowturbo.enabled
    cfg = toy2d.get_config("flowturbo,smoke")
    assert cfg.flowturbo.enabled and cfg.stage == "pipeline"
    validate_config(cfg)
    cfg.flowturbo.num_steps = 30  # the toy fuses training.steps_per_call = 50 steps per call
    with pytest.raises(ValueError, match="flowturbo.num_steps=30.*steps_per_call=50"):
        validate_config(cfg)
    cfg.flowturbo.num_steps, cfg.flowturbo.plan = 50, "P4"
    with pytest.raises(ValueError, match="flowturbo.plan='P4' has no refiner"):
        validate_config(cfg)
    with pytest.raises(ValueError, match="'flowturbo' steps the velocity of a one-time flow"):
        toy2d.get_config("flowturbo,meanflow")
