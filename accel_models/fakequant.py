"""The fake-quant twin: the integer program evaluated in torch floats with straight-through
rounding, so it can be trained and stays within one LSB of the integer program.

Codes are carried as float tensors holding integers. Weights are trainable float parameters,
quantized per output channel on every forward (``round`` with a straight-through gradient);
activation quantization parameters stay those of the program. ``gemm_hook(op, a, w, acc)`` lets
fault-aware training replace a chip layer's exact accumulators with a faulty chip's (for a
:class:`~accel_models.matmul.MatMul`, ``w`` is the right operand's codes and ``acc`` the
zero-point-free sums): the forward value becomes the chip's, the gradient stays the fault-free one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from accel_models.matmul import MatMul, fake_matmul
from accel_models.ppu import PPU_OPS, RunContext, floor_ste, ste
from accel_models.program import (ADD_SHIFT, Add, AvgPool, Clamp, Clip, Gemm, MaxPool, Program, QuantizeInput,
                                  gather_input, gather_weight_inputs)
from accel_models.quant import WEIGHT_QMAX, requantize


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
        bq = bq.to(torch.float64) if k_exceeds_f32(wq) else bq
        acc = _integer_gemm(x, wq, op)
        if k_exceeds_f32(wq):
            # float32 could round these sums: carry on in float64 with the forward value of an
            # exact float64 GEMM (the codes that leave this layer are float32 again).
            acc = ste(acc.double(), _integer_gemm(x.detach().double(), wq.detach().double(), op))
        if hook is not None and op.in_order is not None:
            # the chip reads the inputs in array order (Gemm.in_order): the hook gets both operands in it
            x, wq = gather_input(x, op), gather_weight_inputs(wq, op, op.in_order)
            op = dataclasses.replace(op, in_order=None)
        if hook is not None and op.out_order is not None:
            # the chip holds the rows in array order (Gemm.out_order); the twin stays in channel order
            dim = 1 if op.kind == "conv" else -1
            order = op.out_order.to(acc.device)
            perm = torch.argsort(order)
            acc = hook(op, x, wq[perm.to(wq.device)], acc.index_select(dim, perm)).index_select(dim, order)
        elif hook is not None:
            acc = hook(op, x, wq, acc)
        shape = (1, -1) if op.kind == "linear" else (1, -1, 1, 1)
        acc = acc + bq.reshape(shape)
        if op.out_qp is None:
            return acc.double() * acc_scale.reshape(shape)  # logits, float64
        mult = acc_scale / op.out_qp.scale
        mant, exp = torch.frexp(mult)
        m0 = torch.round(mant * 2.0**31).to(torch.int64)
        shift = (31 - exp).to(torch.int64)
        carry = m0 == (1 << 31)
        m0, shift = torch.where(carry, m0 // 2, m0), torch.where(carry, shift - 1, shift)
        q_int = requantize(acc.detach().round().to(torch.int64), m0.reshape(shape), shift.reshape(shape))
        q = ste(acc * mult.to(acc.dtype).reshape(shape), q_int) + op.out_qp.zero_point
        out = _clamp_ste(q, op.lo, op.hi)
        if op.clip_codes is not None:
            out = _clip_ste(q, out, op.clip_codes, op.clip_policy, op.out_qp.zero_point)
        return out.to(x.dtype)

    def forward(self, images: torch.Tensor, gemm_hook: GemmHook | None = None) -> torch.Tensor:
        """Float images (N, C, H, W) -> float logits (N, classes)."""
        env: dict[str, torch.Tensor] = {}
        rc = RunContext(batch=images.shape[0], device=images.device)
        for op in self.program.ops:
            if isinstance(op, QuantizeInput):
                q = ste(images / op.qp.scale, torch.floor(images.detach().double() / op.qp.scale + 0.5))
                q = q + op.qp.zero_point
                env[op.output] = _clamp_ste(q, op.qp.qmin, op.qp.qmax)
            elif isinstance(op, Gemm):
                env[op.output] = self._gemm(env[op.input], op, gemm_hook)
            elif isinstance(op, MaxPool):
                env[op.output] = F.max_pool2d(env[op.input], op.kernel, op.stride, op.padding, op.dilation, op.ceil_mode)
            elif isinstance(op, MatMul):
                env[op.output] = fake_matmul(env[op.a], env[op.b], op, gemm_hook)
            elif isinstance(op, PPU_OPS):
                env[op.output] = op.fake([env[name] for name in op.inputs()], rc)
            elif isinstance(op, AvgPool):
                x = env[op.input]
                ph, pw = op.padding
                if ph or pw:
                    x = F.pad(x, (pw, pw, ph, ph), value=float(op.zero_point))
                s = F.avg_pool2d(x, op.kernel, op.stride, divisor_override=1)
                d = op.kernel[0] * op.kernel[1]
                env[op.output] = floor_ste((2 * s + d) / (2 * d))
            elif isinstance(op, Add):
                a, b = env[op.a], env[op.b]
                t = (a - op.za) * op.ma + (b - op.zb) * op.mb
                # The rounding decision on exact int64 values (float32 loses bits above 2**24).
                t_int = (a.detach().round().long() - op.za) * op.ma + (b.detach().round().long() - op.zb) * op.mb
                q_int = torch.bitwise_right_shift(t_int + (1 << (ADD_SHIFT - 1)), ADD_SHIFT)
                q = ste(t / (1 << ADD_SHIFT), q_int) + op.zero_point
                env[op.output] = _clamp_ste(q, op.lo, op.hi)
            elif isinstance(op, Clamp):
                env[op.output] = _clamp_ste(env[op.input], op.lo, op.hi)
            elif isinstance(op, Clip):
                x = env[op.input]
                env[op.output] = _clip_ste(x, _clamp_ste(x, op.lo, op.hi), op.codes, op.policy, op.zero_point)
        out = env[self.program.output_name]
        qp = self.program.output_qp
        return out if qp is None else (out.double() - qp.zero_point) * qp.scale

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
                new.clip_codes, new.clip_policy = op.clip_codes, op.clip_policy  # and the same thresholds
                if op.in_order is not None:  # and the same fault-aware mapping
                    new.weight, new.in_order = gather_weight_inputs(new.weight, op, op.in_order), op.in_order
                if op.out_order is not None:
                    new.weight, new.out_order = new.weight[torch.argsort(op.out_order)], op.out_order
                ops.append(new)
            else:
                ops.append(op)
        return dataclasses.replace(self.program, ops=ops, meta=dict(self.program.meta))


def k_exceeds_f32(wq: torch.Tensor) -> bool:
    """True when a float32 GEMM over this layer's inner size could round its integer sums."""
    return wq[0].numel() * 255 * WEIGHT_QMAX >= 1 << 24


