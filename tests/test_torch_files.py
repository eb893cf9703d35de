"""PyTorch files read without PyTorch: both ``torch.save`` layouts, exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest

from simple_reflow.models.torch_files import TorchFileError, load_torch_file

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "torch")


@pytest.mark.parametrize("name", ["legacy.pth", "zip.pth"])
def test_state_dict_layouts_read_exactly(name):
    state = load_torch_file(os.path.join(FIXTURES, name))
    with np.load(os.path.join(FIXTURES, "expected.npz")) as expected:
        assert list(state) == ["conv", "view", "base", "half", "count"]
        for key in expected.files:
            assert state[key].dtype == expected[key].dtype, key
            np.testing.assert_array_equal(state[key], expected[key])
    assert state["view"].shape == (4, 2)  # a strided view of "base", rebuilt from its storage


def test_truncated_legacy_file_is_named(tmp_path):
    data = open(os.path.join(FIXTURES, "legacy.pth"), "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:-40])
    with pytest.raises(TorchFileError, match="cut.pth"):
        load_torch_file(str(cut))
