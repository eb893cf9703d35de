"""Shared stage logic of the image configs (teacher → pairs → reflow → boss / flowturbo → eval).

Each dataset file (``cifar10.py``, ``afhqv2.py``, ``ffhq.py``, ``imagenet64.py``,
``digits.py``) describes its dataset with a :class:`ImageRecipe` and calls
:func:`image_config`, which starts from :func:`configs.common.base_config` and sets every
section for one stage. ``arg`` (the part after the colon in ``--config file.py:arg``) is a
comma-separated list: one stage of :data:`STAGES`, optionally ``smoke``, and the dataset's
options: an architecture token of ``ImageRecipe.variants`` (e.g. ``ve`` for EDM's NCSN++, the
``*-ve.pkl`` checkpoints), ``cond`` where the dataset has class labels
(``ImageRecipe.cond_classes``), as EDM's ``edm-cifar10-32x32-cond-*.pkl``, and a coupling
(``i-cfm``, ``ot-cfm``, ``loom-cfm``, ``w-cfm``): the teacher stage then trains a
1-rectified flow from scratch with that coupling instead of EDM's loss (``:loom-cfm`` alone
means ``:teacher,loom-cfm``); its snapshot feeds ``pairs``/``eval`` like any teacher.
``meanflow`` or ``splitmeanflow`` (optionally with ``distill``) makes the ``teacher`` stage
(the default stage with these tokens) train a two-time average-velocity model on real images
instead (METHOD.md §9), and ``eval`` score it with the ``"mean"`` solver; see
:func:`apply_image_mean`.

Stages:

- ``teacher``: EDM's training recipe for the dataset (``loss.kind = "edm"``, EDM's dropout,
  batch, learning rate with its linear warm-up, EMA half-life converted to a per-step decay).
- ``pairs``: backward (and forward) pairs from the teacher's EMA snapshot (``teacher.workdir``)
  with EDM's Heun sampler on EDM's ρ = 7 grid from t_max = 80/81 (σ_max = 80) to
  t_min = 0.002/1.002 (σ_min = 0.002).
- ``reflow``: Simple ReFlow's student training on those pairs (``pairs.dir``), initialised
  from the teacher: normalised HPF loss, 10^t time distribution, forward-pair ratio ρ, the
  paper's batch, learning rate, EMA and iteration count (METHOD.md §7).
- ``boss``: BOSS (METHOD.md §9, :mod:`simple_reflow.train.boss_stage`): the Bellman-optimal
  K-step Euler grids (K = 2, 4, 6) of the snapshot in ``eval.model_dir`` (the reflow student;
  ``--config.boss.model=teacher`` for ``teacher.workdir``'s), from the Euler cost matrix of 256
  reference noises on 100 uniform candidate times, saved beside it (``boss_grid.json``) and
  beside the teacher's snapshot; with ``--config.boss.straighten_steps=N`` the model is then
  straightened along its K = ``boss.straighten_k`` grid into the stage's workdir (all weights,
  or ``boss.lora_rank`` adapters), its grids beside it. ``eval`` with
  ``--config.eval.model_dir=<that workdir> --config.sampler.grid=boss
  --config.sampler.solver=euler`` scores it. The other sections keep the reflow settings.
- ``flowturbo``: FlowTurbo (METHOD.md §9, :mod:`simple_reflow.train.flowturbo_stage`): a
  velocity refiner (a 64-channel, 3-layer ConvRefiner) trained for the plan ``H1P3R2`` on
  EDM's ρ = 7 grid of the snapshot in ``eval.model_dir`` (``--config.flowturbo.model=teacher``
  for ``teacher.workdir``'s), on the plan run from 512 noises with the snapshot in the
  refiner's place, into the stage's workdir. ``eval`` with ``--config.sampler.solver=flowturbo
  --config.eval.refiner_dir=<that workdir>`` samples the plan (its NFE; the refiner calls
  reported beside it). The other sections keep the reflow settings.
- ``eval``: the reflow settings, sampling with DPM-Solver-2 on the sigmoid grid.

``smoke`` swaps in a tiny backbone, mock data of the dataset's channels at 8×8 and a few steps,
so every stage runs on a CPU in seconds.

Extra fields beyond ``configs/common.py``: ``loss.p_mean``, ``loss.p_std``
(EDM loss), ``data.source``, ``data.conditional``, ``data.num_classes``, ``data.eval_split``,
``data.mock_examples`` (see :mod:`simple_reflow.data`).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from configs.common import COUPLINGS, DISTILL, MEAN_METHODS, apply_mean_method, base_config

__all__ = [
    "STAGES",
    "ImageRecipe",
    "parse_arg",
    "edm_ema_decay",
    "image_config",
    "apply_image_mean",
]

STAGES = ("teacher", "pairs", "reflow", "boss", "flowturbo", "eval")
_SONG_ARCH = (
    "name",
    "embedding_type",
    "channel_mult_noise",
    "encoder_type",
    "decoder_type",
    "resample_filter",
)
EDM_T_MAX = 80.0 / 81.0  # t = σ/(1 + σ) at σ_max = 80 (simple_reflow.paths.EDM_T_MAX)
EDM_T_MIN = 0.002 / 1.002  # t at σ_min = 0.002


@dataclasses.dataclass(frozen=True)
class ImageRecipe:
    """A dataset's hyper-parameters for every stage (sources cited in each dataset file)."""

    name: str  # data.name
    model_fn: object  # () -> model ConfigDict (a preset of configs/backbones.py)
    smoke_model_fn: object
    # Teacher (EDM's recipe).
    teacher_dropout: float
    teacher_batch: int
    teacher_lr: float
    teacher_mimg: float  # training length in millions of images
    teacher_ema_halflife_mimg: float
    teacher_warmup_mimg: float = 10.0  # EDM's lr_rampup_kimg = 10,000
    teacher_flip: bool = True
    # Pairs.
    num_backward: int = 1_000_000
    num_forward: int = 0
    pair_steps: int = 18  # EDM Heun: 2·steps − 1 NFE
    # ReFlow (Simple ReFlow, METHOD.md §7).
    reflow_dropout: float = 0.09
    reflow_batch: int = 512
    reflow_steps: int = 200_000
    reflow_lr: float = 2e-4
    reflow_ema: float = 0.9999
    rho: float = 0.4
    hpf_weight: float = 10.0
    guidance: str = "autoguidance"
    guidance_w: float = 0.6
    label_dropout: float = 0.0
    eval_split: str = "train"
    eval_samples: int = 50_000
    # Options of the config arg.
    variants: tuple = ()  # ((token, model_fn), ...): other architectures, e.g. ("ve", ncsnpp)
    cond_classes: int = 0  # > 0: the "cond" token makes the stages class-conditional


