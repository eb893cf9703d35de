"""One fit loop for every training run: the toy pipeline, every image stage, the benchmarks.

:func:`fit` takes a split model, a loss, an optimiser and a batch source, and trains on a mesh
(one device is a mesh too) through :func:`~simple_reflow.train.loop.train_loop` (resume,
logging, checkpoints, failures). Two batch protocols:

- :class:`DeviceBatches` — ``fn(step, data) -> batch`` drawn inside the compiled step (toy
  data, in-memory pairs): no host work per step; ``steps_per_call`` steps fuse into one
  ``lax.scan``;
- :class:`HostBatches` — ``fn(step) -> this process's slice`` of the global batch, NumPy
  (images, pair stores): read in a background thread ahead of the step
  (:class:`~simple_reflow.data.Prefetcher`) and placed on the mesh; ``steps_per_call > 1``
  stacks that many batches and scans over them.

Couplings are always available: ``coupling.apply`` runs inside the step, except for a coupling
solved on the host (``coupling.host``, :mod:`simple_reflow.couplings.host`): its batches are
paired in the loader thread, device batches then being drawn on the CPU device (the same
values) so that the pairing can run ahead. Randomness: the train state's key is
``jax.random.key(seed)``, the coupling's state starts from the ``"coupling"`` stream
(:mod:`~simple_reflow.train.streams`); every batch is a function of the step, so a resumed run
continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from simple_reflow import compile_options
from simple_reflow.data.pipeline import Prefetcher
from simple_reflow.train import sharding
from simple_reflow.train.loop import train_loop
from simple_reflow.train.step import init_state, make_multi_step, make_scan_step, make_train_step
from simple_reflow.train.streams import stream_key

__all__ = ["DeviceBatches", "HostBatches", "fit"]


class DeviceBatches(NamedTuple):
    """``fn(step, data) -> batch``, pure, evaluated inside the compiled step; ``data`` is a
    pytree of arrays it reads (passed as an argument, not baked into the program)."""

    fn: Callable[[Any, Any], dict]
    data: Any = None


class HostBatches(NamedTuple):
    """``fn(step) -> batch``: this process's slice of global batch ``step`` as NumPy arrays."""

    fn: Callable[[int], dict]


def _check_periods(num_steps, k, log_every, ckpt_every):
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"training.steps_per_call={k!r} must be an integer ≥ 1.")
    if num_steps % k or log_every % k or ckpt_every % k:
        raise ValueError(
            f"training.steps_per_call={k} must divide the step count {num_steps}, "
            f"training.log_every={log_every} and training.ckpt_every={ckpt_every}."
        )


def _host_batch_fn(batches, coupling, seed):
    """``one(step) -> batch`` on the host (NumPy), paired by a host coupling if there is one."""
    if isinstance(batches, DeviceBatches):  # drawn on the CPU device: the same values
        cpu = jax.devices("cpu")[0]
        data = jax.device_put(batches.data, cpu)
        draw = jax.jit(batches.fn)

        def read(s):
            with jax.default_device(cpu):
                return jax.tree.map(np.asarray, draw(jax.device_put(np.int32(s), cpu), data))
    else:
        read = batches.fn
    if coupling is None or coupling.host is None:
        return read
    key = jax.random.key(seed)  # the train state's key (init_state): the step's pairing noise
    return lambda s: coupling.host.pair(key, s, read(s))


