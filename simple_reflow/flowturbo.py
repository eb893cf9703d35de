"""FlowTurbo sampling plans (Zhao, Shi, Yu, Zhou, Lu, NeurIPS 2024; METHOD.md §9).

A plan is a string of blocks, a letter and a step count: ``H`` Heun steps (two network calls
each), ``P`` pseudo-corrector steps (Heun whose first velocity is the previous step's second:
one call each, :func:`simple_reflow.sampler.sample` with ``solver="pseudo_heun"``) and ``R``
velocity-refiner steps (no call of the network, two of the light refiner), e.g. ``"H1P5R3"``.
The authors' assembled sampler (``models_assemble.FlowTurboAssemble``, ``shiml20/FlowTurbo``)
runs the blocks in the order H, P, R and its refiner takes (x_i, t_i, v_prev), the input
concatenated with the previous velocity along the channels; their integrator
(``transport/integrators.py``) accepts any order of steps. Here any order parses, but a plan
may not start with ``R`` (a refiner step needs a previous velocity).

:func:`sample_plan` runs a plan on one decreasing grid, each step consuming one interval
t_i → t_{i+1} (h = t_{i+1} − t_i < 0, v = (x − D)/t), carrying a velocity v_c between steps:

- H: v₁ = v(x_i, t_i), x̃ = x_i + h·v₁, v₂ = v(x̃, t_{i+1}), x_{i+1} = x_i + h·(v₁ + v₂)/2;
  carries v₂ (as the authors' ``VelocityBlock``).
- P: the same with v₁ = v_c (one call to start when the plan opens with P); carries v₂.
- R: d₁ = v_c + r_φ(x_i, t_i, v_c), x̃ = x_i + h·d₁, d₂ = d₁ + r_φ(x̃, t_{i+1}, d₁),
  x_{i+1} = x_i + h·(d₁ + d₂)/2; carries d₁ — as the authors' ``one_step_refiner``
  (``transport/integrators.py``); their ``VelocityRefinerBlock`` feeds v_c, not d₁, to the
  second call while adding its output to d₁, which we do not follow: with d₁ an exact refiner
  (r_φ = v − v_prev) makes an R step exactly a Heun step of the teacher.
- A last step into t = 0, where v = (x − D)/t is singular, is first order, as the library's
  Heun and pseudo-corrector: H takes x' = D(x_i, t_i) (one call), P the Euler step on v_c (no
  call), R the Euler step on d₁ (one refiner call) [recon: the authors' time grid ends at the
  data, where their velocity network is defined].

A P step after an R step reuses R's carried d₁, a velocity from that step's start (so the P
step is first order); the authors' plans put R last.

The refiner is trained by regression on the teacher's trajectories along the plan's own grid
(:func:`refiner_pairs`, :func:`refiner_loss`): the plan is run with the teacher in the
refiner's place, and every refiner call's inputs (x, t, v_prev) are recorded with the teacher's
velocity there as the target, ‖v_prev + r_φ(x, t, v_prev) − v(x, t)‖². The authors' target and
loss are the same (``transport.training_losses``: the refined velocity against the teacher's,
squared error, mean over entries), on other inputs: x_t on the forward path of a data point,
one teacher Euler step of a random Δt ~ U(0, 0.12), v_prev the teacher's velocity before the
step [recon: the inputs, METHOD.md §9 says "the teacher's sampling trajectories"].
"""

from __future__ import annotations

import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import losses, sampler

__all__ = [
    "BLOCKS",
    "parse_plan",
    "plan_calls",
    "plan_grid",
    "sample_plan",
    "make_plan_sampler",
    "time_plan",
    "refiner_pairs",
    "refiner_loss",
]

BLOCKS = ("H", "P", "R")
"""Heun, pseudo-corrector, refiner."""

_TOKEN = re.compile(r"[A-Za-z]+\d*|\d+|[^A-Za-z\d]+")


