"""The operator set of today's CNNs and vision transformers, lowered from small models written
here: every op is exact between the chip (fast and cycle engines), the fake-quant twin and the
numpy reference, and the program follows the float model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sysarray as sa
from accel_models import FakeQuantProgram, lower
from accel_models.matmul import MatMul
from accel_models.ppu import AdaptiveAvgPool, Cat, LayerNorm, Lut, Mean, Mul, Softmax
from accel_models.program import MaxPool
from tests.accel_models.numpy_program import numpy_run


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        g = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(g))))


class ModernCNN(nn.Module):
    """Shape guard, optional argument, hardswish, SE gate, depthwise conv, cat, BN not after a
    conv, ceil-mode and dilated max pools, non-dividing adaptive pool, spatial mean, LayerNorm,
    GELU, SiLU, dropout and channel shuffle."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.se = SqueezeExcite(8)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 10)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, unused: bool = False):
        if x.shape[-2:] != (8, 8):
            raise ValueError(f"expected 8x8 images, got {tuple(x.shape[-2:])}")
        y = F.hardswish(self.bn(self.c(x)))
        y = self.se(y)
        z = F.silu(self.dw(y))
        y = torch.cat([y, z], 1)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).flatten(1, 2)  # channel shuffle
        y = F.relu(self.bn2(y))
        y = F.max_pool2d(y, 3, 2, ceil_mode=True)
        y = F.max_pool2d(y, 2, 1, padding=1, dilation=2)
        y = F.adaptive_avg_pool2d(y, 3)
        y = y.mean((2, 3))
        y = F.gelu(self.ln(y))
        return self.fc(self.drop(y))


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, pre-norm attention (explicit products
    and softmax, or scaled_dot_product_attention), GELU MLP, head on the class token."""

    def __init__(self, sdpa: bool = False, d: int = 16, heads: int = 2):
        super().__init__()
        self.sdpa, self.heads, self.scale = sdpa, heads, (d // heads) ** -0.5
        self.patch = nn.Conv2d(1, d, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.5)
        self.ln1, self.ln2, self.norm = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, 10)

    def attention(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            a = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            y = a @ v
        return self.proj(y.transpose(1, 2).reshape(B, N, C))

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.attention(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.norm(x)[:, 0])


class DenseStyle(nn.Module):
    """DenseNet order (BatchNorm -> ReLU -> conv, so the BatchNorm follows no conv), concatenated
    features, PReLU, functional average pools, leaky ReLU, ELU and tanh summed."""

    def __init__(self):
        super().__init__()
        self.c0, self.bn, self.c1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=1)
        self.bn2, self.act, self.fc = nn.BatchNorm2d(12), nn.PReLU(12), nn.Linear(12 * 2 * 2, 10)

    def forward(self, x):
        x = self.c0(x)
        x = torch.cat([x, self.c1(F.relu(self.bn(x), inplace=True))], 1)
        x = F.avg_pool2d(self.act(self.bn2(x)), 2)
        x = F.leaky_relu(x, 0.1) + F.elu(x) + torch.tanh(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (2, 2)), 1))


class ShuffleStyle(nn.Module):
    """ShuffleNet-v2 unit: reflect padding, channel split with chunk, cat, channel shuffle with
    view/transpose, a read of ``x.ndim``, a hand-written SiLU and ``1 - x``."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect")
        self.b, self.fc = nn.Conv2d(4, 4, 1), nn.Linear(8, 10)

    def forward(self, x):
        a, b = self.c(x).chunk(2, dim=1)
        x = torch.cat([a, F.relu(self.b(b))], 1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        if x.ndim == 4:
            x = x.mean([2, 3], keepdim=True)
        x = torch.sigmoid(x) * x + (1 - x)
        return self.fc(x.view(x.size(0), -1))


class ConvNeXtStyle(nn.Module):
    """ConvNeXt block: patchify stem, depthwise 7x7, permute to channels-last, LayerNorm, linear
    layers over (N, H, W, C), GELU, layer scale ``gamma * x``, permute back, residual."""

    def __init__(self):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(1, 16, 2, 2), nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.ln, self.norm = nn.LayerNorm(16), nn.LayerNorm(16)
        self.pw1, self.pw2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 10)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.ln(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(self.norm(x.mean((-2, -1))))


class TwoHeads(nn.Module):
    """DeiT's inference output: the average of two heads (the program's output is then codes)."""

    def __init__(self):
        super().__init__()
        self.f, self.h1, self.h2 = nn.Linear(64, 16), nn.Linear(16, 10), nn.Linear(16, 10)

    def forward(self, x):
        z = F.hardtanh(self.f(x.flatten(1)), -1, 1)
        return (self.h1(z) + self.h2(z)) / 2


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


MODELS = {
    "cnn": (ModernCNN, (Lut, Mul, Cat, AdaptiveAvgPool, Mean, LayerNorm, MaxPool)),
    "vit": (TinyViT, (LayerNorm, Softmax, MatMul)),
    "vit-sdpa": (lambda: TinyViT(sdpa=True), (LayerNorm, Softmax, MatMul)),
    "dense": (DenseStyle, (Lut, Cat)),
    "shuffle": (ShuffleStyle, (Cat, Mean, Mul, Lut)),
    "convnext": (ConvNeXtStyle, (LayerNorm, Lut, Mean)),
    "two-heads": (TwoHeads, (Lut,)),
}


@pytest.fixture(scope="module")
def lowered():
    torch.manual_seed(0)
    out = {}
    for name, (build, _) in MODELS.items():
        model = _randomize(build())
        x = torch.randn(96, 1, 8, 8)
        out[name] = (model, lower(model, x[:64]), x[64:])
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_lowers_to_the_expected_units(lowered, name):
    _, program, _ = lowered[name]
    kinds = {type(op) for op in program.ops}
    for kind in MODELS[name][1]:
        assert kind in kinds, kind.__name__


@pytest.mark.parametrize("name", list(MODELS))
def test_chip_twin_and_numpy_agree_bit_for_bit(lowered, name):
    model, program, x = lowered[name]
    res = program.run(x, sa.ArrayConfig(8, 8))
    with torch.no_grad():
        twin = FakeQuantProgram(program)(x)
    torch.testing.assert_close(twin, res.logits, rtol=0, atol=0)
    ref = program.logits_from(torch.from_numpy(numpy_run(program, x)))
    np.testing.assert_array_equal(ref.numpy(), res.logits.numpy())
    with torch.no_grad():
        agree = float((res.predictions == model(x).argmax(1)).double().mean())
    assert agree >= 0.75, agree


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dataflow", ["WS", "OS", "IS"])
def test_cycle_engine_equals_fast_engine_with_faults_in_every_register(lowered, name, dataflow):
    _, program, x = lowered[name]
    cfg = sa.ArrayConfig(4, 4, dataflow=dataflow)
    faults = sa.FaultMap(4, 4)
    for i, (reg, bit, value) in enumerate([("weight", 6, 1), ("act", 3, 0), ("psum", 12, 1), ("psum", 2, 0)]):
        faults = faults.add(i % 4, (i * 3) % 4, reg, bit, value)
    fast = program.run(x[:2], cfg, faults, engine="fast", count_changes=False)
    cycle = program.run(x[:2], cfg, faults, engine="cycle", count_changes=False)
    torch.testing.assert_close(fast.logits, cycle.logits, rtol=0, atol=0)
    clean = program.run(x[:2], cfg)
    assert not torch.equal(fast.logits, clean.logits)  # the faults reach the output


def test_attention_products_run_on_the_array_and_are_hit_by_faults(lowered):
    _, program, x = lowered["vit"]
    cfg = sa.ArrayConfig(4, 4)
    res = program.run(x[:4], cfg, sa.FaultMap(4, 4).add(0, 0, "psum", 20, 1))
    layers = {l.name: l for l in res.layers}
    products = [op for op in program.ops if isinstance(op, MatMul)]
    assert len(products) == 2
    for op in products:
        assert layers[op.name].kind == "matmul" and layers[op.name].cycles > 0
        assert layers[op.name].changed > 0


def test_lookup_tables_follow_their_functions(lowered):
    _, program, _ = lowered["cnn"]
    tables = [op for op in program.ops if isinstance(op, Lut)]
    assert any("hardswish" in op.function for op in tables) and any("silu" in op.function for op in tables)
    for op in tables:
        assert op.table.shape[-1] == 256 and op.table.dtype == torch.int64


def test_a_shape_guard_with_a_wrong_size_is_resolved_at_capture():
    model = _randomize(ModernCNN())
    with pytest.raises(Exception):
        model(torch.randn(2, 1, 9, 9))
    program = lower(model, torch.randn(16, 1, 8, 8))  # the guard passed at capture: no control flow remains
    assert program.input_shape == (1, 8, 8)


@pytest.mark.skipif(__import__("numba").config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads (one core here)")
def test_normalisation_and_product_kernels_parallel_equal_serial(lowered):
    """LayerNorm, softmax and the activation products' fused kernels (accel_models.ppu_kernels),
    compiled with and without threads, on a faulty chip."""
    from tests.accel_models.test_program import _kernels

    _, program, x = lowered["vit"]
    cfg = sa.ArrayConfig(4, 4)
    faults = sa.FaultMap(4, 4).add(0, 1, "psum", 17, 1).add(2, 2, "act", 1, 1)
    with _kernels(parallel=False):
        serial = program.run(x, cfg, faults, count_changes=False).logits
    with _kernels(parallel=True):
        parallel = program.run(x, cfg, faults, count_changes=False).logits
    torch.testing.assert_close(serial, parallel, rtol=0, atol=0)
