"""The image stages: teacher (EDM loss), pairs, reflow, eval, and the chained pipeline.

Each stage reads one config (``configs/<dataset>.py:<stage>``) and one workdir:

- ``teacher``: trains the EDM-preconditioned backbone with EDM's loss on real images;
- ``pairs``: integrates the teacher's EMA snapshot (``teacher.workdir/ema.npz``) into backward
  and forward pair shards under ``workdir/backward`` and ``workdir/forward`` (resumable);
- ``reflow``: trains the student, initialised from the teacher, on the pairs of ``pairs.dir``
  mixed with ratio ρ;
- ``eval``: samples the model in ``eval.model_dir`` (default: the workdir) and the teacher at
  each NFE budget — ``eval.num_samples`` images, sample i seeded by its index, over all devices
  and hosts, quantised to uint8 as EDM does — and writes sample grids and
  ``eval_metrics.json``: FID against ``eval.fid_ref`` when Inception weights are given
  (``eval.inception_weights`` or ``$SIMPLE_REFLOW_INCEPTION``), else the pixel-space Fréchet
  distance to held-out images;
- ``pipeline``: runs the four stage configs in ``cfg.stages`` one after the other, wiring each
  stage's inputs to the previous stage's workdir (the ``digits`` config).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from simple_reflow import grids, guidance, losses, pairs, sampler
from simple_reflow.couplings import make_coupling
from simple_reflow.data import batch_at, data_spec, make_image_source
from simple_reflow.errors import MissingInput
from simple_reflow.losses_edm import edm_loss
from simple_reflow.metrics import inception
from simple_reflow.metrics.fid import load_reference
from simple_reflow.metrics.frechet import frechet_distance_from_stats, gaussian_stats
from simple_reflow.models import build_model
from simple_reflow.train import checkpoint, sampling, sharding
from simple_reflow.train.loop import train_loop
from simple_reflow.train.step import init_state, make_optimizer, make_train_step, split_model
from simple_reflow.viz import save_image_grid

__all__ = ["data_shape_of", "run_image_stage"]


def data_shape_of(cfg_data):
    """One example's shape ``(H, W, C)`` from the data section, reading no image."""
    return tuple(data_spec(cfg_data).shape)


def _build(cfg, seed):
    model = build_model(cfg.model, data_shape=data_shape_of(cfg.data), rngs=nnx.Rngs(seed))
    return split_model(model)


def _config_file(cfg):
    path = os.path.join("configs", f"{cfg.data.name}.py")
    return path if os.path.exists(path) else "configs/<dataset>.py"


def _snapshot(workdir, field, make=""):
    """``workdir/ema.npz``; a missing one is a :class:`MissingInput` saying how to make it."""
    if not workdir:
        raise ValueError(f"{field} must name the workdir of the stage that produced it.")
    path = os.path.join(workdir, "ema.npz")
    if not os.path.exists(path):
        raise MissingInput(f"{field}={workdir!r} holds no snapshot (ema.npz)"
                           + (f": create it with {make}" if make else "."))
    return path