def parse_plan(plan: str):
    """Parses a plan such as ``"H2P3R2"`` into ``(("H", 2), ("P", 3), ("R", 2))``.

    Letters are case-insensitive; each block is one of :data:`BLOCKS` followed by a positive
    step count. Raises ``ValueError`` naming the offending token.
    """
    if not isinstance(plan, str) or not plan:
        raise ValueError(f"a sampling plan must be a non-empty string like 'H2P3', got {plan!r}.")
    blocks = []
    for token in _TOKEN.findall(plan):
        m = re.fullmatch(r"([A-Za-z])(\d+)", token)
        if m is None or m.group(1).upper() not in BLOCKS or int(m.group(2)) < 1:
            raise ValueError(
                f"plan {plan!r}: bad block {token!r}; each block is one of {BLOCKS} followed by "
                "a step count ≥ 1, e.g. 'H2P3R2'."
            )
        blocks.append((m.group(1).upper(), int(m.group(2))))
    if blocks[0][0] == "R":
        raise ValueError(
            f"plan {plan!r}: the first block {blocks[0][0] + str(blocks[0][1])!r} is a refiner "
            "block, which needs the velocity of an earlier H or P step."
        )
    return tuple(blocks)


def _blocks(plan):
    """A plan string or a tuple of ``(letter, steps)`` blocks, validated as a string."""
    if isinstance(plan, str):
        return parse_plan(plan)
    try:
        text = "".join(f"{b}{int(n)}" for b, n in plan)
    except (TypeError, ValueError):
        raise ValueError(f"a sampling plan must be a string like 'H2P3', got {plan!r}.") from None
    return parse_plan(text)


def _steps(blocks):
    """The block letter of every step, in order."""
    return [b for b, n in blocks for _ in range(n)]


def plan_calls(plan, grid=None):
    """``(nfe, refiner_calls)`` of a plan: network calls and light-refiner calls.

    H: 2 calls per step; P: 1 per step, plus 1 to start when the plan opens with P (the
    pseudo-corrector then has no previous velocity); R: 2 refiner calls per step (the authors'
    refiner block evaluates the refiner at x_i and at the predictor point), no network call.
    With a ``grid`` ending at t = 0 the last step is first order (module docstring): one call
    fewer for H and P, one refiner call fewer for R. Without a grid: as on one not ending at 0.
    """
    blocks = _blocks(plan)
    steps = _steps(blocks)
    nfe = 1 if steps[0] == "P" else 0
    nfe += sum(2 if s == "H" else 1 for s in steps if s != "R")
    refiner = 2 * steps.count("R")
    if grid is not None and _grid(blocks, grid)[-1] == 0.0:
        nfe -= steps[-1] != "R"
        refiner -= steps[-1] == "R"
    return nfe, refiner


def _grid(blocks, grid):
    """The plan's grid as float64, checked: decreasing, in [0, 1], one interval per step."""
    n = len(_steps(blocks))
    g = grid(n) if callable(grid) else grid
    g = sampler.validate_grid(g, "heun")
    if g[1] > g[0]:
        raise ValueError("a plan runs on a decreasing grid (from noise to data).")
    if g.shape[0] != n + 1:
        plan = "".join(f"{b}{k}" for b, k in blocks)
        raise ValueError(
            f"plan {plan!r} takes {n} steps, one per grid interval, so its grid needs {n + 1} "
            f"times; got {g.shape[0]}."
        )
    return g


def plan_grid(plan, grid):
    """The checked grid of a plan: ``grid`` itself, or ``grid(n)`` for a grid function of the
    number of intervals (e.g. :func:`simple_reflow.grids.uniform_grid`), as float64."""
    return _grid(_blocks(plan), grid)


def _refined(refiner_fn, cond):
    """The refined velocity v_prev + r_φ(x, t, v_prev) at a scalar time t."""

    def velocity(x, t, v_prev):
        tb = jnp.full((x.shape[0],), t, x.dtype)
        return v_prev + refiner_fn(x, tb, v_prev, cond).astype(x.dtype)

    return velocity


