"""The toy-2D ReFlow pipeline: teacher → pairs → student → evaluation.

Each stage is a function of the resolved config (``run``, a
:class:`~simple_reflow.train.stages.Resolved`: the frozen config, the data shape
:data:`TOY_SHAPE`, the pair grids shared with the image stages) and keyword options;
:func:`run_pipeline` chains them for ``scripts/train.py --config configs/toy2d.py``; with
``loss.kind`` ``"meanflow"`` or ``"splitmeanflow"`` it runs :func:`run_mean_pipeline` instead
(teacher → two-time student → evaluation, METHOD.md §9). Data,
noise and pairs live on the device and every batch is drawn inside the compiled step from
``fold_in(key, step)``, so a step never waits for the host and a resumed run continues exactly.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

from simple_reflow import losses, pair_mixing, pairs
from simple_reflow.data.toy import make_toy_sampler, toy_mixture
from simple_reflow.models.mlp import MLPDenoiser
from simple_reflow.train import configure, sharding
from simple_reflow.train.fit import DeviceBatches, fit
from simple_reflow.train.step import make_optimizer, split_model
from simple_reflow.train.streams import stream_key, stream_seed

__all__ = [
    "build_mlp",
    "train_flow",
    "teacher_fn",
    "generate_toy_pairs",
    "toy_projected_pairs",
    "pair_batch_fn",
    "run_pipeline",
    "train_mean_student",
    "run_mean_pipeline",
]

TOY_SHAPE = (2,)

# 1-rectified flow, the teacher for targets without an analytic one: independent-style pairs
# from the configured coupling, uniform t, squared ℓ2 on the velocity (Liu et al. 2022); the
# first two are flow_loss's defaults.
ONE_RF_LOSS = functools.partial(losses.flow_loss, space="velocity")


_SAMPLING = ("boss", "flowturbo")  # config sections run on the pipeline's models


def build_mlp(cfg_model, seed, *, two_time=False, dim=TOY_SHAPE[0]):
    """The toy MLP denoiser split into (ModelDef, params); ``two_time``: the average-velocity
    network of MeanFlow / SplitMeanFlow (its ``map_interval`` is zero-initialised and built
    last, so the other weights are those of the one-time MLP of the same seed); ``dim``: the
    data's features (2 on the toys; 64 for the flattened digits of a benchmark)."""
    model = MLPDenoiser(
        dim,
        hidden=cfg_model.hidden,
        depth=cfg_model.depth,
        dropout=cfg_model.dropout,
        two_time=two_time,
        rngs=nnx.Rngs(seed),
    )
    return split_model(model)


def train_flow(
    cfg,
    workdir,
    *,
    batch_fn,
    data=None,
    loss_fn,
    init_params=None,
    coupling=None,
    num_steps,
    seed,
    desc,
    two_time=False,
    dim=TOY_SHAPE[0],
    **loop_options,
):
    """Trains the toy MLP with device-side batches; returns ``(model_def, final state)``.

    The one step below the pipeline that takes a config rather than a ``Resolved``: it reads
    only the ``model``, ``optim``, ``training`` and ``mesh`` sections, so a test or benchmark
    can call it with a plain config (the pipeline passes ``run.cfg``).

    Args:
      cfg: a config (ConfigDict or frozen) with those sections.
      workdir: checkpoints, metrics and ``ema.npz`` go here; an existing run resumes.
      batch_fn: ``batch_fn(step, data) -> batch`` pure, evaluated inside the compiled step.
      data: arrays ``batch_fn`` reads (pairs), passed as an argument, not baked into the program.
      loss_fn: ``loss_fn(model, batch, key) -> (loss, metrics)``, e.g. :data:`ONE_RF_LOSS`.
      init_params: start from these params (a student initialised from its teacher).
      coupling: optional coupling applied inside the step, or, with a host solver
        (``coupling.host``), in the input pipeline ahead of the step (batches then come from
        the host, ``training.steps_per_call`` of them stacked per call).
      two_time: train a two-time MLP (MeanFlow / SplitMeanFlow); ``init_params`` are then its
        own (a one-time teacher's go through ``models.two_time.init_from_one_time``).
      dim: the data's features (:func:`build_mlp`).
      **loop_options: ``fit`` options that replace those of ``cfg.training``
        (``configure.fit_options``), e.g. ``steps_per_call``, ``ckpt_every``.
    """
    model_def, params = build_mlp(cfg.model, seed, two_time=two_time, dim=dim)
    if init_params is not None:
        params = jax.tree.map(jnp.array, init_params)
    state = fit(
        model_def,
        params,
        loss_fn=loss_fn,
        optimizer=make_optimizer(cfg.optim),
        batches=DeviceBatches(batch_fn, data),
        coupling=coupling,
        mesh=sharding.make_mesh(cfg.get("mesh")),
        num_steps=num_steps,
        workdir=workdir,
        seed=seed,
        desc=desc,
        **{**configure.fit_options(cfg.training), **loop_options},
    )
    return model_def, state