def _require_inputs(cfg, workdir):
    """Checks every file input of the stage before anything is built or compiled; each missing
    one is a :class:`MissingInput` naming the path and the command that creates it."""
    conf, stage = _config_file(cfg), cfg.stage
    teacher = (f"`python scripts/train.py --config {conf}:teacher --workdir "
               f"{cfg.teacher.workdir}` or `python scripts/import_edm.py --checkpoint "
               f"edm-….pkl --workdir {cfg.teacher.workdir}`")
    if stage in ("pairs", "reflow"):
        _snapshot(cfg.teacher.workdir, "teacher.workdir", teacher)
    if stage == "reflow":
        p = cfg.pairs
        if not p.dir:
            raise ValueError("pairs.dir must name the workdir of the pairs stage.")
        fractions = pairs.pair_fractions(p.rho, p.projection.fraction)
        for name in pairs.SOURCES:
            folder = os.path.join(p.dir, name)
            if (name == "backward" or fractions[name] > 0) and not (
                    os.path.isdir(folder) and any(f.startswith("pairs_")
                                                  for f in os.listdir(folder))):
                raise MissingInput(
                    f"pairs.dir={p.dir!r} has no {name} pairs ({folder}): create them with "
                    f"`python scripts/train.py --config {conf}:pairs --workdir {p.dir} "
                    f"--config.teacher.workdir={cfg.teacher.workdir}`")
    if stage == "eval":
        _snapshot(cfg.eval.get("model_dir") or workdir, "eval.model_dir",
                  f"`python scripts/train.py --config {conf}:reflow --workdir "
                  f"{cfg.eval.get('model_dir') or workdir}`")
        if cfg.teacher.workdir:
            _snapshot(cfg.teacher.workdir, "teacher.workdir", teacher)
        if cfg.guidance.kind == "autoguidance" and cfg.guidance.w:
            _snapshot(cfg.guidance.bad_workdir, "guidance.bad_workdir",
                      "a shorter or smaller teacher run (the 'bad' model of AutoGuidance)")
    reads_data = (stage in ("teacher", "eval") or cfg.pairs.num_forward > 0
                  or (stage in ("pairs", "reflow") and cfg.pairs.projection.fraction > 0))
    if reads_data and data_spec(cfg.data).source not in ("mock", "digits"):
        make_image_source(cfg.data)  # TFDS / folder: says how to prepare a missing dataset


def _loss_fn(cfg):
    if cfg.loss.kind == "edm":
        return functools.partial(edm_loss, p_mean=cfg.loss.p_mean, p_std=cfg.loss.p_std,
                                 sigma_data=cfg.loss.sigma_data)
    if cfg.loss.kind == "flow":
        return functools.partial(losses.flow_loss, cfg=cfg.loss, time_cfg=cfg.time)
    raise ValueError(f"loss.kind={cfg.loss.kind!r} is not one of ('edm', 'flow').")


def _train(cfg, workdir, model_def, params, host_batch_at, desc, coupling=None):
    mesh = sharding.make_mesh(cfg.get("mesh"))
    optimizer = make_optimizer(cfg.optim)
    coupling_state = None
    if coupling is not None:
        coupling_state = coupling.init(jax.random.fold_in(jax.random.key(cfg.seed), 1))
    state = init_state(params, optimizer, cfg.seed, coupling_state)
    step = make_train_step(model_def, _loss_fn(cfg), optimizer,
                           ema_decay=cfg.training.ema_decay, coupling=coupling)
    repl = sharding.replicated(mesh)
    compiled = jax.jit(step, in_shardings=(repl, sharding.batch_sharding(mesh)),
                       out_shardings=(repl, repl), donate_argnums=(0,))
    state = jax.device_put(state, repl)
    return train_loop(
        state, compiled, num_steps=cfg.training.num_steps, workdir=workdir,
        batch_at=lambda s: sharding.shard_batch(host_batch_at(s), mesh),
        log_every=cfg.training.log_every, ckpt_every=cfg.training.ckpt_every,
        keep=cfg.training.keep_checkpoints, batch_size=cfg.training.batch_size, desc=desc)


def run_teacher(cfg, workdir):
    """Trains a teacher on real images; writes ``workdir/ema.npz``.

    ``loss.kind = "edm"``: EDM's loss. ``loss.kind = "flow"``: a 1-rectified flow whose noise
    is paired with each batch by ``cfg.coupling`` inside the jitted step (independent, OT-CFM,
    LOOM-CFM with its per-image state over the whole training set, W-CFM).
    """
    source = make_image_source(cfg.data)
    model_def, params = _build(cfg, cfg.seed)
    if jax.process_index() == 0:
        checkpoint.save_model_config(workdir, cfg.model)
    coupling, factor, keep = None, 1, ("x0", "cond")
    if cfg.loss.kind == "flow":
        coupling = make_coupling(cfg.coupling, data_shape=data_shape_of(cfg.data),
                                 num_data=len(source))
        factor, keep = coupling.batch_factor, ("x0", "cond", "index")

    def host_batch(step):
        b = batch_at(source, cfg.seed, step, cfg.training.batch_size * factor,
                     random_flip=cfg.data.random_flip, process_index=jax.process_index(),
                     process_count=jax.process_count())
        return {k: v.astype(np.int32) if k == "index" else v for k, v in b.items() if k in keep}

    desc = "teacher (EDM)" if coupling is None else f"1-RF ({coupling.name} coupling)"
    _train(cfg, workdir, model_def, params, host_batch, desc, coupling=coupling)
    return f"teacher EMA snapshot: {os.path.join(workdir, 'ema.npz')}"