def _run(denoise_fn, refine, x, blocks, g, cond, record):
    """Runs the blocks from ``x`` at ``g[0]``; ``refine(x, t, v_prev) -> velocity`` serves the
    R steps. With ``record``, also returns every refine call's ``(x, t, v_prev, velocity)``."""
    velocity = sampler._velocity

    def heun(carry, st):
        x, _ = carry
        s, t_next = st[0].astype(x.dtype), st[1].astype(x.dtype)
        v1 = velocity(denoise_fn, x, s, cond)
        v2 = velocity(denoise_fn, x + (t_next - s) * v1, t_next, cond)
        return (x + (t_next - s) * 0.5 * (v1 + v2), v2), None

    def pseudo(carry, st):
        x, v1 = carry
        s, t_next = st[0].astype(x.dtype), st[1].astype(x.dtype)
        v2 = velocity(denoise_fn, x + (t_next - s) * v1, t_next, cond)
        return (x + (t_next - s) * 0.5 * (v1 + v2), v2), None

    def refiner(carry, st):
        x, v = carry
        s, t_next = st[0].astype(x.dtype), st[1].astype(x.dtype)
        d1 = refine(x, s, v)
        x_pred = x + (t_next - s) * d1
        d2 = refine(x_pred, t_next, d1)
        rec = None
        if record:
            calls = ((x, s, v, d1), (x_pred, t_next, d1, d2))
            rec = tuple(jnp.stack(p) for p in zip(*calls, strict=True))
        return (x + (t_next - s) * 0.5 * (d1 + d2), d1), rec

    records, v, i, last = [], None, 0, len(g) - 1
    for kind, n in blocks:
        steps = [(g[j], g[j + 1]) for j in range(i, i + n)]
        tail = steps.pop() if i + n == last and g[-1] == 0.0 else None
        if kind == "P" and v is None:  # the plan opens with P: one call to start
            v = velocity(denoise_fn, x, float(g[0]), cond)
        if steps:
            body = {"H": heun, "P": pseudo, "R": refiner}[kind]
            carry = (x, jnp.zeros_like(x) if v is None else v)
            (x, v), rec = jax.lax.scan(body, carry, jnp.asarray(np.array(steps), jnp.float32))
            if record and kind == "R":  # [n, 2, ...] → [2n, ...]
                records.append(tuple(r.reshape((-1,) + r.shape[2:]) for r in rec))
        if tail is not None:
            s, h = float(tail[0]), float(tail[1] - tail[0])
            if kind == "H":
                x = sampler._first_order(denoise_fn, x, s, float(tail[1]), cond)
            elif kind == "P":
                x = x + h * v
            else:
                d1 = refine(x, s, v)
                if record:
                    t_arr = jnp.full((1,), s, x.dtype)
                    records.append((x[None], t_arr, v[None], d1[None]))
                x = x + h * d1
        i += n
    return x, records


def sample_plan(denoise_fn, refiner_fn, x1, plan, grid, *, cond=None):
    """Generates data from noise ``x1`` with a FlowTurbo plan (module docstring).

    Pure and traceable (the caller jits, or uses :func:`make_plan_sampler`): each block is one
    ``lax.scan`` over its intervals, and the counts are known before tracing.

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B], cond) -> D [B, ...]``, the network.
      refiner_fn: ``refiner_fn(x_t [B, ...], t [B], v_prev [B, ...], cond) -> offset``, the
        light refiner (e.g. a :class:`~simple_reflow.models.refiner.MLPRefiner`); may be None
        for a plan without R blocks.
      x1: noise ``[B, ...]``; the solve starts at ``grid[0]·x1`` (as :func:`sampler.sample`).
      plan: a plan string (``"H1P3R2"``) or its parsed blocks.
      grid: a decreasing grid of ``steps + 1`` times, or a function ``n -> grid`` of the
        number of intervals (e.g. ``grids.uniform_grid``).
      cond: optional conditioning passed to both networks.

    Returns:
      ``(x0, nfe, refiner_calls)``: samples and the exact network and refiner calls spent.
    """
    blocks = _blocks(plan)
    g = _grid(blocks, grid)
    if refiner_fn is None and "R" in _steps(blocks):
        raise ValueError(f"plan {plan!r} has refiner (R) steps: pass a refiner_fn.")
    refine = None if refiner_fn is None else _refined(refiner_fn, cond)
    x, _ = _run(denoise_fn, refine, x1 * float(g[0]), blocks, g, cond, record=False)
    return (x, *plan_calls(blocks, g))