def _integer_gemm(x: torch.Tensor, wq: torch.Tensor, op: Gemm) -> torch.Tensor:
    """The layer's GEMM on codes (float tensors holding integers), zero-point padded."""
    if op.kind == "linear":
        k = wq[0].numel()
        return (x if x.dim() > 2 and x.shape[-1] == k else x.reshape(x.shape[0], -1)) @ wq.reshape(wq.shape[0], -1).t()
    ph, pw = op.padding
    xp = F.pad(x, (pw, pw, ph, ph), value=float(op.in_qp.zero_point)) if (ph or pw) else x
    return F.conv2d(xp, wq, stride=op.stride, groups=op.groups)


def _clip_ste(raw: torch.Tensor, q: torch.Tensor, codes: torch.Tensor, policy: str, zero_point: int) -> torch.Tensor:
    """The integer threshold step (``accel_models.program.apply_clip``) on (N, C, H, W) or (N, F)
    codes: "clamp" ``min(q, t)`` (gradient of a min), "zero" ``q`` where the unsaturated ``raw <= t``
    else the zero point (zero gradient there); ``codes`` broadcast against one sample."""
    t = codes.to(device=q.device, dtype=q.dtype).unsqueeze(0)
    if policy == "clamp":
        return torch.minimum(q, t)
    return torch.where(raw.detach() <= t, q, torch.full_like(q, float(zero_point)))


def _clamp_ste(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Clamp with the gradient of a clamp (zero outside), like ReLU."""
    return torch.clamp(x, float(lo), float(hi))
