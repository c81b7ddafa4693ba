"""Shared fixtures for the mitigation tests: a LeNet-5 trained on digits, saved as a checkpoint.

Training takes about two seconds, so every pytest-xdist worker trains its own copy (seeded, so
all copies are identical) instead of sharing a file.
"""
from __future__ import annotations

import pytest

LENET_EPOCHS = 40


@pytest.fixture(scope="session")
def digits():
    from accel_models.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def lenet_ckpt(tmp_path_factory, digits) -> str:
    """Path of a LeNet-5 checkpoint trained on digits (seed 0, about 97% test accuracy)."""
    from accel_models.checkpoint import save_checkpoint
    from accel_models.evaluation import DEFAULT_CALIBRATION_IMAGES
    from accel_models.train import train_zoo_model

    model, history = train_zoo_model("lenet5", digits, LENET_EPOCHS, 0)
    path = tmp_path_factory.mktemp("lenet") / "lenet5-digits.pt"
    save_checkpoint(path, model, dataset=digits, preprocessing=digits.preprocessing, history=history,
                    extra={"calibration": {"images": DEFAULT_CALIBRATION_IMAGES, "split": "train", "method": "minmax"}})
    return str(path)