def make_plan_sampler(denoise_fn, refiner_fn, plan, grid):
    """A jitted ``sample_fn(x1, cond=None) -> x0`` for one plan and grid, checked now.

    Returns:
      ``(sample_fn, nfe, refiner_calls)``.
    """
    blocks = _blocks(plan)
    g = _grid(blocks, grid)
    if refiner_fn is None and "R" in _steps(blocks):
        raise ValueError(f"plan {plan!r} has refiner (R) steps: pass a refiner_fn.")

    @jax.jit
    def sample_fn(x1, cond=None):
        return sample_plan(denoise_fn, refiner_fn, x1, blocks, g, cond=cond)[0]

    return (sample_fn, *plan_calls(blocks, g))


def time_plan(sample_fn, x1, cond=None, *, repeats=5, warmup=1):
    """Median wall-clock seconds of ``sample_fn(x1, cond)`` after ``warmup`` calls (the first
    compiles), each call waited for (``block_until_ready``)."""
    for _ in range(warmup):
        jax.block_until_ready(sample_fn(x1, cond))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(sample_fn(x1, cond))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def refiner_pairs(denoise_fn, x1, plan, grid, *, cond=None):
    """The refiner's training set: the plan run with the teacher in the refiner's place.

    Every R step then uses the teacher's velocity v(x, t) where the refiner would be called
    (so R steps are Heun steps of the teacher); each such call's inputs and the teacher's
    velocity are recorded. Pure and traceable.

    Args:
      denoise_fn: the teacher ``denoise_fn(x_t, t [B], cond) -> D``.
      x1: noise ``[B, ...]``.
      plan, grid: as :func:`sample_plan`; the plan needs at least one R step.
      cond: optional conditioning ``[B, ...]``; returned repeated per call as ``"cond"``.

    Returns:
      ``{"x": [M·B, ...], "t": [M·B], "v_prev": [M·B, ...], "target": [M·B, ...]}`` with M the
      plan's refiner calls, call major (rows m·B … (m + 1)·B − 1 hold call m).
    """
    blocks = _blocks(plan)
    g = _grid(blocks, grid)
    if "R" not in _steps(blocks):
        raise ValueError(f"plan {plan!r} has no refiner (R) step to train for.")

    def teacher(x, t, v_prev):
        del v_prev
        return sampler._velocity(denoise_fn, x, t, cond)

    _, records = _run(denoise_fn, teacher, x1 * float(g[0]), blocks, g, cond, record=True)
    x, t, v_prev, target = (jnp.concatenate(r) for r in zip(*records, strict=True))
    b = x1.shape[0]
    out = {
        "x": x.reshape((-1,) + x1.shape[1:]),
        "t": jnp.repeat(t, b),
        "v_prev": v_prev.reshape((-1,) + x1.shape[1:]),
        "target": target.reshape((-1,) + x1.shape[1:]),
    }
    if cond is not None:
        out["cond"] = jnp.tile(cond, (t.shape[0],) + (1,) * (cond.ndim - 1))
    return out


def refiner_loss(refiner, batch, key=None, *, distance_fn=losses.sq_l2):
    """‖v_prev + r_φ(x, t, v_prev) − v(x, t)‖² (METHOD.md §9; the authors' loss, module
    docstring): the refined velocity against the teacher's.

    Args:
      refiner: ``refiner(x_t, t, v_prev, cond) -> offset``.
      batch: :func:`refiner_pairs`' dict, with optional ``"cond"`` and ``"weight"`` ``[B]``.
      key: unused (the refiners have no dropout).
      distance_fn: ``distance_fn(Δ [B, ...]) -> [B]`` (default: the mean over entries, as the
        authors' ``mean_flat``).

    Returns:
      ``(loss, metrics)``; ``metrics["train/reuse_distance"]`` is the loss of the untrained
      refiner (v_prev alone), the baseline the refiner improves on.
    """
    del key
    x, t, v_prev, target = batch["x"], batch["t"], batch["v_prev"], batch["target"]
    offset = refiner(x, t, v_prev, batch.get("cond"))
    d = distance_fn(v_prev + offset - target)
    weight = batch.get("weight")
    loss = jnp.mean(d if weight is None else weight * d)
    return loss, {
        "train/raw_distance": jnp.mean(d),
        "train/reuse_distance": jnp.mean(distance_fn(v_prev - target)),
    }