def parse_arg(
    arg: str, stages=STAGES, default: str = "reflow", options=()
) -> tuple[str, bool, frozenset]:
    """``"reflow,smoke,ve"`` → ``("reflow", True, {"ve"})``; no stage named gives ``default``.

    ``options`` are the extra tokens the dataset accepts (architecture variants, ``cond``).
    """
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    smoke = "smoke" in tokens
    chosen = frozenset(t for t in tokens if t in options)
    named = [t for t in tokens if t != "smoke" and t not in options]
    if len(named) > 1 or any(t not in stages for t in named):
        bad = [t for t in named if t not in stages] or named[1:]
        raise ValueError(
            f"config arg {arg!r}: {', '.join(map(repr, bad))} not understood; expected one "
            f"stage of {tuple(stages)}, optionally 'smoke'"
            + (f" and options of {tuple(options)}" if options else "")
            + ", e.g. 'teacher,smoke'."
        )
    return (named[0] if named else default), smoke, chosen


def recipe_options(recipe: ImageRecipe) -> tuple[str, ...]:
    """The option tokens a dataset accepts: its architecture variants, ``cond``, and the
    couplings (:data:`configs.common.COUPLINGS`)."""
    return (
        tuple(t for t, _ in recipe.variants)
        + (("cond",) if recipe.cond_classes else ())
        + tuple(COUPLINGS)
        + (*MEAN_METHODS, DISTILL)
    )


