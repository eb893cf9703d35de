"""Writes ``tests/fixtures/torch``: one state dict in both ``torch.save`` layouts.

Run by hand with PyTorch installed (``pip install -e '.[torch]'``)::

  python scripts/make_torch_format_fixtures.py tests/fixtures/torch

``legacy.pth`` (``_use_new_zipfile_serialization=False``, the layout before PyTorch 1.6, as
pytorch-fid's Inception weights) and ``zip.pth`` hold the same tensors — a strided view sharing
its storage with another entry, float16 and an int64 scalar among them; ``expected.npz`` has
their values for ``tests/test_torch_files.py``.
"""

from __future__ import annotations

import collections
import sys

import numpy as np


def main(out):
    import torch

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    state = collections.OrderedDict(
        conv=torch.randn(2, 3, 3, 3, generator=g),
        view=base[:, 1:5:2],
        base=base,
        half=torch.randn(5, generator=g).half(),
        count=torch.tensor(7, dtype=torch.int64),
    )
    torch.save(state, f"{out}/legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(state, f"{out}/zip.pth")
    np.savez(f"{out}/expected.npz", **{k: v.numpy() for k, v in state.items()})


if __name__ == "__main__":
    main(sys.argv[1])
