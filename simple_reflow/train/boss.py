"""BOSS beside a model snapshot: the grid saved with the model, and straightening on the fit loop.

The grid (METHOD.md §9; :mod:`simple_reflow.boss`) is measured on the model's own reference
trajectories (:func:`make_boss_fn`: one compiled program for the cost and the straightening
set; :func:`mean_cost` over batches of noises, sharded over a mesh if given) and belongs to one
model: :func:`save_grid` writes ``model_dir/boss_grid.json`` beside the snapshot
``model_dir/ema.npz`` with the candidate times, the Euler cost matrix, the optimal grid for
each requested K and the snapshot's SHA-256; :func:`load_grid` and :func:`grid_fn` read it
back and refuse it (:class:`~simple_reflow.errors.DamagedInput`) when ``ema.npz`` is another
snapshot — a grid chosen for one model is not a grid for the next one trained in the same
folder. A K that was not saved is recomputed from the saved cost matrix (the Bellman programme,
milliseconds), so :func:`grid_fn` serves :func:`simple_reflow.sampler.grid_for_budget` like a
named grid.

Straightening (:func:`straighten`): a short fine-tune on the pairs of
:func:`simple_reflow.boss.straightening_pairs` (:func:`straightening_set`) — each chosen
interval's endpoints on reference trajectories of the model itself — with
:func:`simple_reflow.boss.straightening_loss`, through :func:`simple_reflow.train.fit.fit`
(checkpoints, resume, metrics, EMA). Each step draws a batch of rows with replacement inside
the compiled step (``fold_in(key, step)``). With ``lora_rank`` only low-rank adapters train
(:mod:`simple_reflow.models.lora`; the authors' ``use_lora`` option, rank 4 in their scripts)
and ``workdir/ema.npz`` is rewritten at the end with the merged weights, so the straightened
snapshot loads like the base model's. The stage that runs all of it from a config:
:mod:`simple_reflow.train.boss_stage`.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from simple_reflow import boss, compile_options, losses
from simple_reflow.errors import DamagedInput, MissingInput, reason
from simple_reflow.models.lora import LoRADef, init_adapters
from simple_reflow.pair_store import file_sha256
from simple_reflow.train import checkpoint
from simple_reflow.train.fit import DeviceBatches, fit

__all__ = [
    "GRID_FILE",
    "make_boss_fn",
    "mean_cost",
    "straightening_set",
    "save_grid",
    "read_grid",
    "load_grid",
    "grid_fn",
    "straightening_batch_fn",
    "straighten",
]

GRID_FILE = "boss_grid.json"
_SNAPSHOT = "ema.npz"
_FORMAT = 1


def make_boss_fn(denoiser, times, *, substeps: int = 4):
    """``fn(params, x1, cond) -> (cost, states)`` for one batch of reference noises, jitted.

    ``states`` ``[N + 1, B, ...]`` are :func:`simple_reflow.boss.reference_trajectories` of
    ``x1 [B, ...]`` at the candidate ``times`` and ``cost`` ``[N + 1, N + 1]`` their Euler cost
    matrix (:func:`simple_reflow.boss.euler_cost_matrix`, the batch mean). One compiled program
    serves the cost (:func:`mean_cost`), the straightening set (:func:`straightening_set`) and
    every snapshot of one architecture: the weights are an input, not constants. Inputs sharded
    over a mesh's ``data`` axis (the batch) give states sharded alike and a replicated cost.

    Args:
      denoiser: ``denoiser(params) -> denoise_fn`` (``ModelDef.denoiser``; ``lambda _: fn``
        for a closed-form teacher, called with ``params=None``).
      times: the concrete candidate times ``[N + 1]``, strictly decreasing (τ_N = 0).
      substeps: Heun steps per candidate interval of the reference solve.
    """
    tau = np.asarray(times, np.float64)

    def fn(params, x1, cond):
        denoise_fn = denoiser(params)
        states = boss.reference_trajectories(denoise_fn, x1, tau, substeps=substeps, cond=cond)
        return boss.euler_cost_matrix(denoise_fn, states, tau, cond=cond), states

    return compile_options.jit(fn)


def _host(x):
    """An array (sharded or replicated over several hosts, or local) as NumPy on every host."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def mean_cost(boss_fn, params, batches, *, progress=None) -> np.ndarray:
    """The Euler cost matrix averaged over every reference noise of ``batches``.

    Args:
      boss_fn: :func:`make_boss_fn`'s function.
      params: the model's weights (placed as the compiled program expects them).
      batches: an iterable of ``(x1 [b, ...], cond [b] or None)``; each batch's mean cost is
        weighted by its size b, so the result is the mean over all noises (METHOD.md §9).
      progress: optional ``progress(b)`` after each batch.

    Returns:
      ``[N + 1, N + 1]`` float64 NumPy: c(i, j) for i < j, +∞ elsewhere.
    """
    total, count = None, 0
    for x1, cond in batches:
        cost, _ = boss_fn(params, x1, cond)
        b = int(x1.shape[0])
        weighted = _host(cost).astype(np.float64) * b
        total = weighted if total is None else total + weighted
        count += b
        if progress is not None:
            progress(b)
    if not count:
        raise ValueError("no reference noises: batches is empty.")
    return total / count


