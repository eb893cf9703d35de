"""Teacher pairs for ReFlow (METHOD.md §2) and the pair source that mixes them (§3).

- Backward pairs: x1 ~ N(0, I) drawn from the pair's own global index, integrated by the
  teacher from t_max (starting at x = t_max·x1 [recon]) to 0; the pair is (x̂0, x1).
- Forward pairs: a real x0, integrated from t_min (starting at x = (1 − t_min)·x0, the mean of
  x_{t_min} [recon]) up to t_max; the noise end is x1 = ε̂(x_{t_max}, t_max) [recon].
- :func:`write_pair_shards` runs a generator chunk by chunk into ``.npz`` shards named by their
  first index; a restarted run skips the finished shards, each shard is written atomically, and
  chunk c belongs to process c mod process_count, so generation resumes without losing or
  duplicating pairs and splits across hosts with no coordination.
- A batch mixes backward, forward and projected pairs by configured fractions
  (:func:`pair_fractions`, :func:`mix_pairs` on the device, :func:`mix_indices` +
  :func:`gather_pairs` for pairs held on the host); projected pairs come from
  :func:`projected_pairs` (OTT-JAX, ``couplings/projection.py``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from simple_reflow import paths, sampler

__all__ = [
    "noise_for_indices",
    "backward_pairs",
    "forward_pairs",
    "write_pair_shards",
    "load_pair_shards",
    "SOURCES",
    "pair_fractions",
    "mix_indices",
    "gather_pairs",
    "mix_pairs",
    "reconstruction_error",
    "projected_pairs",
]

# Pair sources of a ReFlow batch (METHOD.md §3), in the order ``mix_indices`` labels them.
SOURCES = ("backward", "forward", "projected")


def noise_for_indices(key, indices, shape, dtype=jnp.float32):
    """x1_i = N(0, I) drawn from ``fold_in(key, i)``: ``[n] -> [n, *shape]``."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, dtype))(indices)


def backward_pairs(denoise_fn, key, indices, shape, grid, *, solver="heun", cond=None):
    """Noise → data pairs (x̂0, x1) for the given global indices.

    Args:
      denoise_fn: the teacher in flow time.
      key: the run's pair key; pair i uses ``fold_in(key, i)``.
      indices: ``[n]`` int32 global pair indices.
      shape: the data shape.
      grid: a decreasing grid from t_max to 0 (see ``grids.make_grid(..., t_max=...)``).

    Returns:
      ``(x0_hat, x1, nfe)``.
    """
    x1 = noise_for_indices(key, indices, shape)
    x0, nfe = sampler.sample(denoise_fn, x1, grid, solver=solver, cond=cond)
    return x0, x1, nfe


def forward_pairs(denoise_fn, x0, grid, *, solver="heun", cond=None):
    """Data → noise pairs (x0, x̂1) for real data ``x0 [n, ...]``.

    Args:
      grid: an increasing grid from t_min > 0 to t_max < 1.

    Returns:
      ``(x0, x1_hat, nfe)`` with x̂1 = ε̂(x_{t_max}, t_max) [recon].
    """
    g = sampler.validate_grid(grid, solver)
    if not g[1] > g[0]:
        raise ValueError("forward_pairs needs an increasing grid (from data to noise).")
    if g[-1] >= 1.0:
        raise ValueError("forward_pairs needs t_max < 1 (ε̂ divides by t, the data part by 1 − t).")
    x_end, nfe = sampler.integrate(denoise_fn, x0 * (1.0 - float(g[0])), g, solver=solver,
                                   cond=cond)
    t_end = jnp.full((x0.shape[0],), float(g[-1]), x0.dtype)
    return x0, paths.noise_from_denoised(x_end, t_end, denoise_fn(x_end, t_end, cond)), nfe + 1


def _shard_path(out_dir, start):
    return os.path.join(out_dir, f"pairs_{start:010d}.npz")


