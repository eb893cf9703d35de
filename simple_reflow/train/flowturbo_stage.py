"""The FlowTurbo stage (METHOD.md §9): a velocity refiner trained for one sampling plan of a
snapshot, and the plan sampled by the eval stage.

Image configs (``configs/<dataset>.py:flowturbo``, :func:`run_flowturbo`), from the
``flowturbo`` section:

1. the snapshot (``flowturbo.model``: ``"student"``, the one in ``eval.model_dir`` — the
   reflow stage's workdir, the model the eval stage scores — or ``"teacher"``,
   ``teacher.workdir``) runs the plan ``flowturbo.plan`` (e.g. ``"H1P3R2"``) on its grid
   (:func:`plan_times`: ``flowturbo.grid`` from ``sampler.t_max`` to 0, one interval per
   step) from ``flowturbo.num_noises`` index-seeded noises (labels too, for class-conditional
   data), with itself in the refiner's place: every refiner call's inputs (x, t, v_prev) and
   its velocity there make the training set (:func:`simple_reflow.flowturbo.refiner_pairs`);
2. a :class:`~simple_reflow.models.refiner.ConvRefiner` (``flowturbo.width`` ×
   ``flowturbo.depth``) is trained on that set by
   :func:`~simple_reflow.train.refiner.train_refiner` into the stage's workdir (checkpoints,
   resume, ``metrics.jsonl``; its EMA snapshot ``ema.npz``);
3. ``flowturbo.json`` beside it records what the eval stage needs to sample the plan
   (:func:`read_plan`): the plan, its grid, the refiner's architecture, the network and
   refiner calls, and the snapshot it was trained for (path and SHA-256).

Score it with the eval stage (the plan's NFE is fixed: ``eval.nfe`` then applies to the
teacher alone, sampled with ``eval.teacher_solver``, default Heun)::

  python scripts/train.py --config configs/cifar10.py:eval --workdir runs/c10/flowturbo_eval \\
      --config.eval.model_dir runs/c10/reflow --config.teacher.workdir runs/c10/teacher \\
      --config.sampler.solver flowturbo --config.eval.refiner_dir runs/c10/flowturbo

The NFE reported is the plan's network calls (:func:`simple_reflow.flowturbo.plan_calls`); the
refiner's calls are counted and reported beside it (``eval/student/refiner_calls@nfe=N``),
never folded in as free. The refiner sees the network alone: sampling-time guidance
(AutoGuidance, CFG) is applied on top by the eval stage, as for BOSS [recon]. A finished stage
(``flowturbo.json`` written for the same settings and snapshot) does nothing; an interrupted
one regenerates its training set (deterministic) and resumes the refiner from its checkpoints.

Toy pipeline (``configs/toy2d.py:flowturbo``, :func:`toy_flowturbo`): after the evaluation, an
:class:`~simple_reflow.models.refiner.MLPRefiner` per model (teacher and student) trained the
same way into ``workdir/<model>_flowturbo``, and W2 of the plan with it, of the plan with the
untrained refiner (zero offset: every R step reuses the carried velocity), of the
pseudo-corrector and of Heun at the plan's NFE added to the pipeline's metrics.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from simple_reflow import compile_options, flowturbo, grids, pair_store, sampler
from simple_reflow.errors import DamagedInput, MissingInput, reason
from simple_reflow.models.refiner import ConvRefiner, MLPRefiner
from simple_reflow.train import checkpoint, configure, sharding
from simple_reflow.train.boss_stage import _image_batches
from simple_reflow.train.refiner import refiner_fn, train_refiner
from simple_reflow.train.step import make_optimizer, split_model
from simple_reflow.train.streams import stream_key, stream_seed

__all__ = [
    "PLAN_FILE",
    "model_folder",
    "plan_times",
    "refiner_arch",
    "build_refiner",
    "read_record",
    "read_plan",
    "make_plan_sample_fn",
    "run_flowturbo",
    "toy_flowturbo",
]

PLAN_FILE = "flowturbo.json"
"""The record beside the refiner's ``ema.npz`` in the stage's workdir."""


def model_folder(cfg) -> str | None:
    """The folder of the snapshot the ``flowturbo`` stage trains a refiner for
    (``flowturbo.model``)."""
    return cfg.eval.get("model_dir") if cfg.flowturbo.model == "student" else cfg.teacher.workdir


def plan_times(cfg) -> np.ndarray:
    """The plan's grid ``[steps + 1]``: ``flowturbo.grid`` with one interval per step of
    ``flowturbo.plan``, from ``sampler.t_max`` to 0 (κ and ρ of the ``sampler`` section)."""
    f, s = cfg.flowturbo, cfg.sampler
    n = sum(k for _, k in flowturbo.parse_plan(f.plan))
    return flowturbo.plan_grid(
        f.plan, grids.make_grid(f.grid, n, kappa=s.kappa, rho=s.rho, t_max=s.t_max)
    )


def refiner_arch(cfg, shape) -> dict:
    """The refiner's architecture (JSON values): a ConvRefiner for images ``[H, W, C]``, an
    MLPRefiner for flat data."""
    return _arch(shape, cfg.flowturbo.width, cfg.flowturbo.depth)


def _arch(shape, width, depth) -> dict:
    size = {"channels": int(shape[-1])} if len(shape) == 3 else {"dim": int(np.prod(shape))}
    kind = "conv" if len(shape) == 3 else "mlp"
    return {"kind": kind, **size, "width": int(width), "depth": int(depth)}


def build_refiner(arch: dict, seed: int):
    """The refiner module of ``arch`` (:func:`refiner_arch`), initialised from ``seed``."""
    rngs = nnx.Rngs(seed)
    if arch["kind"] == "conv":
        return ConvRefiner(arch["channels"], width=arch["width"], depth=arch["depth"], rngs=rngs)
    return MLPRefiner(arch["dim"], hidden=arch["width"], depth=arch["depth"], rngs=rngs)


def _info(cfg, model_dir, shape) -> dict:
    """What a refiner was trained with (JSON values): another setting trains it again."""
    f = cfg.flowturbo
    return {
        "plan": f.plan,
        "grid": f.grid,
        "times": [float(t) for t in plan_times(cfg)],
        "refiner": refiner_arch(cfg, shape),
        "num_noises": int(f.num_noises),
        "batch_size": int(f.batch_size),
        "train_batch": int(f.train_batch),
        "num_steps": int(f.num_steps),
        "lr": float(f.lr),
        "ema_decay": float(f.ema_decay),
        "seed": int(cfg.seed),
        "model_dir": os.path.abspath(model_dir),
        "snapshot_sha256": pair_store.file_sha256(os.path.join(model_dir, "ema.npz")),
    }


def read_record(refiner_dir) -> dict:
    """The checked ``flowturbo.json`` of ``refiner_dir`` (a :class:`MissingInput` naming the
    command that writes it when it or the refiner's ``ema.npz`` is missing)."""
    path = os.path.join(refiner_dir, PLAN_FILE)
    if not os.path.exists(path) or not os.path.exists(os.path.join(refiner_dir, "ema.npz")):
        raise MissingInput(
            f"eval.refiner_dir={refiner_dir!r} holds no trained refiner ({PLAN_FILE} and "
            "ema.npz): train one with `python scripts/train.py --config "
            f"configs/<dataset>.py:flowturbo --workdir {refiner_dir}`"
        )
    try:
        with open(path, "rb") as f:
            rec = json.loads(f.read().decode("utf-8"))
        flowturbo.parse_plan(rec["plan"])
        rec["times"] = np.asarray(rec["times"], np.float64)
        if (
            not {"kind", "width", "depth"} <= set(rec["refiner"])
            or "snapshot_sha256" not in (rec["info"])
        ):
            raise ValueError("incomplete record")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedInput(
            path, reason(e), f"rerun the flowturbo stage with --workdir {refiner_dir}"
        ) from e
    return rec


def read_plan(refiner_dir, shape, model_dir=None):
    """The plan saved by the ``flowturbo`` stage in ``refiner_dir``, checked.

    Args:
      refiner_dir: the stage's workdir (``flowturbo.json`` and the refiner's ``ema.npz``).
      shape: one example's shape (the refiner's input).
      model_dir: the folder of the snapshot the plan will run on; refused (``ValueError``)
        unless its ``ema.npz`` is the one the refiner was trained for (SHA-256).

    Returns:
      ``(record, refiner_def, refiner_params)``: the record's ``"plan"``, ``"times"``
      (float64), ``"nfe"``, ``"refiner_calls"``, ``"refiner"`` (architecture) and the refiner
      split by :func:`~simple_reflow.train.step.split_model` with its EMA weights.
    """
    rec = read_record(refiner_dir)
    if model_dir is not None:
        sha = pair_store.file_sha256(os.path.join(model_dir, "ema.npz"))
        if sha != rec["info"]["snapshot_sha256"]:
            raise ValueError(
                f"eval.refiner_dir={refiner_dir!r} holds a refiner trained for the snapshot in "
                f"{rec['info']['model_dir']!r}, not for eval.model_dir={model_dir!r} (another "
                "ema.npz): set eval.model_dir to that folder, or train a refiner for this one."
            )
    arch = rec["refiner"]
    expected = _arch(shape, arch["width"], arch["depth"])
    if expected != arch:
        raise ValueError(
            f"eval.refiner_dir={refiner_dir!r} holds a refiner for {arch}, not for this data "
            f"({expected})."
        )
    refiner_def, like = split_model(build_refiner(arch, 0))
    params = checkpoint.load_params(os.path.join(refiner_dir, "ema.npz"), like)
    return rec, refiner_def, params


def make_plan_sample_fn(denoiser, refiner_def, plan, times):
    """``sample_fn(params, x1, cond) -> x0``: the plan with ``params = {"model", "refiner"}``
    (pure; for :func:`simple_reflow.train.sampling.sample_features`).

    Args:
      denoiser: ``denoiser(params["model"]) -> denoise_fn`` (e.g. ``ModelDef.denoiser``).
      refiner_def: the refiner's definition (:func:`read_plan`).
      plan, times: the plan and its grid.
    """
    blocks = flowturbo.parse_plan(plan) if isinstance(plan, str) else plan
    times = flowturbo.plan_grid(blocks, times)

    def sample_fn(params, x1, cond):
        refine = refiner_fn(refiner_def, params["refiner"])
        denoise = denoiser(params["model"])
        return flowturbo.sample_plan(denoise, refine, x1, blocks, times, cond=cond)[0]

    return sample_fn


def _optimizer(cfg):
    """Adam of the ``optim`` section at ``flowturbo.lr``, no warm-up (the authors: AdamW at a
    constant rate)."""
    opt = ml_collections.ConfigDict(cfg.optim.to_dict())
    opt.lr, opt.warmup_steps = cfg.flowturbo.lr, 0
    return make_optimizer(opt)


def _training_set(run, model_def, params, mesh, times):
    """:func:`flowturbo.refiner_pairs` of ``flowturbo.num_noises`` noises, NumPy on every host."""
    from simple_reflow.train.boss import _host

    cfg = run.cfg
    f = cfg.flowturbo
    blocks = flowturbo.parse_plan(f.plan)
    make = compile_options.jit(
        lambda params, x1, cond: flowturbo.refiner_pairs(
            model_def.denoiser(params), x1, blocks, times, cond=cond
        )
    )
    parts = []
    batches = _image_batches(run, mesh, "flowturbo_noise", f.num_noises, f.batch_size)
    main = jax.process_index() == 0
    with tqdm(total=f.num_noises, desc="refiner set", unit="noise", disable=not main) as bar:
        for x1, cond in batches:
            parts.append({k: _host(v) for k, v in make(params, x1, cond).items()})
            bar.update(int(x1.shape[0]))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _write_record(workdir, info, rows) -> dict:
    """Writes ``workdir/flowturbo.json`` (process 0) once the refiner's ``ema.npz`` is there."""
    nfe, refiner_calls = flowturbo.plan_calls(info["plan"], np.asarray(info["times"]))
    record = {
        "plan": info["plan"],
        "times": info["times"],
        "nfe": int(nfe),
        "refiner_calls": int(refiner_calls),
        "refiner": info["refiner"],
        "training_rows": int(rows),
        "info": info,
    }
    if jax.process_index() == 0:
        path = os.path.join(workdir, PLAN_FILE)
        with open(path + ".tmp", "w") as fh:
            json.dump(record, fh, indent=1)
        os.replace(path + ".tmp", path)
    return record


def _train(cfg, refiner_def, params, pairs_set, workdir, mesh, steps_per_call):
    f, t = cfg.flowturbo, cfg.training
    return train_refiner(
        refiner_def,
        params,
        pairs_set,
        optimizer=_optimizer(cfg),
        num_steps=f.num_steps,
        batch_size=f.train_batch,
        workdir=workdir,
        seed=stream_seed(cfg.seed, "flowturbo_refiner", bits=31),
        ema_decay=f.ema_decay,
        mesh=mesh,
        steps_per_call=steps_per_call,
        log_every=min(t.log_every, f.num_steps),
        ckpt_every=min(t.ckpt_every, f.num_steps),
        keep=t.keep_checkpoints,
        desc=f"refiner ({f.plan})",
    )


_SETTINGS = "flowturbo_settings.json"


def _claim(workdir, info):
    """Refuses a workdir whose refiner was (or is being) trained with other settings — its
    checkpoints would be resumed as if they were this run's — and records ``info`` there.
    ``num_steps`` may differ: a longer run continues from the checkpoints."""
    path = os.path.join(workdir, _SETTINGS)
    try:
        with open(path) as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict):
        diff = sorted(
            k for k in set(old) | set(info) if k != "num_steps" and old.get(k) != info.get(k)
        )
        if diff:
            raise ValueError(
                f"the workdir {workdir!r} holds a refiner trained with settings that differ "
                f"from this config's ({', '.join(diff)}): use a new --workdir for them."
            )
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            json.dump(info, fh, indent=1)
        os.replace(path + ".tmp", path)


