"""The BOSS stage (METHOD.md §9): a snapshot's Bellman-optimal Euler grids saved beside it, and
the model straightened along one of them.

Image configs (``configs/<dataset>.py:boss``, :func:`run_boss`), from the ``boss`` section:

1. the snapshot (``boss.model``: ``"student"``, the one in ``eval.model_dir`` — the reflow
   stage's workdir, the model the eval stage scores — or ``"teacher"``, ``teacher.workdir``)
   solves ``boss.num_noises`` index-seeded noises (labels too, for class-conditional data)
   accurately (Heun, ``boss.substeps`` per candidate interval) through ``boss.candidates``
   candidate times (``boss.candidate_grid`` from ``sampler.t_max`` to 0); the Euler cost
   matrix on those trajectories picks the K-step grid of each K in ``boss.num_steps`` by the
   Bellman programme, saved beside the snapshot (``boss_grid.json``,
   :func:`simple_reflow.train.boss.save_grid`). With ``boss.teacher_grid`` the teacher gets its
   own grid too, so the eval stage can score both with ``sampler.grid='boss'``;
2. with ``boss.straighten_steps > 0`` the model is fine-tuned along its ``boss.straighten_k``
   grid on reference trajectories of ``boss.straighten_noises`` fresh noises
   (:func:`simple_reflow.train.boss.straighten`: all weights, or rank-``boss.lora_rank``
   adapters) into the stage's workdir, and the grid it was straightened along is saved beside
   the straightened snapshot (with the other K's grids of the same cost matrix).

Score it with the eval stage::

  python scripts/train.py --config configs/cifar10.py:eval --workdir runs/c10/boss_eval \\
      --config.eval.model_dir runs/c10/boss --config.teacher.workdir runs/c10/teacher \\
      --config.sampler.grid boss --config.sampler.solver euler

The grids and the straightening see the network alone: sampling-time guidance (AutoGuidance,
CFG) is applied on top by the eval stage [recon]. Every step is resumable: a grid already saved
beside a snapshot for the same settings (its ``info``) and the same snapshot (SHA-256) is kept,
a straightening run resumes from its checkpoints, and a finished stage (the grid beside the
straightened snapshot) does nothing.

Toy pipeline (``configs/toy2d.py:boss``, :func:`toy_boss`): the same on the pipeline's
teacher and student (grids saved beside the snapshots that exist), the student straightened
into ``workdir/student_boss``, and W2 per K of Euler steps on the uniform, sigmoid and BOSS
grids added to the pipeline's metrics.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from simple_reflow import boss, grids, pairs, sampler
from simple_reflow.errors import DamagedInput, MissingInput
from simple_reflow.train import boss as train_boss
from simple_reflow.train import checkpoint, configure, sampling, sharding
from simple_reflow.train.step import make_optimizer, split_model
from simple_reflow.train.streams import stream_key, stream_seed

__all__ = ["model_folder", "candidate_times", "run_boss", "toy_boss"]


def model_folder(cfg) -> str | None:
    """The folder of the snapshot the image ``boss`` stage works on (``boss.model``)."""
    return cfg.eval.get("model_dir") if cfg.boss.model == "student" else cfg.teacher.workdir


def candidate_times(cfg) -> np.ndarray:
    """The candidate times ``[boss.candidates + 1]``: ``boss.candidate_grid`` from
    ``sampler.t_max`` to 0 (κ and ρ of the ``sampler`` section)."""
    b, s = cfg.boss, cfg.sampler
    return grids.make_grid(b.candidate_grid, b.candidates, kappa=s.kappa, rho=s.rho, t_max=s.t_max)


def _grid_info(cfg) -> dict:
    """What a saved grid was measured with (JSON values): a grid saved with other settings is
    measured again."""
    b, s = cfg.boss, cfg.sampler
    return {
        "candidates": int(b.candidates),
        "candidate_grid": b.candidate_grid,
        "t_max": float(s.t_max),
        "kappa": float(s.kappa),
        "rho": float(s.rho),
        "num_noises": int(b.num_noises),
        "substeps": int(b.substeps),
        "seed": int(cfg.seed),
    }


def _straighten_info(cfg, model_dir) -> dict:
    b = cfg.boss
    return {
        **_grid_info(cfg),
        "straightened_from": os.path.abspath(model_dir),
        "straighten_k": int(b.straighten_k),
        "straighten_steps": int(b.straighten_steps),
        "straighten_noises": int(b.straighten_noises),
        "straighten_batch": int(b.straighten_batch),
        "lr": float(b.lr),
        "ema_decay": float(b.ema_decay),
        "lora_rank": int(b.lora_rank),
    }


def _saved(folder, info, num_steps):
    """The checked grid record of ``folder`` if it was saved for this snapshot with ``info``
    and holds every K of ``num_steps``; else None (missing, another snapshot, other settings)."""
    if not folder:
        return None
    try:
        rec = train_boss.read_grid(folder)
    except (MissingInput, DamagedInput):
        return None
    if rec.get("info") != info or not {int(k) for k in num_steps} <= set(rec["grids"]):
        return None
    return rec


def _describe(name, cost, times, num_steps):
    lines = []
    for k in sorted({int(k) for k in num_steps}):
        indices, total = boss.optimal_path(jnp.asarray(cost), k)
        grid = np.asarray(times)[np.asarray(indices)]
        lines.append(
            f"{name} K={k}: " + " ".join(f"{t:.4f}" for t in grid) + f" (cost {float(total):.4g})"
        )
    return lines


def _optimizer(cfg):
    """Adam of the ``optim`` section at ``boss.lr``, no warm-up (a fine-tune)."""
    opt = ml_collections.ConfigDict(cfg.optim.to_dict())
    opt.lr, opt.warmup_steps = cfg.boss.lr, 0
    return make_optimizer(opt)


def _sync(name):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _straighten(cfg, model_def, params, pairs_set, workdir, mesh, k):
    b, t = cfg.boss, cfg.training
    return train_boss.straighten(
        model_def,
        params,
        pairs_set,
        optimizer=_optimizer(cfg),
        num_steps=b.straighten_steps,
        batch_size=b.straighten_batch,
        workdir=workdir,
        seed=stream_seed(cfg.seed, "boss_straighten", bits=31),
        ema_decay=b.ema_decay,
        lora_rank=b.lora_rank,
        mesh=mesh,
        steps_per_call=t.steps_per_call,
        log_every=t.log_every,
        ckpt_every=t.ckpt_every,
        keep=t.keep_checkpoints,
        desc=f"straighten (BOSS K={k})" + (f", LoRA r={b.lora_rank}" if b.lora_rank else ""),
    )


def _image_batches(run, mesh, stream, num, batch_size):
    """``(x1, cond)`` batches of noises ``0 … num − 1`` of ``stream``, sharded over ``mesh``
    (each host builds its slice): noise i from ``fold_in(key, i)``, its label (class-conditional
    data) from ``fold_in(fold_in(key, i), 1)``, as the eval stage's samples."""
    key = stream_key(run.cfg.seed, stream)
    shape, classes = tuple(run.shape), run.num_classes

    @jax.jit
    def draw(idx):
        x1 = pairs.noise_for_indices(key, idx, shape)
        return x1, (sampling.index_labels(key, idx, classes) if classes else None)

    n_proc, pid = jax.process_count(), jax.process_index()
    per_host = batch_size // n_proc
    for start in range(0, num, batch_size):
        idx = np.arange(start + pid * per_host, start + (pid + 1) * per_host, dtype=np.int32)
        yield draw(sharding.shard_batch(idx, mesh))


