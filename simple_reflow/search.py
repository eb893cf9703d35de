"""Inference-time search under an NFE budget (Kim et al., NeurIPS 2025; METHOD.md §9).

A reward is a callable ``reward_fn(x0 [B, ...], cond) -> [B]`` (higher is better); its calls are
not network evaluations and are not counted. The NFE returned is per batch element: the
denoiser rows evaluated divided by B.

- :func:`best_of_n`: N independent samples of a ``sample_fn(key) -> (x0, nfe)``, keep the best.
  :func:`sde_sample_fn` builds such a sampler from a denoiser (the ODE is ``diffusion=0``).
- :func:`particle_search`: K SDE particles per element; at every step each particle's lookahead
  x̂0 = D(x_s, s) (the call the next SDE step needs anyway, so the lookahead is free) is scored
  and the particles are resampled ∝ exp(λ·(r_now − r_before)) — sequential Monte Carlo with
  the potential exp(λ·r(x̂0)), as the paper's code does for its SMC baseline; λ = ∞ keeps the
  best (greedy). At the end one particle is kept: the highest reward (``select="max"``) or one
  drawn ∝ exp(λ·(r(x0) − r_last)) (``select="sample"``, an estimate of the tilted law
  p(x)·exp(λ·r(x))/Z that becomes exact as K grows, up to the sampler's own error).
  K·N NFE for an N-step grid.
- :func:`rollover_budget_forcing`: the paper's RBF, read from its authors' code
  (KAIST-Visual-AI-Group/Flow-Inference-Time-Scaling, ``rbf/rbf.py``): an initial best-of-M on
  the lookahead at grid[0] (M NFE), then one particle moves through the steps; at each step it
  makes stochastic proposals one at a time (one NFE each: an SDE step and the lookahead at the
  next time) against a quota of (budget − M)//(N − 1); the first proposal whose reward beats the
  best reward accepted so far is taken at once and the unused quota rolls over to the next
  step; when the quota runs out without one, the step's best proposal is taken and the next
  step gets the plain quota. The last searched step takes all the budget left. The final step
  into grid[-1] is the plain SDE step (no NFE: its lookahead is the sample itself).

Keys. Candidate (or particle) i uses :func:`candidate_key` ``(key, i)``, split into its
starting noise and its SDE noise (:func:`split_sample_key`), so best-of-1, particle search with
one particle and RBF with M = 1 and budget = N all reproduce ``sde_sample_fn(...)(key)``.

Jit. Each search is one ``lax.scan`` (best-of-N one ``lax.map``) with no host round trip.
RBF's data-dependent control (each element at its own step with its own quota) is carried as
per-element arrays: every scan iteration makes exactly one proposal for every element (each
element spends exactly the budget, so nothing is wasted and no element waits), its time is
gathered from the grid by its own step index, and acceptance is a ``jnp.where``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import sampler, sde

__all__ = [
    "candidate_key",
    "split_sample_key",
    "best_of_n",
    "sde_sample_fn",
    "particle_search",
    "rollover_budget_forcing",
]

RESAMPLE_STREAM = 2**32 - 1
"""``fold_in`` index of the resampling stream (no candidate index reaches it)."""


def candidate_key(key, index):
    """The key of candidate ``index``: ``key`` itself for candidate 0, ``fold_in(key, index)``
    otherwise, so that best-of-1 is plain sampling with ``key``."""
    return jnp.where(
        index == 0, jax.random.key_data(key), jax.random.key_data(jax.random.fold_in(key, index))
    )


def _candidate_keys(key, n):
    """Typed keys ``[n]`` of candidates 0..n − 1."""
    impl = jax.random.key_impl(key)
    data = jax.vmap(lambda i: candidate_key(key, i))(jnp.arange(n))
    return jax.random.wrap_key_data(data, impl=impl)


def split_sample_key(key):
    """``(noise_key, sde_key)``: the starting noise x1 and the SDE's injected noise of one
    sample (:func:`sde_sample_fn`)."""
    noise_key, sde_key = jax.random.split(key)
    return noise_key, sde_key


def best_of_n(sample_fn, reward_fn, key, *, n, cond=None):
    """Best-of-N: the highest-reward of ``n`` independent samples, per batch element.

    Args:
      sample_fn: ``sample_fn(key) -> (x0 [B, ...], nfe)``.
      reward_fn: ``reward_fn(x0, cond) -> [B]``.
      key: a typed PRNG key (``jax.random.key``); candidate i samples with
        :func:`candidate_key` ``(key, i)``.
      n: the number of candidates (static).
      cond: passed to ``reward_fn``.

    Returns:
      ``(x0 [B, ...], reward [B], nfe)``: the chosen samples, their rewards and the NFE spent
      by all candidates, n times one sample's.
    """
    if n < 1:
        raise ValueError(f"best_of_n needs n >= 1 candidates, got n={n!r}.")
    impl = jax.random.key_impl(key)

    def one(i):
        x0, nfe = sample_fn(jax.random.wrap_key_data(candidate_key(key, i), impl=impl))
        return x0, reward_fn(x0, cond), jnp.asarray(nfe)

    xs, rewards, nfes = jax.lax.map(one, jnp.arange(n))  # [n, B, ...], [n, B], [n]
    best = jnp.argmax(rewards, axis=0)  # [B]
    x0 = jnp.take_along_axis(xs, best.reshape((1, -1) + (1,) * (xs.ndim - 2)), axis=0)[0]
    reward = jnp.take_along_axis(rewards, best[None], axis=0)[0]
    return x0, reward, jnp.sum(nfes)


def _check_grid(grid, min_steps=1):
    g = sampler.validate_grid(grid, "euler")
    if g[1] > g[0]:
        raise ValueError("the search needs a decreasing grid (from noise to data).")
    if len(g) - 1 < min_steps:
        raise ValueError(
            f"the search needs a grid of at least {min_steps} steps, got {len(g) - 1}."
        )
    return g


def _start(shape, key, s0, path, dtype=jnp.float32):
    """x at s0 for one candidate key: σ(s0)·x1, x1 ~ N(0, I) from the key's noise stream."""
    x1 = jax.random.normal(split_sample_key(key)[0], shape, dtype)
    return x1 * sde.path_coefficients(path, jnp.asarray(s0, dtype))[1]