def run_flowturbo(run, workdir):
    """The image ``flowturbo`` stage (module docstring); returns a printable summary."""
    cfg = run.cfg
    f = cfg.flowturbo
    model_dir = model_folder(cfg)
    if (checkpoint.load_model_config(model_dir) or {}).get("two_time", False):
        field = "eval.model_dir" if f.model == "student" else "teacher.workdir"
        raise ValueError(
            f"{field}={model_dir!r} holds a two-time network; a FlowTurbo plan steps the "
            "velocity of a one-time flow (a teacher or a ReFlow student)."
        )
    info = _info(cfg, model_dir, run.shape)
    times = np.asarray(info["times"])
    nfe, refiner_calls = flowturbo.plan_calls(f.plan, times)
    score = (
        f"score it with the eval stage: --config.eval.model_dir={model_dir} "
        f"--config.sampler.solver=flowturbo --config.eval.refiner_dir={workdir}"
    )
    try:
        done = read_record(workdir)["info"] == info
    except (MissingInput, DamagedInput, KeyError, TypeError):
        done = False
    if done:
        return f"FlowTurbo: already done; the refiner for plan {f.plan} is in {workdir}; {score}"
    _claim(workdir, info)
    mesh = sharding.make_mesh(cfg.get("mesh"))
    model_def, like = split_model(
        configure.model_from_config(cfg.model, data_shape=run.shape, rngs=nnx.Rngs(cfg.seed))
    )
    params = checkpoint.load_params(os.path.join(model_dir, "ema.npz"), like)
    params = jax.device_put(params, sharding.replicated(mesh))
    pairs_set = _training_set(run, model_def, params, mesh, times)
    del params
    seed = stream_seed(cfg.seed, "flowturbo_refiner", bits=31)
    refiner_def, r_params = split_model(build_refiner(info["refiner"], seed))
    _train(cfg, refiner_def, r_params, pairs_set, workdir, mesh, cfg.training.steps_per_call)
    record = _write_record(workdir, info, int(pairs_set["t"].shape[0]))
    return (
        f"FlowTurbo refiner for plan {f.plan} ({nfe} NFE + {refiner_calls} refiner calls, "
        f"{record['training_rows']} training rows): {os.path.join(workdir, 'ema.npz')}; {score}"
    )


