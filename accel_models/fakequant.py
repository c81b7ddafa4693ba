"""The fake-quant twin: the integer program evaluated in torch floats with straight-through
rounding, so it can be trained and stays within one LSB of the integer program.

Codes are carried as float tensors holding integers. Weights are trainable float parameters,
quantized per output channel on every forward (``round`` with a straight-through gradient);
activation quantization parameters stay those of the program. ``gemm_hook(op, a, w)`` lets
fault-aware training replace a layer's exact accumulators with a faulty chip's: the forward
value becomes the chip's, the gradient stays the fault-free one.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from accel_models.program import ADD_SHIFT, Add, AvgPool, Clamp, Flatten, Gemm, MaxPool, Program, QuantizeInput
from accel_models.quant import WEIGHT_QMAX, requantize


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half up in the forward pass, identity gradient."""
    return x + (torch.floor(x + 0.5) - x).detach()


def ste(x: torch.Tensor, forward_value: torch.Tensor) -> torch.Tensor:
    """``forward_value`` in the forward pass, the gradient of ``x`` in the backward pass."""
    return x + (forward_value.to(x.dtype) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x) - x).detach()


GemmHook = Callable[[Gemm, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FakeQuantProgram(nn.Module):
    """Trainable float twin of a :class:`Program` (weights and biases are parameters)."""

    def __init__(self, program: Program):
        super().__init__()
        self.program = program
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for op in program.gemms:
            key = self.key(op)
            self.weights[key] = nn.Parameter(op.float_weight.detach().clone().float())
            self.biases[key] = nn.Parameter(op.float_bias.detach().clone().float())

    @staticmethod
    def key(op: Gemm) -> str:
        return op.name.replace(".", "_")

    def quantized_weight(self, op: Gemm) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer weight codes (float, STE) and per-channel scales (float64, detached), rounded
        exactly as :func:`accel_models.quant.quantize_weight` does."""
        w = self.weights[self.key(op)]
        flat = w.reshape(w.shape[0], -1)
        flat64 = flat.detach().double()
        scale = flat64.abs().amax(dim=1).clamp_min(1e-12) / WEIGHT_QMAX
        codes = torch.round(flat64 / scale[:, None]).clamp(-WEIGHT_QMAX, WEIGHT_QMAX)
        q = ste(flat / scale[:, None].float(), codes)
        return q.reshape(w.shape), scale

    def _gemm(self, x: torch.Tensor, op: Gemm, hook: GemmHook | None) -> torch.Tensor:
        """The layer's forward value equals the integer program's bit for bit (integer rounding
        decisions are made on exact values); gradients are straight-through."""
        wq, sw = self.quantized_weight(op)
        s_in, z_in = op.in_qp.scale, op.in_qp.zero_point
        acc_scale = s_in * sw  # float64 (N,)
        b = self.biases[self.key(op)]
        b_codes = torch.round(b.detach().double() / acc_scale)
        bq = ste(b / acc_scale.float(), b_codes) - z_in * wq.reshape(wq.shape[0], -1).sum(dim=1)
        if op.kind == "linear":
            acc = x.reshape(x.shape[0], -1) @ wq.t()
        else:
            ph, pw = op.padding
            xp = F.pad(x, (pw, pw, ph, ph), value=float(z_in)) if (ph or pw) else x
            acc = F.conv2d(xp, wq, stride=op.stride, groups=op.groups)
        acc = ste(acc, torch.round(acc.detach()))  # float32 sums of integers: snap tiny errors
        if hook is not None:
            acc = hook(op, x, wq, acc)
        shape = (1, -1) if op.kind == "linear" else (1, -1, 1, 1)
        acc = acc + bq.reshape(shape)
        if op.out_qp is None:
            return acc * acc_scale.float().reshape(shape)  # logits
        mult = acc_scale / op.out_qp.scale
        mant, exp = torch.frexp(mult)
        m0 = torch.round(mant * 2.0**31).to(torch.int64)
        shift = (31 - exp).to(torch.int64)
        carry = m0 == (1 << 31)
        m0, shift = torch.where(carry, m0 // 2, m0), torch.where(carry, shift - 1, shift)
        q_int = requantize(acc.detach().round().to(torch.int64), m0.reshape(shape), shift.reshape(shape))
        q = ste(acc * mult.float().reshape(shape), q_int) + op.out_qp.zero_point
        return _clamp_ste(q, op.lo, op.hi)

    def forward(self, images: torch.Tensor, gemm_hook: GemmHook | None = None) -> torch.Tensor:
        """Float images (N, C, H, W) -> float logits (N, classes)."""
        env: dict[str, torch.Tensor] = {}
        for op in self.program.ops:
            if isinstance(op, QuantizeInput):
                q = ste(images / op.qp.scale, torch.floor(images.detach().double() / op.qp.scale + 0.5))
                q = q + op.qp.zero_point
                env[op.output] = _clamp_ste(q, op.qp.qmin, op.qp.qmax)
            elif isinstance(op, Gemm):
                env[op.output] = self._gemm(env[op.input], op, gemm_hook)
            elif isinstance(op, MaxPool):
                env[op.output] = F.max_pool2d(env[op.input], op.kernel, op.stride, op.padding)
            elif isinstance(op, AvgPool):
                x = env[op.input]
                ph, pw = op.padding
                if ph or pw:
                    x = F.pad(x, (pw, pw, ph, ph), value=float(op.zero_point))
                s = F.avg_pool2d(x, op.kernel, op.stride, divisor_override=1)
                d = op.kernel[0] * op.kernel[1]
                env[op.output] = floor_ste((2 * s + d) / (2 * d))
            elif isinstance(op, Add):
                t = (env[op.a] - op.za) * op.ma + (env[op.b] - op.zb) * op.mb
                q = floor_ste(t / (1 << ADD_SHIFT) + 0.5) + op.zero_point
                env[op.output] = _clamp_ste(q, op.lo, op.hi)
            elif isinstance(op, Clamp):
                env[op.output] = _clamp_ste(env[op.input], op.lo, op.hi)
            elif isinstance(op, Flatten):
                x = env[op.input]
                env[op.output] = x.reshape(x.shape[0], -1)
        return env[self.program.output_name]

    def to_program(self) -> Program:
        """A new integer program with this twin's (trained) weights and the same activation quantization."""
        from accel_models.lowering import gemm_op

        ops = []
        for op in self.program.ops:
            if isinstance(op, Gemm):
                geometry = dict(stride=op.stride, padding=op.padding, groups=op.groups) if op.kind == "conv" else {}
                new = gemm_op(op.name, op.kind, op.input, op.output, op.in_qp, op.out_qp,
                              self.weights[self.key(op)].detach().cpu(), self.biases[self.key(op)].detach().cpu(),
                              None, op.activation, **geometry)
                new.lo, new.hi = op.lo, op.hi  # same activation clamp as before
                ops.append(new)
            else:
                ops.append(op)
        return Program(ops=ops, input_name=self.program.input_name, output_name=self.program.output_name,
                       input_shape=self.program.input_shape, num_classes=self.program.num_classes,
                       meta=dict(self.program.meta))


def _clamp_ste(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Clamp with the gradient of a clamp (zero outside), like ReLU."""
    return torch.clamp(x, float(lo), float(hi))
