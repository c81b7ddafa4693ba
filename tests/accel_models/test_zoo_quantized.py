"""The zoo's LeNet-5 and MLP, trained on digits, keep their accuracy as integer programs."""
from __future__ import annotations

import pytest
import torch

import sysarray as sa
from accel_models.data import load_dataset
from accel_models.lowering import lower
from accel_models.train import train_zoo_model


@pytest.mark.parametrize("name, epochs", [("lenet5", 30), ("mlp", 30)])
def test_zoo_model_quantized_keeps_accuracy(name, epochs):
    data = load_dataset("digits")
    model, history = train_zoo_model(name, data, epochs, seed=0, progress=False)
    with torch.no_grad():
        float_pred = model(data.test_x).argmax(1)
    float_acc = float((float_pred == data.test_y).double().mean())
    program = lower(model, calibration=data.train_x[:512])
    res = program.run(data.test_x, sa.ArrayConfig(16, 16, "ws"))
    agree = float((res.predictions == float_pred).double().mean())
    assert agree >= 0.99, f"{name}: int8 top-1 agrees with float on {agree:.2%} of images"
    assert abs(res.accuracy(data.test_y) - float_acc) <= 0.01
    assert float_acc >= 0.93