def toy_flowturbo(run, workdir, models, *, sets=None):
    """FlowTurbo on the toy pipeline's models; returns ``{"plan", "nfe", "refiner_calls",
    "records"}``.

    For each model a refiner is trained on the plan run from ``flowturbo.num_noises`` noises
    (stream ``"flowturbo_noise"``) with the model in the refiner's place, into
    ``workdir/<model>_flowturbo`` (resumed; ``flowturbo.json`` beside its ``ema.npz``), and
    scored by W2 on the evaluation set.

    Args:
      run: the resolved toy config.
      workdir: the pipeline's workdir.
      models: ``{name: (denoiser, params, folder)}`` as
        :func:`~simple_reflow.train.boss_stage.toy_boss` (``folder`` unused).
      sets: the evaluation sets (:func:`simple_reflow.train.toy_eval.eval_sets`; default its
        first set of the run's ``"eval"`` stream), W2 on the first.

    Returns:
      ``records``: ``{"model", "sampler", "nfe", "refiner_calls", "w2"}`` per model and
      sampler: ``"refiner"`` (the plan with the trained refiner), ``"reuse"`` (the plan with a
      zero refiner: each R step reuses the carried velocity), ``"pseudo_heun"`` and ``"heun"``
      with the most ``flowturbo.grid`` intervals the plan's NFE buys.
    """
    from simple_reflow.metrics.transport import w2
    from simple_reflow.train.toy import TOY_SHAPE
    from simple_reflow.train.toy_eval import eval_sets

    cfg = run.cfg
    f, s = cfg.flowturbo, cfg.sampler
    es = (eval_sets(cfg) if sets is None else sets)[0]
    times = plan_times(cfg)
    blocks = flowturbo.parse_plan(f.plan)
    nfe, refiner_calls = flowturbo.plan_calls(blocks, times)
    noise = jax.random.normal(stream_key(cfg.seed, "flowturbo_noise"), (f.num_noises, 2))
    mesh = sharding.make_mesh(cfg.get("mesh"))
    arch = refiner_arch(cfg, TOY_SHAPE)

    def zero(x, t, v, cond):
        return jnp.zeros_like(x)

    def named(k):
        return grids.make_grid(f.grid, k, kappa=s.kappa, rho=s.rho, t_max=s.t_max)

    records = []
    for name, (denoiser, params, _) in models.items():
        denoise = denoiser(params)
        pairs_set = jax.jit(lambda x1, d=denoise: flowturbo.refiner_pairs(d, x1, blocks, times))(
            noise
        )
        folder = os.path.join(workdir, f"{name}_flowturbo")
        seed = stream_seed(cfg.seed, "flowturbo_refiner", bits=31)
        refiner_def, r_params = split_model(build_refiner(arch, seed))
        spc = cfg.training.steps_per_call  # divides flowturbo.num_steps (validated)
        state = _train(cfg, refiner_def, r_params, pairs_set, folder, mesh, spc)
        info = {
            "plan": f.plan,
            "grid": f.grid,
            "times": [float(t) for t in times],
            "refiner": arch,
            "model_dir": None,  # the pipeline's model, held in memory
            "snapshot_sha256": None,
        }
        _write_record(folder, info, int(pairs_set["t"].shape[0]))
        plans = {"refiner": refiner_fn(refiner_def, state.ema), "reuse": zero}
        for label, fn in plans.items():
            x0 = jax.jit(
                lambda x1, fn=fn, d=denoise: flowturbo.sample_plan(d, fn, x1, blocks, times)[0]
            )(es["x1"])
            records.append(
                {
                    "model": name,
                    "sampler": label,
                    "nfe": nfe,
                    "refiner_calls": refiner_calls,
                    "w2": w2(x0, es["target"]),
                }
            )
        for solver in ("pseudo_heun", "heun"):
            grid, n = sampler.grid_for_budget(nfe, solver, named)
            x0 = jax.jit(
                lambda x1, g=grid, sv=solver, d=denoise: sampler.sample(d, x1, g, solver=sv)[0]
            )(es["x1"])
            records.append(
                {
                    "model": name,
                    "sampler": solver,
                    "nfe": n,
                    "refiner_calls": 0,
                    "w2": w2(x0, es["target"]),
                }
            )
    return {"plan": f.plan, "nfe": nfe, "refiner_calls": refiner_calls, "records": records}