def sde_sample_fn(denoise_fn, shape, grid, *, diffusion=1.0, path="linear", cond=None):
    """``sample_fn(key) -> (x0 [B, ...], nfe)``: :func:`simple_reflow.sde.sample_sde` on noise
    ``x1 ~ N(0, I)`` of ``shape`` ``[B, ...]``, with x1 and the SDE noise from
    :func:`split_sample_key` ``(key)``. ``diffusion=0`` is the Euler ODE sampler."""
    g = _check_grid(grid)

    def sample_fn(key):
        noise_key, sde_key = split_sample_key(key)
        x1 = jax.random.normal(noise_key, shape, jnp.float32)
        return sde.sample_sde(denoise_fn, x1, g, sde_key, diffusion=diffusion, path=path, cond=cond)

    return sample_fn


def _unstack(keys, n):
    return [keys[i] for i in range(n)]


def _repeat(cond, k):
    """Repeats every leaf of ``cond`` k times along the batch axis (element-major)."""
    return jax.tree.map(lambda c: jnp.repeat(c, k, axis=0), cond)


def _flat(x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _unflat(x, k):
    return x.reshape((x.shape[0] // k, k) + x.shape[1:])


def _resample_indices(key, logw, method):
    """Ancestor indices ``[B, K]`` drawn ∝ exp(logw) per row (``logw`` ``[B, K]``)."""
    b, k = logw.shape
    w = jax.nn.softmax(logw, axis=1)
    if method == "multinomial":
        return jax.random.categorical(key, jnp.log(w)[:, None, :], axis=-1, shape=(b, k))
    # systematic: one uniform per row, K evenly spaced points; uniform weights keep every slot
    u = (jax.random.uniform(key, (b, 1), w.dtype) + jnp.arange(k, dtype=w.dtype)[None, :]) / k
    idx = jax.vmap(lambda c, uu: jnp.searchsorted(c, uu, side="right"))(jnp.cumsum(w, 1), u)
    return jnp.minimum(idx, k - 1)


def _take(x, idx):
    """``x[b, idx[b, j]]`` for x ``[B, K, ...]`` and idx ``[B, J]``."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def particle_search(
    denoise_fn,
    reward_fn,
    key,
    *,
    shape,
    grid,
    particles,
    diffusion=1.0,
    path="linear",
    lam=1.0,
    resampling="systematic",
    select="max",
    cond=None,
):
    """Particle search: SMC over the SDE's steps with the lookahead reward (module docstring).

    Args:
      denoise_fn: ``denoise_fn(x_t, t [rows], cond) -> D`` on the straight path.
      reward_fn: ``reward_fn(x0 [rows, ...], cond) -> [rows]``.
      key: a typed PRNG key; particle k starts from :func:`candidate_key` ``(key, k)``.
      shape: ``(B, ...)``, the batch of samples.
      grid: concrete decreasing times ``[N + 1]`` of ``path``.
      particles: K ≥ 1 (static).
      diffusion, path: as :func:`simple_reflow.sde.sample_sde` (``diffusion=0``: the ODE, whose
        particles only duplicate when resampled).
      lam: λ > 0 of the potential exp(λ·r); ``math.inf`` keeps the best particle at each step.
      resampling: ``"systematic"`` (default; equal weights keep every particle in place) or
        ``"multinomial"``.
      select: ``"max"`` (highest final reward) or ``"sample"`` (one draw ∝ the final weight).
      cond: per-element conditioning ``[B, ...]`` (repeated over the particles).

    Returns:
      ``(x0 [B, ...], reward [B], nfe)`` with nfe = K·N.
    """
    g = _check_grid(grid)
    if particles < 1:
        raise ValueError(f"particle_search needs particles >= 1, got {particles!r}.")
    if not lam > 0:
        raise ValueError(f"lam={lam!r} must be > 0 (math.inf: keep the best).")
    if resampling not in ("systematic", "multinomial"):
        raise ValueError(f"resampling={resampling!r} is not 'systematic' or 'multinomial'.")
    if select not in ("max", "sample"):
        raise ValueError(f"select={select!r} is not 'max' or 'sample'.")
    k, b = particles, shape[0]
    keys = _candidate_keys(key, k)
    sde_keys = jax.vmap(lambda kk: split_sample_key(kk)[1])(keys)
    resample_key = jax.random.fold_in(key, RESAMPLE_STREAM)
    cond_k = _repeat(cond, k)
    greedy = math.isinf(lam)

    def lookahead(x, s):  # x [B, K, ...] -> (D [B, K, ...], r [B, K])
        den = sde.denoise_on_path(denoise_fn, _flat(x), s, path=path, cond=cond_k)
        return _unflat(den, k), reward_fn(den, cond_k).reshape(b, k)

    def resample(i, logw, *arrays):
        if greedy:
            idx = jnp.broadcast_to(jnp.argmax(logw, axis=1)[:, None], (b, k))
        else:
            idx = _resample_indices(jax.random.fold_in(resample_key, i), logw, resampling)
        return tuple(_take(a, idx) for a in arrays)

    def noise(i, like):  # [B, K, ...]: particle slot k's stream, step i
        xi = jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, i), shape, like.dtype))
        return jnp.moveaxis(xi(sde_keys), 0, 1)

    def move(x, den, s, s_next, xi):
        out = sde.sde_update(
            _flat(x), _flat(den), s, s_next, _flat(xi), diffusion=diffusion, path=path
        )
        return _unflat(out, k)

    x = jnp.stack([_start(shape, kk, g[0], path) for kk in _unstack(keys, k)], axis=1)
    den, r = lookahead(x, jnp.float32(g[0]))
    x, den, r = resample(0, lam * r if not greedy else r, x, den, r)
    steps = jnp.asarray(np.stack([g[:-2], g[1:-1]], axis=1), jnp.float32)  # [N − 1, 2]

    def step(carry, inp):
        x, den, r = carry
        i, st = inp
        x_new = move(x, den, st[0], st[1], noise(i, x))
        den_new, r_new = lookahead(x_new, st[1])
        logw = r_new if greedy else lam * (r_new - r)
        return resample(i + 1, logw, x_new, den_new, r_new), None

    (x, den, r), _ = jax.lax.scan(step, (x, den, r), (jnp.arange(len(g) - 2), steps))
    n = len(g) - 1
    x0 = move(x, den, jnp.float32(g[-2]), jnp.float32(g[-1]), noise(n - 1, x))
    r0 = reward_fn(_flat(x0), cond_k).reshape(b, k)
    if select == "max" or greedy:
        pick = jnp.argmax(r0, axis=1)[:, None]
    else:
        pick = jax.random.categorical(jax.random.fold_in(resample_key, n), lam * (r0 - r), axis=1)
        pick = pick[:, None]
    return _take(x0, pick)[:, 0], _take(r0, pick)[:, 0], k * n


def rollover_budget_forcing(
    denoise_fn,
    reward_fn,
    key,
    *,
    shape,
    grid,
    budget,
    initial=1,
    diffusion=1.0,
    path="linear",
    cond=None,
):
    """Rollover Budget Forcing (module docstring): a search of ``budget`` NFE per element.

    Args:
      denoise_fn, reward_fn, shape, grid, diffusion, path, cond: as :func:`particle_search`.
      key: a typed PRNG key; initial candidate j starts from :func:`candidate_key` ``(key, j)``;
        the proposals use candidate 0's SDE stream (one ``fold_in`` per proposal).
      budget: NFE per element (static), at least ``initial + N − 1`` for an N-step grid.
      initial: M, the initial best-of-M at grid[0] (the paper's code: 25 of a 500 budget).

    Returns:
      ``(x0 [B, ...], reward [B], nfe)``: the sample, its reward, and the NFE spent, M plus one
      per proposal (= ``budget``).
    """
    g = _check_grid(grid, min_steps=2)
    n = len(g) - 1
    ticks = budget - initial
    if initial < 1 or ticks < n - 1:
        raise ValueError(
            f"rollover_budget_forcing needs initial >= 1 and budget >= initial + N - 1 = "
            f"{initial + n - 1} for this {n}-step grid, got initial={initial}, budget={budget}."
        )
    quota = ticks // (n - 1)
    last = n - 2  # index of the last searched step (s_{N-2} -> s_{N-1})
    b = shape[0]
    keys = _candidate_keys(key, initial)
    sde_key = split_sample_key(key)[1]
    times = jnp.asarray(g, jnp.float32)

    # initial best-of-M on the lookahead at grid[0]
    x = jnp.stack([_start(shape, kk, g[0], path) for kk in _unstack(keys, initial)], axis=1)
    cond_m = _repeat(cond, initial)
    den = sde.denoise_on_path(denoise_fn, _flat(x), jnp.float32(g[0]), path=path, cond=cond_m)
    r = reward_fn(den, cond_m).reshape(b, initial)
    pick = jnp.argmax(r, axis=1)[:, None]
    x, den = _take(x, pick)[:, 0], _take(_unflat(den, initial), pick)[:, 0]
    best = _take(r, pick)[:, 0]

    def expand(mask, a):
        return mask.reshape(mask.shape + (1,) * (a.ndim - 1))

    def tick(carry, tau):
        x, den, best, i, used, limit, cx, cden, cr = carry
        xi = jax.random.normal(jax.random.fold_in(sde_key, tau), shape, x.dtype)
        x_new = sde.sde_update(x, den, times[i], times[i + 1], xi, diffusion=diffusion, path=path)
        den_new = sde.denoise_on_path(denoise_fn, x_new, times[i + 1], path=path, cond=cond)
        r_new = reward_fn(den_new, cond)
        used = used + 1
        better = r_new > cr  # the step's best proposal so far
        cx = jnp.where(expand(better, x), x_new, cx)
        cden = jnp.where(expand(better, den), den_new, cden)
        cr = jnp.where(better, r_new, cr)
        searching = i < last
        roll = (r_new > best) & searching
        full = (used >= limit) & ~roll & searching
        advance = roll | full
        x = jnp.where(expand(roll, x), x_new, jnp.where(expand(full, x), cx, x))
        den = jnp.where(expand(roll, den), den_new, jnp.where(expand(full, den), cden, den))
        best = jnp.where(roll, r_new, best)
        limit = jnp.where(roll, quota + limit - used, jnp.where(full, quota, limit))
        used = jnp.where(advance, 0, used)
        i = i + advance.astype(i.dtype)
        cr = jnp.where(advance, -jnp.inf, cr)
        return (x, den, best, i, used, limit, cx, cden, cr), None

    zeros = jnp.zeros((b,), jnp.int32)
    carry = (x, den, best, zeros, zeros, zeros + quota, x, den, jnp.full_like(best, -jnp.inf))
    carry, _ = jax.lax.scan(tick, carry, jnp.arange(ticks))
    cx, cden = carry[6], carry[7]
    # every element ends on the last searched step (it gets at least a quota there): its best
    # proposal there, at grid[-2], takes the plain SDE step into grid[-1]
    xi = jax.random.normal(jax.random.fold_in(sde_key, ticks), shape, x.dtype)
    x0 = sde.sde_update(cx, cden, g[-2], g[-1], xi, diffusion=diffusion, path=path)
    return x0, reward_fn(x0, cond), initial + ticks
