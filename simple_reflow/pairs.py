"""Teacher pairs for ReFlow (METHOD.md §2) and the ρ-mixing pair source (§3).

- Backward pairs: x1 ~ N(0, I) drawn from the pair's own global index, integrated by the
  teacher from t_max (starting at x = t_max·x1 [recon]) to 0; the pair is (x̂0, x1).
- Forward pairs: a real x0, integrated from t_min (starting at x = (1 − t_min)·x0, the mean of
  x_{t_min} [recon]) up to t_max; the noise end is x1 = ε̂(x_{t_max}, t_max) [recon].
- :func:`write_pair_shards` runs a generator chunk by chunk into ``.npz`` shards named by their
  first index; a restarted run skips the finished shards, each shard is written atomically, and
  chunk c belongs to process c mod process_count, so generation resumes without losing or
  duplicating pairs and splits across hosts with no coordination.
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
    "mix_indices",
    "gather_pairs",
    "mix_pairs",
]


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


def mix_indices(key, num_backward, num_forward, rho, batch_size):
    """Which pairs a batch takes: forward with probability ρ, backward otherwise [paper, §3].

    Returns:
      ``(use_forward [B] bool, backward_index [B], forward_index [B])``, drawn uniformly with
      replacement (``forward_index`` is zeros when there are no forward pairs).
    """
    key_b, key_f, key_m = jax.random.split(key, 3)
    ib = jax.random.randint(key_b, (batch_size,), 0, num_backward)
    if not num_forward or rho == 0:
        return jnp.zeros((batch_size,), bool), ib, jnp.zeros((batch_size,), jnp.int32)
    i_f = jax.random.randint(key_f, (batch_size,), 0, num_forward)
    return jax.random.bernoulli(key_m, rho, (batch_size,)), ib, i_f


def gather_pairs(backward, forward, use_forward, ib, i_f, xp=jnp):
    """Gathers a mixed batch from pair arrays (``xp``: jnp on device, np on the host)."""
    out = {k: v[ib] for k, v in backward.items()}
    if forward is None:
        return out
    for k in out:
        m = use_forward.reshape((-1,) + (1,) * (out[k].ndim - 1))
        out[k] = xp.where(m, forward[k][i_f], out[k])
    return out


def mix_pairs(key, backward, forward, rho, batch_size):
    """A batch of ``batch_size`` pairs mixed with ratio ρ, on the device (inside a jit).

    Args:
      key: PRNG key (fold in the step for a reproducible stream).
      backward, forward: dicts with "x0", "x1" (and optional "cond") ``[N_b, ...]``,
        ``[N_f, ...]``; ``forward`` may be None when ρ = 0.
    """
    n_f = 0 if forward is None else forward["x0"].shape[0]
    use_f, ib, i_f = mix_indices(key, backward["x0"].shape[0], n_f, rho, batch_size)
    return gather_pairs(backward, forward if n_f and rho else None, use_f, ib, i_f)