def _teacher(cfg):
    model_def, like = _build(cfg, cfg.seed)
    params = checkpoint.load_params(_snapshot(cfg.teacher.workdir, "teacher.workdir"), like)
    return model_def, params


def _pair_grid(p, increasing=False):
    g = grids.make_grid(p.grid, p.steps, t_max=p.t_max)
    if not increasing:
        return g
    g = np.sort(g)[1:]  # drop t = 0: the forward solve starts at t_min
    return np.concatenate([[p.t_min], g[g > p.t_min]])


def run_pairs(cfg, workdir):
    """Backward and forward pairs from the teacher snapshot, as resumable shards."""
    p = cfg.pairs
    model_def, params = _teacher(cfg)
    shape = data_shape_of(cfg.data)
    num_classes = data_spec(cfg.data).num_classes
    key = jax.random.key(cfg.seed + 11)
    denoise = model_def.denoiser(params)
    grid_b = _pair_grid(p)

    @jax.jit
    def gen_backward(idx):
        cond = None
        if num_classes:  # each pair's class from its own index, like its noise
            cond = jax.vmap(lambda i: jax.random.randint(
                jax.random.fold_in(jax.random.fold_in(key, i), 1), (), 0, num_classes))(idx)
        x0, x1, _ = pairs.backward_pairs(denoise, key, idx, shape, grid_b, solver=p.solver,
                                         cond=cond)
        return {"x0": x0, "x1": x1, **({"cond": cond} if num_classes else {})}

    kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
    with tqdm(total=p.num_backward, desc="backward pairs", disable=jax.process_index()) as bar:
        pairs.write_pair_shards(lambda i: gen_backward(jnp.asarray(i)), p.num_backward, p.chunk,
                                os.path.join(workdir, "backward"), progress=bar.update, **kw)
    if p.num_forward:
        source = make_image_source(cfg.data)
        grid_f = _pair_grid(p, increasing=True)
        gen_f = jax.jit(lambda x0, c: pairs.forward_pairs(denoise, x0, grid_f, solver=p.solver,
                                                          cond=c)[:2])

        def gen_forward(idx):
            data = source.get(np.asarray(idx) % len(source))  # pair i ← training image i
            x0, x1 = gen_f(jnp.asarray(data["x0"]), data.get("cond"))
            return {"x0": x0, "x1": x1, **({"cond": data["cond"]} if "cond" in data else {})}

        with tqdm(total=p.num_forward, desc="forward pairs", disable=jax.process_index()) as bar:
            pairs.write_pair_shards(gen_forward, p.num_forward, p.chunk,
                                    os.path.join(workdir, "forward"), progress=bar.update, **kw)
    if p.projection.fraction > 0:
        _write_projected(cfg, workdir, denoise, grid_b, **kw)
    nfe_b = sampler.nfe_of(grid_b, p.solver)
    return (f"pairs in {workdir}: {p.num_backward} backward ({nfe_b} NFE each), "
            f"{p.num_forward} forward"
            + (f", {p.projection.num} projected" if p.projection.fraction > 0 else ""))


def _write_projected(cfg, workdir, denoise, grid_b, *, process_index, process_count):
    """Projected pairs (METHOD.md §3): the first ``projection.num`` backward pairs re-paired
    with as many real images (a seeded permutation of the training set) by entropic OT."""
    p, q = cfg.pairs, cfg.pairs.projection
    out_dir = os.path.join(workdir, "projected")
    if _complete(out_dir, q.num):
        return
    if process_count > 1:  # every host reads the backward shards the others wrote
        multihost_utils.sync_global_devices("backward pairs written")
    backward = pairs.load_pair_shards(os.path.join(workdir, "backward"), q.num)
    source = make_image_source(cfg.data)
    order = np.random.default_rng(cfg.seed + 19).permutation(len(source))[:q.num]
    real = source.get(np.resize(order, q.num))["x0"]
    forward = None
    if q.lam == "search":
        forward = pairs.load_pair_shards(os.path.join(workdir, "forward"), None)
    projected, metrics = pairs.projected_pairs(
        jax.random.key(cfg.seed + 23), {k: backward[k][:q.num] for k in ("x0", "x1")}, real, q,
        denoise_fn=denoise, forward=forward, grid=grid_b, solver=p.solver)
    projected = {k: np.asarray(v) for k, v in projected.items()}
    if process_index == 0:
        print("projection: " + ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items()),
              flush=True)

    def take(idx):
        return {k: v[np.minimum(idx, q.num - 1)] for k, v in projected.items()}

    pairs.write_pair_shards(take, q.num, p.chunk, out_dir, process_index=process_index,
                            process_count=process_count)