def make_data_batch_fn(name, batch_size, seed, num_data=None):
    """``batch_fn(step, data) -> {"x0", "index"}`` for 1-RF training on a toy target.

    With ``num_data`` None every step draws fresh samples (index = global example number);
    otherwise the data is a fixed set of ``num_data`` samples (returned as ``data``) visited in
    a fresh permutation each epoch, which couplings with per-example state (LOOM-CFM) need.
    """
    sample_data = make_toy_sampler(name)
    key = jax.random.key(seed)
    if num_data is None:

        def fresh(step, _):
            return {
                "x0": sample_data(jax.random.fold_in(key, step), batch_size),
                "index": step * batch_size + jnp.arange(batch_size, dtype=jnp.int32),
            }

        return fresh, None
    if num_data % batch_size:
        raise ValueError(
            f"data.num_examples={num_data} must be a multiple of training.batch_size={batch_size}."
        )
    per_epoch = num_data // batch_size

    def finite(step, data):
        perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), num_data)
        idx = jax.lax.dynamic_slice_in_dim(perm, (step % per_epoch) * batch_size, batch_size)
        return {"x0": data[idx], "index": idx.astype(jnp.int32)}

    return finite, sample_data(jax.random.split(key)[1], num_data)


def teacher_fn(run, workdir):
    """The teacher: analytic for ``8gaussians`` ("auto" or "analytic"), else a trained 1-RF.

    Args:
      run: the resolved config (``stages.resolve``).
      workdir: a trained teacher's run goes to ``workdir/teacher``.

    Returns:
      ``(denoise_fn, params or None, model_def or None)``.
    """
    cfg = run.cfg
    kind = cfg.teacher.kind
    if kind == "auto":
        kind = "analytic" if cfg.data.name == "8gaussians" else "train"
    if kind not in ("analytic", "train"):
        raise ValueError(
            f"teacher.kind={kind!r} is not one of ('auto', 'analytic', 'train') for toy data."
        )
    if kind == "analytic":
        if cfg.data.name != "8gaussians":
            raise ValueError(
                f"teacher.kind='analytic' needs data.name='8gaussians' (a Gaussian "
                f"mixture), got data.name={cfg.data.name!r}."
            )
        return toy_mixture(), None, None
    model_def, state = _train_on_data(
        run,
        os.path.join(workdir, "teacher"),
        "teacher_batches",
        loss_fn=ONE_RF_LOSS,
        num_steps=cfg.teacher.num_steps,
        seed=cfg.seed,
        desc="teacher (1-RF)",
    )
    return model_def.denoiser(state.ema), state.ema, model_def


def _train_on_data(run, workdir, stream, **kw):
    """:func:`train_flow` on the toy data set (epoch batches of the ``stream`` seed), paired
    with noise by ``cfg.coupling``: the 1-RF teacher and the average-velocity students."""
    cfg = run.cfg
    num_data = cfg.data.get("num_examples", 0) or None
    coupling = configure.coupling_from_config(cfg.coupling, data_shape=run.shape, num_data=num_data)
    batch_fn, data = make_data_batch_fn(
        cfg.data.name, cfg.training.batch_size, stream_seed(cfg.seed, stream, bits=31), num_data
    )
    return train_flow(cfg, workdir, batch_fn=batch_fn, data=data, coupling=coupling, **kw)


def generate_toy_pairs(denoise_fn, run, seed):
    """Pair stores on the device: ``{"backward", "forward"?, "projected"?: {"x0", "x1"}}``.

    Backward pairs (noise → data, on ``run.pair_grid``) always; forward pairs (data → noise, on
    ``run.forward_grid``) when ``pairs.rho > 0`` or Algorithm 2 needs the teacher's
    reconstruction error; projected pairs when ``pairs.projection.fraction > 0``.
    """
    cfg = run.cfg
    p = cfg.pairs
    proj = p.projection
    key = stream_key(seed, "pairs")
    grid_b, shape = run.pair_grid, run.shape
    gen_b = jax.jit(
        lambda idx: pairs.backward_pairs(denoise_fn, key, idx, shape, grid_b, solver=p.solver)[:2]
    )
    x0b, x1b = gen_b(jnp.arange(p.num_backward, dtype=jnp.int32))
    stores = {"backward": {"x0": x0b, "x1": x1b}}
    search = proj.fraction > 0 and proj.lam == "search"
    if p.num_forward and (p.rho > 0 or search):
        grid_f = run.forward_grid
        real = make_toy_sampler(cfg.data.name)(stream_key(seed, "forward_data"), p.num_forward)
        gen_f = jax.jit(lambda x: pairs.forward_pairs(denoise_fn, x, grid_f, solver=p.solver)[:2])
        x0f, x1f = gen_f(real)
        stores["forward"] = {"x0": x0f, "x1": x1f}
    if proj.fraction > 0:
        stores["projected"] = toy_projected_pairs(denoise_fn, run, seed, stores)
    return stores


