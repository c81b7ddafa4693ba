"""Activation-by-activation products on the chip: attention's ``Q K^T`` and ``P V``.

Both operands are 8-bit codes of activations. The chip takes the left operand ``a`` (M, K) as it
takes activations and the right operand ``b`` (K, N) in the weight registers, so in the
weight-stationary dataflow ``b`` (``K^T``, or ``V``) is the latched operand, in the
input-stationary dataflow ``a`` (``Q``, or the probabilities ``P``) is, and in the
output-stationary dataflow both stream. A ``b`` held as unsigned codes is shifted by -128 into
int8 (its zero point moves with it). The chip returns ``sum_k a * b8`` (int32, possibly faulty);
the post-processing unit subtracts the zero-point terms exactly in int64:

``sum_k (a - za)(b8 - zb8) = acc - zb8 * sum_k a - za * sum_k b8 + K * za * zb8``

and requantizes to the output codes: ``clamp(requantize(total, m0, shift) + z_out, lo, hi)``,
with ``m0 / 2**shift ~ s_a * s_b * alpha / s_out`` (``alpha``: a scale folded in, e.g. the
attention's ``1/sqrt(d)``). Leading (batch, head) dimensions broadcast as in ``torch.matmul``;
each index is one GEMM on the array (:meth:`sysarray.Chip.bmm`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from accel_models.ppu import ste
from accel_models.ppu_kernels import product_codes
from accel_models.quant import QParams, requantize
from sysarray import Chip, GemmStats


@dataclass
class MatMul:
    """``a @ b`` of two activations on the chip (see the module docstring). ``multiplier``: the
    real requantization factor ``s_a * s_b * alpha / s_out`` (float; the twin's gradient)."""

    name: str
    a: str
    b: str
    output: str
    a_qp: QParams
    b_qp: QParams
    m0: int
    shift: int
    zero_point: int
    lo: int
    hi: int
    multiplier: float

    def inputs(self) -> tuple[str, ...]:
        return (self.a, self.b)

    @property
    def b_offset(self) -> int:
        """What is subtracted from ``b``'s codes to make them int8."""
        return 0 if self.b_qp.signed else 128


def batched_operands(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """``a`` (..., M, K) and ``b`` (..., K, N) broadcast to (G, M, K) and (G, K, N); also the
    broadcast leading shape."""
    lead = a.shape[:-2] if a.shape[:-2] == b.shape[:-2] else torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = (a if a.shape[:-2] == lead else a.expand(*lead, *a.shape[-2:])).reshape(-1, *a.shape[-2:])
    b3 = (b if b.shape[:-2] == lead else b.expand(*lead, *b.shape[-2:])).reshape(-1, *b.shape[-2:])
    return a3, b3, tuple(lead)


def matmul_accumulators(a: torch.Tensor, b: torch.Tensor, op: MatMul, chip: Chip, raw: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[GemmStats], tuple[int, ...]]:
    """The chip's raw accumulators ``sum_k a * b8``: returns ``(acc (G, M, N) int32, a3, b8, stats,
    lead)`` with ``a3`` (G, M, K) and ``b8`` (G, K, N) the operands as the chip took them (codes,
    exact integers in the inputs' dtype). ``raw``: ``acc`` may be float32 holding the sums
    (:meth:`sysarray.Chip.bmm`)."""
    a3, b3, lead = batched_operands(a, b)
    b8 = b3 - op.b_offset if op.b_offset else b3  # codes are exact integers in any dtype
    bounds = (max(-op.a_qp.qmin, op.a_qp.qmax), max(op.b_offset - op.b_qp.qmin, op.b_qp.qmax - op.b_offset))
    acc, stats = chip.bmm(a3, b8, act_signed=op.a_qp.signed, bounds=bounds, raw=raw)
    return acc, a3, b8, stats, lead


def matmul_total(acc: torch.Tensor, a3: torch.Tensor, b8: torch.Tensor, op: MatMul,
                 lead: tuple[int, ...]) -> torch.Tensor:
    """``sum_k (a - za)(b - zb)`` (int64, (*lead, M, N)) from the chip's accumulators: the
    post-processing unit removes the zero-point terms exactly (module docstring)."""
    za, zb8 = op.a_qp.zero_point, op.b_qp.zero_point - op.b_offset
    k = a3.shape[-1]
    # row and column sums of 8-bit codes over K are exact in float64
    rows = a3.to(torch.float64).sum(-1, keepdim=True).to(torch.int64)
    cols = b8.to(torch.float64).sum(-2, keepdim=True).to(torch.int64)
    total = acc.to(torch.int64) - zb8 * rows - za * cols + k * za * zb8
    return total.reshape(*lead, *total.shape[-2:])


def requantize_total(total: torch.Tensor, op: MatMul) -> torch.Tensor:
    """Output codes (int64) of exact products ``total``: ``clamp(requantize(total) + z_out, lo, hi)``."""
    m0 = torch.tensor(op.m0, dtype=torch.int64, device=total.device)
    shift = torch.tensor(op.shift, dtype=torch.int64, device=total.device)
    return (requantize(total, m0, shift) + op.zero_point).clamp(op.lo, op.hi)


def chip_total(a: torch.Tensor, b: torch.Tensor, op: MatMul, chip: Chip) -> torch.Tensor:
    """``sum_k (a - za)(b - zb)`` as ``chip`` computes it (int64, (*lead, M, N))."""
    acc, a3, b8, _, lead = matmul_accumulators(a, b, op, chip)
    return matmul_total(acc, a3, b8, op, lead)


def run_matmul(a: torch.Tensor, b: torch.Tensor, op: MatMul, chip: Chip
               ) -> tuple[torch.Tensor, torch.Tensor, list[GemmStats]]:
    """``(out codes float32, raw accumulators (G, M, N) int32 or float32 holding them, stats)`` of
    ``op`` on ``chip``."""
    cpu = a.device.type == "cpu"
    acc, a3, b8, stats, lead = matmul_accumulators(a, b, op, chip, raw=cpu)
    if not cpu:
        return requantize_total(matmul_total(acc, a3, b8, op, lead), op).to(torch.float32), acc, stats
    out = torch.empty(acc.shape, dtype=torch.float32)
    product_codes(acc.contiguous().numpy(), a3.to(torch.float32).contiguous().numpy(),
                  b8.to(torch.float32).contiguous().numpy(), op.a_qp.zero_point, op.b_qp.zero_point - op.b_offset,
                  op.m0, op.shift, op.zero_point, op.lo, op.hi, out.numpy(), work=acc.numel())
    return out.reshape(*lead, *out.shape[-2:]), acc, stats


def fake_matmul(a: torch.Tensor, b: torch.Tensor, op: MatMul, hook=None) -> torch.Tensor:
    """The twin: the exact product (float64 where float32 could round the sums) as forward value,
    the gradient of ``(a - za) @ (b - zb) * multiplier``. ``hook(op, a, b, total)`` may replace the
    forward value of the exact zero-point-free sums ``total`` (by a faulty chip's, in fault-aware
    training: it returns ``total`` or other exact sums of its shape)."""
    da, db = a - op.a_qp.zero_point, b - op.b_qp.zero_point
    wide = a.shape[-1] * 256 * 256 >= 1 << 24
    total = ste((da.double() @ db.double()) if wide else da @ db, (da.detach().double() @ db.detach().double()).round())
    value = total.detach() if hook is None else hook(op, a, b, total).detach()
    q = requantize_total(value.round().to(torch.int64) if value.is_floating_point() else value.to(torch.int64), op)
    out = ste(total * op.multiplier + op.zero_point, q)
    return torch.clamp(out, float(op.lo), float(op.hi)).to(a.dtype)
