"""MeanFlow and SplitMeanFlow objectives for two-time networks (METHOD.md §9).

Both train a two-time denoiser D_θ(z_t, r, t) (:mod:`simple_reflow.models.two_time`) through
its average velocity u_θ(z_t, r, t) = (z_t − D_θ)/t [recon] on the straight path
z_t = (1 − t)·x0 + t·x1, the loss in u-space. The instantaneous velocity v is the conditional
x1 − x0 when training from scratch (any coupling's batch ``{"x0", "x1"[, "cond", "weight"]}``)
or, **distilling**, the teacher's v_T(z_t, t) = (z_t − D_T(z_t, t))/t (``teacher_fn``, any
library denoiser; stop-gradient).

- **MeanFlow** (Geng, Deng, Bai, Kolter, He 2025, arXiv 2505.13447, §4.1 Eq. 6–10, Alg. 1):
  (u, du/dt) = jvp(u_θ, (z_t, r, t), (v, 0, 1)) — du/dt = ∂_z u·v + ∂_t u with r fixed — and
  the target u_tgt = v − (t − r)·du/dt under a stop-gradient.
- **Improved MeanFlow's v-loss** (Geng, Lu, Wu, Shechtman, Kolter, He 2025, arXiv 2512.02012,
  ``tangent="model"``): the loss ‖V_θ − v‖² on the compound prediction
  V_θ = u_θ(z_t, r, t) + (t − r)·sg(du_θ/dt), the derivative taken along (v_θ, 0, 1) with the
  model's own instantaneous velocity v_θ(z_t, t) = u_θ(z_t, t, t) (the boundary condition)
  instead of the conditional x1 − x0, so that V_θ depends on z_t alone. Since
  V_θ − v = u_θ − (v − (t − r)·du_θ/dt), its value and gradient are MeanFlow's with that one
  change of tangent, which is how it is computed here (one more forward pass, stop-gradient).
  Read from the paper's abstract and from secondary write-ups of its equations (the search
  corpus held no full text): [recon] the adaptive weighting and the (r, t) sampler are kept
  from MeanFlow; the paper's other change, guidance as a conditioning input, is not built.
- **SplitMeanFlow** (Guo et al. 2025, arXiv 2507.16884, interval splitting consistency,
  Alg. 1): λ ~ U(0, 1), s = (1 − λ)t + λr, u₂ = u_θ(z_t, s, t), z_s = z_t − (t − s)·u₂,
  u₁ = u_θ(z_s, r, s); target sg((1 − λ)·u₁ + λ·u₂). No JVP: two extra forward passes.

Each batch has a boundary part r = t (plain flow matching, target v: u(z, t, t) = v(z, t)) and
an interval part r < t. As in the authors' JAX code (Gsunshine/meanflow ``sample_tr``) the
first round(fraction·B) rows are the boundary part — a batch's rows are exchangeable under
every coupling of the library — so the JVP (or the two extra passes) runs on the other rows
only, with static shapes.

Loss metric (MeanFlow §4.3 "adaptive loss weighting", both authors' codes): per sample
d = ‖Δ‖² (the sum over entries), Δ = u_θ − sg(u_tgt), weighted by w = sg(1/(d + c)^p); p = 0
is the plain squared error. With p = 1 this is Simple ReFlow's normalisation d/sg(d + δ)
(METHOD.md §3). The batch's ``"weight"`` multiplies per sample.

Defaults, checked against the authors' code (the search corpus held only the papers' abstracts,
so the section numbers above are our reading of the papers, not re-checked):
MeanFlow ImageNet (Gsunshine/meanflow ``configs/default.py``): logit-normal(−0.4, 1.0) for both
times, r = t for 75 % of the batch, p = 1; c = 1e-3 as Gsunshine/py-meanflow's default (the
JAX ImageNet config uses 0.01). The CIFAR10 U-Net run (py-meanflow ``cifar10_v0.sh``, the
paper's): logit-normal(−2, 2), r ≠ t for 75 % (``equal_fraction=0.25``), p = 0.75.
SplitMeanFlow [recon where stated]: λ ~ U(0, 1) (Alg. 1, and both public re-implementations,
lucidrains/rectified-flow-pytorch ``split_mean_flow.py``, primepake/splitmeanflow); the
boundary fraction 0.5 [recon: the two re-implementations' default; the paper's value could not
be read]; MeanFlow's (r, t) sampler and p = 0 (plain squared error, the re-implementations').

Guidance (class-conditional data): :class:`TrainingGuidance` folds classifier-free guidance
into the target as the MeanFlow authors' code does (the guided v replaces v in the tangent and
the targets; a random prefix of the batch gets the null label and keeps v).

Usage (keywords only, no config)::

    loss_fn = functools.partial(meanflow_loss, teacher_fn=teacher.denoise)
    loss, metrics = loss_fn(model, batch, key)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from simple_reflow import paths
from simple_reflow.average_velocity import average_velocity
from simple_reflow.models.layers import Conv2d, GroupNorm
from simple_reflow.time_dist import sample_time

__all__ = [
    "MEANFLOW_TIME_FN",
    "sample_two_times",
    "num_boundary",
    "adaptive_weight",
    "JVP_MODES",
    "MEAN_TANGENTS",
    "jvp",
    "resolve_jvp_mode",
    "meanflow_target",
    "split_target",
    "TrainingGuidance",
    "guided_velocity",
    "meanflow_objective",
    "splitmeanflow_objective",
    "meanflow_loss",
    "splitmeanflow_loss",
]

MEANFLOW_TIME_FN = functools.partial(sample_time, dist="logit_normal", mean=-0.4, std=1.0)
"""MeanFlow's time distribution on ImageNet: logit-normal, μ = −0.4, σ = 1.0."""


