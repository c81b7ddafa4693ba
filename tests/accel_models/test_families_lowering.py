"""Every architecture family of today's CNNs and vision transformers (accel_models.zoo.families,
written from the papers) lowers, unmodified, and runs exactly: chip == fake-quant twin == numpy
reference, cycle engine == fast engine with faults in every register, and top-1 agreement with
the float model (random weights, BatchNorm statistics settled on the calibration images as
training would leave them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sysarray as sa
from accel_models import FakeQuantProgram, lower
from accel_models.zoo.families import FAMILIES, default_input_shape, settle_batchnorm
from tests.accel_models.numpy_program import numpy_run

FAULTS = [(1, 2, "weight", 6, 1), (3, 5, "act", 3, 0), (6, 1, "psum", 14, 1), (7, 7, "psum", 2, 0)]


def settled(name: str, x: torch.Tensor) -> torch.nn.Module:
    """Family ``name`` with random weights and each BatchNorm's statistics those of ``x``."""
    torch.manual_seed(0)
    return settle_batchnorm(FAMILIES[name](), x)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_lowers_and_runs_exactly(name):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, *default_input_shape(name), generator=g)
    model = settled(name, x[:32])
    program = lower(model, x[:32])
    test = x[32:]

    res = program.run(test, sa.ArrayConfig(16, 16))
    with torch.no_grad():
        twin = FakeQuantProgram(program)(test)
        expected = model(test)
    # the twin's logits are exact up to float64 rounding of the dequantization
    lsb = 0.0 if program.output_qp is not None else float(program.logit_scales().abs().max())
    assert float((twin - res.logits).abs().max()) <= lsb
    ref = program.logits_from(torch.from_numpy(numpy_run(program, test[:2])))
    np.testing.assert_array_equal(ref.numpy(), res.logits[:2].numpy())
    # 8-bit per-tensor activations through a deep random network: the logits follow float's closely
    # (random guessing gives agreement 0.1 and correlation 0)
    agree = float((res.predictions == expected.argmax(1)).double().mean())
    a, b = res.logits - res.logits.mean(), expected.double() - expected.double().mean()
    assert agree >= 0.4 and float((a * b).sum() / (a.norm() * b.norm())) >= 0.8, agree

    cfg = sa.ArrayConfig(8, 8)
    faults = sa.FaultMap(8, 8)
    for f in FAULTS:
        faults = faults.add(*f)
    fast = program.run(test[:1], cfg, faults, engine="fast", count_changes=False)
    cycle = program.run(test[:1], cfg, faults, engine="cycle", count_changes=False)
    torch.testing.assert_close(fast.logits, cycle.logits, rtol=0, atol=0)


def test_a_guarded_forward_rejects_other_sizes_but_lowers():
    model = FAMILIES["guarded_cnn"]().eval()
    shape = default_input_shape("guarded_cnn")
    with pytest.raises(ValueError):
        model(torch.rand(2, shape[0], shape[1] + 1, shape[2]))
    assert lower(model, torch.rand(8, *shape)).input_shape == shape


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_runs_on_cuda_as_on_the_cpu(name):
    """The integer program on the GPU (every post-processing op's torch path, the fast engine's
    CUDA corrections) and the twin there give the CPU's values, with faults in every register."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, *default_input_shape(name), generator=g)
    model = settled(name, x[:32])
    program = lower(model, x[:32])
    test = x[32:]
    for cfg in (sa.ArrayConfig(8, 8, "ws"), sa.ArrayConfig(8, 8, "os")):
        faults = sa.FaultMap(8, 8)
        for f in FAULTS:
            faults = faults.add(*f)
        for fm in (None, faults):
            cpu = program.run(test, cfg, fm, count_changes=False)
            gpu = program.run(test.cuda(), cfg, fm, count_changes=False, device="cuda")
            torch.testing.assert_close(gpu.logits.cpu(), cpu.logits, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(FakeQuantProgram(program).cuda()(test.cuda()).cpu(),
                                   FakeQuantProgram(program)(test), rtol=0, atol=0)
