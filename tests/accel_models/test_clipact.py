"""Clipped activations (accel_models.clipact): the torch module, its lowering into integer
threshold codes, the fake-quant twin and the numpy reference, and the checkpoint round trip."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import sysarray as sa
from accel_models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from accel_models.clipact import (
    ClippedReLU, apply_clipping, clippable_activations, clipping_spec, make_spec, threshold_codes,
)
from accel_models.fakequant import FakeQuantProgram
from accel_models.lowering import lower
from accel_models.program import Clip, Gemm, postprocess
from accel_models.quant import QParams
from accel_models.zoo import build_model
from tests.accel_models.numpy_program import numpy_run

CHIP = sa.ArrayConfig(8, 8, "ws")


def _relu_outputs(model, x):
    """Each ReLU module's output, recorded independently of accel_models.clipact."""
    outs, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: outs.__setitem__(name, o.detach())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def _thresholds(model, x, granularity, fraction=0.6):
    ths = {}
    for name, o in _relu_outputs(model, x).items():
        if granularity == "layer":
            ths[name] = o.max() * fraction
        elif granularity == "channel":
            ths[name] = o.transpose(0, 1).reshape(o.shape[1], -1).max(1).values * fraction
        else:
            ths[name] = o.max(0).values * fraction
    return ths


@pytest.fixture(scope="module")
def lenet(digits):
    torch.manual_seed(0)
    return build_model("lenet5", (1, 8, 8), 10).eval()


class Block(nn.Module):
    """conv-ReLU, a residual add followed by a ReLU, a max pool before a ReLU, a linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.r2 = nn.ReLU()
        self.c3 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.r3 = nn.ReLU()
        self.fc = nn.Linear(6 * 16, 10)

    def forward(self, x):
        y = self.r1(self.c1(x))
        y = self.r2(self.c2(y) + y)
        y = self.r3(self.pool(self.c3(y)))
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(1)
    m = Block().eval()
    m.arch = {"name": "block", "input_shape": [1, 8, 8], "num_classes": 10}
    return m


# --------------------------------------------------------------------------- the torch module
def assert_chip_twin_and_reference_agree(program, images) -> np.ndarray:
    """The program on the chip, its fake-quant twin and the numpy reference give the same outputs
    bit for bit; returns the reference's final accumulators."""
    ref = numpy_run(program, images)
    acc = program.execute(images, sa.Chip(CHIP))
    np.testing.assert_array_equal(acc.numpy(), ref)
    with torch.no_grad():
        twin = FakeQuantProgram(program)(images)
    torch.testing.assert_close(twin.double(), program.logits_from(torch.from_numpy(ref)), rtol=0, atol=0)
    return ref


def test_policies_match_their_formulas():
    x = torch.tensor([[-1.0, 0.5, 2.0, 3.0, 10.0]])
    t = torch.tensor(2.5)
    clamp = ClippedReLU(t, (5,), policy="clamp")
    zero = ClippedReLU(t, (5,), policy="zero")
    smooth = ClippedReLU(t, (5,), policy="smooth")
    torch.testing.assert_close(clamp(x), torch.tensor([[0.0, 0.5, 2.0, 2.5, 2.5]]))
    torch.testing.assert_close(zero(x), torch.tensor([[0.0, 0.5, 2.0, 0.0, 0.0]]))
    smooth.train()
    expected = torch.relu(x * (1 - torch.sigmoid(20 * (x - 2.5))))
    torch.testing.assert_close(smooth(x), expected)
    smooth.eval()  # deployed as the hard zero policy
    torch.testing.assert_close(smooth(x), zero(x))


def test_granularities_broadcast_per_channel_and_per_neuron():
    x = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2, 2)
    ch = ClippedReLU(torch.tensor([3.0, 12.0]), (2, 2, 2), granularity="channel", policy="clamp")
    assert torch.equal(ch(x)[:, 0], x[:, 0].clamp(max=3.0)) and torch.equal(ch(x)[:, 1], x[:, 1].clamp(max=12.0))
    t = torch.full((2, 2, 2), 5.0)
    t[1, 1, 1] = 100.0
    ne = ClippedReLU(t, (2, 2, 2), granularity="neuron", policy="zero")
    expected = torch.where(x <= t, x, torch.zeros_like(x))
    assert torch.equal(ne(x), expected)