def edm_ema_decay(halflife_mimg: float, batch: int) -> float:
    """EDM's EMA as a per-step decay: β = 0.5^(batch / half-life in images)."""
    return 0.5 ** (batch / (halflife_mimg * 1e6))


def image_config(
    recipe: ImageRecipe, arg: str = "", *, default_stage: str = "reflow"
) -> ml_collections.ConfigDict:
    """The full config of one stage of an image dataset (module docstring).

    Args:
      recipe: the dataset's hyper-parameters.
      arg: the config argument, e.g. ``"pairs"``, ``"reflow,smoke"``, ``"pairs,ve,cond"``.
      default_stage: the stage when ``arg`` names none.
    """
    variants = dict(recipe.variants)
    couplings = set(COUPLINGS)
    tokens = {t.strip() for t in (arg or "").split(",")}
    if tokens & (couplings | set(MEAN_METHODS)) and not tokens & set(STAGES):
        default_stage = "teacher"  # ":loom-cfm" alone trains the 1-RF with that coupling
    stage, smoke, options = parse_arg(arg, default=default_stage, options=recipe_options(recipe))
    methods = sorted(options & set(MEAN_METHODS))
    if len(methods) > 1:
        raise ValueError(f"config arg {arg!r}: choose one of {MEAN_METHODS}")
    if DISTILL in options and not methods:
        raise ValueError(f"config arg {arg!r}: 'distill' needs one of {MEAN_METHODS}")
    if methods and stage not in ("teacher", "eval"):
        raise ValueError(
            f"config arg {arg!r}: {methods[0]} trains in the 'teacher' stage (on images) and "
            f"is scored by 'eval'; it has no {stage!r} stage"
        )
    if len(options & set(variants)) > 1:
        raise ValueError(f"config arg {arg!r}: choose one architecture of {tuple(variants)}")
    if len(options & couplings) > 1:
        raise ValueError(f"config arg {arg!r}: choose one coupling of {tuple(COUPLINGS)}")
    model_fn = next((variants[t] for t in options if t in variants), recipe.model_fn)
    c = base_config()
    c.stage = stage
    c.data.name = recipe.name
    c.data.source = ""
    c.data.conditional = ml_collections.FieldReference(None, field_type=bool)
    c.data.num_classes = 0  # 0 = the dataset's own class count
    c.data.eval_split = recipe.eval_split
    c.data.mock_examples = 256
    c.data.random_flip = False  # flipping x0 alone would break a (x0, x1) pair

    # EDM's loss parameters (read when loss.kind == "edm").
    c.loss.p_mean = -1.2
    c.loss.p_std = 1.2  # σ_data: model.sigma_data, the preconditioning's (one source)

    # Pair generation: EDM's Heun sampler from σ_max = 80 to σ_min = 0.002.
    c.pairs.num_backward = recipe.num_backward
    c.pairs.num_forward = recipe.num_forward
    c.pairs.solver = "heun"
    c.pairs.grid = "edm"
    c.pairs.steps = recipe.pair_steps
    c.pairs.t_max = EDM_T_MAX
    c.pairs.t_min = EDM_T_MIN
    c.pairs.rho = recipe.rho

    # Sampling: DPM-Solver-2 (r = 0.4) on the sigmoid grid (κ = 20), from t_max = 80/81.
    c.sampler.solver = "dpm2"
    c.sampler.grid = "sigmoid"
    c.sampler.kappa = 20.0
    c.sampler.r = 0.4
    c.sampler.t_max = EDM_T_MAX
    c.guidance.kind = recipe.guidance
    c.guidance.w = recipe.guidance_w
    c.eval.nfe = (1, 2, 4, 9)
    c.eval.num_samples = recipe.eval_samples
    c.flowturbo.grid = "edm"  # EDM's ρ = 7 grid, the Heun sampler's (sampler.rho)

    c.model = model_fn()
    if "cond" in options:
        c.data.conditional = True
        c.model.num_classes = recipe.cond_classes
    if stage == "teacher":
        c.model.dropout = recipe.teacher_dropout
        c.loss.kind = "edm"
        c.data.random_flip = recipe.teacher_flip
        c.optim.lr = recipe.teacher_lr
        c.optim.warmup_steps = round(recipe.teacher_warmup_mimg * 1e6 / recipe.teacher_batch)
        c.training.batch_size = recipe.teacher_batch
        c.training.num_steps = round(recipe.teacher_mimg * 1e6 / recipe.teacher_batch)
        c.training.ema_decay = edm_ema_decay(recipe.teacher_ema_halflife_mimg, recipe.teacher_batch)
        c.guidance.kind = "none"
        c.guidance.w = 0.0
        coupling = next((t for t in options if t in couplings), None)
        if coupling:  # a 1-rectified flow from scratch with this coupling, not EDM's loss
            c.coupling.update(COUPLINGS[coupling])
            c.loss.kind = "flow"
            c.loss.distance = "l2"
            c.loss.normalize = False
            c.loss.space = "velocity"
            c.time.dist = "uniform"
            c.time.t_max = EDM_T_MAX  # σ ≤ 80: the EDM-wrapped network's range
    else:
        c.model.dropout = recipe.reflow_dropout
        c.loss.kind = "flow"
        c.loss.distance = "hpf"
        c.loss.hpf_weight = recipe.hpf_weight
        c.loss.hpf_sigma = 1.0
        c.loss.normalize = True
        c.loss.space = "denoiser"
        c.time.dist = "exp10"
        c.time.t_max = EDM_T_MAX  # σ ≤ 80: the EDM-wrapped network's range
        c.optim.lr = recipe.reflow_lr
        c.optim.warmup_steps = 0
        c.training.batch_size = recipe.reflow_batch
        c.training.num_steps = recipe.reflow_steps
        c.training.ema_decay = recipe.reflow_ema
    if "label_dropout" in c.model and c.model.num_classes:
        c.model.label_dropout = recipe.label_dropout
    c.training.log_every = 500
    c.training.ckpt_every = 10_000
    c.pairs.chunk = 1024
    if methods:
        apply_image_mean(c, recipe, methods[0], distill=DISTILL in options)
    if smoke:
        apply_smoke(c, recipe)
    if methods:  # (apply_smoke swaps in the tiny backbone)
        c.model.two_time = True
        if c.model.get("num_classes", 0):
            c.model.label_dropout = 0.0  # labels are dropped by the loss
        c.eval.nfe = (1, 2) if smoke else (1, 2, 4)
    return c


