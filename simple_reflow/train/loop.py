"""The training loop: resume, step, log, checkpoint, stop safely.

The loop is orchestration only. It resumes from the newest checkpoint in ``workdir``, calls a
compiled step function, keeps the step count on the host (no device sync per step), pulls
metrics to the host only every ``log_every`` steps (JSON lines in ``workdir/metrics.jsonl``,
the same scalars as TensorBoard events in ``workdir/tensorboard``, and a tqdm bar),
checkpoints every ``ckpt_every`` steps and at the end, and writes the EMA snapshot
``workdir/ema.npz``.

Failures:

- a non-finite loss, seen when metrics reach the host (every log and checkpoint), stops the run
  with :class:`NonFiniteLoss` naming the step; no checkpoint of a non-finite state is written, so
  the newest checkpoint is the last good one;
- SIGTERM (how clusters and preemptible VMs stop a job) and Ctrl-C save a checkpoint at the
  current step and raise :class:`TrainingInterrupted`; the same command resumes exactly. With
  several processes the signal is agreed on at log and checkpoint steps, so every process
  saves the same step.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from simple_reflow.train import checkpoint

__all__ = ["train_loop", "NonFiniteLoss", "TrainingInterrupted"]


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the newest checkpoint predates it."""


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped the run after a checkpoint at ``step`` was saved."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(
            f"{signal_name} at step {step}: checkpoint saved; run the same command again to resume"
        )
        self.step = step


class _StopSignals:
    """Records SIGTERM / SIGINT while installed (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

    def agreed(self, boundary: bool) -> bool:
        """Whether to stop now: at once with one process, at a boundary step with several."""
        if jax.process_count() == 1:
            return self.received is not None
        if not boundary:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.received is not None))
        if np.any(flags) and self.received is None:
            self.received = "SIGTERM"  # another process was signalled
        return bool(np.any(flags))


def _check_finite(metrics, step, manager):
    loss = float(np.asarray(metrics["train/loss"]))
    if not np.isfinite(loss):
        manager.wait_until_finished()  # the pending (good) checkpoint lands before we stop
        last = manager.latest_step()
        raise NonFiniteLoss(
            f"train/loss is {loss} at step {step}; the newest checkpoint (step {last}) is the "
            "last good one — lower optim.lr or set optim.grad_clip, then rerun to resume from it"
        )


def _postfix(row):
    """The progress bar's figures: the loss (the objective, ≈ 1 under Simple ReFlow's
    normalisation) and, when the loss reports it, the raw mean per-sample distance."""
    out = {"loss": f"{row['train/loss']:.4g}"}
    if "train/raw_distance" in row:
        out["raw_distance"] = f"{row['train/raw_distance']:.4g}"
    return out


def _log(workdir, step, metrics, writer):
    """Appends a row to ``metrics.jsonl`` and the same scalars to TensorBoard (process 0)."""
    row = {"step": step, **{k: float(np.asarray(v)) for k, v in metrics.items()}}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step":
                writer.add_scalar(k, v, step)
        writer.flush()
    return row


def train_loop(
    state,
    step_fn,
    *,
    num_steps,
    workdir,
    batch_at=None,
    steps_per_call=1,
    log_every=100,
    ckpt_every=1000,
    keep=2,
    batch_size=None,
    desc="train",
    on_start=None,
):
    """Runs ``step_fn`` until ``state.step == num_steps``, resuming from ``workdir``.

    Args:
      state: the initial :class:`TrainState` (replaced by a checkpoint if one exists).
      step_fn: compiled; ``step_fn(state) -> (state, metrics)`` advancing ``steps_per_call``
        steps with device-side batches, or ``step_fn(state, batch)`` when ``batch_at`` is given.
      num_steps: the total number of steps of the run.
      batch_at: optional ``batch_at(step) -> batch`` (deterministic in the step, so a resumed run
        sees the same batches).
      steps_per_call: steps advanced per call (must divide the logging/ckpt periods to hit them).
      batch_size: global batch, for ``train/examples_per_sec``.
      on_start: optional ``on_start(state)``, called with the (restored) state before the
        first step (e.g. a loader's copy of a coupling's state).

    Returns:
      The final state.

    Raises:
      ValueError: ``workdir`` holds a checkpoint past ``num_steps`` (a longer run's folder:
        returning its state as the ``num_steps`` model would mislabel it).
    """
    os.makedirs(workdir, exist_ok=True)
    manager = checkpoint.make_manager(workdir, keep)
    state = checkpoint.restore_latest(manager, state)
    step = start = int(state.step)  # the step count lives on the host from here on
    if start > num_steps:
        raise ValueError(
            f"{workdir} holds a checkpoint at step {start}, past the run's {num_steps} steps: "
            f"ask for at least {start} steps, or use another workdir"
        )
    if on_start is not None:
        on_start(state)
    bar = tqdm(
        total=num_steps,
        initial=start,
        desc=desc,
        disable=jax.process_index() != 0,
        mininterval=2.0,
        dynamic_ncols=True,
    )
    t_last, step_last = time.perf_counter(), start
    metrics = None
    writer = None
    if jax.process_index() == 0:  # one event file per run segment (names carry 1-s timestamps)
        writer = SummaryWriter(
            os.path.join(workdir, "tensorboard"),
            filename_suffix=f".from_step_{start}.{os.getpid()}",
        )
    try:
        with _StopSignals() as stop:
            while step < num_steps:
                if batch_at is None:
                    state, metrics = step_fn(state)
                else:
                    state, metrics = step_fn(state, batch_at(step))
                step += steps_per_call
                bar.update(steps_per_call)
                log = step % log_every < steps_per_call or step >= num_steps
                ckpt = step % ckpt_every < steps_per_call and step < num_steps
                if log:
                    jax.block_until_ready(metrics)
                    now = time.perf_counter()
                    if batch_size:
                        metrics = {
                            **metrics,
                            "train/examples_per_sec": batch_size
                            * (step - step_last)
                            / max(now - t_last, 1e-9),
                        }
                    row = _log(workdir, step, metrics, writer)
                    bar.set_postfix(_postfix(row))
                    t_last, step_last = now, step
                if log or ckpt:
                    _check_finite(metrics, step, manager)
                if ckpt:
                    checkpoint.save_state(manager, state)
                if stop.agreed(boundary=log or ckpt) and step < num_steps:
                    _check_finite(metrics, step, manager)
                    if manager.latest_step() != step:
                        checkpoint.save_state(manager, state)
                    manager.wait_until_finished()
                    raise TrainingInterrupted(step, stop.received)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if metrics is not None:
        _check_finite(metrics, step, manager)
    if manager.latest_step() != step:
        checkpoint.save_state(manager, state)
    manager.wait_until_finished()
    if jax.process_index() == 0:
        checkpoint.save_params(os.path.join(workdir, "ema.npz"), state.ema)
    return state