def test_smooth_policy_gives_threshold_gradients():
    m = ClippedReLU(torch.tensor(1.0), (3,), policy="smooth").train()
    m(torch.tensor([[0.9, 1.0, 1.1]])).sum().backward()
    assert m.threshold.grad is not None and float(m.threshold.grad) > 0


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="shape"):
        ClippedReLU(torch.ones(3), (4, 2, 2), granularity="channel")
    with pytest.raises(ValueError, match="policy"):
        ClippedReLU(1.0, (4,), policy="squash")
    with pytest.raises(ValueError, match="finite"):
        ClippedReLU(float("nan"), (4,))


# --------------------------------------------------------------------------- lowering, twin, numpy
def test_threshold_codes_round_half_up_and_fit_the_clamp():
    qp = QParams(scale=0.1, zero_point=0, signed=False)
    m = ClippedReLU(torch.tensor([0.04, 0.05, 0.15, 3.0, 100.0]), (5,), granularity="neuron")
    assert threshold_codes(m, qp, 0, 255).tolist() == [0, 1, 2, 30, 255]


@pytest.mark.parametrize("granularity", ["layer", "channel", "neuron"])
@pytest.mark.parametrize("policy", ["zero", "clamp"])
def test_clipped_lenet_is_exact_on_chip_twin_and_numpy(lenet, digits, granularity, policy):
    x = digits.train_x[:256]
    model = apply_clipping(copy.deepcopy(lenet), make_spec(lenet, _thresholds(lenet, x, granularity), policy=policy,
                                                             granularity=granularity))
    program = lower(model, x)
    clipped = [op for op in program.gemms if op.clip_codes is not None]
    assert len(clipped) == 4 and all(op.clip_policy == policy for op in clipped)
    images = digits.test_x[:96]
    ref = assert_chip_twin_and_reference_agree(program, images)
    # the thresholds act: with 60% of the maxima the zero policy silences values a ReLU would keep
    plain = lower(lenet, x)
    assert not np.array_equal(numpy_run(plain, images), ref)


def test_integer_clipping_agrees_with_the_torch_model(lenet, digits):
    """Per element, the chip zeroes what the float model zeroes (up to rounding at the threshold)."""
    x = digits.train_x[:256]
    model = apply_clipping(copy.deepcopy(lenet), make_spec(lenet, _thresholds(lenet, x, "neuron", 0.5), granularity="neuron"))
    program = lower(model, x)
    images = digits.test_x[:64]
    _, env = numpy_run(program, images, return_env=True)
    floats = {}
    for name, m in model.named_modules():
        if isinstance(m, ClippedReLU):
            m.register_forward_hook(lambda mod, i, o, name=name: floats.__setitem__(name, (i[0].detach(), o.detach())))
    with torch.no_grad():
        model(images)
    op = program.gemms[0]  # features.0 -> features.1 (later layers add the quantization error of earlier ones)
    pre, _ = floats["features.1"]
    t = model.features[1].threshold.detach()
    codes = torch.from_numpy(env[op.output])
    scale = op.out_qp.scale
    away = (pre > 2 * scale) & ((pre - t).abs() > 2 * scale)  # not within rounding of 0 or of T
    float_zero, int_zero = (pre > t)[away], (codes == 0)[away]
    assert float_zero.any() and (~float_zero).any()
    assert (float_zero == int_zero).double().mean() >= 0.99


def test_residual_add_and_unfused_clips_are_exact(block, digits):
    x = digits.train_x[:128]
    for policy in ("zero", "clamp"):
        ths = _thresholds(block, x, "channel", 0.7)
        model = apply_clipping(copy.deepcopy(block), make_spec(block, ths, policy=policy, granularity="channel"))
        program = lower(model, x)
        clips = [op for op in program.ops if isinstance(op, Clip)]
        assert len(clips) == 2  # after the add (r2) and after the pool (r3); r1 is fused into c1
        assert_chip_twin_and_reference_agree(program, digits.test_x[:48])


