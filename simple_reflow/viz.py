"""Figures: PNG grids of image samples (Pillow) and 2-D toy scatter plots (matplotlib).

Plot functions only: they take NumPy/JAX arrays and a path, write one file, and return the
path. matplotlib is used through its object-oriented API on the Agg canvas, so nothing touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

__all__ = ["to_uint8", "image_grid", "save_image_grid", "save_toy_figure"]


def to_uint8(images) -> np.ndarray:
    """Images in [−1, 1] → uint8 {0..255} by ``round((x + 1)·127.5)``, clipped (as EDM)."""
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images, ncols: int, *, scale: int = 1, pad: int = 0) -> np.ndarray:
    """Tiles images ``[n, H, W, C]`` in [−1, 1] into one uint8 image, row-major.

    Args:
      images: ``[n, H, W, C]`` with C in {1, 3}; empty cells of the last row are black.
      ncols: images per row.
      scale: integer nearest-neighbour upscaling (8×8 digits are unreadable at scale 1).
      pad: black pixels between cells (before scaling).

    Returns:
      uint8 ``[rows·(H + pad) − pad, ncols·(W + pad) − pad, C]`` (times ``scale``).
    """
    x = to_uint8(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [n, H, W, 1 or 3], got shape {x.shape}")
    n, h, w, c = x.shape
    ncols = max(1, min(int(ncols), n))
    rows = math.ceil(n / ncols)
    grid = np.zeros((rows * (h + pad) - pad, ncols * (w + pad) - pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = x[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def save_image_grid(path: str, images, ncols: int, *, scale: int = 1, pad: int = 0) -> str:
    """Writes :func:`image_grid` as a PNG (grayscale for C = 1); returns ``path``."""
    grid = image_grid(images, ncols, scale=scale, pad=pad)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode).save(path)
    return path


def save_toy_figure(
    path: str,
    samples_by_label: dict,
    trajectories=None,
    *,
    lim: float | None = None,
    max_trajectories: int = 200,
    title: str | None = None,
) -> str:
    """Scatter plots of 2-D sample sets side by side, optionally over their ODE trajectories.

    Args:
      path: output file (PNG, PDF or SVG, by extension).
      samples_by_label: ``{label: [n, 2]}``, one panel per entry (e.g. "data",
        "teacher NFE=100", "student NFE=1").
      trajectories: optional ``{label: [T, n, 2]}`` (positions along the solve, noise first)
        drawn as thin lines under the points of the panel of the same label; a bare array is
        drawn in the last panel.
      lim: symmetric axis limit; None fits the data of all panels.
      max_trajectories: at most this many paths are drawn per panel.
      title: optional figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(samples_by_label)
    if trajectories is not None and not isinstance(trajectories, dict):
        trajectories = {labels[-1]: trajectories}
    trajectories = trajectories or {}
    pts = {k: np.asarray(v, np.float64).reshape(-1, 2) for k, v in samples_by_label.items()}
    if lim is None:
        lim = 1.05 * max(float(np.abs(p).max()) for p in pts.values() if p.size)
    fig = Figure(figsize=(3.2 * len(labels), 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    for ax, label in zip(axes, labels, strict=True):
        if label in trajectories:
            traj = np.asarray(trajectories[label], np.float64)[:, :max_trajectories]
            ax.plot(traj[..., 0], traj[..., 1], color="0.6", lw=0.4, alpha=0.6, zorder=1)
            ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, c="0.4", zorder=2)
        ax.scatter(pts[label][:, 0], pts[label][:, 1], s=1.5, alpha=0.6, c="C0", lw=0, zorder=3)
        ax.set_title(str(label), fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
