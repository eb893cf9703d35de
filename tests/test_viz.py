"""PNG sample grids and toy figures."""

from __future__ import annotations

import numpy as np
from PIL import Image

from simple_reflow.viz import image_grid, save_image_grid, save_toy_figure, to_uint8


def test_to_uint8_maps_unit_range():
    np.testing.assert_array_equal(
        to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])), [0, 0, 128, 255, 255]
    )  # rint(127.5) = 128 (round-half-even)


def test_grid_layout_is_row_major_with_padding(tmp_path):
    # Image i is the constant value −1 + 2·(i+1)/8 → uint8 round(127.5·2·(i+1)/8).
    n, h, w = 5, 3, 2
    images = np.stack([np.full((h, w, 3), -1 + 2 * (i + 1) / 8) for i in range(n)])
    grid = image_grid(images, ncols=3, pad=1)
    assert grid.shape == (2 * h + 1, 3 * w + 2, 3)
    for i in range(n):
        r, q = divmod(i, 3)
        cell = grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w]
        assert np.all(cell == np.rint(255 * (i + 1) / 8))
    assert np.all(grid[h + 1 :, 2 * (w + 1) :] == 0)  # the empty sixth cell
    path = save_image_grid(str(tmp_path / "g" / "gray.png"), images[..., :1], ncols=5, scale=4)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (5 * w * 4, h * 4)


def test_toy_figure_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    samples = {"data": rng.normal(size=(100, 2)), "student NFE=1": rng.normal(size=(100, 2))}
    traj = rng.normal(size=(5, 100, 2))
    path = save_toy_figure(str(tmp_path / "toy.png"), samples, traj, title="t")
    with Image.open(path) as im:
        assert im.size == (int(3.2 * 2 * 120), int(3.4 * 120))
