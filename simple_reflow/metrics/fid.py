"""FID as EDM computes it: uint8 images, streamed float64 feature statistics, reference files.

- :func:`to_uint8`: EDM's quantisation of generated images in [−1, 1] before scoring
  (``generate.py``: ``(x·127.5 + 128).clip(0, 255)`` truncated to uint8).
- :class:`FeatureStats`: running count, sum and sum of outer products in float64, so 50,000
  images never sit in memory; merged across hosts; mean and unbiased covariance as EDM's
  ``fid.py`` forms them (``Σ = (Σ fᵢfᵢᵀ − n μμᵀ)/(n − 1)``).
- :func:`save_reference` / :func:`load_reference`: EDM's ``.npz`` layout (``mu``, ``sigma``),
  so EDM's published reference files are read as they are; ours add ``num_images``,
  ``resolution`` and ``dataset``, which EDM's reader ignores.
- The distance itself: :func:`simple_reflow.metrics.frechet.frechet_distance_from_stats`.
"""

from __future__ import annotations

import os

import numpy as np

from simple_reflow.errors import DamagedInput, MissingInput, reason

__all__ = ["to_uint8", "FeatureStats", "save_reference", "load_reference"]


def to_uint8(x):
    """Images in [−1, 1] → uint8, exactly EDM's ``(x * 127.5 + 128).clip(0, 255).to(uint8)``.

    Works on NumPy and JAX arrays (the cast truncates toward zero, as PyTorch's).
    """
    return (x * 127.5 + 128).clip(0, 255).astype(np.uint8)


class FeatureStats:
    """Streaming mean and covariance of ``[n, dim]`` features in float64."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.count = 0
        self.total = np.zeros(self.dim, np.float64)
        self.outer = np.zeros((self.dim, self.dim), np.float64)

    def update(self, features) -> None:
        """Adds the rows of ``features`` ``[b, dim]``."""
        f = np.asarray(features, np.float64).reshape(-1, self.dim)
        self.count += f.shape[0]
        self.total += f.sum(axis=0)
        self.outer += f.T @ f

    def merged_across_processes(self) -> FeatureStats:
        """The statistics of all processes' rows together (every process gets the sum)."""
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() == 1:
            return self
        # float64 travels as its bytes (pairs of uint32): JAX would round it to float32.
        local = {
            "count": np.array([self.count], np.float64),
            "total": self.total,
            "outer": self.outer,
        }
        parts = multihost_utils.process_allgather(
            {k: np.ascontiguousarray(v).view(np.uint32) for k, v in local.items()}
        )
        parts = {k: np.asarray(v).view(np.float64) for k, v in parts.items()}
        out = FeatureStats(self.dim)
        out.count = int(round(float(np.sum(parts["count"]))))
        out.total = np.sum(parts["total"], axis=0)
        out.outer = np.sum(parts["outer"], axis=0)
        return out

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """``(μ [dim], Σ [dim, dim])`` with the unbiased covariance."""
        if self.count < 2:
            raise ValueError(f"need at least 2 images for a covariance, got {self.count}")
        mu = self.total / self.count
        sigma = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, sigma


def save_reference(path: str, mu, sigma, **meta) -> None:
    """Writes reference statistics in EDM's layout (``mu``, ``sigma``) plus ``meta`` scalars."""
    tmp = path + ".tmp.npz"
    np.savez(
        tmp,
        mu=np.asarray(mu, np.float64),
        sigma=np.asarray(sigma, np.float64),
        **{k: np.asarray(v) for k, v in meta.items()},
    )
    os.replace(tmp, path)


def load_reference(path: str, *, dim: int | None = None, resolution: int | None = None):
    """Reads ``mu``, ``sigma`` (EDM's published files or :func:`save_reference`'s).

    Args:
      path: the ``.npz`` file.
      dim: the feature dimension the caller scores with (2048 for Inception), if known.
      resolution: the image size being scored; checked against the file's ``resolution``
        when the file records one (EDM's files do not).

    Raises:
      FileNotFoundError / ValueError: one line naming the file and what is wrong.
    """
    if not path or not os.path.exists(path):
        raise MissingInput(
            f"no FID reference statistics at {path!r} (compute them with "
            "scripts/fid_stats.py, or use EDM's published .npz)"
        )
    try:
        with np.load(path) as data:  # reading each array to its end checks its CRC-32
            files = data.files
            if "mu" in files and "sigma" in files:
                mu = np.asarray(data["mu"], np.float64)
                sigma = np.asarray(data["sigma"], np.float64)
                stored = int(data["resolution"]) if "resolution" in files else None
    except Exception as e:  # noqa: BLE001 (zipfile, zlib, pickle refusals, short reads)
        raise DamagedInput(
            path,
            reason(e),
            f"rewrite it with `python scripts/fid_stats.py --config configs/<dataset>.py:eval "
            f"--out {path}`, or download EDM's published file again",
        ) from e
    if "mu" not in files or "sigma" not in files:
        raise ValueError(f"{path} has no 'mu' and 'sigma' arrays: not FID reference statistics")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{path}: mu {mu.shape} and sigma {sigma.shape} are not the statistics "
            "of one feature space"
        )
    if dim is not None and mu.shape[0] != dim:
        raise ValueError(
            f"{path} holds {mu.shape[0]}-d statistics; the features are {dim}-d "
            "(Inception pool features are 2048-d)"
        )
    if resolution is not None and stored is not None and stored != resolution:
        raise ValueError(
            f"{path} was computed on {stored}x{stored} images; the images scored "
            f"are {resolution}x{resolution}"
        )
    return mu, sigma