def straightening_set(boss_fn, params, batches, times, indices, *, progress=None) -> dict:
    """BOSS's straightening set of one grid on reference trajectories of fresh noises.

    :func:`simple_reflow.boss.straightening_pairs` of the states at the candidate ``indices``
    (the grid's path, :func:`simple_reflow.boss.optimal_path`), only those states kept.

    Args:
      boss_fn, params, batches, progress: as :func:`mean_cost` (the fresh noises).
      times: the candidate times ``[N + 1]`` of ``boss_fn``.
      indices: ``[K + 1]`` increasing candidate indices, 0 first and N last.

    Returns:
      NumPy ``{"x_from", "x_to": [K·B, ...], "t_from", "t_to": [K·B]}``, interval-major, plus
      ``"cond"`` ``[K·B]`` (each row's label) when the batches carry labels.
    """
    idx = np.asarray(indices)
    states, conds = [], []
    for x1, cond in batches:
        _, s = boss_fn(params, x1, cond)
        states.append(_host(s[idx]))  # [K + 1, b, ...]
        if cond is not None:
            conds.append(_host(cond))
        if progress is not None:
            progress(int(x1.shape[0]))
    if not states:
        raise ValueError("no reference noises: batches is empty.")
    tau = np.asarray(times, np.float64)[idx]
    pairs = boss.straightening_pairs(np.concatenate(states, axis=1), tau, np.arange(len(idx)))
    pairs = {k: np.asarray(v) for k, v in pairs.items()}
    if conds:
        pairs["cond"] = np.tile(np.concatenate(conds), len(idx) - 1)
    return pairs


def _snapshot(model_dir):
    path = os.path.join(model_dir, _SNAPSHOT)
    if not os.path.exists(path):
        raise MissingInput(
            f"{model_dir!r} holds no snapshot ({_SNAPSHOT}): a BOSS grid is saved beside the "
            "model it was chosen for."
        )
    return path