def _complete(out_dir, num):
    try:
        return len(pairs.load_pair_shards(out_dir, num)["index"]) >= num
    except (FileNotFoundError, ValueError):
        return False


def run_reflow(cfg, workdir):
    """Trains the student, initialised from the teacher, on the mixed pairs (METHOD.md §3)."""
    p = cfg.pairs
    if not p.dir:
        raise ValueError("pairs.dir must name the workdir of the pairs stage.")
    fractions = pairs.pair_fractions(p.rho, p.projection.fraction)
    num = {"backward": p.num_backward, "forward": p.num_forward, "projected": p.projection.num}
    keep = ("x0", "x1", "cond")
    stores = {}
    for name in pairs.SOURCES:
        if name == "backward" or fractions[name] > 0:
            loaded = pairs.load_pair_shards(os.path.join(p.dir, name), num[name])
            stores[name] = {k: v for k, v in loaded.items() if k in keep}
    model_def, params = _teacher(cfg)  # the student starts from the teacher's weights
    if jax.process_index() == 0:
        checkpoint.save_model_config(workdir, cfg.model)
    key = jax.random.key(cfg.seed + 17)
    sizes = {name: len(v["x0"]) for name, v in stores.items()}
    mix = jax.jit(lambda step: pairs.mix_indices(jax.random.fold_in(key, step), sizes, fractions,
                                                 cfg.training.batch_size))
    per_host = cfg.training.batch_size // jax.process_count()
    lo = jax.process_index() * per_host

    def host_batch(step):
        source, index = (np.asarray(a)[lo:lo + per_host] for a in mix(step))
        return pairs.gather_pairs(stores, source, index, xp=np)

    _train(cfg, workdir, model_def, params, host_batch, "student (ReFlow)")
    return f"student EMA snapshot: {os.path.join(workdir, 'ema.npz')}"


def _guided(cfg, model_def, params, denoise):
    g = cfg.guidance
    if g.kind == "none" or g.w == 0:
        return denoise
    if g.kind == "autoguidance":
        bad = checkpoint.load_params(_snapshot(g.bad_workdir, "guidance.bad_workdir"), params)
        return guidance.autoguidance(denoise, model_def.denoiser(bad), g.w)
    if g.kind == "cfg":
        return guidance.classifier_free(denoise, g.w, null_class=cfg.model.num_classes)
    raise ValueError(f"guidance.kind={g.kind!r} is not one of ('none', 'autoguidance', 'cfg').")


def _scorer(cfg, shape):
    """``(metric name, featurize, dim, reference μ, Σ, number of samples)``: FID on Inception
    features when weights are given (``eval.inception_weights`` or ``$SIMPLE_REFLOW_INCEPTION``),
    else the pixel-space FD to as many held-out images as there are samples. Every input is
    checked here, before any model is built or sampled."""
    weights = cfg.eval.get("inception_weights") or os.environ.get(inception.WEIGHTS_ENV)
    if weights:
        mu, sigma = load_reference(cfg.eval.get("fid_ref"), dim=inception.FEATURE_DIM,
                                   resolution=shape[0])
        featurize = inception.uint8_features(inception.load_fid_inception(weights))
        return "fid", featurize, inception.FEATURE_DIM, mu, sigma, cfg.eval.num_samples
    held_out = make_image_source(cfg.data, split=cfg.data.eval_split)
    n = min(cfg.eval.num_samples, len(held_out))
    ref = held_out.get(np.arange(n))["x0"].reshape(n, -1)
    mu, sigma = gaussian_stats(ref)
    return "fd_pixel", jax.jit(sampling.pixel_features), ref.shape[1], mu, sigma, n