def toy_projected_pairs(denoise_fn, run, seed, stores):
    """The first ``pairs.projection.num`` backward pairs projected onto as many fresh samples."""
    cfg = run.cfg
    p, proj = cfg.pairs, cfg.pairs.projection
    real = make_toy_sampler(cfg.data.name)(stream_key(seed, "projection_data"), proj.num)
    first = jax.tree.map(lambda a: a[: proj.num], stores["backward"])
    projected, metrics = pairs.projected_pairs(
        stream_key(seed, "projection_plan"),
        first,
        real,
        epsilon=proj.epsilon,
        lam=proj.lam,
        draw=proj.draw,
        denoise_fn=denoise_fn,
        forward=stores.get("forward"),
        grid=run.pair_grid,
        solver=p.solver,
    )
    print("projection: " + ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items()), flush=True)
    return projected


def pair_batch_fn(run, seed):
    """``batch_fn(step, stores)``: a mixed batch drawn on the device from ``fold_in(key, step)``."""
    cfg = run.cfg
    fractions = pair_mixing.pair_fractions(cfg.pairs.rho, cfg.pairs.projection.fraction)
    pair_key = stream_key(seed, "reflow_batches")
    b = cfg.training.batch_size

    def batch_fn(step, stores):
        return pair_mixing.mix_pairs(jax.random.fold_in(pair_key, step), stores, fractions, b)

    return batch_fn


def run_pipeline(run, workdir):
    """Teacher → pairs → Simple ReFlow student → evaluation; returns the metrics dict.

    ``run`` is the resolved config (``stages.resolve``; ``stages.run_stage`` passes it).

    The training loop writes each trained model's EMA snapshot: ``workdir/student/ema.npz``
    (and ``workdir/teacher/ema.npz`` for a trained teacher). With ``boss.enabled``
    (``configs/toy2d.py:boss``) BOSS runs on both models after the evaluation
    (:func:`simple_reflow.train.boss_stage.toy_boss`: grids beside the snapshots, the student
    straightened into ``workdir/student_boss``, W2 per K Euler steps in ``metrics["boss"]``).
    With ``flowturbo.enabled`` (``configs/toy2d.py:flowturbo``) a FlowTurbo refiner is trained
    for each (:func:`simple_reflow.train.flowturbo_stage.toy_flowturbo`: into
    ``workdir/<model>_flowturbo``, W2 of the plan in ``metrics["flowturbo"]``).
    """
    from simple_reflow.train.toy_eval import evaluate_models, write_outputs

    cfg = run.cfg
    if cfg.loss.kind in configure.MEAN_KINDS:
        return run_mean_pipeline(run, workdir)
    clock = time.perf_counter()
    teacher, teacher_params, teacher_def = teacher_fn(run, workdir)
    stores = jax.block_until_ready(generate_toy_pairs(teacher, run, cfg.seed))
    print(
        "pairs: "
        + ", ".join(f"{len(v['x0'])} {k}" for k, v in stores.items())
        + f" ({time.perf_counter() - clock:.1f}s with the teacher)",
        flush=True,
    )
    model_def, state = train_flow(
        cfg,
        os.path.join(workdir, "student"),
        batch_fn=pair_batch_fn(run, cfg.seed),
        data=stores,
        loss_fn=configure.flow_loss_from_config(cfg.loss, cfg.time),
        init_params=teacher_params,
        num_steps=cfg.training.num_steps,
        seed=stream_seed(cfg.seed, "student_training", bits=31),
        desc="student (ReFlow)",
    )
    student = model_def.denoiser(state.ema)
    clock = time.perf_counter()
    metrics = evaluate_models({"teacher": teacher, "student": student}, cfg)
    print(f"evaluation: {time.perf_counter() - clock:.1f}s", flush=True)
    enabled = {k: cfg.get(k) is not None and cfg[k].get("enabled", False) for k in _SAMPLING}
    if any(enabled.values()):  # BOSS and FlowTurbo on both models
        trained = teacher_def is not None
        models = {
            "teacher": (
                teacher_def.denoiser if trained else (lambda _: teacher),
                teacher_params,
                os.path.join(workdir, "teacher") if trained else None,
            ),
            "student": (model_def.denoiser, state.ema, os.path.join(workdir, "student")),
        }
    if enabled["boss"]:
        from simple_reflow.train.boss_stage import toy_boss

        clock = time.perf_counter()
        metrics["boss"] = toy_boss(run, workdir, models, student=(model_def, state.ema))
        print(f"BOSS: {time.perf_counter() - clock:.1f}s", flush=True)
    if enabled["flowturbo"]:
        from simple_reflow.train.flowturbo_stage import toy_flowturbo

        clock = time.perf_counter()
        metrics["flowturbo"] = toy_flowturbo(run, workdir, models)
        print(f"FlowTurbo: {time.perf_counter() - clock:.1f}s", flush=True)
    write_outputs(workdir, cfg, metrics, {"teacher": teacher, "student": student})
    return metrics


