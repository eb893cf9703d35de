"""Writes the test fixture for the FID Inception-v3 port from pytorch-fid's own network.

Run by hand, never by the tests (they only read what this writes):

  pip install torch torchvision; pip install --no-deps pytorch-fid
  python scripts/make_fid_fixtures.py --out tests/fixtures/fid

The network is pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True,
use_fid_inception=True)`` (mseitzer/pytorch-fid, Apache-2.0), imported from the installed
package; none of its code is copied here. Its real weights are not used and nothing is
downloaded: ``pytorch_fid.inception.load_state_dict_from_url`` is replaced by a function that
returns, for every floating-point tensor of the state dict of ``fid_inception_v3()``, the value
``seeded_value(name, shape, seed)`` of ``simple_reflow/metrics/seeded_weights.py`` (loaded by
path, so this script needs neither JAX nor ``simple_reflow``); integer buffers
(``num_batches_tracked``) keep their values. The model runs in eval mode on the CPU.

Writes ``OUT/inception_seeded.npz`` with keys

  images32, images64      uint8 NCHW RGB in [0, 255], 3 images each (the last one of each is
                          uniform noise, the others smooth gradients with rectangles and noise)
  features32, features64  float32 [3, 2048]: ``model(x)[-1]`` squeezed, x = images / 255
                          (as ``pytorch_fid.fid_score`` feeds them), the final average pool
  block0_mean32, block0_mean64  float32 [3, 64]: spatial mean of block 0 (first max pool)
  block2_mean32, block2_mean64  float32 [3, 768]: spatial mean of block 2 (after Mixed_6e)
  seed                    int, the seed given to ``seeded_value``
  state_names             unicode [K]: every key of the state dict, in its order
  state_shapes_json       0-d unicode: json {name: shape} for every key
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEEDED_WEIGHTS = ROOT / "simple_reflow" / "metrics" / "seeded_weights.py"
IMAGE_SEED = 1
N_IMAGES = 3
SIZES = (32, 64)
OUTPUT_BLOCKS = (0, 2, 3)


def load_seeded_value():
    """``seeded_value`` from ``seeded_weights.py``, loaded by path (no ``simple_reflow`` import)."""
    spec = importlib.util.spec_from_file_location("_seeded_weights", SEEDED_WEIGHTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seeded_value


def image_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """One uint8 [3, size, size] image: a smooth colour gradient, a few flat rectangles, noise."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    base = rng.uniform(40, 215, (3, 1, 1))
    slope_y, slope_x = rng.uniform(-80, 80, (2, 3, 1, 1))
    img = base + slope_y * (yy - 0.5) + slope_x * (xx - 0.5)
    for _ in range(int(rng.integers(2, 5))):
        y0, x0 = rng.integers(0, size - 4, 2)
        h, w = rng.integers(4, size // 2 + 1, 2)
        img[:, y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, (3, 1, 1))
    img = img + rng.normal(0, 8, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """uint8 [n, 3, size, size]: ``n - 1`` image-like images, then one of uniform noise."""
    images = [image_like(rng, size) for _ in range(n - 1)]
    images.append(rng.integers(0, 256, (3, size, size), dtype=np.uint8))
    return np.stack(images)


def build_model(seed: int):
    """pytorch-fid's ``InceptionV3`` with seeded weights, in eval mode, and its state dict names.

    ``fid_inception_v3()`` builds torchvision's Inception3 through the module-level
    ``_inception_v3``, patches its blocks, then loads ``load_state_dict_from_url(URL)``. Both
    names are replaced for the duration of the build: the first records the model it builds, the
    second returns seeded values for the (patched) model's own state-dict keys and shapes.
    Returns ``(model, names, shapes)`` with the names and shapes of that state dict.
    """
    import pytorch_fid.inception as fid_inception
    import torch

    seeded_value = load_seeded_value()
    built = []
    original_build = fid_inception._inception_v3
    original_load = fid_inception.load_state_dict_from_url

    def recording_build(*args, **kwargs):
        built.append(original_build(*args, **kwargs))
        return built[-1]

    def seeded_load(url, *args, **kwargs):
        assert url == fid_inception.FID_WEIGHTS_URL, url
        state = {}
        for name, tensor in built[-1].state_dict().items():
            if tensor.is_floating_point():
                value = seeded_value(name, tuple(tensor.shape), seed=seed)
                tensor = torch.from_numpy(value)
            state[name] = tensor.clone()
        return state

    fid_inception._inception_v3 = recording_build
    fid_inception.load_state_dict_from_url = seeded_load
    try:
        model = fid_inception.InceptionV3(
            output_blocks=list(OUTPUT_BLOCKS),
            resize_input=True,
            normalize_input=True,
            use_fid_inception=True,
        )
    finally:
        fid_inception._inception_v3 = original_build
        fid_inception.load_state_dict_from_url = original_load
    assert len(built) == 1, len(built)
    state = built[0].state_dict()
    check_seeded(state, seeded_value, seed)
    names = list(state)
    shapes = {name: list(tensor.shape) for name, tensor in state.items()}
    return model.eval(), names, shapes


def check_seeded(state, seeded_value, seed: int) -> None:
    """Asserts that every floating tensor of ``state`` equals its seeded value exactly."""
    for name, tensor in state.items():
        if tensor.is_floating_point():
            expected = seeded_value(name, tuple(tensor.shape), seed=seed)
            np.testing.assert_array_equal(tensor.numpy(), expected, err_msg=name)


def forward(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Pool features and spatial means of blocks 0 and 2 for uint8 NCHW ``images``."""
    import torch

    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    with torch.no_grad():
        block0, block2, pool = model(x)
    assert pool.shape[1:] == (2048, 1, 1), pool.shape
    return {
        "features": pool[:, :, 0, 0].numpy().astype(np.float32),
        "block0_mean": block0.mean(dim=(2, 3)).numpy().astype(np.float32),
        "block2_mean": block2.mean(dim=(2, 3)).numpy().astype(np.float32),
        "block0_shape": tuple(block0.shape),
        "block2_shape": tuple(block2.shape),
    }


def summarize(name: str, values: np.ndarray) -> None:
    """Prints mean, std, fraction of zeros, min and max of ``values``; flags degenerate ones."""
    mean, std = float(values.mean()), float(values.std())
    zeros = float(np.mean(values == 0))
    print(
        f"{name:16s} shape={values.shape} mean={mean:.6g} std={std:.6g} "
        f"zeros={zeros:.4f} min={float(values.min()):.6g} max={float(values.max()):.6g}"
    )
    if std < 1e-3 * max(abs(mean), 1e-30) or std > 1e6 or zeros > 0.9:
        print(f"  WARNING: {name} looks degenerate")


def main() -> None:
    """Builds the seeded network, runs it on both image sizes and writes the fixture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "fid"))
    parser.add_argument("--seed", type=int, default=0, help="seed given to seeded_value")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    model, names, shapes = build_model(args.seed)
    rng = np.random.default_rng(IMAGE_SEED)
    arrays = {}
    for size in SIZES:
        images = make_images(rng, N_IMAGES, size)
        out = forward(model, images)
        print(f"{size}x{size}: block0 {out['block0_shape']}, block2 {out['block2_shape']}")
        arrays[f"images{size}"] = images
        for key in ("features", "block0_mean", "block2_mean"):
            arrays[f"{key}{size}"] = out[key]
    arrays["seed"] = np.int64(args.seed)
    arrays["state_names"] = np.array(names, dtype=np.str_)
    arrays["state_shapes_json"] = np.array(json.dumps(shapes))

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "inception_seeded.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(names)} state-dict keys")
    for key in sorted(arrays):
        if key.startswith(("features", "block")):
            summarize(key, arrays[key])


if __name__ == "__main__":
    main()
