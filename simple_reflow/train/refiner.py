"""Training FlowTurbo's velocity refiner (METHOD.md §9) with the library's fit loop.

The training set is a dict of arrays from :func:`simple_reflow.flowturbo.refiner_pairs` (the
plan run with the teacher in the refiner's place, every refiner call recorded); each step draws
a batch of rows with replacement inside the compiled step (``fold_in(key, step)``, so a resumed
run draws what the uninterrupted one would have) and takes an optax step on
:func:`simple_reflow.flowturbo.refiner_loss` through :func:`simple_reflow.train.fit.fit`
(checkpoints, metrics and the EMA snapshot in ``workdir``).
"""

from __future__ import annotations

import jax

from simple_reflow import flowturbo
from simple_reflow.train.fit import DeviceBatches, fit

__all__ = ["refiner_batch_fn", "train_refiner", "refiner_fn"]


def refiner_batch_fn(batch_size: int, key):
    """``batch_fn(step, pairs) -> batch``: ``batch_size`` rows of ``pairs`` drawn uniformly with
    replacement from ``fold_in(key, step)``."""

    def draw(step, pairs):
        n = jax.tree.leaves(pairs)[0].shape[0]
        idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n)
        return jax.tree.map(lambda a: a[idx], pairs)

    return draw


def train_refiner(
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
    mesh=None,
    steps_per_call: int = 1,
    log_every: int = 100,
    ckpt_every: int = 1000,
    keep: int = 2,
    desc: str = "refiner",
):
    """Trains a refiner on ``pairs``; returns the final train state (``state.ema`` to sample).

    Args:
      model_def, params: the refiner split by :func:`~simple_reflow.train.step.split_model`
        (e.g. an :class:`~simple_reflow.models.refiner.MLPRefiner`; ``params`` are donated).
      pairs: :func:`~simple_reflow.flowturbo.refiner_pairs`' dict (on the device).
      optimizer: an optax transformation (the authors: AdamW, constant learning rate).
      num_steps: the total step count; an existing run in ``workdir`` resumes.
      batch_size: rows per step (global).
      workdir: checkpoints, ``metrics.jsonl`` and ``ema.npz``.
      seed: the train state's key is ``jax.random.key(seed)``; the batches draw from the second
        half of its split.
      ema_decay, mesh, steps_per_call, log_every, ckpt_every, keep, desc: as
        :func:`~simple_reflow.train.fit.fit`.
    """
    n = int(pairs["t"].shape[0])
    if n == 0:
        raise ValueError("the refiner's training set is empty (a plan with no R step?).")
    key = jax.random.split(jax.random.key(seed))[1]
    return fit(
        model_def,
        params,
        loss_fn=flowturbo.refiner_loss,
        optimizer=optimizer,
        batches=DeviceBatches(refiner_batch_fn(batch_size, key), pairs),
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


def refiner_fn(model_def, params):
    """``refiner_fn(x_t, t, v_prev, cond=None) -> offset``: the refiner with ``params``, for
    :func:`~simple_reflow.flowturbo.sample_plan`."""

    def fn(x_t, t, v_prev, cond=None):
        return model_def.merge(params)(x_t, t, v_prev, cond)

    return fn
