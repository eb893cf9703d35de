"""Shared config sections for every stage (teacher, pairs, reflow, boss, flowturbo, eval).

Sections are named after the library's parts: ``data``, ``model``, ``loss``, ``time``,
``coupling``, ``pairs``, ``sampler``, ``guidance``, ``optim``, ``training``, ``eval``, ``boss``,
``flowturbo``, ``mesh``.
Each dataset config starts from :func:`base_config` and overrides what it needs.
"""

from __future__ import annotations

import ml_collections

from simple_reflow.train.configure import MEAN_KINDS, MEAN_LOSS_DEFAULTS, default_coupling_config

# Config-argument tokens that train a 1-rectified flow with a coupling (toy and image configs).
COUPLINGS = {
    "i-cfm": {"name": "independent"},
    "ot-cfm": {"name": "ot"},
    "loom-cfm": {"name": "loom"},
    "w-cfm": {"name": "wcfm"},
}

# Config-argument tokens that train a two-time (average-velocity) model (METHOD.md §9), and the
# token that distils it from the teacher instead of training it from scratch.
MEAN_METHODS = MEAN_KINDS
DISTILL = "distill"

__all__ = ["base_config", "apply_mean_method"]


def base_config() -> ml_collections.ConfigDict:
    """The defaults every stage config starts from."""
    c = ml_collections.ConfigDict()
    # Which job `scripts/train.py` runs: "pipeline" (teacher → pairs → reflow → eval, toy data),
    # "teacher", "pairs", "reflow", "boss", "flowturbo" or "eval" (one stage, image data).
    c.stage = "pipeline"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "8gaussians"  # toy: 8gaussians | moons | checkerboard; images: see data/
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.split = "train"
    c.data.random_flip = False
    c.data.image_size = 0  # 0 = the dataset's native size
    c.data.num_examples = 0  # toy: 0 = fresh samples every step, else a fixed set of this size

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.hidden = 256
    c.model.depth = 3
    c.model.dropout = 0.0
    c.model.label_dropout = 0.0
    c.model.num_classes = 0
    # σ_data, the one field for it: EDM's preconditioning (image backbones) and EDM's loss
    # weighting (loss.kind = "edm", any model) both read it.
    c.model.sigma_data = 0.5
    c.model.two_time = False  # a second time r (MeanFlow / SplitMeanFlow, METHOD.md §9)

    # The teacher: image stages read its EMA snapshot at `teacher.workdir`; the toy pipeline
    # (configs/toy2d.py) adds `teacher.kind` and trains a 1-RF for `teacher.num_steps` steps.
    c.teacher = ml_collections.ConfigDict()
    c.teacher.num_steps = 4000  # 1-RF teacher training steps (toy)
    c.teacher.workdir = ml_collections.FieldReference(None, field_type=str)

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "flow"  # "flow" (flow matching on pairs) | "edm" (EDM teacher loss)
    c.loss.distance = "l2"  # l2 | pseudo_huber | hpf
    c.loss.normalize = False  # Simple ReFlow's 1/sg(d) normalisation
    c.loss.space = "denoiser"  # "denoiser": Δ = D − x0; "velocity": v − (x1 − x0)
    c.loss.hpf_weight = 10.0
    c.loss.hpf_sigma = 1.0
    c.loss.p_mean = -1.2  # EDM's log-normal σ distribution (loss.kind = "edm")
    c.loss.p_std = 1.2  # (σ_data: model.sigma_data)
    # MeanFlow / SplitMeanFlow (loss.kind = "meanflow" | "splitmeanflow"): the r = t fractions,
    # the adaptive weight's p and c, the JVP mode, distillation (v from the teacher) and
    # guidance folded into the target (class-conditional data); see
    # simple_reflow.train.configure.MEAN_LOSS_DEFAULTS and apply_mean_method below.
    c.loss.update(MEAN_LOSS_DEFAULTS)

    c.time = ml_collections.ConfigDict()
    c.time.dist = "uniform"  # uniform | exp10 | u_shape | logit_normal
    c.time.u_shape_a = 4.0
    c.time.logit_mean = 0.0
    c.time.logit_std = 1.0
    c.time.t_max = 1.0  # training t is clipped to [1e-5, t_max] (EDM-wrapped models: 80/81)

    c.coupling = default_coupling_config()

    c.pairs = ml_collections.ConfigDict()
    c.pairs.num_backward = 50_000
    c.pairs.num_forward = 0
    c.pairs.rho = 0.0  # probability of a forward pair in a batch (Simple ReFlow: 0.4)
    c.pairs.solver = "heun"
    c.pairs.grid = "edm"
    c.pairs.steps = 18
    c.pairs.t_max = 1.0
    c.pairs.t_min = 2e-3
    c.pairs.chunk = 1024  # pairs generated per jitted call (and per file shard)
    # Floating-point storage of the pair store: "float32" | "float16" | "bfloat16" (half the
    # disk and read bandwidth; read back as float32).
    c.pairs.storage_dtype = "float32"
    c.pairs.dir = ml_collections.FieldReference(None, field_type=str)
    # Coupling projection (METHOD.md §3 [recon]): a fraction of each batch from backward pairs
    # re-paired with real data by entropic OT (OTT-JAX). Off by default.
    c.pairs.projection = ml_collections.ConfigDict()
    c.pairs.projection.fraction = 0.0  # share of a batch (backward gets 1 − rho − fraction)
    c.pairs.projection.num = 4096  # backward pairs projected onto as many real samples
    c.pairs.projection.epsilon = 0.05  # entropic ε relative to the mean cost
    c.pairs.projection.lam = "balanced"  # "balanced" (λ = ∞) | "search" (Algorithm 2)
    c.pairs.projection.draw = "sample"  # j(i) drawn from the plan's row i | "argmax"

    c.sampler = ml_collections.ConfigDict()
    c.sampler.solver = "dpm2"
    c.sampler.grid = "sigmoid"
    c.sampler.kappa = 20.0
    c.sampler.rho = 7.0
    c.sampler.r = 0.4
    c.sampler.t_max = 1.0

    c.guidance = ml_collections.ConfigDict()
    c.guidance.kind = "none"  # none | autoguidance | cfg
    c.guidance.w = 0.0
    c.guidance.bad_workdir = ml_collections.FieldReference(None, field_type=str)

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0  # 0 = off

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 256
    c.training.num_steps = 1000
    c.training.ema_decay = 0.9999
    # EDM's EMA ramp-up ratio, in steps (train.step.ema_decay_at): the EMA's half-life is at
    # most this times the steps taken; 0 = none (EDM's teachers use 0.05: a short run from
    # random weights then forgets them)
    c.training.ema_rampup = 0.0
    c.training.log_every = 100
    c.training.ckpt_every = 1000
    c.training.keep_checkpoints = 2
    c.training.steps_per_call = 1  # train steps fused in one jitted lax.scan

    c.eval = ml_collections.ConfigDict()
    c.eval.nfe = (1, 2, 4, 9)
    c.eval.num_samples = 5000
    c.eval.batch_size = 256  # global sampling batch (divisible by the device count)
    c.eval.seed = 0  # sample i is seeded by fold_in(key(eval.seed), i), as EDM's --seeds
    # FID: pytorch-fid's pt_inception-2015-12-05 weights ("" = $SIMPLE_REFLOW_INCEPTION; none:
    # pixel-space FD) and reference statistics (scripts/fid_stats.py, or EDM's .npz).
    c.eval.inception_weights = ""
    c.eval.fid_ref = ""
    # The eval stage samples the EMA snapshot in this folder (default: the stage's workdir).
    c.eval.model_dir = ml_collections.FieldReference(None, field_type=str)
    # The teacher's solver beside a student ("" = sampler.solver); a two-time student sampled
    # with "mean" scores its one-time teacher with "euler": the average-velocity step with u = v.
    c.eval.teacher_solver = ""
    # With sampler.solver = "flowturbo": the workdir of the flowturbo stage, whose refiner and
    # plan (flowturbo.json) the student (eval.model_dir, the snapshot it was trained for) is
    # sampled with, at the plan's NFE; the teacher then uses eval.teacher_solver ('' = "heun").
    c.eval.refiner_dir = ml_collections.FieldReference(None, field_type=str)

    # BOSS (METHOD.md §9): the image configs' `boss` stage chooses the Bellman-optimal K-step
    # Euler grid of a snapshot, saves it beside the snapshot (boss_grid.json; sampled by the
    # eval stage with sampler.grid='boss', sampler.solver='euler') and optionally straightens
    # the model along one of those grids into the stage's workdir; the toy pipeline does the
    # same after its evaluation when boss.enabled (configs/toy2d.py:boss).
    c.boss = ml_collections.ConfigDict()
    c.boss.enabled = False  # toy pipeline only (the image configs run the `boss` stage)
    # Image stage: "student" = the snapshot in eval.model_dir (the reflow stage's workdir, the
    # model the eval stage scores), "teacher" = the snapshot in teacher.workdir.
    c.boss.model = "student"
    c.boss.teacher_grid = True  # also a grid beside teacher.workdir's snapshot (for eval)
    c.boss.candidates = 100  # N candidate intervals: the grid's times are chosen among them
    c.boss.candidate_grid = "uniform"  # uniform | edm | sigmoid, from sampler.t_max to 0
    c.boss.num_noises = 256  # reference noises of the Euler cost matrix
    c.boss.substeps = 4  # Heun steps per candidate interval of the reference solve
    c.boss.batch_size = 64  # noises per compiled call (global; divides the counts of noises)
    c.boss.num_steps = (2, 4, 6)  # the K whose grids are saved (others: from the saved cost)
    # Straightening (0 steps: grids only): fine-tune along the K = straighten_k grid on
    # reference trajectories of fresh noises, all weights or rank-lora_rank adapters.
    c.boss.straighten_steps = 0
    c.boss.straighten_k = 4
    c.boss.straighten_noises = 1024
    c.boss.straighten_batch = 64
    c.boss.lr = 2e-5
    c.boss.ema_decay = 0.999
    c.boss.lora_rank = 0

    # FlowTurbo (METHOD.md §9): the image configs' `flowturbo` stage trains a light velocity
    # refiner for one sampling plan of a snapshot, on the plan run with the snapshot itself in
    # the refiner's place (simple_reflow.train.flowturbo_stage); the eval stage samples the plan
    # with sampler.solver='flowturbo', eval.refiner_dir=<that workdir>.
    c.flowturbo = ml_collections.ConfigDict()
    c.flowturbo.enabled = False  # toy pipeline only (the image configs run the `flowturbo` stage)
    # "student" = the snapshot in eval.model_dir (the reflow stage's workdir, the model the eval
    # stage scores), "teacher" = the snapshot in teacher.workdir.
    c.flowturbo.model = "student"
    # Blocks of Heun (H, 2 calls a step), pseudo-corrector (P, 1) and refiner (R, no network
    # call, 2 refiner calls) steps, run in order (simple_reflow.flowturbo); needs an R block.
    c.flowturbo.plan = "H1P3R2"
    # The plan's grid, one interval per step: uniform | edm | sigmoid, from sampler.t_max to 0
    # (κ and ρ of the sampler section); the refiner is trained at these times only.
    c.flowturbo.grid = "uniform"
    # The refiner: hidden channels and 3×3 convolutions (ConvRefiner, images) or hidden width
    # and layers (MLPRefiner, flat data); its output layer starts at zero (no offset).
    c.flowturbo.width = 64
    c.flowturbo.depth = 3
    c.flowturbo.num_noises = 512  # noises whose plan runs make the training set
    c.flowturbo.batch_size = 64  # noises per compiled plan run (global; divides num_noises)
    c.flowturbo.num_steps = 2000  # refiner training steps (a multiple of steps_per_call)
    c.flowturbo.train_batch = 64  # training rows per refiner step (global)
    c.flowturbo.lr = 1e-3  # Adam of the optim section at this rate, no warm-up [recon]
    c.flowturbo.ema_decay = 0.999  # the refiner's EMA, saved as ema.npz

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis (-1: all)
    return c