def _mean_student_init(cfg, teacher_params, teacher_def):
    """The distilled student's initial params: the trained 1-RF teacher's weights in the
    two-time MLP (``init_from_one_time``), or ``None`` (from scratch: no teacher weights, or
    not distilling)."""
    if not cfg.loss.get("distill", False) or teacher_params is None:
        return None
    from simple_reflow.models.two_time import init_from_one_time

    student_def, params = build_mlp(cfg.model, cfg.seed, two_time=True)
    student = init_from_one_time(student_def.merge(params), teacher_def.merge(teacher_params))
    return split_model(student)[1]


def train_mean_student(
    run, workdir, *, teacher=None, teacher_params=None, teacher_def=None, num_steps=None, desc=None
):
    """Trains the two-time student of ``loss.kind`` (METHOD.md §9) on data batches paired with
    noise by ``cfg.coupling``; returns ``(model_def, final state)``.

    ``loss.distill`` takes v from ``teacher`` (a one-time denoiser: the analytic teacher, a
    1-RF, a ReFlow student) and starts the student from ``teacher_params`` / ``teacher_def``
    (that teacher's weights and ModelDef, ``models.two_time.init_from_one_time``) when given;
    without ``loss.distill`` the teacher is ignored and the student starts from scratch.

    Args:
      run: the resolved config (``stages.resolve``) of a mean method.
      workdir: the student's run directory (an existing run resumes).
      teacher, teacher_params, teacher_def: see above.
      num_steps: the run's step count (default ``training.num_steps``): a smaller count trains
        a prefix of the same run (every batch and key is a function of the step).
      desc: the progress bar's label.
    """
    cfg = run.cfg
    return _train_on_data(
        run,
        workdir,
        "student_batches",
        loss_fn=configure.loss_fn_from_config(cfg.loss, cfg.time, teacher_fn=teacher),
        init_params=_mean_student_init(cfg, teacher_params, teacher_def),
        num_steps=cfg.training.num_steps if num_steps is None else num_steps,
        seed=stream_seed(cfg.seed, "student_training", bits=31),
        desc=desc or f"student ({cfg.loss.kind})",
        two_time=True,
    )


def run_mean_pipeline(run, workdir):
    """Teacher → MeanFlow / SplitMeanFlow student → evaluation (METHOD.md §9); returns the
    metrics dict (the format of :func:`run_pipeline`).

    The two-time student (:func:`train_mean_student`) trains on data batches paired with noise
    by ``cfg.coupling`` (as the 1-RF teacher does), with ``loss.kind``'s objective;
    ``loss.distill`` takes v from the teacher (:func:`teacher_fn`: analytic on 8gaussians, else
    the trained 1-RF, whose weights the student then starts from). The student is scored with
    ``sampler.solver`` (``"mean"``), the teacher with ``eval.teacher_solver`` on the same grid;
    snapshots as in :func:`run_pipeline` (``workdir/student/ema.npz``).
    """
    from simple_reflow.train.toy_eval import evaluate_models, write_outputs

    cfg = run.cfg
    teacher, teacher_params, teacher_def = teacher_fn(run, workdir)
    model_def, state = train_mean_student(
        run,
        os.path.join(workdir, "student"),
        teacher=teacher,
        teacher_params=teacher_params,
        teacher_def=teacher_def,
    )
    models = {"teacher": teacher, "student": model_def.denoiser(state.ema)}
    solvers = {"teacher": cfg.eval.get("teacher_solver") or cfg.sampler.solver}
    clock = time.perf_counter()
    metrics = evaluate_models(models, cfg, solvers=solvers)
    write_outputs(workdir, cfg, metrics, models, solvers=solvers)
    print(f"evaluation: {time.perf_counter() - clock:.1f}s", flush=True)
    return metrics