def write_pair_shards(generate_fn, num, chunk, out_dir, *, process_index=0, process_count=1,
                      progress=None):
    """Generates ``num`` pairs in chunks of ``chunk`` into ``out_dir``, resumably.

    Args:
      generate_fn: ``generate_fn(indices [chunk] int32) -> dict of arrays [chunk, ...]``
        (the last chunk is padded to full size so the function compiles once, then trimmed).
      num: total number of pairs; chunk: pairs per shard.
      process_index, process_count: this host's share (chunk c → host c mod count).
      progress: optional callable ``progress(done_pairs)`` for a progress bar.

    Returns:
      The number of pairs this call generated (0 when everything was already there).
    """
    os.makedirs(out_dir, exist_ok=True)
    made = 0
    for c, start in enumerate(range(0, num, chunk)):
        if c % process_count != process_index:
            continue
        path = _shard_path(out_dir, start)
        n = min(chunk, num - start)
        if os.path.exists(path):
            if progress:
                progress(n)
            continue
        idx = np.arange(start, start + chunk, dtype=np.int32)
        arrays = {k: np.asarray(v)[:n] for k, v in generate_fn(idx).items()}
        arrays["index"] = idx[:n]
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a shard either exists whole or not at all
        made += n
        if progress:
            progress(n)
    return made


def load_pair_shards(out_dir, num=None):
    """Loads all shards in ``out_dir`` sorted by index; checks there is no gap or overlap."""
    files = sorted(f for f in os.listdir(out_dir) if f.startswith("pairs_") and
                   f.endswith(".npz") and ".tmp" not in f)
    if not files:
        raise FileNotFoundError(f"no pair shards in {out_dir!r}: run the pairs stage first.")
    parts = [dict(np.load(os.path.join(out_dir, f))) for f in files]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    expected = np.arange(len(out["index"]))
    if not np.array_equal(out["index"], expected):
        raise ValueError(f"pair shards in {out_dir!r} have gaps or overlaps in their indices.")
    if num is not None and len(expected) < num:
        raise ValueError(f"{out_dir!r} holds {len(expected)} pairs, {num} were asked for.")
    return out


def pair_fractions(rho, projected=0.0):
    """Batch fractions per pair source: forward ρ [paper, §3], projected q, backward the rest."""
    if not (0 <= rho <= 1 and 0 <= projected <= 1 and rho + projected <= 1 + 1e-9):
        raise ValueError(f"pair fractions rho={rho!r}, projected={projected!r} must be >= 0 "
                         "with rho + projected <= 1.")
    return {"backward": max(0.0, 1.0 - rho - projected), "forward": float(rho),
            "projected": float(projected)}


def mix_indices(key, sizes, fractions, batch_size):
    """Which pair each slot of a batch takes.

    Each slot picks its source independently: forward with probability ``fractions["forward"]``
    (the paper's "forward pair with probability ρ"), projected with ``fractions["projected"]``,
    backward otherwise; then a pair of that source uniformly, with replacement. With only
    backward and forward pairs this is the same random stream as a Bernoulli(ρ) mask.

    Args:
      key: PRNG key (fold in the step for a reproducible stream).
      sizes: ``{source: number of pairs}`` for the sources present.
      fractions: ``{source: fraction}`` (see :func:`pair_fractions`); a source with a positive
        fraction must be in ``sizes``.
      batch_size: slots.

    Returns:
      ``source`` ``[B]`` int32 (position in :data:`SOURCES`) and ``index`` ``[B]`` int32 into it.
    """
    for name in SOURCES:
        if fractions.get(name, 0.0) > 0 and not sizes.get(name):
            raise ValueError(f"{name} pairs have fraction {fractions[name]} but none exist.")
    key_b, key_f, key_s = jax.random.split(key, 3)
    keys = {"backward": key_b, "forward": key_f, "projected": jax.random.fold_in(key, 3)}
    f_fwd = float(fractions.get("forward", 0.0)) if sizes.get("forward") else 0.0
    f_proj = float(fractions.get("projected", 0.0)) if sizes.get("projected") else 0.0
    u = jax.random.uniform(key_s, (batch_size,))
    source = jnp.where(u < f_fwd, 1, jnp.where(u < f_fwd + f_proj, 2, 0)).astype(jnp.int32)
    index = jnp.zeros((batch_size,), jnp.int32)
    for s, name in enumerate(SOURCES):
        if sizes.get(name) and (s == 0 or fractions.get(name, 0.0) > 0):
            i = jax.random.randint(keys[name], (batch_size,), 0, sizes[name])
            index = jnp.where(source == s, i, index)
    return source, index