def test_zero_policy_sees_values_past_the_8bit_maximum():
    """A fault pushing an output far above the range is zeroed, not saturated to the maximum."""
    op = Gemm(name="l", kind="linear", input="x", output="y", weight=torch.zeros(2, 1, dtype=torch.int8),
              bias=torch.zeros(2, dtype=torch.int64), in_qp=QParams(1.0, 0, False), out_qp=QParams(1.0, 0, False),
              m0=torch.full((2,), 1 << 30), shift=torch.full((2,), 30), lo=0, hi=255,
              clip_codes=torch.tensor(255), clip_policy="zero")
    acc = torch.tensor([[10, 255], [256, 100000], [-5, 7]], dtype=torch.int32)
    assert postprocess(acc, op).tolist() == [[10, 255], [0, 0], [0, 7]]
    op.clip_policy = "clamp"
    op.clip_codes = torch.tensor([100, 255])
    assert postprocess(acc, op).tolist() == [[10, 255], [100, 255], [0, 7]]  # t per output neuron


def test_clipped_program_zeroes_faulty_outputs_on_an_os_chip(lenet, digits):
    x = digits.train_x[:256]
    model = apply_clipping(copy.deepcopy(lenet), make_spec(lenet, _thresholds(lenet, x, "layer", 1.0)))
    plain, clipped = lower(lenet, x), lower(model, x)
    cfg = sa.ArrayConfig(16, 16, "os")
    fm = sa.FaultMap(16, 16).add(row=2, col=12, register="psum", bit=26, value=1)  # not a logit column
    images = digits.test_x

    def deviation(program):  # how far the faulty chip's logits move from the fault-free ones
        return float((program.run(images, cfg, faults=fm).logits - program.run(images, cfg).logits).abs().mean())

    assert deviation(clipped) < 0.5 * deviation(plain)


# --------------------------------------------------------------------------- specs and checkpoints
def test_spec_round_trip_and_checkpoint(lenet, digits, tmp_path):
    x = digits.train_x[:256]
    spec = make_spec(lenet, _thresholds(lenet, x, "neuron"), granularity="neuron", method="test")
    model = apply_clipping(copy.deepcopy(lenet), spec)
    back = clipping_spec(model, method="test")
    assert [l["module"] for l in back["layers"]] == list(clippable_activations(lenet))
    for a, b in zip(spec["layers"], back["layers"]):
        assert torch.equal(a["threshold"], b["threshold"]) and a["shape"] == b["shape"]
    path = save_checkpoint(tmp_path / "c.pt", model, dataset="digits", extra={"clipping": back})
    loaded, meta = load_checkpoint(path)
    assert meta["extra"]["clipping"]["method"] == "test"
    with torch.no_grad():
        assert torch.equal(loaded(digits.test_x[:32]), model(digits.test_x[:32]))
    assert all(isinstance(loaded.get_submodule(l["module"]), ClippedReLU) for l in spec["layers"])


def test_thresholds_of_another_model_are_refused(lenet, digits, tmp_path):
    spec = make_spec(lenet, _thresholds(lenet, digits.train_x[:64], "layer"))
    mlp = build_model("mlp", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="lenet5"):
        apply_clipping(mlp, spec)
    other = copy.deepcopy(spec)
    other["arch"] = None
    with pytest.raises(ValueError, match="not a ReLU module"):
        apply_clipping(mlp, other)
    path = save_checkpoint(tmp_path / "bad.pt", mlp, dataset="digits", extra={"clipping": spec})
    with pytest.raises(CheckpointError, match="clipping thresholds"):
        load_checkpoint(path)


def test_a_model_without_relu_modules_is_refused():
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="no nn.ReLU"):
        clippable_activations(m, (1, 8, 8))