def run_boss(run, workdir):
    """The image ``boss`` stage (module docstring); returns a printable summary."""
    cfg = run.cfg
    b = cfg.boss
    main = jax.process_index() == 0
    model_dir = model_folder(cfg)
    folders = [model_dir]
    teacher = cfg.teacher.workdir
    if b.teacher_grid and teacher and os.path.abspath(teacher) != os.path.abspath(model_dir):
        folders.append(teacher)
    for folder in folders:
        if (checkpoint.load_model_config(folder) or {}).get("two_time", False):
            field = "teacher.workdir" if folder == teacher else "eval.model_dir"
            raise ValueError(
                f"{field}={folder!r} holds a two-time network; BOSS chooses Euler steps of a "
                "one-time flow (a teacher or a ReFlow student)."
            )
    times = candidate_times(cfg)
    info = _grid_info(cfg)
    s_info = _straighten_info(cfg, model_dir)
    if b.straighten_steps and _saved(workdir, s_info, b.num_steps) is not None:
        return f"BOSS: already done; the straightened snapshot and its grid are in {workdir}"
    saved = {folder: _saved(folder, info, b.num_steps) for folder in folders}
    if b.straighten_steps or any(rec is None for rec in saved.values()):  # work to do
        model_def, like = split_model(
            configure.model_from_config(cfg.model, data_shape=run.shape, rngs=nnx.Rngs(cfg.seed))
        )
        mesh = sharding.make_mesh(cfg.get("mesh"))
        boss_fn = train_boss.make_boss_fn(model_def.denoiser, times, substeps=b.substeps)
    lines, costs, weights = [], {}, {}
    for folder in folders:
        if saved[folder] is not None:
            costs[folder] = saved[folder]["cost"]
            lines.append(f"kept the BOSS grid saved in {folder} (same snapshot and settings)")
        else:
            params = checkpoint.load_params(os.path.join(folder, "ema.npz"), like)
            weights[folder] = params = jax.device_put(params, sharding.replicated(mesh))
            batches = _image_batches(run, mesh, "boss_noise", b.num_noises, b.batch_size)
            with tqdm(
                total=b.num_noises, desc=f"BOSS cost ({folder})", unit="noise", disable=not main
            ) as bar:
                costs[folder] = train_boss.mean_cost(boss_fn, params, batches, progress=bar.update)
            train_boss.save_grid(folder, costs[folder], times, b.num_steps, info=info)
            _sync("boss grid saved")
            lines.append(f"BOSS grid saved beside {os.path.join(folder, 'ema.npz')}")
        lines += _describe("  Euler", costs[folder], times, b.num_steps)
    if b.straighten_steps:
        if model_dir not in weights:
            params = checkpoint.load_params(os.path.join(model_dir, "ema.npz"), like)
            weights[model_dir] = jax.device_put(params, sharding.replicated(mesh))
        k = int(b.straighten_k)
        cost = costs[model_dir]
        indices = np.asarray(boss.optimal_path(jnp.asarray(cost), k)[0])
        batches = _image_batches(run, mesh, "boss_straighten", b.straighten_noises, b.batch_size)
        with tqdm(
            total=b.straighten_noises, desc="straightening set", unit="noise", disable=not main
        ) as bar:
            pairs_set = train_boss.straightening_set(
                boss_fn, weights[model_dir], batches, times, indices, progress=bar.update
            )
        if main:
            checkpoint.save_model_config(workdir, cfg.model)
        _straighten(cfg, model_def, weights[model_dir], pairs_set, workdir, mesh, k)
        _sync("boss straightened")
        train_boss.save_grid(workdir, cost, times, b.num_steps, info=s_info)
        _sync("boss straightened grid saved")
        lines.append(
            f"straightened along the K={k} grid: {os.path.join(workdir, 'ema.npz')}, its grids "
            "beside it; score it with the eval stage, --config.eval.model_dir="
            f"{workdir} --config.sampler.grid=boss --config.sampler.solver=euler"
        )
    return "\n".join(lines)