def num_boundary(batch: int, fraction: float) -> int:
    """The number of rows with r = t: round(fraction·batch), a static int."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the r = t fraction must lie in [0, 1], got {fraction!r}.")
    return int(round(fraction * batch))


def sample_two_times(
    key, batch: int, *, time_fn=MEANFLOW_TIME_FN, equal_fraction=0.75, t_max=1.0, dtype=None
):
    """MeanFlow's (r, t) sampler: two independent draws ordered so that r ≤ t, and r = t on
    the first :func:`num_boundary` rows (Gsunshine/meanflow ``sample_tr``).

    Args:
      key: PRNG key.
      batch: B.
      time_fn: ``time_fn(key, shape) -> times in [0, 1]``.
      equal_fraction: the fraction of rows with r = t (plain flow matching).
      t_max: the largest time, in (0, 1] (80/81 for EDM-wrapped models).
      dtype: of the times (``time_fn``'s by default).

    Returns:
      ``(r, t)``, each ``[B]``; t ∈ [T_EPS, t_max] and 0 ≤ r ≤ t.
    """
    if not 0 < t_max <= 1:
        raise ValueError(f"t_max={t_max!r} must lie in (0, 1].")
    k = num_boundary(batch, equal_fraction)
    key_a, key_b = jax.random.split(key)
    a, b = time_fn(key_a, (batch,)), time_fn(key_b, (batch,))
    if dtype is not None:
        a, b = a.astype(dtype), b.astype(dtype)
    t = jnp.clip(jnp.maximum(a, b), paths.T_EPS, t_max)
    r = jnp.clip(jnp.minimum(a, b), 0.0, t)
    r = jnp.where(jnp.arange(batch) < k, t, r)
    return r, t


def adaptive_weight(sq_norm, *, p=1.0, c=1e-3):
    """MeanFlow's adaptive loss weight w = sg(1/(‖Δ‖² + c)^p) (MeanFlow §4.3); 1 for p = 0."""
    if p == 0:
        return jnp.ones_like(sq_norm)
    return jax.lax.stop_gradient(1.0 / (sq_norm + c) ** p)


JVP_MODES = ("auto", "forward", "transpose")
MEAN_TANGENTS = ("target", "model")
"""The MeanFlow JVP's velocity along z: the target's v, or the model's own (improved MeanFlow)."""


def jvp(fn, primals, tangents, *, mode="forward"):
    """``(fn(*primals), J·tangents)``, by forward mode or by transposing the VJP.

    The U-Nets' group norm and chunked / Winograd convolutions define only reverse mode
    (``jax.custom_vjp``, :mod:`simple_reflow.models.layers`): ``jax.jvp`` through them fails
    (under ``jit``, only when the program is lowered). Their VJP is linear in the cotangent and
    transposes to the JVP (``jax.linear_transpose``), at about the cost of one more backward
    pass: ``mode="transpose"``.
    """
    if mode == "forward":
        return jax.jvp(fn, primals, tangents)
    if mode != "transpose":
        raise ValueError(f"jvp mode={mode!r} is not one of ('forward', 'transpose').")
    out, vjp_fn = jax.vjp(fn, *primals)
    (tangent_out,) = jax.linear_transpose(vjp_fn, out)(tuple(tangents))
    return out, tangent_out


def resolve_jvp_mode(model, mode="auto"):
    """``"auto"``: ``"transpose"`` for a module holding the library's reverse-only layers
    (:class:`~simple_reflow.models.layers.GroupNorm`, :class:`~simple_reflow.models.layers.
    Conv2d`: every U-Net), else ``"forward"`` (the MLP, plain functions)."""
    if mode not in JVP_MODES:
        raise ValueError(f"jvp_mode={mode!r} is not one of {JVP_MODES}.")
    if mode != "auto":
        return mode
    if isinstance(model, nnx.Module) and any(
        isinstance(node, (GroupNorm, Conv2d)) for _, node in nnx.iter_graph(model)
    ):
        return "transpose"
    return "forward"


def meanflow_target(u_fn, z_t, r, t, v, *, tangent=None, jvp_mode="forward"):
    """MeanFlow's target by one JVP (MeanFlow Eq. 8–10).

    Args:
      u_fn: ``u_fn(z, r, t) -> u`` the average velocity (``[B, ...], [B], [B]``).
      z_t: ``[B, ...]``; r, t: ``[B]``.
      v: ``[B, ...]`` the instantaneous velocity at (z_t, t) of the target.
      tangent: ``[B, ...]`` the velocity along z of the derivative, or ``None``: v (MeanFlow).
        Improved MeanFlow passes the model's own v_θ(z_t, t) = u_θ(z_t, t, t) here.
      jvp_mode: :func:`jvp`'s mode, ``"forward"`` or ``"transpose"``.

    Returns:
      ``(u, u_tgt)``: u_θ(z_t, r, t) and v − (t − r)·du/dt, du/dt the derivative along
      (tangent, 0, 1) (r held fixed). No stop-gradient here; the objective applies it.
    """
    tangents = (v if tangent is None else tangent, jnp.zeros_like(r), jnp.ones_like(t))
    u, dudt = jvp(u_fn, (z_t, r, t), tangents, mode=jvp_mode)
    return u, v - paths.expand_t(t - r, dudt) * dudt


def split_target(u_fn, z_t, r, t, lam):
    """SplitMeanFlow's interval-splitting target (1 − λ)·u(z_s, r, s) + λ·u(z_t, s, t).

    With s = (1 − λ)t + λr and z_s = z_t − (t − s)·u(z_t, s, t): (t − r)·u(z_t, r, t) =
    (s − r)·u(z_s, r, s) + (t − s)·u(z_t, s, t), divided by t − r (SplitMeanFlow Alg. 1).

    Args:
      u_fn: ``u_fn(z, r, t) -> u``.
      z_t: ``[B, ...]``; r, t, lam: ``[B]``, λ ∈ [0, 1].

    Returns:
      ``[B, ...]`` the target (no stop-gradient here; the objective applies it).
    """
    s = (1.0 - lam) * t + lam * r
    u2 = u_fn(z_t, s, t)
    z_s = z_t - paths.expand_t(t - s, z_t) * u2
    u1 = u_fn(z_s, r, s)
    lam_b = paths.expand_t(lam, z_t)
    return (1.0 - lam_b) * u1 + lam_b * u2


@dataclasses.dataclass(frozen=True)
class TrainingGuidance:
    """Classifier-free guidance folded into the training target (MeanFlow §4.2 / App.; the
    authors' JAX code, Gsunshine/meanflow ``guidance_fn`` and ``cond_drop``).

    The instantaneous velocity v of the objective is replaced by

        v_g = ω·v + (1 − ω − κ)·v_uncond + κ·v_cond,

    v_uncond = sg(u_θ(z_t, t, t | ∅)) and v_cond = sg(u_θ(z_t, t, t | c)) the network's own
    boundary velocities (no dropout; v_cond is only evaluated when κ ≠ 0). With κ = 0 this is
    v_uncond + ω·(v − v_uncond), CFG of scale ω with the data velocity as the conditional
    one; ω = 1, κ = 0 is unguided. Then a Bernoulli(``class_dropout``) count of rows, taken
    from the front of the batch as the authors do, gets the null label and keeps the unguided
    v (so the model also learns the unconditional field guidance needs).

    Attributes:
      null_class: the null label (the library's: ``num_classes``).
      omega: ω (authors' default 1.0).
      kappa: κ (authors' default 0.5: with ω = 1 the target is v + κ·(v_cond − v_uncond)).
      class_dropout: probability of dropping a label (authors' 0.1).
    """

    null_class: int
    omega: float = 1.0
    kappa: float = 0.5
    class_dropout: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout={self.class_dropout!r} must lie in [0, 1).")
        if self.null_class < 1:
            raise ValueError(
                f"null_class={self.null_class!r} must be the class count (>= 1): guidance "
                "needs class-conditional data."
            )


def guided_velocity(model, z_t, t, v, cond, key, *, guidance: TrainingGuidance):
    """``(v_in, cond_in)``: the guided velocity of :class:`TrainingGuidance` and the labels
    with the dropped ones set to the null class.

    Args:
      model: the two-time denoiser being trained (evaluated at r = t, frozen, no dropout).
      z_t: ``[B, ...]``; t: ``[B]``; v: ``[B, ...]`` the unguided velocity (data or teacher).
      cond: ``[B]`` int labels.
      key: PRNG key for the label dropout.
      guidance: the guidance's ω, κ, dropout and null class.
    """
    g = guidance
    frozen = _frozen(model)
    null = jnp.full_like(cond, g.null_class)

    def v_of(c):
        return jax.lax.stop_gradient(average_velocity(frozen, z_t, t, t, c).astype(v.dtype))

    v_g = v
    if g.omega != 1.0 or g.kappa != 0.0:
        v_g = g.omega * v + (1.0 - g.omega - g.kappa) * v_of(null)
        if g.kappa != 0.0:
            v_g = v_g + g.kappa * v_of(cond)
    batch = z_t.shape[0]
    num_drop = jnp.sum(jax.random.uniform(key, (batch,)) < g.class_dropout)
    drop = jnp.arange(batch) < num_drop
    return jnp.where(paths.expand_t(drop, v), v, v_g), jnp.where(drop, null, cond)


def _frozen(model):
    """The model with its parameters under a stop-gradient (an NNX module), else itself."""
    if not isinstance(model, nnx.Module):
        return model
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def _meanflow_terms(model, z, r, t, v, cond, key, jvp_mode, tangent):
    """(u, u_tgt) for MeanFlow. Forward mode gives u and du/dt in one pass; the transpose path
    (reverse-only layers) takes du/dt from the model with frozen parameters — an outer
    ``jax.grad`` cannot differentiate a transposed VJP, and the target is stop-gradient anyway —
    and u from a separate forward pass. ``tangent="model"``: the JVP runs along the model's own
    boundary velocity u_θ(z, t, t) (one more forward pass, stop-gradient; improved MeanFlow)."""

    def u_of(m):
        return lambda z_, r_, t_: average_velocity(m, z_, r_, t_, cond, key=key)

    # the same dropout key as u's [recon: the papers do not say]
    w = jax.lax.stop_gradient(u_of(_frozen(model))(z, t, t)) if tangent == "model" else None
    if resolve_jvp_mode(model, jvp_mode) == "forward":
        return meanflow_target(u_of(model), z, r, t, v, tangent=w, jvp_mode="forward")
    frozen = u_of(_frozen(model))
    _, target = meanflow_target(frozen, z, r, t, v, tangent=w, jvp_mode="transpose")
    return u_of(model)(z, r, t), target


def _rows(x, lo, hi):
    return None if x is None else x[lo:hi]


def _velocity(x0, x1, z_t, t, cond, teacher_fn):
    """v: x1 − x0 from scratch, the teacher's (z_t − D_T)/t when distilling (stop-gradient)."""
    if teacher_fn is None:
        return x1 - x0
    v = paths.velocity_from_denoised(z_t, t, teacher_fn(z_t, t, cond))
    return jax.lax.stop_gradient(v.astype(z_t.dtype))


def _objective(
    interval_fn,
    model,
    x0,
    x1,
    r,
    t,
    k,
    *,
    cond,
    key,
    teacher_fn,
    norm_p,
    norm_eps,
    weight,
    guidance=None,
):
    """The shared skeleton: rows [0, k) boundary (target v), rows [k, B) ``interval_fn``;
    with ``guidance`` v (the tangent and the boundary target) is the guided velocity."""
    batch = x0.shape[0]
    key_b, key_i, key_x = jax.random.split(key, 3) if key is not None else (None,) * 3
    z_t = paths.interpolate(x0, x1, t)
    v = _velocity(x0, x1, z_t, t, cond, teacher_fn)
    if guidance is not None:
        if cond is None:
            raise ValueError("guidance needs class labels: the batch has no 'cond'.")
        if key is None:
            raise ValueError("guidance drops labels at random: pass a key.")
        v, cond = guided_velocity(
            model, z_t, t, v, cond, jax.random.fold_in(key, 3), guidance=guidance
        )
    deltas = []
    if k > 0:  # boundary: u(z_t, t, t) = v(z_t, t)
        cb = _rows(cond, 0, k)
        u = average_velocity(model, z_t[:k], t[:k], t[:k], cb, key=key_b)
        deltas.append(u - jax.lax.stop_gradient(v[:k]))
    if k < batch:
        ci = _rows(cond, k, batch)
        u, target = interval_fn(model, z_t[k:], r[k:], t[k:], v[k:], ci, key_i, key_x)
        deltas.append(u - jax.lax.stop_gradient(target))
    delta = jnp.concatenate(deltas, axis=0) if len(deltas) > 1 else deltas[0]
    flat = delta.reshape(batch, -1)
    sq = jnp.sum(jnp.square(flat), axis=1)
    per = adaptive_weight(sq, p=norm_p, c=norm_eps) * sq
    loss = jnp.mean(per if weight is None else weight * per)
    # unweighted: with the adaptive weight (p = 1) the loss is ≈ 1 whatever the progress
    return loss, {"train/raw_distance": jnp.mean(jnp.square(flat))}


def meanflow_objective(
    model,
    x0,
    x1,
    r,
    t,
    *,
    num_equal=0,
    cond=None,
    key=None,
    teacher_fn=None,
    norm_p=1.0,
    norm_eps=1e-3,
    weight=None,
    jvp_mode="auto",
    tangent="target",
    guidance: TrainingGuidance | None = None,
):
    """The MeanFlow loss at given times (the part of :func:`meanflow_loss` after sampling).

    Args:
      model: a two-time denoiser ``model(x_t, t, cond, *, r, key)``.
      x0, x1: ``[B, ...]`` the pair; z_t = (1 − t)·x0 + t·x1.
      r, t: ``[B]`` times, r ≤ t; rows ``[0, num_equal)`` must have r = t.
      num_equal: the static number of leading r = t rows (plain flow matching, no JVP).
      cond: ``[B]`` labels or ``None``; key: dropout key or ``None``.
      teacher_fn: a one-time denoiser ``teacher_fn(x_t, t, cond)`` whose velocity replaces
        x1 − x0 (distillation), or ``None`` (from scratch).
      norm_p, norm_eps: the adaptive weight's p and c.
      weight: ``[B]`` per-sample weights or ``None``.
      jvp_mode: ``"auto"`` (:func:`resolve_jvp_mode`), ``"forward"`` or ``"transpose"``.
      tangent: the JVP's velocity along z: ``"target"`` the target's v (MeanFlow), ``"model"``
        the model's own v_θ = u_θ(z_t, t, t) (improved MeanFlow's v-loss, module docstring).
      guidance: CFG folded into the target (:class:`TrainingGuidance`; needs ``cond`` and
        ``key``), or ``None``.

    Returns:
      ``(loss, metrics)``.
    """
    if tangent not in MEAN_TANGENTS:
        raise ValueError(f"tangent={tangent!r} is not one of {MEAN_TANGENTS}.")

    def interval(model, z, r, t, v, c, key_u, key_x):
        del key_x
        return _meanflow_terms(model, z, r, t, v, c, key_u, jvp_mode, tangent)

    return _objective(
        interval,
        model,
        x0,
        x1,
        r,
        t,
        num_equal,
        cond=cond,
        key=key,
        teacher_fn=teacher_fn,
        norm_p=norm_p,
        norm_eps=norm_eps,
        weight=weight,
        guidance=guidance,
    )


def splitmeanflow_objective(
    model,
    x0,
    x1,
    r,
    t,
    lam,
    *,
    num_equal=0,
    cond=None,
    key=None,
    teacher_fn=None,
    norm_p=0.0,
    norm_eps=1e-3,
    weight=None,
    guidance: TrainingGuidance | None = None,
):
    """The SplitMeanFlow loss at given times and split ratios λ ``[B]`` (rows ``[0, num_equal)``
    are the boundary r = t; their λ is unused). Arguments as :func:`meanflow_objective`; the
    guided velocity enters through the boundary target [recon: SplitMeanFlow's target has no
    other v, so MeanFlow's folding applies there]."""

    def interval(model, z, r, t, v, c, key_u, key_x):
        del v
        u = average_velocity(model, z, r, t, c, key=key_u)
        # The two extra passes share one dropout key (their inputs differ) [recon].
        u_fn = lambda z_, r_, t_: average_velocity(model, z_, r_, t_, c, key=key_x)  # noqa: E731
        return u, split_target(u_fn, z, r, t, lam[num_equal:])

    return _objective(
        interval,
        model,
        x0,
        x1,
        r,
        t,
        num_equal,
        cond=cond,
        key=key,
        teacher_fn=teacher_fn,
        norm_p=norm_p,
        norm_eps=norm_eps,
        weight=weight,
        guidance=guidance,
    )


def meanflow_loss(
    model,
    batch,
    key,
    *,
    time_fn=MEANFLOW_TIME_FN,
    equal_fraction=0.75,
    teacher_fn=None,
    norm_p=1.0,
    norm_eps=1e-3,
    t_max=1.0,
    jvp_mode="auto",
    tangent="target",
    guidance: TrainingGuidance | None = None,
):
    """The MeanFlow loss on a batch of pairs (MeanFlow §4, Alg. 1), beside
    :func:`~simple_reflow.losses.flow_loss`.

    Args:
      model: a two-time denoiser ``model(x_t, t, cond=None, *, r=None, key=None)``.
      batch: ``{"x0": [B, ...], "x1": [B, ...]}`` with optional ``"cond"`` and ``"weight"``.
      key: PRNG key for (r, t) and dropout.
      time_fn: ``time_fn(key, shape) -> t`` for both draws (MeanFlow: logit-normal(−0.4, 1)).
      equal_fraction: the fraction of rows with r = t (MeanFlow ImageNet: 0.75).
      teacher_fn: a one-time denoiser to distil from (its velocity replaces x1 − x0), or None.
      norm_p, norm_eps: the adaptive weight w = sg(1/(‖Δ‖² + c)^p).
      t_max: the largest time, in (0, 1].
      jvp_mode: ``"auto"`` (:func:`resolve_jvp_mode`), ``"forward"`` or ``"transpose"``.
      tangent: ``"target"`` (MeanFlow) or ``"model"`` (improved MeanFlow's v-loss: the JVP
        along the model's own u_θ(z_t, t, t); :func:`meanflow_objective`).
      guidance: CFG folded into the training target (:class:`TrainingGuidance`), for a
        class-conditional batch; ``None``: unguided.

    Returns:
      ``(loss, metrics)``.
    """
    x0 = batch["x0"]
    key_t, key_m = jax.random.split(key)
    r, t = sample_two_times(
        key_t,
        x0.shape[0],
        time_fn=time_fn,
        equal_fraction=equal_fraction,
        t_max=t_max,
        dtype=x0.dtype,
    )
    return meanflow_objective(
        model,
        x0,
        batch["x1"],
        r,
        t,
        num_equal=num_boundary(x0.shape[0], equal_fraction),
        cond=batch.get("cond"),
        key=key_m,
        teacher_fn=teacher_fn,
        norm_p=norm_p,
        norm_eps=norm_eps,
        weight=batch.get("weight"),
        jvp_mode=jvp_mode,
        tangent=tangent,
        guidance=guidance,
    )


def splitmeanflow_loss(
    model,
    batch,
    key,
    *,
    time_fn=MEANFLOW_TIME_FN,
    boundary_fraction=0.5,
    teacher_fn=None,
    norm_p=0.0,
    norm_eps=1e-3,
    t_max=1.0,
    guidance: TrainingGuidance | None = None,
):
    """The SplitMeanFlow loss on a batch of pairs (SplitMeanFlow Alg. 1), beside
    :func:`~simple_reflow.losses.flow_loss`.

    Args:
      model, batch, key, time_fn, teacher_fn, norm_p, norm_eps, t_max, guidance: as
        :func:`meanflow_loss` (p = 0 by default: the plain squared error).
      boundary_fraction: the fraction of rows trained on the boundary u(z_t, t, t) = v
        [recon: 0.5].

    Returns:
      ``(loss, metrics)``.
    """
    x0 = batch["x0"]
    key_t, key_l, key_m = jax.random.split(key, 3)
    r, t = sample_two_times(
        key_t,
        x0.shape[0],
        time_fn=time_fn,
        equal_fraction=boundary_fraction,
        t_max=t_max,
        dtype=x0.dtype,
    )
    lam = jax.random.uniform(key_l, (x0.shape[0],), x0.dtype)
    return splitmeanflow_objective(
        model,
        x0,
        batch["x1"],
        r,
        t,
        lam,
        num_equal=num_boundary(x0.shape[0], boundary_fraction),
        cond=batch.get("cond"),
        key=key_m,
        teacher_fn=teacher_fn,
        norm_p=norm_p,
        norm_eps=norm_eps,
        weight=batch.get("weight"),
        guidance=guidance,
    )
