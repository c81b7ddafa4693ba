"""The fake-quant twin's fused layer step against the plain autograd formula it stands for.

:class:`accel_models.fakequant.FakeQuantProgram` computes a layer's requantization, clamp and
their straight-through gradient in one custom autograd step (:mod:`accel_models.twin_kernels`
backward). ``reference_gemm`` below writes the same layer as ordinary torch ops, each rounding
decision a straight-through estimator; the twin must give the same forward codes bit for bit
and the same gradients up to float summation order, with and without a faulty chip's hook.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from accel_models.fakequant import FakeQuantProgram, _integer_gemm, sums_exceed_f32
from accel_models.ppu import ste
from accel_models.quant import WEIGHT_QMAX, requantize
from mitigation.fat import chip_hook
from sysarray import ArrayConfig, FaultMap
from tests.accel_models.conftest import MODEL_NAMES


def reference_gemm(self, x, op, hook, codes=None):
    """One Gemm op of the twin as plain autograd ops (forward codes exact, gradients straight-through);
    it derives its own codes from the parameters (``codes``, the twin's, is not read)."""
    w = self.weights[self.key(op)]
    flat = w.reshape(w.shape[0], -1)
    flat64 = flat.detach().double()
    sw = flat64.abs().amax(dim=1).clamp_min(1e-12) / WEIGHT_QMAX
    codes = torch.round(flat64 / sw[:, None]).clamp(-WEIGHT_QMAX, WEIGHT_QMAX)
    wq = ste(flat / sw[:, None].float(), codes).reshape(w.shape)
    s_in, z_in = op.in_qp.scale, op.in_qp.zero_point
    acc_scale = s_in * sw
    b = self.biases[self.key(op)]
    bq = ste(b / acc_scale.float(), torch.round(b.detach().double() / acc_scale)) - z_in * wq.reshape(
        wq.shape[0], -1).sum(dim=1)
    wide = sums_exceed_f32(float(wq.detach().abs().reshape(wq.shape[0], -1).sum(dim=1).max()), op)
    bq = bq.double() if wide else bq
    acc = _integer_gemm(x, wq, op)
    if wide:
        acc = ste(acc.double(), _integer_gemm(x.detach().double(), wq.detach().double(), op))
    if hook is not None:
        assert op.in_order is None and op.out_order is None  # plain programs here
        y = hook(op, x, wq, acc)
        if y is not acc:
            acc = ste(acc.double(), y.double())
    shape = (1, -1) if op.kind == "linear" else (1, -1, 1, 1)
    acc = acc + bq.reshape(shape)
    if op.out_qp is None:
        return acc.double() * acc_scale.reshape(shape)
    mult = acc_scale / op.out_qp.scale
    mant, exp = torch.frexp(mult)
    m0 = torch.round(mant * 2.0**31).to(torch.int64)
    shift = (31 - exp).to(torch.int64)
    carry = m0 == (1 << 31)
    m0, shift = torch.where(carry, m0 // 2, m0), torch.where(carry, shift - 1, shift)
    q_int = requantize(acc.detach().round().to(torch.int64), m0.reshape(shape), shift.reshape(shape))
    q = ste(acc * mult.to(acc.dtype).reshape(shape), q_int) + op.out_qp.zero_point
    out = torch.clamp(q, float(op.lo), float(op.hi))
    if op.clip_codes is not None:
        t = op.clip_codes.to(q.dtype).unsqueeze(0)
        out = torch.minimum(out, t) if op.clip_policy == "clamp" else torch.where(
            q.detach() <= t, out, torch.full_like(out, float(op.out_qp.zero_point)))
    return out.to(x.dtype)


def logits_and_grads(twin, images, labels, hook=None):
    twin.zero_grad()
    logits = twin(images, gemm_hook=hook)
    F.cross_entropy(logits.float(), labels).backward()
    grads = {f"w.{k}": p.grad.clone() for k, p in twin.weights.items()}
    grads.update({f"b.{k}": p.grad.clone() for k, p in twin.biases.items()})
    return logits.detach(), grads


def assert_same_as_reference(program, images, labels, monkeypatch, hook=None):
    twin = FakeQuantProgram(program)
    logits, grads = logits_and_grads(twin, images, labels, hook)
    with monkeypatch.context() as m:
        m.setattr(FakeQuantProgram, "_gemm", reference_gemm)
        ref_logits, ref_grads = logits_and_grads(twin, images, labels, hook)
    assert torch.equal(logits, ref_logits)
    for key, g in grads.items():
        torch.testing.assert_close(g, ref_grads[key], rtol=1e-4, atol=1e-6, msg=key)
        assert float(ref_grads[key].abs().sum()) == 0 or float(g.abs().sum()) > 0, key


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_twin_equals_the_autograd_formula(zoo, digits, monkeypatch, name):
    assert_same_as_reference(zoo[name].program, digits.train_x[:96], digits.train_y[:96], monkeypatch)


@pytest.mark.parametrize("name", ["lenet", "resnet", "dwsep"])
def test_twin_on_a_faulty_chip_equals_the_autograd_formula(zoo, digits, monkeypatch, name):
    # stuck psum bits up to bit 30: sums float32 cannot hold, and sums it can
    cfg = ArrayConfig(8, 8, "ws")
    fm = FaultMap.random(cfg, 0.1, registers=("psum",), seed=3)
    fm = fm.add(0, 1, "psum", 30, 1).add(2, 0, "psum", 12, 1)
    assert_same_as_reference(zoo[name].program, digits.train_x[:64], digits.train_y[:64], monkeypatch,
                             chip_hook(cfg, fm))


@pytest.mark.parametrize("policy", ["clamp", "zero"])
def test_twin_with_clipped_layers_equals_the_autograd_formula(zoo, digits, monkeypatch, policy):
    program = zoo["lenet"].program
    ops = []
    for op in program.ops:
        if op in program.gemms and op.out_qp is not None:
            # thresholds inside the codes' range in some channels, at its top in others
            n = op.out_channels
            codes = torch.where(torch.arange(n) % 2 == 0, torch.tensor(float(op.hi)), torch.tensor(float(
                (op.lo + op.hi) // 2)))
            codes = codes.reshape(n, 1, 1) if op.kind == "conv" else codes  # broadcast against one sample
            op = dataclasses.replace(op, clip_codes=codes, clip_policy=policy)
        ops.append(op)
    clipped = dataclasses.replace(program, ops=ops, meta=dict(program.meta))
    assert_same_as_reference(clipped, digits.train_x[:64], digits.train_y[:64], monkeypatch)


def test_a_layer_whose_float32_sums_could_round_runs_in_float64(digits, monkeypatch):
    # a hidden layer of 1000 high codes into weights of one sign and about one magnitude: sums past
    # 2**24, where float32 rounds to even; the twin must keep its logits exact (float64 GEMM)
    from accel_models.lowering import lower
    from tests.accel_models.numpy_program import numpy_run

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.rand(1000, 64) * 0.02 + 0.01)
        model[1].bias.fill_(0.5)
        model[3].weight.copy_(0.04 + 0.01 * torch.rand(10, 1000))
    program = lower(model.eval(), digits.train_x[:128])
    last = program.gemms[-1]
    assert sums_exceed_f32(float(last.weight.abs().sum(dim=1).max()), last)
    assert not sums_exceed_f32(float(program.gemms[0].weight.abs().sum(dim=1).max()), program.gemms[0])
    images = digits.test_x[:64]
    exact = torch.from_numpy(numpy_run(program, images)).double()
    assert float(exact.abs().max()) > 1 << 24
    with torch.no_grad():
        logits = FakeQuantProgram(program)(images)
    assert float((logits.double() / last.acc_scale - exact).abs().max()) < 1e-6
    assert_same_as_reference(program, digits.train_x[:64], digits.train_y[:64], monkeypatch)


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from([(2, 3, 4, 5), (1, 8, 3, 3), (5, 7)]), channels_last=st.booleans(),
       za=st.integers(-128, 255), zb=st.integers(-128, 255), ma=st.integers(1, 1 << 21), mb=st.integers(1, 1 << 21),
       zp=st.integers(-128, 255), lo=st.integers(-128, 64), width=st.integers(0, 255), seed=st.integers(0, 2**31 - 1))
def test_fused_residual_add_equals_its_autograd_formula(shape, channels_last, za, zb, ma, mb, zp, lo, width, seed):
    # the one-pass add (CPU float32 codes of one shape) against the torch formula that other inputs take
    from accel_models import fakequant
    from accel_models.program import Add

    gen = torch.Generator().manual_seed(seed)
    op = Add("a", "b", "out", za, zb, ma, mb, zp, lo, lo + width)
    a = torch.randint(-128, 256, shape, generator=gen).float()
    b = torch.randint(-128, 256, shape, generator=gen).float()
    if channels_last and len(shape) == 4:
        a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=gen)
    outs = []
    for fused in (True, False):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = fakequant.fake_add(x, y, op) if fused else fakequant._add_formula(x, y, op)
        out.backward(grad)
        outs.append((out.detach(), x.grad, y.grad))
    (o1, ga1, gb1), (o2, ga2, gb2) = outs
    assert torch.equal(o1, o2)
    torch.testing.assert_close(ga1, ga2, rtol=1e-6, atol=0)
    torch.testing.assert_close(gb1, gb2, rtol=1e-6, atol=0)