def save_grid(model_dir, cost, times, num_steps=(2, 4, 6), *, info=None) -> str:
    """Writes ``model_dir/boss_grid.json`` for the snapshot ``model_dir/ema.npz``.

    Args:
      model_dir: a folder holding the model's ``ema.npz``.
      cost: ``[N + 1, N + 1]`` from :func:`simple_reflow.boss.euler_cost_matrix` of this model.
      times: the candidate times ``[N + 1]`` the cost was measured on.
      num_steps: the K whose optimal grids are stored (others are recomputed on loading).
      info: JSON-serialisable provenance (number of reference noises, substeps, seed, …).

    Returns:
      The file's path. Written by process 0 only, atomically.
    """
    snapshot = _snapshot(model_dir)
    tau = np.asarray(times, np.float64)
    c = np.asarray(cost, np.float64)
    if c.shape != (tau.shape[0],) * 2:
        raise ValueError(
            f"cost has shape {c.shape}, the {tau.shape[0]} candidate times need a "
            f"square matrix of that size."
        )
    steps = sorted({int(k) for k in np.atleast_1d(num_steps)})
    grids = {}
    for k in steps:
        indices, total = boss.optimal_path(jnp.asarray(c), k)
        idx = np.asarray(indices)
        grids[str(k)] = {"times": tau[idx].tolist(), "indices": idx.tolist(), "cost": float(total)}
    record = {
        "format": _FORMAT,
        "method": "BOSS (Nguyen et al., ICLR 2024): K Euler steps chosen by the Bellman "
        "programme on the Euler cost matrix",
        "solver": "euler",
        "snapshot": _SNAPSHOT,
        "snapshot_sha256": file_sha256(snapshot),
        "times": tau.tolist(),
        "cost": [[float(v) if np.isfinite(v) else None for v in row] for row in c],
        "grids": grids,
        "info": info or {},
    }
    path = os.path.join(model_dir, GRID_FILE)
    if jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)
    return path


