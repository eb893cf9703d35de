"""The functional train state and the jitted train step (STYLE.md principle 5).

The model is built once with Flax NNX and split; the train state is a plain pytree
``TrainState(step, params, opt_state, ema, key, coupling)`` with ``params`` and ``ema`` as pure
nested dicts, so Orbax saves it as it is. The step merges the module inside, so one compiled
function serves every step. Randomness is ``fold_in(key, step)``: a resumed run draws exactly
what the uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from simple_reflow.couplings.noise import pair_cost

__all__ = [
    "TrainState",
    "ModelDef",
    "split_model",
    "init_state",
    "make_train_step",
    "make_multi_step",
    "make_scan_step",
    "make_optimizer",
]


class ModelDef(NamedTuple):
    """What is needed to rebuild a module from pure params: graph and non-param state."""

    graphdef: Any
    state_treedef: Any  # pytree structure of the nnx.State of the params
    rest: Any  # non-parameter state (usually empty)

    def merge(self, params):
        """Returns the module with ``params`` (a pure dict) in place."""
        state = jax.tree.unflatten(self.state_treedef, jax.tree.leaves(params))
        return nnx.merge(self.graphdef, state, self.rest)

    def denoiser(self, params):
        """A denoise_fn(x_t, t, cond) closure over ``params`` (eval mode: no dropout); a
        two-time model also takes ``r=`` (the average-velocity denoiser, METHOD.md §9)."""

        def denoise_fn(x_t, t, cond=None, *, r=None):
            model = self.merge(params)
            return model(x_t, t, cond) if r is None else model(x_t, t, cond, r=r)

        return denoise_fn


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar
    params: Any  # pure dict
    opt_state: Any
    ema: Any  # pure dict
    key: jax.Array  # raw uint32 key data
    coupling: Any  # coupling state (LOOM-CFM), or an empty dict


def split_model(model):
    """Splits an NNX module into a :class:`ModelDef` and its params as a pure dict."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pure = nnx.to_pure_dict(params)
    a, b = jax.tree.leaves(params), jax.tree.leaves(pure)
    if len(a) != len(b) or any(x is not y for x, y in zip(a, b, strict=True)):
        raise RuntimeError("nnx.State and its pure dict flatten in different orders.")
    return ModelDef(graphdef, jax.tree.structure(params), rest), pure


def make_optimizer(cfg):
    """Adam with optional linear warm-up and global-norm clipping, from the ``optim`` section."""
    if not cfg.lr > 0:
        raise ValueError(f"optim.lr={cfg.lr!r} must be > 0.")
    lr = cfg.lr if not cfg.warmup_steps else optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    adam = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adam) if cfg.grad_clip else adam


def init_state(params, optimizer, seed, coupling_state=None):
    """A fresh train state; the EMA starts at the initial params."""
    key = jax.random.key_data(jax.random.key(seed))
    copy = jax.tree.map(jnp.array, params)
    return TrainState(
        jnp.zeros((), jnp.int32),
        params,
        optimizer.init(params),
        copy,
        key,
        {} if coupling_state is None else coupling_state,
    )


def ema_decay_at(step, ema_decay, ema_rampup=0.0):
    """The EMA decay of the update that ends step ``step + 1`` (``step``: the state's count).

    ``ema_decay`` at every step when ``ema_rampup`` is 0; else EDM's ramp-up (training_loop's
    ``ema_rampup_ratio``, counted in steps instead of images): the EMA's half-life is at most
    ``ema_rampup`` times the steps taken, ``min(ema_decay, 0.5 ** (1 / (ema_rampup · (step +
    1))))``, so a short run's EMA forgets its (random) initial weights: after n steps their
    weight is about 2^(−1/ema_rampup) instead of ema_decay^n (at 0.05 ≈ 1e-6 at every step,
    where 0.999 keeps 37 % of them after 1,000 steps). A function of the step alone: a resumed
    run continues exactly.
    """
    if not ema_rampup:
        return ema_decay
    steps = jnp.asarray(step, jnp.float32) + 1.0
    return jnp.minimum(ema_decay, 0.5 ** (1.0 / (ema_rampup * steps)))


