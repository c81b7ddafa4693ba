"""Bad input to the lowering and to a program's run and results: one clear ValueError or TypeError
before any work, naming what was wrong."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import accel_models
import sysarray as sa
from accel_models.zoo import build_model


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return build_model("mlp", (1, 8, 8), 10).eval()


@pytest.fixture(scope="module")
def program(mlp):
    return accel_models.lower(mlp, torch.rand(16, 1, 8, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_calibration_images_are_refused(mlp, bad):
    x = torch.rand(16, 1, 8, 8)
    x[3, 0, 2, 2] = bad
    with pytest.raises(ValueError, match="'calibration' argument of lower must hold finite"):
        accel_models.lower(mlp, x)
    big = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    big[0, 0, 0, 0] = 1e300  # finite in float64, infinite in the float32 the lowering calibrates in
    with pytest.raises(ValueError, match="after conversion to float32"):
        accel_models.lower(mlp, big)


def test_nan_weights_are_named_not_a_float_to_integer_error(mlp):
    import copy

    bad = copy.deepcopy(mlp)
    name, weight = next(bad.named_parameters())
    with torch.no_grad():
        weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN values in its tensor '.+'.*weights and buffers"):
        accel_models.lower(bad, torch.rand(16, 1, 8, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_finite_images_are_refused_by_run(program, bad, dtype):
    x = torch.rand(4, 1, 8, 8, dtype=dtype)
    x[1, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="finite images"):
        program.run(x, sa.ArrayConfig(8, 8))


def test_accuracy_checks_the_labels(program):
    res = program.run(torch.rand(5, 1, 8, 8), sa.ArrayConfig(8, 8))
    good = res.predictions.clone()
    assert res.accuracy(good) == 1.0 and res.accuracy(good.numpy()) == 1.0
    assert res.accuracy(good.to(torch.int32)) == 1.0
    with pytest.raises(ValueError, match=r"shape \(5,\) for the 5 images run. Got shape \(4,\) \(4 labels\)"):
        res.accuracy(good[:4])
    with pytest.raises(ValueError, match=r"for the 5 images run. Got shape \(7,\)"):
        res.accuracy(torch.zeros(7, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"Got shape \(5, 1\)"):
        res.accuracy(good[:, None])
    with pytest.raises(TypeError, match="integer tensor of class indices. Got torch.float32 tensor"):
        res.accuracy(good.float())
    with pytest.raises(TypeError, match="integer tensor of class indices. Got list"):
        res.accuracy(good.tolist())
    with pytest.raises(TypeError, match="Got torch.bool tensor"):
        res.accuracy(good == 0)
    with pytest.raises(TypeError, match="Got torch.float64 tensor"):
        res.accuracy(np.zeros(5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(program):
    with pytest.raises(ValueError, match="'device' argument of Chip is 'cuda', but this torch has no CUDA device"):
        program.run(torch.rand(2, 1, 8, 8), sa.ArrayConfig(8, 8), device="cuda")


def test_devices_the_engines_do_not_run_on_are_refused(program):
    with pytest.raises(ValueError, match="must be a CPU or CUDA device"):
        program.run(torch.rand(2, 1, 8, 8), sa.ArrayConfig(8, 8), device="meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_training_and_prediction_on_cuda_without_cuda_are_clear_errors():
    from accel_models.train import predict, train

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match="'device' argument of train is 'cuda', but this torch has no CUDA device"):
        train(model, x, y, epochs=1, progress=False, device="cuda")
    with pytest.raises(ValueError, match="'device' argument of predict is 'cuda:0', but this torch"):
        predict(model, x, device="cuda:0")