def fit(
    model_def,
    params,
    *,
    loss_fn,
    optimizer,
    batches: DeviceBatches | HostBatches,
    num_steps: int,
    workdir: str,
    seed: int,
    ema_decay: float,
    ema_rampup: float = 0.0,
    coupling=None,
    mesh=None,
    steps_per_call: int = 1,
    log_every: int = 100,
    ckpt_every: int = 1000,
    keep: int = 2,
    batch_size: int | None = None,
    desc: str = "train",
):
    """Trains ``params`` until step ``num_steps`` (resuming from ``workdir``); returns the state.

    Args:
      model_def, params: from :func:`~simple_reflow.train.step.split_model` (``params`` are
        donated: pass a copy to keep them).
      loss_fn: ``loss_fn(model, batch, key) -> (loss, metrics)``.
      optimizer: an optax transformation.
      batches: :class:`DeviceBatches` or :class:`HostBatches`.
      num_steps: the total step count of the run.
      workdir: checkpoints, ``metrics.jsonl``, TensorBoard events and ``ema.npz``.
      seed: the run's key is ``jax.random.key(seed)``.
      ema_decay: EMA decay per step.
      ema_rampup: > 0: EDM's EMA ramp-up ratio (:func:`~simple_reflow.train.step.ema_decay_at`:
        the EMA's half-life at most ``ema_rampup`` times the steps taken); 0: none.
      coupling: optional :class:`~simple_reflow.couplings.Coupling` (module docstring).
      mesh: a 1-D ``data`` mesh (default: all devices); batches are split over it, the state
        replicated.
      steps_per_call: steps per compiled call (fusion); divides ``num_steps``, ``log_every``
        and ``ckpt_every``.
      log_every, ckpt_every, keep, desc: see :func:`~simple_reflow.train.loop.train_loop`.
      batch_size: the global batch, for ``train/examples_per_sec``.
    """
    k = steps_per_call
    _check_periods(num_steps, k, log_every, ckpt_every)
    mesh = sharding.make_mesh() if mesh is None else mesh
    coupling_state = None if coupling is None else coupling.init(stream_key(seed, "coupling"))
    repl = sharding.replicated(mesh)
    state = jax.device_put(init_state(params, optimizer, seed, coupling_state), repl)
    step = make_train_step(
        model_def,
        loss_fn,
        optimizer,
        ema_decay=ema_decay,
        ema_rampup=ema_rampup,
        coupling=coupling,
    )
    loop = dict(
        num_steps=num_steps,
        workdir=workdir,
        steps_per_call=k,
        log_every=log_every,
        ckpt_every=ckpt_every,
        keep=keep,
        batch_size=batch_size,
        desc=desc,
    )
    on_host = isinstance(batches, HostBatches) or (coupling is not None and coupling.host)
    if not on_host:
        split = sharding.batch_sharding(mesh)

        def draw(s, data):  # each device draws its part of the batch (partitionable Threefry)
            return jax.lax.with_sharding_constraint(batches.fn(s, data), split)

        def multi_step(state, data):
            if k == 1:  # no loop: a scan kept XLA:CPU from fusing across UNet steps (~10×)
                return step(state, draw(state.step, data))
            return make_multi_step(step, lambda s: draw(s, data), k)(state)

        compiled = compile_options.jit(multi_step, out_shardings=(repl, repl), donate_argnums=(0,))
        data = jax.device_put(batches.data, repl)
        return train_loop(state, lambda s: compiled(s, data), **loop)

    one = _host_batch_fn(batches, coupling, seed)
    if k == 1:
        fn, run, spec = one, step, PartitionSpec("data")
    else:  # k batches stacked on a leading axis, scanned in one call

        def fn(call):
            got = [one(s) for s in range(call * k, (call + 1) * k)]
            return jax.tree.map(lambda *a: np.stack(a), *got)

        run, spec = make_scan_step(step), PartitionSpec(None, "data")
    split = NamedSharding(mesh, spec)
    compiled = compile_options.jit(
        run, in_shardings=(repl, split), out_shardings=(repl, repl), donate_argnums=(0,)
    )

    def place(batch):  # this process's slice → global arrays split over the mesh
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(split, x), batch)

    sync = None if coupling is None or coupling.host is None else coupling.host.sync
    if sync is not None:  # the loader's copy of the coupling state: the (restored) state's
        loop["on_start"] = lambda state: sync(jax.device_get(state.coupling))
    # the next batches are read (and paired) and sent to the devices while the step runs
    with Prefetcher(lambda call: place(fn(call))) as prefetched:
        return train_loop(state, compiled, batch_at=lambda s: prefetched(s // k), **loop)