def run_eval(cfg, workdir):
    """FID (or pixel FD) per NFE budget for ``eval.model_dir`` and the teacher (module doc)."""
    shape = data_shape_of(cfg.data)
    num_classes = data_spec(cfg.data).num_classes
    metric, featurize, dim, ref_mu, ref_sigma, num = _scorer(cfg, shape)
    model_def, like = _build(cfg, cfg.seed)
    model_dir = cfg.eval.get("model_dir") or workdir
    models = {"student": checkpoint.load_params(_snapshot(model_dir, "eval.model_dir"), like)}
    if cfg.teacher.workdir:
        models["teacher"] = checkpoint.load_params(_snapshot(cfg.teacher.workdir,
                                                             "teacher.workdir"), like)
    mesh = sharding.make_mesh(cfg.get("mesh"))
    key = jax.random.key(cfg.eval.seed)  # sample i: fold_in(key, i), as EDM's --seeds
    s = cfg.sampler

    def grid_fn(k):
        return grids.make_grid(s.grid, k, kappa=s.kappa, rho=s.rho, t_max=s.t_max)

    results, lines = {}, []
    for name, params in models.items():
        denoise = _guided(cfg, model_def, params, model_def.denoiser(params)) \
            if name == "student" else model_def.denoiser(params)
        done = set()
        for budget in cfg.eval.nfe:
            grid, nfe = sampler.grid_for_budget(budget, s.solver, grid_fn)
            if nfe in done:  # two budgets that buy the same grid
                continue
            done.add(nfe)
            stats, images = sampling.sample_features(
                denoise, grid, solver=s.solver, r=s.r, shape=shape, num_classes=num_classes,
                key=key, featurize=featurize, dim=dim, num=num,
                batch_size=cfg.eval.batch_size, mesh=mesh, keep_images=64,
                desc=f"{name} NFE {nfe}")
            value = frechet_distance_from_stats(*stats.mean_cov(), ref_mu, ref_sigma)
            results[f"eval/{name}/{metric}@nfe={nfe}"] = value
            if jax.process_index() == 0:
                save_image_grid(os.path.join(workdir, f"samples_{name}_nfe{nfe}.png"),
                                images.astype(np.float32) / 127.5 - 1.0, ncols=8,
                                scale=4 if shape[0] <= 16 else 1, pad=1)
            lines.append(f"{name:>8} NFE {nfe:>3}: {metric} {value:.3f} ({stats.count} samples)")
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
            json.dump(results, f, indent=1)
    what = ("FID (Inception, EDM's protocol)" if metric == "fid"
            else "Fréchet distance in pixel space to held-out images")
    return what + "\n" + "\n".join(lines)


def run_pipeline(cfg, workdir):
    """Runs ``cfg.stages`` (teacher, pairs, reflow, eval) in subfolders of ``workdir``."""
    out = []
    dirs = {k: os.path.join(workdir, k) for k in ("teacher", "pairs", "reflow", "eval")}
    for stage in ("teacher", "pairs", "reflow", "eval"):
        sc = cfg.stages[stage]
        with sc.unlocked():
            sc.teacher.workdir = dirs["teacher"]
            sc.pairs.dir = dirs["pairs"]
            sc.eval.model_dir = dirs["reflow"]
        wd = dirs[stage]
        os.makedirs(wd, exist_ok=True)
        _require_inputs(sc, wd)
        out.append(_RUNNERS[stage](sc, wd))
        print(out[-1], flush=True)
    return "\n".join(out)


_RUNNERS = {"teacher": run_teacher, "pairs": run_pairs, "reflow": run_reflow, "eval": run_eval}


def run_image_stage(cfg, workdir):
    """Dispatches an image config to its stage, after checking that its inputs exist."""
    if cfg.stage == "pipeline":
        return run_pipeline(cfg, workdir)
    _require_inputs(cfg, workdir)
    return _RUNNERS[cfg.stage](cfg, workdir)
