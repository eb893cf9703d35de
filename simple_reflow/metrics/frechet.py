"""Fréchet distance between two sample sets in any feature space (pixels by default).

The Fréchet (2-Wasserstein) distance between the Gaussians fitted to two sets,

    FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}),

as FID computes it on Inception features (Heusel et al. 2017). We evaluate the trace term
exactly with symmetric eigendecompositions in float64: with S = Σ₁^{1/2},
tr((Σ₁Σ₂)^{1/2}) = Σ_k √λ_k(S Σ₂ S), whose matrix is symmetric positive semi-definite, so no
complex parts or ``sqrtm`` failures arise for singular covariances. NumPy on the host: this
runs once per evaluation, outside any jitted function.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gaussian_stats", "frechet_distance_from_stats", "frechet_distance"]


def gaussian_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` of samples ``[n, ...]`` (flattened)."""
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; tiny negative eigenvalues are clipped to 0."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance_from_stats(mu1, cov1, mu2, cov2) -> float:
    """FD between N(μ₁, Σ₁) and N(μ₂, Σ₂), exact up to float64 rounding.

    Args:
      mu1, mu2: means ``[d]``.
      cov1, cov2: covariances ``[d, d]`` (symmetric PSD).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(
            f"mismatched statistics: {mu1.shape}/{cov1.shape} vs {mu2.shape}/{cov2.shape}"
        )
    s1 = _psd_sqrt(cov1)
    m = s1 @ cov2 @ s1
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2.0), 0.0, None)))
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross
    return float(max(fd, 0.0))


def frechet_distance(x, y) -> float:
    """FD between the Gaussians fitted to samples ``x`` ``[n, ...]`` and ``y`` ``[m, ...]``.

    Pixel-space by default (flattened images); pass features for a feature-space distance.
    """
    return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))
