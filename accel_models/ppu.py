"""The post-processing unit's integer ops beyond bias, requantization and the ReLU clamp.

Every op here reads and writes 8-bit codes (float32 tensors holding exact integers, as the rest of
:mod:`accel_models.program`) and does its arithmetic in int64, so the chip, the fake-quant twin
and a numpy reference agree bit for bit. Each op has

- ``run(xs, rc)``: the integer kernel on the input codes ``xs`` (one tensor per name in
  :meth:`inputs`), ``rc`` the :class:`RunContext` of the batch;
- ``fake(xs, rc)``: the twin's version: the same forward value, with a straight-through gradient
  taken from the float function the op approximates.

Semantics (docs/design.md §5):

- :class:`Lut`: any elementwise function of one activation (sigmoid, hardswish, SiLU, GELU, tanh,
  ELU, leaky ReLU, a standalone BatchNorm, a per-channel scale, a requantization) as a 256-entry
  table per channel, built at lowering from the float function.
- :class:`Mul`: the elementwise product of two activations, requantized with a fixed-point
  multiplier (squeeze-excite gates); :class:`Div`, their quotient with an integer division.
- :class:`Cat`: concatenation of codes that share one quantization.
- :class:`Layout`: data movement (reshape, permute, transpose, expand, select, slice, ...).
- :class:`Constant`: a parameter used as an activation (class token, position embedding).
- :class:`Mean`, :class:`AdaptiveAvgPool`: integer sums, round-half-up division by the count.
- :class:`LayerNorm`, :class:`Softmax`: the fixed-point units described in their docstrings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from accel_models.ppu_kernels import div_codes, layer_norm_rows, lut_codes, lut_flat, mul_codes, softmax_rows
from accel_models.quant import channels_last, requantize, rounding_divide
from sysarray.tensor_memo import TensorMemo

LN_FRACTION_BITS = 16  # fixed-point bits of the normalised value in LayerNorm
LN_GAIN_BITS = 16  # fixed-point bits of LayerNorm's per-channel gain
SOFTMAX_EXP_BITS = 16  # exp table values are round(2**16 * exp(-s * t))
SOFTMAX_LEVELS = 255  # softmax output codes: probability p as round(255 * p), scale 1/255


@dataclass
class RunContext:
    """What a PPU op may need besides its inputs: the batch size (for layouts that expand a
    constant to the batch) and the device of the run."""

    batch: int
    device: torch.device


class _StraightThrough(torch.autograd.Function):
    """Forward: ``value`` in ``x``'s dtype; backward: the gradient passes to ``x`` unchanged. One
    conversion at most, where ``x + (value - x).detach()`` makes two passes over large tensors
    and can round ``value``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.to(x.dtype, copy=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def ste(x: torch.Tensor, forward_value: torch.Tensor) -> torch.Tensor:
    """``forward_value`` (in ``x``'s dtype) in the forward pass, the gradient of ``x`` in the
    backward pass; same shape required."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return forward_value.to(x.dtype)
    return _StraightThrough.apply(x, forward_value)


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x) - x).detach()


def _codes(x: torch.Tensor) -> torch.Tensor:
    """Codes as int64 (the twin's float codes are exact integers; ``round`` guards against -0.0)."""
    return x.detach().round().to(torch.int64)


def _as_codes(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype if like.is_floating_point() else torch.float32)


# --------------------------------------------------------------------------- lookup tables
_FLOAT_TABLES = TensorMemo()  # a Lut's table as the CPU kernel reads it, made once per table
@dataclass
class Lut:
    """``out = table[c, q - qmin]``: an elementwise function on 8-bit codes.

    table: int64 (C, 256) output codes, one row per channel (C = 1: the same for every element);
    slope: float32 (C, 256), the derivative of the float function in codes per code (the twin's
    gradient); axis: the dimension of the channel index in the full value (batch included);
    function: what the table implements, for reports (e.g. ``"aten.gelu"``).
    """

    input: str
    output: str
    table: torch.Tensor
    slope: torch.Tensor
    qmin: int
    axis: int = 1
    function: str = ""

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    def _index(self, q: torch.Tensor) -> torch.Tensor:
        idx = q - self.qmin
        channels = self.table.shape[0]
        if channels > 1:
            shape = [1] * q.dim()
            shape[self.axis] = channels
            idx = idx + (torch.arange(channels, device=q.device) * 256).view(shape)
        return idx

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        q = xs[0]
        if q.device.type != "cpu":
            return self.table.to(q.device).reshape(-1)[self._index(q.to(torch.int64))].to(torch.float32)
        q = q.to(torch.float32)
        channels = self.table.shape[0]
        # one table, or channels innermost in memory: the storage walked in order
        pixels = q.dim() == 4 and channels_last(q) and (channels == 1 or self.axis == 1)
        flat = q.permute(0, 2, 3, 1) if pixels else q.contiguous()
        out = torch.empty_like(flat)
        table = self._float_table()
        if channels == 1:
            lut_flat(flat.view(-1).numpy(), table[0], self.qmin, out.view(-1).numpy(), work=q.numel())
        else:
            view = flat.reshape(-1, channels, 1) if pixels else flat.reshape(math.prod(q.shape[:self.axis]), channels, -1)
            lut_codes(view.numpy(), table, self.qmin, out.view(view.shape).numpy(), work=q.numel())
        return out.permute(0, 3, 1, 2) if pixels else out

    def _float_table(self) -> np.ndarray:
        return _FLOAT_TABLES.get((self.table,), (), lambda: self.table.to(torch.float32).numpy())

    def fake(self, xs, rc: RunContext) -> torch.Tensor:
        q = xs[0]
        idx = self._index(_codes(q))
        value = self.table.to(q.device).reshape(-1)[idx].to(q.dtype)
        slope = self.slope.to(q.device).reshape(-1)[idx].to(q.dtype)
        return value + (q - q.detach()) * slope


# --------------------------------------------------------------------------- binary ops
@dataclass
class BinaryUnit:
    """Two activations ``a`` and ``b`` (codes with zero points ``za``, ``zb``) in, codes out with a
    fixed-point factor ``m0 / 2**shift`` (``multiplier`` as a float, the twin's gradient), the
    output zero point and the clamp ``[lo, hi]``; ``a`` and ``b`` broadcast as torch does."""

    a: str
    b: str
    output: str
    za: int
    zb: int
    m0: int
    shift: int
    zero_point: int
    lo: int
    hi: int
    multiplier: float

    def inputs(self) -> tuple[str, ...]:
        return (self.a, self.b)

    _kernel = None  # the fused CPU kernel of the unit (ppu_kernels), same values as _integer

    def _integer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        a, b = xs
        if a.device.type == "cpu" and a.dtype == b.dtype == torch.float32 and max(a.dim(), b.dim()) <= 4:
            return _binary_on_cpu(type(self)._kernel, a, b, self)
        return self._integer(a.to(torch.int64), b.to(torch.int64)).to(torch.float32)


def _binary_on_cpu(kernel, a: torch.Tensor, b: torch.Tensor, op: BinaryUnit) -> torch.Tensor:
    """``kernel`` (:func:`~accel_models.ppu_kernels.mul_codes` or ``div_codes``) on float32 codes
    ``a`` and ``b`` broadcast together (at most 4 dims); the output is stored like the larger
    operand, which the kernel walks in memory order."""
    a, b = torch.broadcast_tensors(a, b)
    pad = (1,) * (4 - a.dim())
    a, b = a.reshape(*pad, *a.shape) if pad else a, b.reshape(*pad, *b.shape) if pad else b
    # the larger operand (fewest zero strides) sets the memory order; the other follows it
    lead = a if sum(s == 0 for s in a.stride()) <= sum(s == 0 for s in b.stride()) else b
    order = sorted(range(4), key=lambda d: (-lead.stride(d), d))
    out = torch.empty_like(lead, memory_format=torch.preserve_format) if lead.stride().count(0) == 0 else \
        torch.empty(lead.shape, dtype=torch.float32)
    view = lambda t: t.permute(*order).numpy()  # noqa: E731
    kernel(view(a), view(b), op.za, op.zb, op.m0, op.shift, op.zero_point, op.lo, op.hi, view(out), work=out.numel())
    return out.reshape(out.shape[len(pad):]) if pad else out


@dataclass
class Mul(BinaryUnit):
    """``q = clamp(requantize((a - za) * (b - zb), m0, shift) + zero_point, lo, hi)``."""

    _kernel = mul_codes

    def _integer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        prod = (a - self.za) * (b - self.zb)
        m0 = torch.tensor(self.m0, dtype=torch.int64, device=prod.device)
        shift = torch.tensor(self.shift, dtype=torch.int64, device=prod.device)
        return (requantize(prod, m0, shift) + self.zero_point).clamp(self.lo, self.hi)

    def fake(self, xs, rc: RunContext) -> torch.Tensor:
        a, b = xs
        q = self._integer(_codes(a), _codes(b))
        real = (a - self.za) * (b - self.zb) * self.multiplier + self.zero_point
        return torch.clamp(ste(real, q), float(self.lo), float(self.hi))


@dataclass
class Div(BinaryUnit):
    """The quotient: with ``num = (a - za) * m0`` and ``den = (b - zb) * 2**shift``
    (``m0 / 2**shift ~ s_a / (s_b * s_out)``), ``q = clamp(round_half_up(num / den) + zero_point, lo,
    hi)`` in int64; a zero divisor gives ``lo`` or ``hi`` by the numerator's sign (``0 / 0``: the
    zero point)."""

    _kernel = div_codes

    def _integer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        num, den = (a - self.za) * self.m0, b - self.zb
        num, den = torch.broadcast_tensors(num * torch.where(den < 0, -1, 1), den.abs() * (1 << self.shift))
        q = torch.div(2 * num + den, 2 * den.clamp_min(1), rounding_mode="floor")
        q = torch.where(den == 0, torch.sign(num) * (1 << 20), q)  # beyond any clamp, by the sign
        return (q + self.zero_point).clamp(self.lo, self.hi)

    def fake(self, xs, rc: RunContext) -> torch.Tensor:
        a, b = xs
        den = b - self.zb
        safe = torch.where(den.detach() == 0, torch.ones_like(den), den)
        real = (a - self.za) / safe * self.multiplier + self.zero_point
        return torch.clamp(ste(real, self._integer(_codes(a), _codes(b))), float(self.lo), float(self.hi))


@dataclass
class Cat:
    """``torch.cat`` of codes that share one quantization, along ``dim`` (batch included)."""

    parts: tuple[str, ...]
    output: str
    dim: int

    def inputs(self) -> tuple[str, ...]:
        return tuple(self.parts)

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        return torch.cat([x.contiguous() for x in xs], self.dim)

    fake = run


# --------------------------------------------------------------------------- data movement
@dataclass(frozen=True)
class BatchDim:
    """A size that depends on the batch: ``coefficient * batch + offset``."""

    coefficient: int
    offset: int = 0

    def resolve(self, batch: int) -> int:
        return self.coefficient * batch + self.offset


def _resolve(arg, batch: int):
    if isinstance(arg, BatchDim):
        return arg.resolve(batch)
    if isinstance(arg, (list, tuple)):
        return type(arg)(_resolve(a, batch) for a in arg)
    return arg


# Layout ops that only move codes; views become reshapes since a code tensor's memory layout
# (channels-last convolutions) may differ from the float model's.
LAYOUT_OPS = {
    "view": "reshape", "_unsafe_view": "reshape", "reshape": "reshape", "flatten": "flatten",
    "unflatten": "unflatten", "permute": "permute", "transpose": "transpose", "t": "t", "expand": "expand",
    "unsqueeze": "unsqueeze", "squeeze": "squeeze", "select": "select", "slice": "slice", "narrow": "narrow",
    "repeat": "repeat", "movedim": "movedim", "flip": "flip", "roll": "roll", "pixel_shuffle": "pixel_shuffle",
    "pixel_unshuffle": "pixel_unshuffle", "channel_shuffle": "channel_shuffle", "squeeze_copy": "squeeze",
}


@dataclass
class Layout:
    """A data-movement op: ``torch.ops.aten.<op>(x, *args)`` with batch-dependent sizes given as
    :class:`BatchDim`. ``op`` is an aten name with its overload, e.g. ``"permute.default"``."""

    input: str
    output: str
    op: str
    args: tuple = ()

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        fn = _ATEN.get(self.op)
        if fn is None:
            name, overload = self.op.split(".")
            fn = _ATEN[self.op] = getattr(getattr(torch.ops.aten, name), overload)
        return fn(xs[0], *_resolve(self.args, rc.batch))

    fake = run


_ATEN: dict[str, Callable] = {}  # aten overloads by name, looked up once


@dataclass
class Constant:
    """A parameter or buffer used as an activation, as codes (float32, its own shape)."""

    output: str
    codes: torch.Tensor

    def inputs(self) -> tuple[str, ...]:
        return ()

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        return self.codes.to(rc.device)

    fake = run


# --------------------------------------------------------------------------- reductions
@dataclass
class Mean:
    """Codes averaged over ``dims``: ``floor((2 * s + d) / (2 * d))`` with ``s`` the int64 sum and
    ``d`` the count (the quantization is the input's)."""

    input: str
    output: str
    dims: tuple[int, ...]
    keepdim: bool

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    def _count(self, x: torch.Tensor) -> int:
        count = 1
        for d in self.dims:
            count *= x.shape[d]
        return count

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        x = xs[0]
        s = x.to(torch.int64).sum(dim=self.dims, keepdim=self.keepdim)
        return rounding_divide(s, self._count(x)).to(torch.float32)

    def fake(self, xs, rc: RunContext) -> torch.Tensor:
        x = xs[0]
        d = self._count(x)
        s = x.double().sum(dim=self.dims, keepdim=self.keepdim)
        return floor_ste((2 * s + d) / (2 * d)).to(x.dtype)


def adaptive_windows(size: int, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's adaptive-pool windows: output ``i`` averages ``[floor(i*size/out), ceil((i+1)*size/out))``.
    Returns (starts, ends), int64 (out,)."""
    i = torch.arange(out, dtype=torch.int64)
    return torch.div(i * size, out, rounding_mode="floor"), -torch.div(-(i + 1) * size, out, rounding_mode="floor")


@dataclass
class AdaptiveAvgPool:
    """Adaptive average pooling of (N, C, H, W) codes to ``size`` (oh, ow) with torch's window rule
    (:func:`adaptive_windows`): integer window sums, round-half-up division by each window's area."""

    input: str
    output: str
    size: tuple[int, int]

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    def _sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window sums (same dtype as ``x``) and areas (int64 (oh, ow)) from an integral image."""
        (sh, eh), (sw, ew) = (adaptive_windows(x.shape[-2], self.size[0]),
                              adaptive_windows(x.shape[-1], self.size[1]))
        integral = torch.nn.functional.pad(x.cumsum(-2).cumsum(-1), (1, 0, 1, 0))
        dev = x.device
        rows_e, rows_s = integral.index_select(-2, eh.to(dev)), integral.index_select(-2, sh.to(dev))
        sums = (rows_e.index_select(-1, ew.to(dev)) - rows_e.index_select(-1, sw.to(dev))
                - rows_s.index_select(-1, ew.to(dev)) + rows_s.index_select(-1, sw.to(dev)))
        area = (eh - sh)[:, None] * (ew - sw)[None, :]
        return sums, area.to(dev)

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        sums, area = self._sums(xs[0].to(torch.int64))
        return torch.div(2 * sums + area, 2 * area, rounding_mode="floor").to(torch.float32)

    def fake(self, xs, rc: RunContext) -> torch.Tensor:
        x = xs[0]
        sums, area = self._sums(x.double())
        return floor_ste((2 * sums + area) / (2 * area)).to(x.dtype)


# --------------------------------------------------------------------------- normalisation units
def isqrt(v: torch.Tensor) -> torch.Tensor:
    """``floor(sqrt(v))`` of non-negative int64 ``v`` (below 2**52), exactly."""
    r = torch.sqrt(v.double()).floor().to(torch.int64)
    r = r - (r * r > v).to(torch.int64)
    return r + ((r + 1) * (r + 1) <= v).to(torch.int64)


@dataclass
class LayerNorm:
    """LayerNorm over the last dimension (size ``D``) as a fixed-point unit.

    With ``s1 = sum q`` and ``s2 = sum q**2`` over the row (int64), ``d = D*q - s1`` and
    ``v = D*s2 - s1**2 + eps_codes`` (``eps_codes = round(eps * D**2 / s_in**2)``), the normalised
    value ``(x - mean) / sqrt(var + eps)`` equals ``d / sqrt(v)``; the unit computes
    ``n = floor((2 * d * 2**F + r) / (2 * r))`` with ``r = isqrt(v)`` (F = LN_FRACTION_BITS; ``n = 0``
    when ``r = 0``), then ``q_out = clamp(((n * gain[c] + offset[c] + 2**(F+G-1)) >> (F+G)) + z_out,
    lo, hi)`` with ``gain = round(gamma / s_out * 2**G)`` and ``offset = round(beta / s_out * 2**(F+G))``
    (int64 (D,), G = LN_GAIN_BITS). ``float_*`` keep the float parameters for the twin's gradient.
    """

    input: str
    output: str
    eps_codes: int
    gain: torch.Tensor
    offset: torch.Tensor
    zero_point: int
    lo: int
    hi: int
    in_scale: float
    in_zero_point: int
    out_scale: float
    eps: float
    float_weight: torch.Tensor | None = field(default=None, repr=False)
    float_bias: torch.Tensor | None = field(default=None, repr=False)

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    def _integer(self, q: torch.Tensor) -> torch.Tensor:
        """The unit in int64 torch ops (the twin's forward value, CUDA runs; CPU runs take the
        fused kernel ``ppu_kernels.layer_norm_rows``)."""
        q = q.to(torch.int64)
        size = q.shape[-1]
        s1 = q.sum(-1, keepdim=True)
        d = size * q - s1
        r = isqrt(size * (q * q).sum(-1, keepdim=True) - s1 * s1 + self.eps_codes)
        n = torch.div(2 * d * (1 << LN_FRACTION_BITS) + r, (2 * r).clamp_min(1), rounding_mode="floor")
        n = torch.where(r > 0, n, torch.zeros_like(n))
        bits = LN_FRACTION_BITS + LN_GAIN_BITS
        y = n * self.gain.to(q.device) + self.offset.to(q.device) + (1 << (bits - 1))
        return (torch.bitwise_right_shift(y, bits) + self.zero_point).clamp(self.lo, self.hi)

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        x = xs[0]
        if x.device.type != "cpu":
            return self._integer(x).to(torch.float32)
        rows = x.to(torch.float32).contiguous().view(-1, x.shape[-1])
        out = torch.empty_like(rows)
        layer_norm_rows(rows.numpy(), self.eps_codes, self.gain.numpy(), self.offset.numpy(), LN_FRACTION_BITS,
                        LN_GAIN_BITS, self.zero_point, self.lo, self.hi, out.numpy(), work=rows.numel())
        return out.view(x.shape)

    def fake(self, xs, rc: RunContext) -> torch.Tensor:
        x = xs[0]
        q = self._integer(_codes(x))
        real = (x - self.in_zero_point) * self.in_scale
        w = None if self.float_weight is None else self.float_weight.to(x.device, x.dtype)
        b = None if self.float_bias is None else self.float_bias.to(x.device, x.dtype)
        y = torch.nn.functional.layer_norm(real, (x.shape[-1],), w, b, self.eps) / self.out_scale + self.zero_point
        return torch.clamp(ste(y, q), float(self.lo), float(self.hi))


def softmax_table(in_scale: float) -> torch.Tensor:
    """``round(2**SOFTMAX_EXP_BITS * exp(-in_scale * t))`` for code differences t = 0..255 (int64)."""
    t = torch.arange(256, dtype=torch.float64)
    return torch.floor(torch.exp(-in_scale * t) * (1 << SOFTMAX_EXP_BITS) + 0.5).to(torch.int64)


@dataclass
class Softmax:
    """Softmax along ``dim`` as a fixed-point unit: ``t = max(q) - q`` (a code difference, 0..255),
    ``e = table[t]`` (:func:`softmax_table` of the input scale), ``S = sum e``, and the output code
    ``floor((2 * 255 * e + S) / (2 * S))``: the probability in steps of 1/255 (scale 1/255, zero
    point 0, unsigned)."""

    input: str
    output: str
    dim: int
    table: torch.Tensor
    in_scale: float
    in_zero_point: int

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    def _integer(self, q: torch.Tensor) -> torch.Tensor:
        # float64 holds every step exactly (e <= 2**16, sums below 2**53), and the floor of its
        # quotient is exact: a non-integer quotient is at least 1/(2S) from an integer
        t = (q.amax(dim=self.dim, keepdim=True) - q).to(torch.int64)
        e = self.table.to(q.device, torch.float64)[t]
        total = e.sum(dim=self.dim, keepdim=True)
        return torch.floor((2 * SOFTMAX_LEVELS * e + total) / (2 * total))

    def run(self, xs, rc: RunContext) -> torch.Tensor:
        x = xs[0]
        if x.device.type != "cpu":
            return self._integer(x).to(torch.float32)
        moved = x.to(torch.float32).movedim(self.dim, -1)
        rows = moved.contiguous().view(-1, moved.shape[-1])
        out = torch.empty_like(rows)
        softmax_rows(rows.numpy(), self.table.to(torch.int64).numpy(), SOFTMAX_LEVELS, out.numpy(), work=rows.numel())
        return out.view(moved.shape).movedim(-1, self.dim)

    def fake(self, xs, rc: RunContext) -> torch.Tensor:
        x = xs[0]
        p = torch.softmax((x - self.in_zero_point) * self.in_scale, dim=self.dim) * SOFTMAX_LEVELS
        return ste(p, self._integer(_codes(x)))


PPU_OPS = (Lut, Mul, Div, Cat, Layout, Constant, Mean, AdaptiveAvgPool, LayerNorm, Softmax)
