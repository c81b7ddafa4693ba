"""Checkpoint files get the usual permissions (0o666 less the umask), like any file the tool writes."""
from __future__ import annotations

import os
import stat

import pytest

from accel_models.checkpoint import load_checkpoint, save_checkpoint
from accel_models.zoo import build_model


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640)])
def test_saved_checkpoint_honours_the_umask(tmp_path, mask, expected):
    model = build_model("mlp", (1, 8, 8), 10)
    old = os.umask(mask)
    try:
        path = save_checkpoint(tmp_path / "out" / "m.pt", model, dataset="digits")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == expected
    assert os.listdir(tmp_path / "out") == ["m.pt"]
    loaded, meta = load_checkpoint(path)
    assert meta["dataset"] == "digits" and set(loaded.state_dict()) == set(model.state_dict())