def gather_pairs(stores, source, index, xp=jnp):
    """Gathers a mixed batch from pair stores (``xp``: jnp on device, np on the host).

    Args:
      stores: ``{source: {"x0": [N, ...], "x1": [N, ...], ...}}``; the keys common to every
        store are gathered.
      source, index: from :func:`mix_indices`.
    """
    names = [n for n in SOURCES if n in stores]
    keys = sorted(set.intersection(*(set(stores[n]) for n in names)))
    out = {}
    for k in keys:
        val = None
        for name in names:
            arr = stores[name][k]
            g = arr[xp.clip(index, 0, len(arr) - 1)]
            if val is None:
                val = g
            else:
                m = (source == SOURCES.index(name)).reshape((-1,) + (1,) * (g.ndim - 1))
                val = xp.where(m, g, val)
        out[k] = val
    return out


def mix_pairs(key, stores, fractions, batch_size):
    """A batch of ``batch_size`` pairs mixed by ``fractions``, on the device (inside a jit)."""
    sizes = {n: stores[n]["x0"].shape[0] for n in stores}
    source, index = mix_indices(key, sizes, fractions, batch_size)
    return gather_pairs(stores, source, index)


def reconstruction_error(denoise_fn, forward, grid, *, solver="heun", cond=None):
    """Mean ``‖x̂0 − x0‖²/dim`` of forward pairs re-integrated backward from their noise end.

    The default displacement budget of Algorithm 2 (METHOD.md §3 [recon]).
    """
    x0_hat, _ = sampler.sample(denoise_fn, forward["x1"], grid, solver=solver, cond=cond)
    d = x0_hat - forward["x0"]
    return jnp.mean(jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1)) / d[0].size


BUDGET_PAIRS = 256  # forward pairs re-integrated for Algorithm 2's default budget


def projected_pairs(key, backward, real, proj, *, denoise_fn=None, forward=None, grid=None,
                    solver="heun"):
    """Projected pairs ``(y_{j(i)}, x1_i)`` of backward pairs onto real data (METHOD.md §3).

    Args:
      key: PRNG key (draws ``j(i)`` from the plan's rows).
      backward: ``{"x0": [n, ...], "x1": [n, ...]}`` teacher pairs.
      real: ``[m, ...]`` real data.
      proj: the ``pairs.projection`` config section: ``epsilon`` (entropic ε relative to the
        mean cost), ``lam`` (``"balanced"``, λ = ∞, or ``"search"``, Algorithm 2) and ``draw``
        (``"sample"`` from the plan's rows or ``"argmax"``).
      denoise_fn, forward, grid, solver: for ``lam="search"``: the budget is the teacher's
        :func:`reconstruction_error` on the first :data:`BUDGET_PAIRS` forward pairs,
        re-integrated on the backward ``grid``.

    Returns:
      ``({"x0": [n, ...], "x1": [n, ...]}, metrics)``; metrics include the budget when searched.
    """
    from simple_reflow.couplings.projection import project_pairs

    if proj.lam not in ("balanced", "search"):
        raise ValueError(f"pairs.projection.lam={proj.lam!r} is not one of "
                         "('balanced', 'search').")
    budget, metrics = None, {}
    if proj.lam == "search":
        if forward is None or denoise_fn is None or grid is None:
            raise ValueError("pairs.projection.lam='search' needs forward pairs, the teacher "
                             "and the backward grid for its budget.")
        first = {k: jnp.asarray(forward[k][:BUDGET_PAIRS]) for k in ("x0", "x1")}
        budget = reconstruction_error(denoise_fn, first, grid, solver=solver)
        metrics["projection/budget"] = budget
    project = jax.jit(project_pairs, static_argnames=("epsilon", "mode"))
    out, m = project(key, jnp.asarray(backward["x0"]), jnp.asarray(backward["x1"]),
                     jnp.asarray(real), budget=budget, epsilon=float(proj.epsilon),
                     mode=proj.draw)
    return {"x0": out["x0"], "x1": out["x1"]}, {**metrics, **m}
