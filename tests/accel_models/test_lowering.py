"""Lowering torch models to the integer program (accel_models.lowering): what it builds, the
quantization it chooses, BatchNorm folding, and the errors for what it cannot express."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import sysarray as sa
from accel_models.lowering import UnsupportedModelError, lower, supported_layers
from accel_models.ppu import Lut
from accel_models.program import AvgPool, MaxPool, QuantizeInput
from accel_models.quant import multiplier_value
from tests.accel_models.conftest import MODEL_NAMES, LeNet, SmallResNet
from tests.accel_models.numpy_program import numpy_run


def op_types(program) -> list[str]:
    return [type(op).__name__ for op in program.ops]


def layer_count(model: nn.Module, *types) -> int:
    return sum(isinstance(m, types) for m in model.modules())


# --------------------------------------------------------------------------- what lowering builds
def test_lowered_op_sequences(zoo):
    """Activations after a conv/linear/add are fused; a ReLU after a pool is a stand-alone clamp;
    BatchNorm and Dropout leave no op."""
    assert op_types(zoo["lenet"].program) == [
        "QuantizeInput", "Gemm", "MaxPool", "Gemm", "MaxPool", "Clamp", "Layout", "Gemm", "Gemm"]
    assert op_types(zoo["mlp"].program) == ["QuantizeInput", "Layout", "Gemm", "Gemm", "Gemm"]
    assert op_types(zoo["sequential"].program) == ["QuantizeInput", "Layout", "Gemm", "Gemm"]
    resnet = op_types(zoo["resnet"].program)
    assert resnet.count("Add") == 2 and resnet.count("Gemm") == 8 and "Clamp" not in resnet
    assert resnet[-3:] == ["AvgPool", "Layout", "Gemm"]
    assert op_types(zoo["dwsep"].program) == [
        "QuantizeInput", "Gemm", "MaxPool", "Gemm", "Gemm", "AvgPool", "Layout", "Gemm"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_gemm_per_conv_and_linear(zoo, name):
    f = zoo[name]
    assert len(f.program.gemms) == layer_count(f.model, nn.Conv2d, nn.Linear)
    assert f.program.input_shape == (1, 8, 8) and f.program.num_classes == 10
    assert [op.kind for op in f.program.gemms].count("conv") == layer_count(f.model, nn.Conv2d)


def test_layer_geometry_is_kept(zoo):
    dw = zoo["dwsep"].program.gemms[1]
    assert dw.kind == "conv" and dw.groups == 16 and tuple(dw.weight.shape) == (16, 1, 3, 3)
    assert dw.padding == (1, 1) and dw.stride == (1, 1)
    pools = [op for op in zoo["dwsep"].program.ops if isinstance(op, (MaxPool, AvgPool))]
    assert [(p.kernel, p.stride, p.padding) for p in pools] == [((3, 3), (2, 2), (1, 1))] * 2
    strided = [op for op in zoo["resnet"].program.gemms if op.stride == (2, 2)]
    assert len(strided) == 2  # layer2's first conv and its 1x1 shortcut
    adaptive = [op for op in zoo["resnet"].program.ops if isinstance(op, AvgPool)][0]
    assert adaptive.kernel == (4, 4) and adaptive.stride == (4, 4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_quantization_invariants(zoo, name):
    """Weights int8 symmetric per channel, int biases at s_in*s_w with the zero point folded in,
    31-bit multipliers, uint8 after ReLU, and the last layer left as int32 accumulators."""
    program = zoo[name].program
    for op in program.gemms:
        n = op.out_channels
        w = op.weight.reshape(n, -1).to(torch.int64)
        assert op.weight.dtype == torch.int8 and int(w.abs().max()) <= 127
        assert (w.abs().amax(dim=1) == 127).all()  # each channel's largest weight uses the full range
        sw = op.acc_scale / op.in_qp.scale
        fw = op.float_weight.reshape(n, -1).double()
        assert ((fw - w.double() * sw[:, None]).abs() <= sw[:, None] / 2 + 1e-12).all()
        assert op.bias.dtype == torch.int64
        expected_bias = torch.round(op.float_bias.double() / op.acc_scale).to(torch.int64) - op.in_qp.zero_point * w.sum(1)
        assert torch.equal(op.bias, expected_bias)
        if op.out_qp is None:
            assert op is program.gemms[-1]
            continue
        assert ((op.m0 >= 2**30) & (op.m0 < 2**31)).all() and (op.shift >= 1).all()
        for a, m0, shift in zip(op.acc_scale.tolist(), op.m0.tolist(), op.shift.tolist()):
            real = a / op.out_qp.scale
            assert abs(multiplier_value(m0, shift) - real) <= real * 2.0**-30
        assert op.out_qp.qmin <= op.lo <= op.hi <= op.out_qp.qmax
        if op.activation in ("relu", "relu6"):
            assert not op.out_qp.signed and op.out_qp.zero_point == 0 and op.lo == 0
    assert program.gemms[-1].out_qp is None
    first = program.ops[0]
    assert isinstance(first, QuantizeInput) and not first.qp.signed  # digits pixels are >= 0


def test_relu6_clamps_at_six(zoo):
    fc2 = zoo["mlp"].program.gemms[1]  # followed by F.relu6 in forward
    qp = fc2.out_qp
    assert not qp.signed and fc2.lo == 0
    assert fc2.hi == min(qp.qmax, qp.quantize_value(6.0))
    stem = zoo["dwsep"].program.gemms[0]  # followed by nn.ReLU6
    assert stem.activation == "relu6" and stem.hi == min(stem.out_qp.qmax, stem.out_qp.quantize_value(6.0))


def test_functional_relu6_is_labelled_relu6(zoo):
    assert zoo["mlp"].program.gemms[1].activation == "relu6"


def test_functional_forms_lower_exactly():
    """torch.relu, x.relu(), F.max_pool2d, F.adaptive_avg_pool2d, torch.add, x.reshape(x.shape[0], -1),
    nn.Identity and .contiguous() lower, and the program equals the numpy reference on every engine."""

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
            self.skip = nn.Identity()
            self.fc = nn.Linear(6 * 2 * 2, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = F.max_pool2d(x, 2)
            y = self.conv2(x).relu()
            x = torch.add(y, self.skip(x))
            x = F.adaptive_avg_pool2d(x, 2).contiguous()
            return self.fc(x.reshape(x.shape[0], -1))

    torch.manual_seed(0)
    model = Functional().eval()
    x = torch.rand(64, 1, 8, 8)
    program = lower(model, x)
    assert op_types(program) == ["QuantizeInput", "Gemm", "MaxPool", "Gemm", "Add", "AvgPool", "Layout", "Gemm"]
    ref = numpy_run(program, x)
    for cfg, engine in [(sa.ArrayConfig(4, 4), "fast"), (sa.ArrayConfig(4, 4, "os"), "cycle")]:
        got = program.execute(x, sa.Chip(cfg, engine=engine))
        np.testing.assert_array_equal(got.numpy(), ref)
    logits = program.logits_from(torch.from_numpy(ref))
    with torch.no_grad():
        expected = model(x).double()
    assert float((logits - expected).abs().max()) < 0.05 * float(expected.abs().max())


def test_percentile_calibration_clips_ranges(zoo, digits):
    model = zoo["lenet"].model
    minmax = zoo["lenet"].program
    clipped = lower(model, digits.train_x, percentile=99.0)
    assert clipped.meta["percentile"] == 99.0 and clipped.meta["calibration_images"] == digits.train_x.shape[0]
    narrower = [c.out_qp.scale < m.out_qp.scale for c, m in zip(clipped.gemms[:-1], minmax.gemms[:-1])]
    assert all(narrower)
    pred = torch.from_numpy(numpy_run(clipped, digits.test_x)).argmax(1)
    assert float((pred == digits.test_y).double().mean()) >= zoo["lenet"].float_acc - 0.03


@pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="needs torch's fbgemm engine")
def test_agrees_with_torch_ao_fbgemm_reference(zoo, digits):
    """An independent check: torch's own int8 post-training quantization of the same small CNN."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    f = zoo["lenet"]
    old_engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_fx(copy.deepcopy(f.model).eval(), get_default_qconfig_mapping("fbgemm"),
                                  example_inputs=(digits.train_x[:1],))
            with torch.no_grad():
                prepared(digits.train_x)
                torch_q = convert_fx(prepared)(digits.test_x)
    finally:
        torch.backends.quantized.engine = old_engine
    ours = f.program.logits_from(torch.from_numpy(numpy_run(f.program, digits.test_x))).float()
    with torch.no_grad():
        fl = f.model(digits.test_x)
    assert float((ours.argmax(1) == torch_q.argmax(1)).double().mean()) >= 0.98
    # Both are int8 approximations of the float logits; ours (int32 logits) is no worse on average.
    assert float((ours - fl).abs().mean()) <= float((torch_q - fl).abs().mean())


