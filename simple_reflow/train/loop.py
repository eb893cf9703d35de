"""The training loop: resume, step, log, checkpoint.

The loop is orchestration only. It resumes from the newest checkpoint in ``workdir``, calls a
compiled step function, pulls metrics to the host only every ``log_every`` steps (JSON lines in
``workdir/metrics.jsonl`` and a tqdm bar), checkpoints every ``ckpt_every`` steps, at the end,
and on an interrupt, and writes the EMA snapshot ``workdir/ema.npz``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from simple_reflow.train import checkpoint

__all__ = ["train_loop"]


def _log(workdir, step, metrics):
    row = {"step": step, **{k: float(np.asarray(v)) for k, v in metrics.items()}}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def train_loop(state, step_fn, *, num_steps, workdir, batch_at=None, steps_per_call=1,
               log_every=100, ckpt_every=1000, keep=2, batch_size=None, desc="train"):
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

    Returns:
      The final state.
    """
    os.makedirs(workdir, exist_ok=True)
    manager = checkpoint.make_manager(workdir, keep)
    state = checkpoint.restore_latest(manager, state)
    start = int(state.step)
    bar = tqdm(total=num_steps, initial=start, desc=desc, disable=jax.process_index() != 0,
               mininterval=2.0, dynamic_ncols=True)
    t_last, step_last = time.perf_counter(), start
    try:
        while int(state.step) < num_steps:
            step = int(state.step)
            if batch_at is None:
                state, metrics = step_fn(state)
            else:
                state, metrics = step_fn(state, batch_at(step))
            step += steps_per_call
            bar.update(steps_per_call)
            if step % log_every < steps_per_call or step >= num_steps:
                jax.block_until_ready(metrics)
                now = time.perf_counter()
                if batch_size:
                    metrics = {**metrics, "train/examples_per_sec":
                               batch_size * (step - step_last) / max(now - t_last, 1e-9)}
                row = _log(workdir, step, metrics)
                bar.set_postfix(loss=f"{row['train/loss']:.4g}")
                t_last, step_last = now, step
            if step % ckpt_every < steps_per_call and step < num_steps:
                checkpoint.save_state(manager, state)
    except KeyboardInterrupt:
        checkpoint.save_state(manager, state)
        manager.wait_until_finished()
        raise
    finally:
        bar.close()
    if manager.latest_step() != int(state.step):
        checkpoint.save_state(manager, state)
    manager.wait_until_finished()
    if jax.process_index() == 0:
        checkpoint.save_params(os.path.join(workdir, "ema.npz"), state.ema)
    return state
