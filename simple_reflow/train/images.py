"""The image stages: teacher (EDM loss), pairs, reflow, boss, flowturbo, eval.

Each stage reads one config (``configs/<dataset>.py:<stage>``) and one workdir:

- ``teacher``: trains the EDM-preconditioned backbone on real images: EDM's loss, a 1-RF with
  a coupling, or a two-time MeanFlow / SplitMeanFlow model (``loss.kind``, METHOD.md §9) from
  scratch or, with ``loss.distill``, distilled from the snapshot in ``teacher.workdir``, the
  student initialised from it (:func:`init_mean_student`);
- ``pairs``: integrates the teacher's EMA snapshot (``teacher.workdir/ema.npz``) into backward
  and forward pair stores (:mod:`simple_reflow.pair_store`) under ``workdir/backward`` and
  ``workdir/forward`` — every device of every host, resumable;
- ``reflow``: trains the student, initialised from the teacher, on pairs streamed from the
  stores of ``pairs.dir``, mixed with ratio ρ;
- ``boss``: BOSS's Bellman-optimal Euler grids of the snapshot in ``eval.model_dir`` (or the
  teacher's, ``boss.model``) saved beside it, and optionally the model straightened along one
  of them into ``workdir`` (:mod:`simple_reflow.train.boss_stage`);
- ``flowturbo``: a FlowTurbo velocity refiner for the plan ``flowturbo.plan`` of the snapshot
  in ``eval.model_dir`` (or the teacher's, ``flowturbo.model``), trained into ``workdir``
  (:mod:`simple_reflow.train.flowturbo_stage`);
- ``eval``: samples the model in ``eval.model_dir`` (default: the workdir) and the teacher at
  each NFE budget — ``eval.num_samples`` images, sample i seeded by its index, over all devices
  and hosts, quantised to uint8 as EDM does — and writes sample grids and
  ``eval_metrics.json`` (a two-time model with ``sampler.solver``, ``"mean"``; a one-time
  teacher beside it with ``eval.teacher_solver``): FID against ``eval.fid_ref`` when
  Inception weights are given (``eval.inception_weights`` or ``$SIMPLE_REFLOW_INCEPTION``),
  else the pixel-space Fréchet distance to held-out images. With ``sampler.solver =
  "flowturbo"`` the model is sampled with the plan and refiner of ``eval.refiner_dir`` at the
  plan's NFE (its refiner calls reported beside it), the teacher with ``eval.teacher_solver``
  (default Heun) at each budget.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from simple_reflow import compile_options, grids, guidance, pair_mixing, pair_store, pairs, sampler
from simple_reflow.data import batch_at, make_image_source
from simple_reflow.errors import MissingInput
from simple_reflow.metrics import inception
from simple_reflow.metrics.fid import load_reference
from simple_reflow.metrics.frechet import frechet_distance_from_stats, gaussian_stats
from simple_reflow.train import checkpoint, configure, sampling, sharding
from simple_reflow.train.fit import HostBatches, fit
from simple_reflow.train.stages import Resolved, resolve
from simple_reflow.train.step import make_optimizer, split_model
from simple_reflow.train.streams import stream_key, stream_seed
from simple_reflow.viz import save_image_grid

__all__ = ["run_image_stage", "init_mean_student"]


def _build(run, seed, two_time=None):
    model = configure.model_from_config(
        run.cfg.model, data_shape=run.shape, rngs=nnx.Rngs(seed), two_time=two_time
    )
    return split_model(model)


def _is_mean(cfg):
    return cfg.loss.kind in configure.MEAN_KINDS


def _distills(cfg):
    return _is_mean(cfg) and cfg.loss.get("distill", False)


def _snapshot_two_time(workdir) -> bool:
    """Whether the snapshot in ``workdir`` is a two-time network (its ``model.json``; an
    imported EDM checkpoint or an older snapshot is one-time)."""
    saved = checkpoint.load_model_config(workdir) if workdir else None
    return bool((saved or {}).get("two_time", False))


def _config_file(cfg):
    path = os.path.join("configs", f"{cfg.data.name}.py")
    return path if os.path.exists(path) else "configs/<dataset>.py"


def _snapshot(workdir, field, make=""):
    """``workdir/ema.npz``; a missing one is a :class:`MissingInput` saying how to make it."""
    if not workdir:
        raise ValueError(f"{field} must name the workdir of the stage that produced it.")
    path = os.path.join(workdir, "ema.npz")
    if not os.path.exists(path):
        raise MissingInput(
            f"{field}={workdir!r} holds no snapshot (ema.npz)"
            + (f": create it with {make}" if make else ".")
        )
    return path


def _require_inputs(run, workdir):
    """Checks every file input of the stage before anything is built or compiled; each missing
    one is a :class:`MissingInput` naming the path and the command that creates it."""
    cfg = run.cfg
    conf, stage = _config_file(cfg), cfg.stage
    teacher = (
        f"`python scripts/train.py --config {conf}:teacher --workdir "
        f"{cfg.teacher.workdir}` or `python scripts/import_edm.py --checkpoint "
        f"edm-….pkl --workdir {cfg.teacher.workdir}`"
    )
    if stage in ("pairs", "reflow") or (stage == "teacher" and _distills(cfg)):
        _snapshot(cfg.teacher.workdir, "teacher.workdir", teacher)
    if stage == "boss":
        from simple_reflow.train.boss_stage import model_folder

        if cfg.boss.model == "student":
            reflow = (
                f"`python scripts/train.py --config {conf}:reflow --workdir {model_folder(cfg)}`"
            )
            _snapshot(model_folder(cfg), "eval.model_dir", reflow)
        if cfg.boss.model == "teacher" or (cfg.boss.teacher_grid and cfg.teacher.workdir):
            _snapshot(cfg.teacher.workdir, "teacher.workdir", teacher)
    if stage == "flowturbo":
        from simple_reflow.train.flowturbo_stage import model_folder

        if cfg.flowturbo.model == "student":
            reflow = (
                f"`python scripts/train.py --config {conf}:reflow --workdir {model_folder(cfg)}`"
            )
            _snapshot(model_folder(cfg), "eval.model_dir", reflow)
        else:
            _snapshot(cfg.teacher.workdir, "teacher.workdir", teacher)
    if stage == "eval" and cfg.sampler.solver == "flowturbo":  # the refiner, checked now
        from simple_reflow.train.flowturbo_stage import read_record

        read_record(cfg.eval.refiner_dir)
    if stage == "eval" and cfg.sampler.grid == "boss":  # each model's own grid, checked now
        from simple_reflow.train import boss as train_boss

        for folder in (cfg.eval.get("model_dir") or workdir, cfg.teacher.workdir):
            if folder:
                train_boss.read_grid(folder)
    if stage == "reflow":
        p = cfg.pairs
        if not p.dir:
            raise ValueError("pairs.dir must name the workdir of the pairs stage.")
        fractions = pair_mixing.pair_fractions(p.rho, p.projection.fraction)
        for name in pair_mixing.SOURCES:
            folder = os.path.join(p.dir, name)
            if (name == "backward" or fractions[name] > 0) and not os.path.exists(
                os.path.join(folder, "manifest.json")
            ):
                raise MissingInput(
                    f"pairs.dir={p.dir!r} has no {name} pairs ({folder}): create them with "
                    f"`python scripts/train.py --config {conf}:pairs --workdir {p.dir} "
                    f"--config.teacher.workdir={cfg.teacher.workdir}`"
                )
    if stage == "eval":
        _snapshot(
            cfg.eval.get("model_dir") or workdir,
            "eval.model_dir",
            f"`python scripts/train.py --config {conf}:reflow --workdir "
            f"{cfg.eval.get('model_dir') or workdir}`",
        )
        if cfg.teacher.workdir:
            _snapshot(cfg.teacher.workdir, "teacher.workdir", teacher)
        if cfg.guidance.kind == "autoguidance" and cfg.guidance.w:
            _snapshot(
                cfg.guidance.bad_workdir,
                "guidance.bad_workdir",
                "a shorter or smaller teacher run (the 'bad' model of AutoGuidance)",
            )
    reads_data = stage not in ("boss", "flowturbo") and (  # they solve noises only
        stage in ("teacher", "eval")
        or cfg.pairs.num_forward > 0
        or (stage in ("pairs", "reflow") and cfg.pairs.projection.fraction > 0)
    )
    if reads_data and run.data.source not in ("mock", "digits"):
        make_image_source(run.data)  # TFDS / folder: says how to prepare a missing dataset


def _train(
    cfg, workdir, model_def, params, host_batch_at, desc, coupling=None, num_classes=0, teacher=None
):
    fit(
        model_def,
        params,
        loss_fn=configure.loss_fn_from_config(
            cfg.loss,
            cfg.time,
            sigma_data=cfg.model.get("sigma_data"),
            num_classes=num_classes,
            teacher_fn=teacher,
        ),
        optimizer=make_optimizer(cfg.optim),
        batches=HostBatches(host_batch_at),
        coupling=coupling,
        mesh=sharding.make_mesh(cfg.get("mesh")),
        num_steps=cfg.training.num_steps,
        workdir=workdir,
        seed=cfg.seed,
        desc=desc,
        **configure.fit_options(cfg.training),
    )


def run_teacher(run, workdir):
    """Trains a teacher on real images; writes ``workdir/ema.npz``.

    ``loss.kind = "edm"``: EDM's loss. ``loss.kind = "flow"``: a 1-rectified flow whose noise
    is paired with each batch by ``cfg.coupling`` inside the jitted step (independent, OT-CFM,
    LOOM-CFM with its per-image state over the whole training set, W-CFM).
    """
    cfg = run.cfg
    source = make_image_source(run.data)
    teacher = None
    if _is_mean(cfg):
        model_def, params, teacher = init_mean_student(run)
    else:
        model_def, params = _build(run, cfg.seed)
    if jax.process_index() == 0:
        checkpoint.save_model_config(workdir, cfg.model)
    coupling, factor, keep = None, 1, ("x0", "cond")
    if cfg.loss.kind != "edm":
        coupling = configure.coupling_from_config(
            cfg.coupling, data_shape=run.shape, num_data=len(source)
        )
        factor, keep = coupling.batch_factor, ("x0", "cond", "index")

    def host_batch(step):
        b = batch_at(
            source,
            cfg.seed,
            step,
            cfg.training.batch_size * factor,
            random_flip=cfg.data.random_flip,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        return {k: v.astype(np.int32) if k == "index" else v for k, v in b.items() if k in keep}

    desc = "teacher (EDM)" if coupling is None else f"1-RF ({coupling.name} coupling)"
    if _is_mean(cfg):
        desc = f"{cfg.loss.kind} ({'distilled' if teacher else coupling.name + ' coupling'})"
    _train(
        cfg,
        workdir,
        model_def,
        params,
        host_batch,
        desc,
        coupling=coupling,
        num_classes=run.num_classes,
        teacher=teacher,
    )
    what = "model" if _is_mean(cfg) else "teacher"
    return f"{what} EMA snapshot: {os.path.join(workdir, 'ema.npz')}"


def init_mean_student(run):
    """The two-time network a MeanFlow / SplitMeanFlow run starts from (METHOD.md §9).

    From scratch (``loss.distill=False``): the config's network built with
    ``model.two_time=True``. Distilled: the one-time snapshot in ``teacher.workdir`` (a
    trained teacher, an imported EDM checkpoint, a ReFlow student) copied into it by
    :func:`~simple_reflow.models.two_time.init_from_one_time`, so the student's
    u(z, r, t) is the teacher's v(z, t) at step 0.

    Returns:
      ``(model_def, params, teacher_fn)``: the student split into its definition and pure
      params, and the teacher's denoiser (``None`` from scratch) whose velocity replaces
      x1 − x0 in the objective. The teacher's weights are closed over by ``teacher_fn``; JAX
      passes closed-over arrays larger than ``jax_embedded_constants_max_bytes`` (32 bytes by
      default) to the compiled step as arguments, so they are not folded into the program
      (checked with jax 0.10.2: a step closing over a 64 MB matrix lowers to 489 characters
      of StableHLO and compiles in 0.5 s).
    """
    from simple_reflow.models.two_time import init_from_one_time

    cfg = run.cfg
    student = configure.model_from_config(
        cfg.model, data_shape=run.shape, rngs=nnx.Rngs(cfg.seed), two_time=True
    )
    if not _distills(cfg):
        model_def, params = split_model(student)
        return model_def, params, None
    path = _snapshot(cfg.teacher.workdir, "teacher.workdir")
    if _snapshot_two_time(cfg.teacher.workdir):
        raise ValueError(
            f"teacher.workdir={cfg.teacher.workdir!r} holds a two-time network; distil from a "
            "one-time teacher (a trained or imported teacher, a ReFlow student)."
        )
    t_def, like = _build(run, cfg.seed, two_time=False)
    t_params = checkpoint.load_params(path, like)
    init_from_one_time(student, t_def.merge(t_params))
    model_def, params = split_model(student)
    return model_def, params, t_def.denoiser(t_params)


def _teacher(run):
    model_def, like = _build(run, run.cfg.seed)
    params = checkpoint.load_params(_snapshot(run.cfg.teacher.workdir, "teacher.workdir"), like)
    return model_def, params


def _teacher_sha256(cfg):
    return pair_store.file_sha256(_snapshot(cfg.teacher.workdir, "teacher.workdir"))


def _store_spec(run, kind, teacher_sha):
    """``(num, arrays, provenance)`` of one pair store as this config describes it; the
    provenance keys name the config fields, so a mismatch message says what to change."""
    cfg = run.cfg
    p, q = cfg.pairs, cfg.pairs.projection
    arrays = {"x0": (run.shape, "float32"), "x1": (run.shape, "float32")}
    if run.num_classes and kind != "projected":
        arrays["cond"] = ((), "int32")
    prov = {
        "kind": kind,
        "teacher.workdir (ema.npz SHA-256)": teacher_sha,
        "seed": cfg.seed,
        "pairs.solver": p.solver,
        "pairs.grid": p.grid,
        "pairs.steps": p.steps,
        "pairs.t_max": p.t_max,
        "data.name": cfg.data.name,
    }
    if kind == "backward":
        prov["nfe"] = sampler.nfe_of(run.pair_grid, p.solver)
        return p.num_backward, arrays, prov
    if kind == "forward":
        prov.update(
            {
                "pairs.t_min": p.t_min,
                "data.split": cfg.data.get("split", "train"),
                "nfe": sampler.nfe_of(run.forward_grid, p.solver) + 1,
            }
        )
        return p.num_forward, arrays, prov
    prov.update(
        {
            "pairs.projection.num": q.num,
            "pairs.projection.epsilon": q.epsilon,
            "pairs.projection.lam": q.lam,
            "pairs.projection.draw": q.draw,
        }
    )
    return q.num, arrays, prov


def _local_data_parallel(fn, chunk, params):
    """``fn(params, *arrays)`` jitted over this host's devices: ``params`` replicated (an input
    of the compiled program, not constants baked into it), the arrays split along their first
    axis (padded to a multiple of the device count; the padding is cut from the outputs)."""
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    size = -(-chunk // mesh.size) * mesh.size
    compiled = compile_options.jit(fn, out_shardings=split)
    params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    def run(*args):
        n = len(args[0])
        padded = [
            None
            if a is None
            else jax.device_put(
                np.concatenate([a, np.repeat(a[-1:], size - n, 0)]) if size > n else np.asarray(a),
                split,
            )
            for a in args
        ]
        return {k: np.asarray(v)[:n] for k, v in compiled(params, *padded).items()}

    return run


def run_pairs(run, workdir):
    """Backward, forward and projected pair stores from the teacher snapshot, generated by every
    device of every host (each host its own shards; a chunk split over its devices), resumable
    at shard granularity; ``pairs.storage_dtype`` sets the stored precision."""
    cfg = run.cfg
    p = cfg.pairs
    model_def, params = _teacher(run)
    teacher_sha = _teacher_sha256(cfg)
    shape, num_classes = run.shape, run.num_classes
    key = stream_key(cfg.seed, "pairs")
    grid_b = run.pair_grid
    kw = dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        storage_dtype=p.storage_dtype,
        chunk=p.chunk,
    )

    def gen_backward(params, idx):
        cond = None
        if num_classes:  # each pair's class from its own index, like its noise
            cond = jax.vmap(
                lambda i: jax.random.randint(
                    jax.random.fold_in(jax.random.fold_in(key, i), 1), (), 0, num_classes
                )
            )(idx)
        x0, x1, _ = pairs.backward_pairs(
            model_def.denoiser(params), key, idx, shape, grid_b, solver=p.solver, cond=cond
        )
        return {"x0": x0, "x1": x1, **({"cond": cond} if num_classes else {})}

    gen_backward = _local_data_parallel(gen_backward, p.chunk, params)
    _write(run, workdir, "backward", teacher_sha, gen_backward, kw)
    if p.num_forward:
        source = make_image_source(run.data)
        grid_f = run.forward_grid

        def gen_f(params, x0, c):
            denoise = model_def.denoiser(params)
            x0, x1, _ = pairs.forward_pairs(denoise, x0, grid_f, solver=p.solver, cond=c)
            return {"x0": x0, "x1": x1, **({"cond": c} if c is not None else {})}

        gen_f = _local_data_parallel(gen_f, p.chunk, params)

        def gen_forward(idx):
            data = source.get(np.asarray(idx) % len(source))  # pair i ← training image i
            return gen_f(data["x0"], data.get("cond"))

        _write(run, workdir, "forward", teacher_sha, gen_forward, kw)
    if p.projection.fraction > 0:
        _write_projected(run, workdir, model_def.denoiser(params), grid_b, teacher_sha, kw)
    nfe_b = sampler.nfe_of(grid_b, p.solver)
    return (
        f"pair stores in {workdir}: {p.num_backward} backward ({nfe_b} NFE each), "
        f"{p.num_forward} forward"
        + (f", {p.projection.num} projected" if p.projection.fraction > 0 else "")
        + f"; check them with `python scripts/verify_pairs.py {workdir}`"
    )


def _write(run, workdir, kind, teacher_sha, generate, kw):
    """One store: this host's shards, then (all hosts done) the manifest's checksums."""
    num, arrays, prov = _store_spec(run, kind, teacher_sha)
    path = os.path.join(workdir, kind)
    main = jax.process_index() == 0
    with tqdm(
        total=num, desc=f"{kind} pairs", disable=not main, unit="pair", dynamic_ncols=True
    ) as bar:
        pair_store.write_store(
            generate, path, num=num, arrays=arrays, provenance=prov, progress=bar.update, **kw
        )
    if jax.process_count() > 1:  # every host's shards are on disk before anyone reads them
        multihost_utils.sync_global_devices(f"{kind} pairs written")
    if main:
        pair_store.finalize_store(path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"{kind} manifest written")


def _write_projected(run, workdir, denoise, grid_b, teacher_sha, kw):
    """Projected pairs (METHOD.md §3): the first ``projection.num`` backward pairs re-paired
    with as many real images (a seeded permutation of the training set) by entropic OT; reads
    only those backward pairs (and, for ``lam='search'``, only the budget's forward pairs)."""
    cfg = run.cfg
    p, q = cfg.pairs, cfg.pairs.projection
    num, arrays, prov = _store_spec(run, "projected", teacher_sha)
    path = os.path.join(workdir, "projected")
    if os.path.exists(path) and pair_store.verify_store(path, checksums=False).complete:
        _open_store(path, num, arrays, prov, "projected").close()  # same pairs, or refused
        return
    with pair_store.PairStore(os.path.join(workdir, "backward")) as store:
        backward = store.read(np.arange(q.num), ("x0", "x1"))
    source = make_image_source(run.data)
    order = np.random.default_rng(stream_seed(cfg.seed, "projection_data")).permutation(
        len(source)
    )[: q.num]
    real = source.get(np.resize(order, q.num))["x0"]
    forward = None
    if q.lam == "search":
        with pair_store.PairStore(os.path.join(workdir, "forward")) as store:
            forward = store.read(np.arange(min(pairs.BUDGET_PAIRS, len(store))), ("x0", "x1"))
    projected, metrics = pairs.projected_pairs(
        stream_key(cfg.seed, "projection_plan"),
        backward,
        real,
        epsilon=q.epsilon,
        lam=q.lam,
        draw=q.draw,
        denoise_fn=denoise,
        forward=forward,
        grid=grid_b,
        solver=p.solver,
    )
    projected = {k: np.asarray(v) for k, v in projected.items()}
    if jax.process_index() == 0:
        print(
            "projection: " + ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items()),
            flush=True,
        )

    def take(idx):
        return {k: v[np.minimum(idx, q.num - 1)] for k, v in projected.items()}

    _write(run, workdir, "projected", teacher_sha, take, kw)