def _toy_batches(key, num, batch_size):
    x1 = jax.random.normal(key, (num, 2))
    return [(x, None) for x in jnp.split(x1, num // batch_size)]


def toy_boss(run, workdir, models, *, student=None, sets=None):
    """BOSS on the toy pipeline's models; returns ``{"records", "straighten_k"}``.

    Each model's cost matrix is measured on ``boss.num_noises`` reference noises (stream
    ``"boss_noise"``) and its grids saved beside its snapshot where it has one; each is scored
    with K Euler steps (K in ``boss.num_steps``) on the uniform, sigmoid (``sampler.kappa``)
    and BOSS grids. With ``boss.straighten_steps > 0`` the student is straightened along its
    K = ``boss.straighten_k`` grid into ``workdir/student_boss`` and scored on its BOSS grids.

    Args:
      run: the resolved toy config.
      workdir: the pipeline's workdir.
      models: ``{name: (denoiser, params, folder)}``: ``denoiser(params) -> denoise_fn``;
        ``folder`` holds the snapshot (None: no weights, e.g. the analytic teacher).
      student: ``(model_def, params)`` of the model to straighten (the ``"student"`` entry).
      sets: the evaluation sets (:func:`simple_reflow.train.toy_eval.eval_sets`; default its
        first set of the run's ``"eval"`` stream), W2 on the first.

    Returns:
      ``records``: ``{"model", "grid", "nfe", "w2"}`` per model, grid and K (the straightened
      student is ``"student_straightened"``, on its BOSS grids); ``straighten_k`` the K it was
      straightened for (0: not straightened).
    """
    from simple_reflow.metrics.transport import w2
    from simple_reflow.train.toy_eval import eval_sets

    cfg = run.cfg
    b = cfg.boss
    es = (eval_sets(cfg) if sets is None else sets)[0]
    times = candidate_times(cfg)
    info = _grid_info(cfg)
    ks = sorted({int(k) for k in b.num_steps})

    def score(name, fn, grid_fns):
        out = []
        for k in ks:
            for g, grid_fn in grid_fns.items():
                grid = grid_fn(k)  # K Euler steps: K NFE
                nfe = sampler.nfe_of(grid, "euler")
                x0 = jax.jit(lambda x1, grid=grid: sampler.sample(fn, x1, grid, solver="euler")[0])
                value = w2(x0(es["x1"]), es["target"])
                out.append({"model": name, "grid": g, "nfe": nfe, "w2": value})
        return out

    s = cfg.sampler
    named = {
        g: lambda n, g=g: grids.make_grid(g, n, kappa=s.kappa, t_max=s.t_max)
        for g in ("uniform", "sigmoid")
    }
    records, costs, fns = [], {}, {}
    for name, (denoiser, params, folder) in models.items():
        boss_fn = fns[name] = train_boss.make_boss_fn(denoiser, times, substeps=b.substeps)
        rec = _saved(folder, info, b.num_steps)
        if rec is None:
            batches = _toy_batches(stream_key(cfg.seed, "boss_noise"), b.num_noises, b.batch_size)
            cost = train_boss.mean_cost(boss_fn, params, batches)
            if folder:
                train_boss.save_grid(folder, cost, times, b.num_steps, info=info)
        else:
            cost = rec["cost"]
        costs[name] = cost
        print("\n".join(_describe(f"BOSS {name}", cost, times, ks)), flush=True)
        boss_grid = lambda n, c=cost: boss.optimal_grid(c, times, n)  # noqa: E731
        records += score(name, denoiser(params), {**named, "boss": boss_grid})
    if b.straighten_steps and student is not None:
        model_def, params = student
        k = int(b.straighten_k)
        indices = np.asarray(boss.optimal_path(jnp.asarray(costs["student"]), k)[0])
        batches = _toy_batches(
            stream_key(cfg.seed, "boss_straighten"), b.straighten_noises, b.batch_size
        )
        pairs_set = train_boss.straightening_set(fns["student"], params, batches, times, indices)
        folder = os.path.join(workdir, "student_boss")
        mesh = sharding.make_mesh(cfg.get("mesh"))
        straight, _ = _straighten(cfg, model_def, params, pairs_set, folder, mesh, k)
        s_info = _straighten_info(cfg, models["student"][2] or "student")
        train_boss.save_grid(folder, costs["student"], times, b.num_steps, info=s_info)
        grid_fn = train_boss.grid_fn(folder)
        records += score("student_straightened", model_def.denoiser(straight), {"boss": grid_fn})
    return {"records": records, "straighten_k": int(b.straighten_k) if b.straighten_steps else 0}