def _global_norm(tree):
    """‖tree‖₂ over every leaf: ``optax.global_norm``'s definition, written out because optax
    0.2.8 deprecates it in favour of ``optax.tree.norm``, not checked against optax 0.2.4 (the
    oldest this package declares)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def make_train_step(model_def, loss_fn, optimizer, *, ema_decay, ema_rampup=0.0, coupling=None):
    """Builds the pure ``train_step(state, batch) -> (state, metrics)`` (the caller jits it).

    Args:
      model_def: from :func:`split_model`.
      loss_fn: ``loss_fn(model, batch, key) -> (loss, metrics)``.
      optimizer: an optax transformation.
      ema_decay: EMA decay per step.
      ema_rampup: > 0: EDM's EMA ramp-up ratio (:func:`ema_decay_at`); 0: none.
      coupling: optional coupling with ``apply(key, batch, state) -> (batch, state, metrics)``;
        one with a ``host`` solver has paired the batch in the input pipeline already.
    """

    def train_step(state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        key_couple, key_loss = jax.random.split(key)
        coupling_state, metrics = state.coupling, {}
        if coupling is not None and coupling.host is None:
            batch, coupling_state, metrics = coupling.apply(key_couple, batch, coupling_state)
        elif coupling is not None:  # paired in the input pipeline (couplings.host)
            batch = dict(batch)
            if "x1" not in batch:
                raise ValueError(
                    f"the {coupling.name!r} coupling solves on the host (coupling.host): its "
                    "batches must be paired in the input pipeline (train.fit.fit does); "
                    "for batches drawn inside the step build it with solver='device'."
                )
            if coupling.host.absorb is not None:  # the batch's update of the coupling state
                coupling_state = coupling.host.absorb(batch, coupling_state)
            rows = {k: batch.pop(k) for k in list(batch) if k.startswith("coupling/")}
            metrics = {
                "coupling/cost_after": jnp.mean(pair_cost(batch["x0"], batch["x1"])),
                **{k: (jnp.sum if k == "coupling/swaps" else jnp.mean)(v) for k, v in rows.items()},
            }

        def loss_of(params):
            return loss_fn(model_def.merge(params), batch, key_loss)

        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        # optax 0.2 promotes implicitly (Adam's bias correction: float ** int32 step count),
        # which the tests' strict dtype promotion (tests/conftest.py) rejects: the optimizer
        # alone is traced with JAX's standard promotion; the loss and the EMA stay strict.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, ema_decay, ema_rampup)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
        metrics = {
            **metrics,
            **aux,
            "train/loss": loss,
            "train/grad_norm": _global_norm(grads),
        }
        new = TrainState(state.step + 1, params, opt_state, ema, state.key, coupling_state)
        return new, metrics

    return train_step


def make_multi_step(train_step, batch_fn, num_steps):
    """Fuses ``num_steps`` steps with device-side batches into one ``lax.scan``.

    Args:
      train_step: from :func:`make_train_step`.
      batch_fn: ``batch_fn(step) -> batch``, a pure function of the global step.
      num_steps: steps per call.

    Returns:
      ``multi_step(state) -> (state, metrics of the last step)``.
    """

    def multi_step(state):
        def body(s, _):
            return train_step(s, batch_fn(s.step))

        state, metrics = jax.lax.scan(body, state, None, length=num_steps)
        return state, jax.tree.map(lambda m: m[-1], metrics)

    return multi_step


def make_scan_step(train_step):
    """``scan_step(state, batches) -> (state, metrics of the last step)``: one ``lax.scan`` over
    host batches stacked on a leading axis (one per step)."""

    def scan_step(state, batches):
        state, metrics = jax.lax.scan(train_step, state, batches)
        return state, jax.tree.map(lambda m: m[-1], metrics)

    return scan_step