def apply_image_mean(c: ml_collections.ConfigDict, recipe: ImageRecipe, kind, *, distill):
    """A two-time MeanFlow / SplitMeanFlow model on images (METHOD.md §9), trained by the
    ``teacher`` stage and scored by ``eval``.

    From scratch it takes the dataset's teacher recipe (batch, learning rate and warm-up,
    length, EMA, dropout, flips) and pairs each batch with independent noise (or
    ``coupling.name``); distilled (``distill``: v from the snapshot in ``teacher.workdir``, the
    student initialised from it) the ReFlow recipe (batch, rate, length, EMA, dropout).
    Objective settings of MeanFlow's CIFAR10 U-Net run (Gsunshine/py-meanflow
    ``cifar10_v0.sh``, see ``simple_reflow.losses_mean``): logit-normal(−2, 2) times, r = t on
    25 % of the rows, adaptive weight p = 0.75; SplitMeanFlow keeps its own defaults (boundary
    50 %, p = 0) on the same times [recon]. t ≤ 80/81 (σ ≤ 80, the EDM wrapper's range). For
    class-conditional data the label is dropped in the loss (10 %, the authors') and the target
    guided with the authors' defaults ω = 1, κ = 0.5 (``loss.cfg_omega``, ``loss.cfg_kappa``);
    the network's own label dropout is off. Sampling: ``"mean"`` on the uniform grid from
    t_max = 80/81; the teacher beside it with Euler.
    """
    apply_mean_method(c, kind, distill=distill)
    c.time.logit_mean, c.time.logit_std = -2.0, 2.0
    c.time.t_max = EDM_T_MAX
    if kind == "meanflow":
        c.loss.equal_fraction = 0.25
        c.loss.norm_p = 0.75
    if not distill:
        c.model.dropout = recipe.teacher_dropout
        c.data.random_flip = recipe.teacher_flip
        c.optim.lr = recipe.teacher_lr
        c.optim.warmup_steps = round(recipe.teacher_warmup_mimg * 1e6 / recipe.teacher_batch)
        c.training.batch_size = recipe.teacher_batch
        c.training.num_steps = round(recipe.teacher_mimg * 1e6 / recipe.teacher_batch)
        c.training.ema_decay = edm_ema_decay(recipe.teacher_ema_halflife_mimg, recipe.teacher_batch)
    else:
        c.model.dropout = recipe.reflow_dropout
        c.data.random_flip = False
        c.optim.lr = recipe.reflow_lr
        c.optim.warmup_steps = 0
        c.training.batch_size = recipe.reflow_batch
        c.training.num_steps = recipe.reflow_steps
        c.training.ema_decay = recipe.reflow_ema
    if c.model.get("num_classes", 0):
        c.model.label_dropout = 0.0
        c.loss.class_dropout = 0.1
        c.loss.cfg_omega = 1.0
        c.loss.cfg_kappa = 0.5


