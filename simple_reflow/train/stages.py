"""Config validation and dispatch of a stage to its runner.

:func:`validate_config` checks every section before anything is built or compiled, so a bad
value fails in well under a second with a message naming the field. :func:`resolve` does it once
at a stage's start and returns the one frozen description the stage's functions read
(:class:`Resolved`): the config, frozen, and what it implies — the data's shape and class count
(read once; a folder of images is listed once), the pair grids. The toy pipeline and the image
stages read the same description.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import ml_collections

from simple_reflow import grids, sampler
from simple_reflow.data.toy import TOY_DATASETS
from simple_reflow.pair_store import STORAGE_DTYPES
from simple_reflow.train import configure
from simple_reflow.train.toy import TOY_SHAPE, run_pipeline

__all__ = ["STAGES", "Resolved", "resolve", "validate_config", "run_stage"]

STAGES = ("pipeline", "teacher", "pairs", "reflow", "boss", "flowturbo", "eval")


def _check(cond, msg):
    if not cond:
        raise ValueError(msg)


def _validate_common(cfg):
    _check(cfg.stage in STAGES, f"stage={cfg.stage!r} is not one of {STAGES}.")
    configure.validate_loss_config(cfg.loss)
    configure.validate_time_config(cfg.time)
    s = cfg.sampler
    _check(
        s.solver in sampler.SOLVERS or (s.solver == "flowturbo" and cfg.stage == "eval"),
        f"sampler.solver={s.solver!r} is not one of {sampler.SOLVERS}"
        + (
            " ('flowturbo', a plan with the refiner of eval.refiner_dir, is for the eval stage)."
            if s.solver == "flowturbo"
            else "."
        ),
    )
    _check(
        s.grid in grids.GRIDS or (s.grid == "boss" and cfg.stage == "eval"),
        f"sampler.grid={s.grid!r} is not one of {grids.GRIDS}"
        + (
            " ('boss', the grid saved beside each model, is for the eval stage)."
            if s.grid == "boss"
            else "."
        ),
    )
    _check(
        s.grid != "boss" or s.solver == "euler",
        f"sampler.grid='boss' with sampler.solver={s.solver!r}: BOSS chooses its grid for Euler "
        "steps (set sampler.solver='euler').",
    )
    _check(0 < s.r < 1, f"sampler.r={s.r!r} must lie in (0, 1).")
    _check(0 < s.t_max <= 1, f"sampler.t_max={s.t_max!r} must lie in (0, 1].")
    _check(s.kappa > 0, f"sampler.kappa={s.kappa!r} must be > 0.")
    ts = cfg.eval.get("teacher_solver", "")
    _check(
        ts in ("", *sampler.SOLVERS),
        f"eval.teacher_solver={ts!r} is not one of {sampler.SOLVERS} ('' = sampler.solver).",
    )
    _check(
        s.solver != "mean" or cfg.guidance.kind == "none" or not cfg.guidance.w,
        f"guidance.kind={cfg.guidance.kind!r} guides a one-time denoiser; a two-time model "
        "(sampler.solver='mean') has its guidance folded into training (loss.cfg_omega): "
        "set guidance.kind='none'.",
    )
    p = cfg.pairs
    _check(0 <= p.rho <= 1, f"pairs.rho={p.rho!r} must lie in [0, 1].")
    _check(p.num_backward > 0, f"pairs.num_backward={p.num_backward!r} must be > 0.")
    _check(p.num_forward >= 0, f"pairs.num_forward={p.num_forward!r} must be >= 0.")
    _check(
        p.rho == 0 or p.num_forward > 0,
        f"pairs.rho={p.rho!r} > 0 needs forward pairs, but pairs.num_forward=0.",
    )
    _check(
        p.solver in ("euler", "heun"),
        f"pairs.solver={p.solver!r} must be 'euler' or 'heun' (forward pairs integrate "
        "towards the noise).",
    )
    _check(p.grid in grids.GRIDS, f"pairs.grid={p.grid!r} is not one of {grids.GRIDS}.")
    _check(p.steps >= 1, f"pairs.steps={p.steps!r} must be >= 1.")
    _check(0 < p.t_min < 0.5, f"pairs.t_min={p.t_min!r} must lie in (0, 0.5).")
    _check(0.5 < p.t_max <= 1, f"pairs.t_max={p.t_max!r} must lie in (0.5, 1].")
    _check(
        p.storage_dtype in STORAGE_DTYPES,
        f"pairs.storage_dtype={p.storage_dtype!r} is not one of {STORAGE_DTYPES}.",
    )
    _check(
        isinstance(p.chunk, int) and p.chunk >= 1,
        f"pairs.chunk={p.chunk!r} must be an integer >= 1.",
    )
    q = p.projection
    _check(
        0 <= q.fraction <= 1 - p.rho,
        f"pairs.projection.fraction={q.fraction!r} must lie in [0, 1 - pairs.rho].",
    )
    if q.fraction > 0:
        _check(
            0 < q.num <= p.num_backward,
            f"pairs.projection.num={q.num!r} must lie in [1, pairs.num_backward].",
        )
        _check(q.epsilon > 0, f"pairs.projection.epsilon={q.epsilon!r} must be > 0.")
        _check(
            q.lam in ("balanced", "search"),
            f"pairs.projection.lam={q.lam!r} is not one of ('balanced', 'search').",
        )
        _check(
            q.lam == "balanced" or p.num_forward > 0,
            "pairs.projection.lam='search' needs forward pairs for its budget, but "
            "pairs.num_forward=0.",
        )
        _check(
            q.draw in ("sample", "argmax"),
            f"pairs.projection.draw={q.draw!r} is not one of ('sample', 'argmax').",
        )
    _check(cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr!r} must be > 0.")
    t = cfg.training
    _check(t.batch_size > 0, f"training.batch_size={t.batch_size!r} must be > 0.")
    _check(t.num_steps > 0, f"training.num_steps={t.num_steps!r} must be > 0.")
    _check(0 <= t.ema_decay < 1, f"training.ema_decay={t.ema_decay!r} must lie in [0, 1).")
    rampup = t.get("ema_rampup", 0.0)
    _check(rampup >= 0, f"training.ema_rampup={rampup!r} must be >= 0 (0: no EMA ramp-up).")
    _check(t.steps_per_call >= 1, f"training.steps_per_call={t.steps_per_call!r} must be >= 1.")
    _check(all(int(n) >= 1 for n in cfg.eval.nfe), f"eval.nfe={cfg.eval.nfe!r} must be >= 1.")


def _validate_boss(cfg, *, image):
    """The ``boss`` section (the image ``boss`` stage; the toy pipeline with ``boss.enabled``)."""
    import jax

    b = cfg.boss
    n = b.candidates
    _check(isinstance(n, int) and n >= 2, f"boss.candidates={n!r} must be an integer >= 2.")
    _check(
        b.candidate_grid in grids.GRIDS,
        f"boss.candidate_grid={b.candidate_grid!r} is not one of {grids.GRIDS}.",
    )
    ks = tuple(b.num_steps) if isinstance(b.num_steps, (tuple, list)) else (b.num_steps,)
    _check(
        len(ks) > 0 and all(isinstance(k, int) and 1 <= k <= n for k in ks),
        f"boss.num_steps={b.num_steps!r} must be integers K in [1, boss.candidates={n}].",
    )
    _check(
        isinstance(b.substeps, int) and b.substeps >= 1,
        f"boss.substeps={b.substeps!r} must be an integer >= 1.",
    )
    _check(
        isinstance(b.batch_size, int) and b.batch_size >= 1,
        f"boss.batch_size={b.batch_size!r} must be an integer >= 1.",
    )
    _check(
        isinstance(b.num_noises, int) and b.num_noises >= 1 and b.num_noises % b.batch_size == 0,
        f"boss.num_noises={b.num_noises!r} must be a positive multiple of "
        f"boss.batch_size={b.batch_size}.",
    )
    devices = jax.device_count()
    _check(
        not image or b.batch_size % devices == 0,
        f"boss.batch_size={b.batch_size!r} must be a multiple of the {devices} devices.",
    )
    _check(
        isinstance(b.straighten_steps, int) and b.straighten_steps >= 0,
        f"boss.straighten_steps={b.straighten_steps!r} must be an integer >= 0 (0: grids only).",
    )
    if b.straighten_steps:
        k = b.straighten_k
        _check(
            isinstance(k, int) and 1 <= k <= n,
            f"boss.straighten_k={k!r} must be an integer K in [1, boss.candidates={n}].",
        )
        m = b.straighten_noises
        _check(
            isinstance(m, int) and m >= 1 and m % b.batch_size == 0,
            f"boss.straighten_noises={m!r} must be a positive multiple of "
            f"boss.batch_size={b.batch_size}.",
        )
        sb = b.straighten_batch
        _check(
            isinstance(sb, int) and sb >= 1 and sb % devices == 0,
            f"boss.straighten_batch={sb!r} must be a positive multiple of the {devices} devices.",
        )
        _check(b.lr > 0, f"boss.lr={b.lr!r} must be > 0.")
        _check(0 <= b.ema_decay < 1, f"boss.ema_decay={b.ema_decay!r} must lie in [0, 1).")
        _check(
            isinstance(b.lora_rank, int) and b.lora_rank >= 0,
            f"boss.lora_rank={b.lora_rank!r} must be an integer >= 0 (0: all weights).",
        )
        spc = cfg.training.steps_per_call
        _check(
            b.straighten_steps % spc == 0,
            f"boss.straighten_steps={b.straighten_steps} must be a multiple of "
            f"training.steps_per_call={spc}.",
        )
    _validate_sampled_model(cfg, "boss", "BOSS chooses Euler steps of", image=image)


def _validate_sampled_model(cfg, section, does, *, image):
    """What BOSS and FlowTurbo ask of the model they act on: a one-time flow and, on image
    configs, the snapshot ``<section>.model`` names (``does``: what the method does to it)."""
    _check(
        cfg.loss.kind not in configure.MEAN_KINDS and not cfg.model.get("two_time", False),
        f"loss.kind={cfg.loss.kind!r}: {does} a one-time flow; a two-time model "
        "(model.two_time) takes its steps with the 'mean' solver.",
    )
    if not image:
        return
    model = cfg[section].model
    _check(
        model in ("student", "teacher"),
        f"{section}.model={model!r} is not one of ('student', 'teacher').",
    )
    if model == "student":
        _check(
            cfg.eval.get("model_dir"),
            f"{section}.model='student' reads the snapshot in eval.model_dir (the reflow "
            "stage's workdir), which is not set: set eval.model_dir, or "
            f"{section}.model='teacher'.",
        )
    else:
        _check(
            cfg.teacher.workdir,
            f"{section}.model='teacher' reads the snapshot in teacher.workdir, which is not set.",
        )


def _validate_flowturbo(cfg, *, image):
    """The ``flowturbo`` section (the image ``flowturbo`` stage)."""
    import jax

    from simple_reflow import flowturbo

    f = cfg.flowturbo
    try:
        blocks = flowturbo.parse_plan(f.plan)
    except ValueError as err:
        raise ValueError(f"flowturbo.plan: {err}") from None
    _check(
        any(b == "R" for b, _ in blocks),
        f"flowturbo.plan={f.plan!r} has no refiner (R) block to train a refiner for.",
    )
    _check(f.grid in grids.GRIDS, f"flowturbo.grid={f.grid!r} is not one of {grids.GRIDS}.")
    for field in ("width", "depth", "num_steps", "batch_size", "train_batch"):
        v = f[field]
        _check(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            f"flowturbo.{field}={v!r} must be an integer >= 1.",
        )
    _check(
        isinstance(f.num_noises, int) and f.num_noises >= 1 and f.num_noises % f.batch_size == 0,
        f"flowturbo.num_noises={f.num_noises!r} must be a positive multiple of "
        f"flowturbo.batch_size={f.batch_size}.",
    )
    devices = jax.device_count()
    for field in ("batch_size", "train_batch"):
        _check(
            not image or f[field] % devices == 0,
            f"flowturbo.{field}={f[field]!r} must be a multiple of the {devices} devices.",
        )
    spc = cfg.training.steps_per_call
    _check(
        f.num_steps % spc == 0,
        f"flowturbo.num_steps={f.num_steps} must be a multiple of training.steps_per_call={spc}.",
    )
    _check(f.lr > 0, f"flowturbo.lr={f.lr!r} must be > 0.")
    _check(0 <= f.ema_decay < 1, f"flowturbo.ema_decay={f.ema_decay!r} must lie in [0, 1).")
    _validate_sampled_model(cfg, "flowturbo", "a FlowTurbo plan steps the velocity of", image=image)


def _validate_flowturbo_eval(cfg):
    """``sampler.solver='flowturbo'`` and ``eval.refiner_dir`` go together (eval stage)."""
    refiner_dir = cfg.eval.get("refiner_dir")
    if cfg.sampler.solver != "flowturbo":
        _check(
            not refiner_dir,
            f"eval.refiner_dir={refiner_dir!r} is read with sampler.solver='flowturbo' only "
            f"(got sampler.solver={cfg.sampler.solver!r}): set both, or unset eval.refiner_dir.",
        )
        return
    _check(
        refiner_dir,
        "sampler.solver='flowturbo' samples the plan saved by the flowturbo stage: set "
        "eval.refiner_dir to that stage's workdir.",
    )
    _check(
        cfg.loss.kind not in configure.MEAN_KINDS and not cfg.model.get("two_time", False),
        f"sampler.solver='flowturbo' with loss.kind={cfg.loss.kind!r}: a FlowTurbo plan steps "
        "the velocity of a one-time flow, not a two-time model.",
    )


def validate_config(cfg):
    """Validates a full config for its stage; raises ``ValueError`` naming the bad field.

    Returns:
      The data's :class:`~simple_reflow.data.DataSpec` (read once), None for the toy pipeline.
    """
    _validate_common(cfg)
    toy = cfg.data.name in TOY_DATASETS
    if cfg.stage == "pipeline":
        _check(
            toy,
            f"stage='pipeline' runs on toy data; data.name={cfg.data.name!r} is not one "
            f"of {TOY_DATASETS} (image data runs stage by stage).",
        )
        _check(cfg.model.name == "mlp", f"model.name={cfg.model.name!r}: toy data uses 'mlp'.")
        _check(cfg.model.hidden > 0, f"model.hidden={cfg.model.hidden!r} must be > 0.")
        _check(cfg.model.depth > 0, f"model.depth={cfg.model.depth!r} must be > 0.")
        _check(
            0 <= cfg.model.dropout < 1, f"model.dropout={cfg.model.dropout!r} must lie in [0, 1)."
        )
        _check(
            cfg.teacher.num_steps > 0, f"teacher.num_steps={cfg.teacher.num_steps!r} must be > 0."
        )
        num_data = cfg.data.get("num_examples", 0)
        _check(
            num_data >= 0 and num_data % cfg.training.batch_size == 0,
            f"data.num_examples={num_data!r} must be 0 (fresh samples) or a multiple of "
            f"training.batch_size={cfg.training.batch_size}.",
        )
        configure.coupling_from_config(
            cfg.coupling, data_shape=TOY_SHAPE, num_data=num_data or None
        )  # validates it
        configure.validate_mean_config(cfg.loss, cfg.model, cfg.sampler)
        if cfg.get("boss") is not None and cfg.boss.get("enabled", False):
            _validate_boss(cfg, image=False)
        if cfg.get("flowturbo") is not None and cfg.flowturbo.get("enabled", False):
            _validate_flowturbo(cfg, image=False)
        return None
    from simple_reflow.train.checkpoint import check_model_config

    _check(not toy, f"data.name={cfg.data.name!r} is toy data: use stage='pipeline'.")
    spec = configure.data_spec_from_config(cfg.data)
    shape, classes = tuple(spec.shape), spec.num_classes
    _check(
        not (cfg.pairs.projection.fraction > 0 and classes),
        f"pairs.projection.fraction={cfg.pairs.projection.fraction!r}: projected pairs are "
        "not supported for class-conditional data (they would need OT per class).",
    )
    configure.validate_model_config(cfg.model, data_shape=shape)
    configure.validate_mean_config(cfg.loss, cfg.model, cfg.sampler, num_classes=classes)
    mean = cfg.loss.kind in configure.MEAN_KINDS
    _check(
        not mean or cfg.stage in ("teacher", "eval"),
        f"loss.kind={cfg.loss.kind!r} trains on images in stage='teacher' (from scratch or "
        f"distilled, loss.distill) and is scored by stage='eval', not stage={cfg.stage!r}.",
    )
    distill = mean and cfg.loss.get("distill", False)
    _check(
        cfg.model.get("num_classes", 0) == classes,
        f"model.num_classes={cfg.model.get('num_classes', 0)!r} does not match the data's "
        f"{classes} classes (data.conditional / data.num_classes).",
    )
    snapshots = []
    if cfg.stage in ("pairs", "reflow", "eval") or (cfg.stage == "teacher" and distill):
        _check(
            cfg.stage != "teacher" or cfg.teacher.workdir,
            "loss.distill=True needs teacher.workdir: a trained teacher, an imported EDM "
            "checkpoint or a ReFlow student to distil from.",
        )
        snapshots.append(("teacher.workdir", cfg.teacher.workdir))
    if cfg.stage == "eval" and cfg.eval.get("model_dir"):
        snapshots.append(("eval.model_dir", cfg.eval.model_dir))
    if cfg.stage == "boss":
        _validate_boss(cfg, image=True)
        if cfg.boss.model == "student":
            snapshots.append(("eval.model_dir", cfg.eval.model_dir))
        if cfg.boss.model == "teacher" or cfg.boss.teacher_grid:
            snapshots.append(("teacher.workdir", cfg.teacher.workdir))
    if cfg.stage == "flowturbo":
        _validate_flowturbo(cfg, image=True)
        if cfg.flowturbo.model == "student":
            snapshots.append(("eval.model_dir", cfg.eval.model_dir))
        else:
            snapshots.append(("teacher.workdir", cfg.teacher.workdir))
    if cfg.stage == "eval":
        _validate_flowturbo_eval(cfg)
    if cfg.stage == "eval" and cfg.guidance.kind == "autoguidance" and cfg.guidance.w:
        snapshots.append(("guidance.bad_workdir", cfg.guidance.bad_workdir))
    for field, workdir in snapshots:  # an imported or trained snapshot of another network
        check_model_config(workdir, cfg.model, data_shape=shape, field=field)
    if cfg.stage == "eval":
        _validate_eval(cfg, shape)
    if cfg.stage == "teacher":
        coupled = cfg.coupling.name != "independent"
        _check(
            not (coupled and cfg.loss.kind == "edm"),
            f"coupling.name={cfg.coupling.name!r} pairs noise with data for a 1-rectified "
            "flow (loss.kind='flow'); EDM's loss (loss.kind='edm') has no coupling.",
        )
        if cfg.loss.kind != "edm":  # LOOM's dataset size is known once the data is read
            configure.coupling_from_config(
                cfg.coupling, data_shape=shape, num_data=1 if cfg.coupling.name == "loom" else None
            )

    return spec


def _validate_eval(cfg, shape):
    """The sampling batch and, for FID, the Inception weights and reference statistics."""
    import os

    import jax

    from simple_reflow.metrics.fid import load_reference
    from simple_reflow.metrics.inception import FEATURE_DIM, WEIGHTS_ENV

    e = cfg.eval
    _check(
        e.batch_size > 0 and e.batch_size % jax.device_count() == 0,
        f"eval.batch_size={e.batch_size!r} must be a positive multiple of the "
        f"{jax.device_count()} devices.",
    )
    _check(e.num_samples >= 2, f"eval.num_samples={e.num_samples!r} must be >= 2.")
    weights = e.get("inception_weights") or os.environ.get(WEIGHTS_ENV)
    if not weights:
        return
    _check(
        os.path.exists(weights),
        f"eval.inception_weights={weights!r} does not exist (pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth; or unset it for the pixel-space FD).",
    )
    try:
        load_reference(e.get("fid_ref"), dim=FEATURE_DIM, resolution=shape[0])
    except (OSError, ValueError) as err:
        raise ValueError(f"eval.fid_ref: {err}") from None


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A stage's config resolved once (:func:`resolve`): validated, frozen, and the facts it
    implies, each from one source — shape and class count from the data (the model's class
    count is checked against it), σ_data from the model (the EDM loss uses the model's)."""

    cfg: Any  # ml_collections.FrozenConfigDict
    data: Any = None  # data.DataSpec for image stages; None for the toy pipeline

    @property
    def shape(self) -> tuple:
        """One example's shape: ``(H, W, C)`` for images, ``TOY_SHAPE`` = ``(2,)`` for toys."""
        return TOY_SHAPE if self.data is None else tuple(self.data.shape)

    @property
    def num_classes(self) -> int:
        """The data's class count (0 = unconditional; toy data has none)."""
        return 0 if self.data is None else self.data.num_classes

    @functools.cached_property
    def pair_grid(self):
        """The backward-pair grid, decreasing from ``pairs.t_max`` to 0."""
        p = self.cfg.pairs
        return grids.make_grid(p.grid, p.steps, t_max=p.t_max)

    @functools.cached_property
    def forward_grid(self):
        """The forward-pair grid, increasing from ``pairs.t_min`` to ``pairs.t_max``."""
        p = self.cfg.pairs
        return grids.forward_grid(p.grid, p.steps, t_min=p.t_min, t_max=p.t_max)


def resolve(cfg) -> Resolved:
    """Validates ``cfg`` (:func:`validate_config`) and resolves it into a :class:`Resolved`."""
    return Resolved(ml_collections.FrozenConfigDict(cfg), validate_config(cfg))


def run_stage(run, workdir):
    """Runs the stage of a :class:`Resolved` config (a plain config is resolved first);
    returns a printable summary (or None)."""
    if not isinstance(run, Resolved):
        run = resolve(run)
    if run.cfg.stage == "pipeline":
        from simple_reflow.train.toy_eval import format_table

        return format_table(run_pipeline(run, workdir))
    from simple_reflow.train import images

    return images.run_image_stage(run, workdir)