def _open_store(path, num, arrays, provenance, kind):
    """The store at ``path``, refused (naming the fields) when its manifest describes other
    pairs than this config: another teacher, shape, solver, grid, seed, or too few pairs."""
    store = pair_store.PairStore(path)
    # the pairs' seed is the pairs stage's: a student of another seed may train on them
    diff = store.mismatches(num=num, arrays=arrays, provenance=provenance, ignore=("seed",))
    if diff:
        store.close()
        raise pair_store.StoreMismatch(
            f"the {kind} pair store {path} was made for another config ({'; '.join(diff)}): "
            "regenerate it with this config's pairs stage into a new pairs.dir, or set the "
            "fields to the store's values."
        )
    return store


def run_reflow(run, workdir):
    """Trains the student, initialised from the teacher, on pairs streamed from the stores of
    ``pairs.dir``, mixed with ratio ρ (METHOD.md §3): each host reads only its slice of each
    global batch, one batch ahead of the step (:class:`~simple_reflow.data.Prefetcher`)."""
    cfg = run.cfg
    p = cfg.pairs
    fractions = pair_mixing.pair_fractions(p.rho, p.projection.fraction)
    model_def, params = _teacher(run)  # the student starts from the teacher's weights
    stores = _open_stores(run)  # (a damaged teacher snapshot is named as such, not a mismatch)
    if jax.process_index() == 0:
        checkpoint.save_model_config(workdir, cfg.model)
    sizes = {name: _store_spec(run, name, None)[0] for name in stores}
    seed = stream_seed(cfg.seed, "reflow_batches")

    def host_batch(step):
        source, index = pair_mixing.stream_indices(
            seed,
            step,
            cfg.training.batch_size,
            sizes,
            fractions,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        return pair_mixing.read_mixed(stores, source, index)

    try:
        _train(cfg, workdir, model_def, params, host_batch, "student (ReFlow)")
    finally:
        for store in stores.values():
            store.close()
    return f"student EMA snapshot: {os.path.join(workdir, 'ema.npz')}"


def _open_stores(run):
    """The pair stores the reflow stage reads, each checked against the config."""
    cfg = run.cfg
    p = cfg.pairs
    fractions = pair_mixing.pair_fractions(p.rho, p.projection.fraction)
    sha = _teacher_sha256(cfg)
    stores = {}
    for name in pair_mixing.SOURCES:
        if name == "backward" or fractions[name] > 0:
            stores[name] = _open_store(
                os.path.join(p.dir, name), *_store_spec(run, name, sha), name
            )
    return stores


def _guided(cfg, model_def, params):
    """``(denoiser, params)`` of the student with ``cfg.guidance``: ``denoiser(params)`` is
    its denoise_fn (:func:`sampling.make_index_sampler`)."""
    g = cfg.guidance
    if g.kind == "none" or g.w == 0:
        return model_def.denoiser, params
    if g.kind == "autoguidance":
        bad = checkpoint.load_params(_snapshot(g.bad_workdir, "guidance.bad_workdir"), params)

        def denoiser(both):
            main, weak = (model_def.denoiser(both[k]) for k in ("main", "bad"))
            return guidance.autoguidance(main, weak, g.w)

        return denoiser, {"main": params, "bad": bad}
    if g.kind == "cfg":
        return (
            lambda p: guidance.classifier_free(
                model_def.denoiser(p), g.w, null_class=cfg.model.num_classes
            )
        ), params
    raise ValueError(f"guidance.kind={g.kind!r} is not one of ('none', 'autoguidance', 'cfg').")


def _scorer(run):
    """``(metric name, featurize, dim, reference μ, Σ, number of samples)``: FID on Inception
    features when weights are given (``eval.inception_weights`` or ``$SIMPLE_REFLOW_INCEPTION``),
    else the pixel-space FD to as many held-out images as there are samples. Every input is
    checked here, before any model is built or sampled."""
    cfg, shape = run.cfg, run.shape
    weights = cfg.eval.get("inception_weights") or os.environ.get(inception.WEIGHTS_ENV)
    if weights:
        mu, sigma = load_reference(
            cfg.eval.get("fid_ref"), dim=inception.FEATURE_DIM, resolution=shape[0]
        )
        featurize = inception.uint8_features(inception.load_fid_inception(weights))
        return "fid", featurize, inception.FEATURE_DIM, mu, sigma, cfg.eval.num_samples
    held_out = make_image_source(run.data, split=cfg.data.eval_split)
    n = min(cfg.eval.num_samples, len(held_out))
    ref = held_out.get(np.arange(n))["x0"].reshape(n, -1)
    mu, sigma = gaussian_stats(ref)
    return "fd_pixel", jax.jit(sampling.pixel_features), ref.shape[1], mu, sigma, n


def run_eval(run, workdir):
    """FID (or pixel FD) per NFE budget for ``eval.model_dir`` and the teacher (module doc)."""
    cfg = run.cfg
    shape, num_classes = run.shape, run.num_classes
    metric, featurize, dim, ref_mu, ref_sigma, num = _scorer(run)
    model_def, like = _build(run, cfg.seed)
    model_dir = cfg.eval.get("model_dir") or workdir
    s = cfg.sampler
    student = checkpoint.load_params(_snapshot(model_dir, "eval.model_dir"), like)
    models = {"student": (model_def, student, s.solver)}
    plan = None
    if s.solver == "flowturbo":  # the plan and the refiner trained for this snapshot
        from simple_reflow.train import flowturbo_stage

        plan = flowturbo_stage.read_plan(cfg.eval.refiner_dir, shape, model_dir)
    if cfg.teacher.workdir:  # a one-time teacher beside a two-time student: its own network
        two_time = _snapshot_two_time(cfg.teacher.workdir)
        t_def, t_like = (model_def, like) if two_time else _build(run, cfg.seed, two_time=False)
        solver = cfg.eval.get("teacher_solver") or ("heun" if s.solver == "flowturbo" else s.solver)
        if solver == "mean" and not two_time:
            raise ValueError(
                f"teacher.workdir={cfg.teacher.workdir!r} is a one-time network, which "
                "sampler.solver='mean' cannot step: set eval.teacher_solver (e.g. 'euler')."
            )
        t_params = checkpoint.load_params(_snapshot(cfg.teacher.workdir, "teacher.workdir"), t_like)
        models["teacher"] = (t_def, t_params, solver)
    mesh = sharding.make_mesh(cfg.get("mesh"))
    key = jax.random.key(cfg.eval.seed)  # sample i: fold_in(key, i), as EDM's --seeds

    def named_grid(k):
        return grids.make_grid(s.grid, k, kappa=s.kappa, rho=s.rho, t_max=s.t_max)

    def grid_fn_of(name):
        """``(grid_fn, the most intervals it has)``: the named grid, or with
        ``sampler.grid='boss'`` the grid saved beside the model, which has at most as many
        intervals as candidate times (a larger NFE budget gets the grid of every candidate)."""
        if s.grid != "boss":
            return named_grid, {}
        from simple_reflow.train import boss as train_boss

        folder = model_dir if name == "student" else cfg.teacher.workdir
        most = len(train_boss.read_grid(folder)["times"]) - 1
        return train_boss.grid_fn(folder), {"max_intervals": most}

    results, lines = {}, []
    for name, (m_def, params, solver) in models.items():
        grid_fn, limit = grid_fn_of(name)
        denoiser, params = (
            _guided(cfg, m_def, params) if name == "student" else (m_def.denoiser, params)
        )
        done, sample_fn, extra = set(), None, ""
        if solver == "flowturbo":  # the plan's own grid and NFE, whatever eval.nfe says
            from simple_reflow.train import flowturbo_stage

            rec, r_def, r_params = plan
            sample_fn = flowturbo_stage.make_plan_sample_fn(
                denoiser, r_def, rec["plan"], rec["times"]
            )
            params = {"model": params, "refiner": r_params}
            runs = [(rec["times"], rec["nfe"])]
            results[f"eval/{name}/refiner_calls@nfe={rec['nfe']}"] = rec["refiner_calls"]
            extra = f" (plan {rec['plan']}, +{rec['refiner_calls']} refiner calls)"
        else:
            runs = (sampler.grid_for_budget(b, solver, grid_fn, **limit) for b in cfg.eval.nfe)
        for grid, nfe in runs:
            if nfe in done:  # two budgets that buy the same grid
                continue
            done.add(nfe)
            stats, images = sampling.sample_features(
                denoiser,
                params,
                grid,
                solver=solver,
                r=s.r,
                shape=shape,
                num_classes=num_classes,
                key=key,
                featurize=featurize,
                dim=dim,
                num=num,
                batch_size=cfg.eval.batch_size,
                mesh=mesh,
                keep_images=64,
                desc=f"{name} NFE {nfe}",
                sample_fn=sample_fn,
            )
            value = frechet_distance_from_stats(*stats.mean_cov(), ref_mu, ref_sigma)
            results[f"eval/{name}/{metric}@nfe={nfe}"] = value
            if jax.process_index() == 0:
                save_image_grid(
                    os.path.join(workdir, f"samples_{name}_nfe{nfe}.png"),
                    images.astype(np.float32) / 127.5 - 1.0,
                    ncols=8,
                    scale=4 if shape[0] <= 16 else 1,
                    pad=1,
                )
            lines.append(
                f"{name:>8} NFE {nfe:>3}: {metric} {value:.3f} ({stats.count} samples){extra}"
            )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
            json.dump(results, f, indent=1)
    what = (
        "FID (Inception, EDM's protocol)"
        if metric == "fid"
        else "Fréchet distance in pixel space to held-out images"
    )
    return what + "\n" + "\n".join(lines)


def run_boss(run, workdir):
    """BOSS grids beside a snapshot and, optionally, the model straightened along one
    (:func:`simple_reflow.train.boss_stage.run_boss`)."""
    from simple_reflow.train import boss_stage

    return boss_stage.run_boss(run, workdir)


def run_flowturbo(run, workdir):
    """A FlowTurbo velocity refiner for one plan of a snapshot
    (:func:`simple_reflow.train.flowturbo_stage.run_flowturbo`)."""
    from simple_reflow.train import flowturbo_stage

    return flowturbo_stage.run_flowturbo(run, workdir)


_RUNNERS = {
    "teacher": run_teacher,
    "pairs": run_pairs,
    "reflow": run_reflow,
    "boss": run_boss,
    "flowturbo": run_flowturbo,
    "eval": run_eval,
}


def run_image_stage(run, workdir):
    """Dispatches an image config to its stage, after checking that its inputs exist."""
    if not isinstance(run, Resolved):  # a plain config (tests, notebooks)
        run = resolve(run)
    _require_inputs(run, workdir)
    return _RUNNERS[run.cfg.stage](run, workdir)