# --------------------------------------------------------------------------- BatchNorm folding
def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


class _BNVariants(nn.Module):
    """Conv with and without bias, BN without affine parameters, BatchNorm1d after a Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4, affine=False)
        self.c2 = nn.Conv2d(4, 4, 3, groups=4, bias=False)
        self.b2 = nn.BatchNorm2d(4, eps=1e-3)
        self.fc = nn.Linear(4 * 6 * 6, 10)
        self.b3 = nn.BatchNorm1d(10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.b3(self.fc(x.flatten(1)))


@pytest.mark.parametrize("build", [LeNet, SmallResNet, _BNVariants], ids=["lenet", "resnet", "variants"])
def test_batchnorm_after_a_layer_is_folded(build, digits):
    torch.manual_seed(0)
    model = _randomize_bn(build(), seed=1).eval()
    program = lower(model, digits.train_x[:256])
    # Folded: no BatchNorm is left as a lookup table, and the chip follows the float model.
    assert not [op for op in program.ops if isinstance(op, Lut)]
    x = digits.test_x[:128]
    res = program.run(x, sa.ArrayConfig(8, 8))
    with torch.no_grad():
        agree = float((res.predictions == model(x).argmax(1)).double().mean())
    assert agree >= 0.9


@pytest.mark.parametrize("name", ["lenet", "mlp", "resnet", "dwsep"])
def test_lowering_leaves_the_users_model_alone(zoo, digits, name):
    model = zoo[name].model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lower(model, digits.train_x[:64])
    # lower() folds a copy: the user's model keeps its BatchNorm layers and weights.
    assert layer_count(model, nn.BatchNorm1d, nn.BatchNorm2d) > 0 or name == "mlp"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- unsupported models
class _WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(64, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = x.flatten(1)
        x = self.lstm(x)[0]  # an unbatched sequence of N steps
        return self.fc(x)


class _SigmoidMethod(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).sigmoid())


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            x = x * 2
        return self.fc(x.flatten(1))


class _View3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(x.view(x.size(0), 4, 16)).mean(1)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x, y):
        return self.fc(x.flatten(1)) + y


def _seq(*layers):
    return nn.Sequential(*layers)


UNSUPPORTED_LAYERS = {
    # name -> (model, words the message must contain: module path, op, reason)
    "lstm": (_WithLSTM, ["torch.export cannot capture _WithLSTM"]),
    "conv-transpose": (lambda: _seq(nn.ConvTranspose2d(1, 2, 3), nn.Flatten(), nn.Linear(200, 10)),
                       ["0 (ConvTranspose2d)", "transpose"]),
    "dilation": (lambda: _seq(nn.Conv2d(1, 2, 3, dilation=2), nn.Flatten(), nn.Linear(32, 10)), ["0 (Conv2d)", "dilat"]),
    "avgpool-exclude-pad": (lambda: _seq(nn.AvgPool2d(3, padding=1, count_include_pad=False), nn.Flatten(), nn.Linear(9, 10)),
                            ["0 (AvgPool2d)", "count_include_pad=True"]),
    "data-dependent": (_DataDependent, ["torch.export cannot capture _DataDependent"]),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED_LAYERS))
def test_unsupported_construct_names_its_module_and_reason(case, digits):
    build, words = UNSUPPORTED_LAYERS[case]
    with pytest.raises(UnsupportedModelError) as info:
        lower(build(), digits.train_x[:32])
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in msg, msg


class _SeveralProblems(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, dilation=2)
        self.b = nn.ConvTranspose2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4 + 2 * 10 * 10, 10)

    def forward(self, x):
        y = torch.cat([self.a(x).flatten(1), self.b(x).flatten(1)], 1)
        return self.fc(y)


def test_every_unsupported_construct_is_reported_at_once(digits):
    with pytest.raises(UnsupportedModelError) as info:
        lower(_SeveralProblems(), digits.train_x[:32])
    msg = str(info.value)
    assert "2 constructs" in msg, msg
    for word in ("a (Conv2d)", "dilat", "b (ConvTranspose2d)", "conv_transpose2d", "supported_layers()"):
        assert word in msg, msg


def test_a_construct_after_an_unsupported_one_is_examined_too(digits):
    model = _seq(nn.Conv2d(1, 2, 3, dilation=2), nn.ConvTranspose2d(2, 2, 3), nn.Flatten(), nn.Linear(72, 10))
    with pytest.raises(UnsupportedModelError) as info:
        lower(model, digits.train_x[:32])
    msg = str(info.value)
    assert "2 constructs" in msg and "0 (Conv2d)" in msg and "1 (ConvTranspose2d)" in msg, msg


def test_supported_layers_lists_the_registry():
    names = supported_layers()
    for op in ("aten.conv2d", "aten.linear", "aten.relu", "aten.max_pool2d", "aten.avg_pool2d", "aten.adaptive_avg_pool2d",
               "aten.mean", "aten.cat", "aten.mul", "aten.add", "aten.layer_norm", "aten.softmax", "aten.matmul",
               "aten.scaled_dot_product_attention", "aten.permute", "aten.reshape", "aten.batch_norm", "aten.dropout"):
        assert op in names, op
    assert any("lookup table" in n for n in names)


@pytest.mark.parametrize("model,words", [
    (lambda: _seq(nn.Flatten(), nn.Linear(64, 10), nn.ReLU()), None),
    (lambda: _seq(nn.MaxPool2d(2), nn.Flatten()), ["no convolution or linear layer"]),
], ids=["ends-in-relu", "no-gemm"])
def test_model_endings(model, words, digits):
    if words is None:  # any ending is fine: the output codes are dequantized into logits
        program = lower(model(), digits.train_x[:64])
        assert program.output_qp is not None
        assert program.run(digits.test_x[:8], sa.ArrayConfig(4, 4)).logits.shape == (8, 10)
        return
    with pytest.raises(UnsupportedModelError) as info:
        lower(model(), digits.train_x[:32])
    for word in words:
        assert word in str(info.value)


def test_two_input_model_gives_a_clear_error(digits):
    with pytest.raises(UnsupportedModelError, match="exactly one tensor|capture"):
        lower(_TwoInputs(), digits.train_x[:32])


def test_conv_classifier_head_followed_by_flatten_lowers(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 6), nn.Flatten()).eval()
    program = lower(model, digits.train_x[:256])
    assert program.num_classes == 10
    res = program.run(digits.test_x[:16], sa.ArrayConfig(4, 4))
    assert res.logits.shape == (16, 10)
    np.testing.assert_array_equal(program.logits_from(torch.from_numpy(numpy_run(program, digits.test_x[:16]))).numpy(),
                                  res.logits.numpy())


def test_conv_classifier_head_without_flatten_is_refused_or_correct(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 6)).eval()
    try:
        program = lower(model, digits.train_x[:256])
    except UnsupportedModelError:
        return  # refusing it clearly is fine
    assert program.num_classes == 10
    res = program.run(digits.test_x[:16], sa.ArrayConfig(4, 4))
    assert res.logits.shape == (16, 10) and res.predictions.shape == (16,)


def test_bad_arguments_of_lower(digits):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        lower(lambda x: x, digits.train_x)
    with pytest.raises(ValueError, match="calibration"):
        lower(LeNet(), digits.train_x.to(torch.int64))
    with pytest.raises(ValueError, match="calibration"):
        lower(LeNet(), digits.train_x.numpy())