def read_grid(model_dir) -> dict:
    """The checked record of ``model_dir/boss_grid.json``: the JSON with ``"times"`` and
    ``"cost"`` as float64 arrays (+∞ off the upper triangle) and ``"grids"`` ``{K: times}``.

    Raises:
      MissingInput: no grid file or no snapshot in ``model_dir``.
      DamagedInput: the file is unreadable, or was saved for another snapshot than
        ``model_dir/ema.npz`` (its SHA-256 differs).
    """
    path = os.path.join(model_dir, GRID_FILE)
    if not os.path.exists(path):
        raise MissingInput(
            f"{model_dir!r} has no BOSS grid ({GRID_FILE}): compute one for its snapshot with "
            "simple_reflow.boss.euler_cost_matrix and save it with "
            "simple_reflow.train.boss.save_grid."
        )
    snapshot = _snapshot(model_dir)
    redo = f"recompute it for {snapshot} with simple_reflow.train.boss.save_grid"
    try:
        with open(path) as f:
            rec = json.load(f)
        times = np.asarray(rec["times"], np.float64)
        cost = np.array(
            [[np.inf if v is None else v for v in row] for row in rec["cost"]], np.float64
        )
        grids = {int(k): np.asarray(g["times"], np.float64) for k, g in rec["grids"].items()}
        recorded = rec["snapshot_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedInput(path, reason(e), redo) from e
    current = file_sha256(snapshot)
    if current != recorded:
        raise DamagedInput(
            path,
            f"it was chosen for the snapshot with SHA-256 {recorded[:16]}…, but {snapshot} has "
            f"SHA-256 {current[:16]}…: another model",
            redo,
        )
    return {**rec, "times": times, "cost": cost, "grids": grids}


def _grid_of(rec, num_steps, path):
    if num_steps in rec["grids"]:
        return rec["grids"][num_steps]
    n = rec["times"].shape[0] - 1
    if not (isinstance(num_steps, (int, np.integer)) and 1 <= num_steps <= n):
        raise ValueError(
            f"num_steps={num_steps!r}: the BOSS grid in {path} has {n} candidate intervals, "
            f"so K must lie in [1, {n}]."
        )
    return boss.optimal_grid(rec["cost"], rec["times"], int(num_steps))


def load_grid(model_dir, num_steps: int) -> np.ndarray:
    """The K = ``num_steps`` BOSS grid of the snapshot in ``model_dir`` (checked,
    :func:`read_grid`): a NumPy grid ``[K + 1]`` for :func:`simple_reflow.sampler.sample` with
    ``solver="euler"``."""
    return _grid_of(read_grid(model_dir), num_steps, os.path.join(model_dir, GRID_FILE))


def grid_fn(model_dir):
    """``grid_fn(n) -> grid`` with n intervals from ``model_dir``'s BOSS grid, read and checked
    once: the ``grid_fn`` of :func:`simple_reflow.sampler.grid_for_budget`. The grids minimise
    Euler's cost; with another solver they are only a schedule."""
    rec = read_grid(model_dir)
    path = os.path.join(model_dir, GRID_FILE)
    return lambda n: _grid_of(rec, n, path)


def straightening_batch_fn(batch_size: int, key):
    """``batch_fn(step, pairs) -> batch``: ``batch_size`` rows of the straightening pairs drawn
    uniformly with replacement from ``fold_in(key, step)``."""

    from simple_reflow.train.refiner import refiner_batch_fn  # the same draw of rows

    return refiner_batch_fn(batch_size, key)


def straighten(
    model_def,
    params,
    pairs,
    *,
    optimizer,
    num_steps: int,
    batch_size: int,
    workdir: str,
    seed: int,
    ema_decay: float = 0.999,
    lora_rank: int = 0,
    lora_scale: float | None = None,
    distance_fn=losses.sq_l2,
    mesh=None,
    steps_per_call: int = 1,
    log_every: int = 100,
    ckpt_every: int = 1000,
    keep: int = 2,
    desc: str = "straighten",
):
    """Fine-tunes a model so that one Euler step along each chosen interval lands on the
    reference point (BOSS straightening, METHOD.md §9).

    Args:
      model_def, params: the model split by :func:`~simple_reflow.train.step.split_model`
        (``params`` are copied, not donated).
      pairs: :func:`simple_reflow.boss.straightening_pairs`' dict, on the device: the chosen
        grid's intervals on reference trajectories of this model (optional ``"cond"``).
      optimizer: an optax transformation (a small constant learning rate: a fine-tune).
      num_steps: the total step count; an existing run in ``workdir`` resumes.
      batch_size: rows per step (global).
      workdir: checkpoints, ``metrics.jsonl`` and ``ema.npz`` (the straightened model's EMA
        params; with LoRA the merged weights).
      seed: the train state's key is ``jax.random.key(seed)``; the batches draw from the second
        half of its split, the adapters' initialisation from a third key.
      ema_decay: EMA decay per step.
      lora_rank: 0 trains every parameter; r ≥ 1 trains rank-r adapters only
        (:mod:`simple_reflow.models.lora`).
      lora_scale: s in W + s·A·B (default 1/r, minlora's α/r with α = 1).
      distance_fn: ``distance_fn(Δ [B, ...]) -> [B]`` of the loss.
      mesh, steps_per_call, log_every, ckpt_every, keep, desc: as
        :func:`~simple_reflow.train.fit.fit`.

    Returns:
      ``(params, state)``: the straightened model's full EMA params and the fit's final
      train state (its ``ema`` the adapters with LoRA).
    """
    n = int(pairs["t_from"].shape[0])
    if n == 0:
        raise ValueError("the straightening set is empty (no chosen interval?).")
    if not (isinstance(lora_rank, int) and lora_rank >= 0):
        raise ValueError(f"lora_rank={lora_rank!r} must be an integer >= 0 (0: no adapters).")
    _, key_batches, key_lora = jax.random.split(jax.random.key(seed), 3)
    if lora_rank:
        scale = 1.0 / lora_rank if lora_scale is None else float(lora_scale)
        train_def = LoRADef(model_def, params, scale)
        train_params = init_adapters(params, lora_rank, key_lora)
    else:
        train_def, train_params = model_def, jax.tree.map(jnp.array, params)
    state = fit(
        train_def,
        train_params,
        loss_fn=functools.partial(boss.straightening_loss, distance_fn=distance_fn),
        optimizer=optimizer,
        batches=DeviceBatches(straightening_batch_fn(batch_size, key_batches), pairs),
        num_steps=num_steps,
        workdir=workdir,
        seed=seed,
        ema_decay=ema_decay,
        mesh=mesh,
        steps_per_call=steps_per_call,
        log_every=log_every,
        ckpt_every=ckpt_every,
        keep=keep,
        batch_size=batch_size,
        desc=desc,
    )
    if not lora_rank:
        return state.ema, state
    merged = jax.jit(train_def.merged_params)(state.ema)
    if jax.process_index() == 0:  # the snapshot a loader of the base model reads
        checkpoint.save_params(os.path.join(workdir, _SNAPSHOT), merged)
    return merged, state