def apply_smoke(c: ml_collections.ConfigDict, recipe: ImageRecipe) -> None:
    """Tiny backbone, 8×8 mock data of the dataset's channels, a few steps, BOSS on 8 candidate
    times with 2 straightening steps, a FlowTurbo ``H1R2`` refiner (8 channels, 1 layer) trained
    for 2 steps on 8 noises (CPU, seconds)."""
    dropout, classes = c.model.dropout, c.model.get("num_classes", 0)
    song = {f: c.model[f] for f in _SONG_ARCH} if c.model.name != "adm" else {}
    c.model = recipe.smoke_model_fn()
    if c.model.name != "adm":  # the chosen SongUNet variant (DDPM++ / NCSN++), tiny
        c.model.update(song)
    c.model.dropout = dropout
    if classes:  # 10 mock classes instead of 1000: the label embedding stays tiny
        c.model.num_classes = 10
        c.data.num_classes = 10
        c.model.label_dropout = recipe.label_dropout
    c.data.source = "mock"
    c.data.image_size = 8
    c.data.mock_examples = 32
    c.data.eval_split = "test"
    c.training.batch_size = 4
    c.training.num_steps = 2
    c.training.log_every = 1
    c.training.ckpt_every = 2
    c.optim.warmup_steps = min(c.optim.warmup_steps, 1)
    c.pairs.num_backward = 8
    c.pairs.projection.num = 8
    c.pairs.num_forward = 4 if recipe.num_forward else 0
    c.pairs.steps = 2
    c.pairs.chunk = 4
    c.guidance.kind = "none"
    c.guidance.w = 0.0
    c.eval.nfe = (1, 2)
    c.eval.num_samples = 8
    c.boss.candidates = 8
    c.boss.substeps = 2
    c.boss.num_noises = 8
    c.boss.batch_size = 8
    c.boss.straighten_steps = 2
    c.boss.straighten_k = 4
    c.boss.straighten_noises = 8
    c.boss.straighten_batch = 4
    c.boss.lr = 1e-4
    c.flowturbo.plan = "H1R2"  # 2 NFE + 3 refiner calls: one scan of the network to compile
    c.flowturbo.width = 8
    c.flowturbo.depth = 1
    c.flowturbo.num_noises = 8
    c.flowturbo.batch_size = 8
    c.flowturbo.num_steps = 2
    c.flowturbo.train_batch = 4