def apply_mean_method(c: ml_collections.ConfigDict, kind: str, *, distill: bool = False) -> None:
    """Makes ``c`` train and sample a two-time model with ``kind`` (``"meanflow"`` or
    ``"splitmeanflow"``, METHOD.md §9), from scratch or distilled from the teacher.

    Sets ``loss.kind``, ``loss.distill``, the objective's defaults (MeanFlow: r = t on 75 % of
    the rows, p = 1; SplitMeanFlow: boundary 50 %, p = 0 — ``simple_reflow.losses_mean``),
    MeanFlow's logit-normal(−0.4, 1) times, ``model.two_time``, the ``"mean"`` solver on the
    uniform grid (1 NFE per interval) with the teacher scored by Euler on the same grid, and no
    sampling-time guidance (a two-time model's guidance is folded into its training target).
    Dataset configs override what their recipe says (the image configs: ``image_stages``).
    """
    if kind not in MEAN_METHODS:
        raise ValueError(f"kind={kind!r} is not one of {MEAN_METHODS}.")
    c.loss.kind = kind
    c.loss.distill = distill
    c.loss.norm_p = 1.0 if kind == "meanflow" else 0.0
    c.loss.equal_fraction = MEAN_LOSS_DEFAULTS["equal_fraction"]
    c.loss.boundary_fraction = MEAN_LOSS_DEFAULTS["boundary_fraction"]
    c.time.dist = "logit_normal"
    c.time.logit_mean = -0.4
    c.time.logit_std = 1.0
    c.model.two_time = True
    c.sampler.solver = "mean"
    c.sampler.grid = "uniform"
    c.eval.teacher_solver = "euler"
    c.guidance.kind = "none"
    c.guidance.w = 0.0
