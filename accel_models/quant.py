"""Integer quantization primitives (Jacob et al. 2018, the TFLite/gemmlowp scheme).

- Weights: int8, symmetric, per output channel: ``w ~ s_w[n] * q``, ``q`` in [-127, 127].
- Activations: 8-bit affine ``x ~ s * (q - z)``: uint8 with ``z = 0`` when the calibrated range
  is non-negative (after ReLU), int8 with a zero point otherwise.
- Requantization: a real multiplier ``M = s_in * s_w / s_out`` becomes ``M0 * 2**-shift`` with
  ``M0`` a 31-bit integer in [2**30, 2**31); ``requantize(acc) = (acc * M0 + 2**(shift-1)) >> shift``
  in int64, i.e. round half up (towards +inf). No floating point at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

WEIGHT_QMAX = 127


@dataclass(frozen=True)
class QParams:
    """8-bit affine quantization of one activation tensor: ``x ~ scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    signed: bool  # int8 when True, uint8 when False

    @property
    def qmin(self) -> int:
        return -128 if self.signed else 0

    @property
    def qmax(self) -> int:
        return 127 if self.signed else 255

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.int8 if self.signed else torch.uint8

    def quantize_value(self, x: float) -> int:
        """The code of real value ``x`` (rounded, saturated)."""
        return int(min(self.qmax, max(self.qmin, round(x / self.scale) + self.zero_point)))

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "signed": self.signed}


def choose_qparams(lo: float, hi: float) -> QParams:
    """Affine 8-bit parameters covering ``[lo, hi]`` (the range always includes 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    if lo >= 0.0:
        return QParams(scale=hi / 255.0, zero_point=0, signed=False)
    scale = (hi - lo) / 255.0
    zp = int(round(-128 - lo / scale))
    return QParams(scale=scale, zero_point=min(127, max(-128, zp)), signed=True)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: returns ``(q int8 same shape, scale (N,) float64)``."""
    flat = w.detach().reshape(w.shape[0], -1).double()
    amax = flat.abs().amax(dim=1).clamp_min(1e-12)
    scale = amax / WEIGHT_QMAX
    q = torch.round(flat / scale[:, None]).clamp(-WEIGHT_QMAX, WEIGHT_QMAX)
    return q.to(torch.int8).reshape(w.shape), scale


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``m > 0`` as ``(M0, shift)`` with ``M0`` in [2**30, 2**31) and ``m ~ M0 * 2**-shift``."""
    if not m > 0 or not math.isfinite(m):
        raise ValueError(f"A requantization multiplier must be positive and finite. Got {m!r} instead.")
    mant, exp = math.frexp(m)  # m = mant * 2**exp, mant in [0.5, 1)
    m0 = int(round(mant * (1 << 31)))
    if m0 == 1 << 31:
        m0 //= 2
        exp += 1
    return m0, 31 - exp


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``round_half_up(acc * M0 / 2**shift)`` on int64 tensors; ``m0``/``shift`` broadcast.

    Needs ``shift >= 1`` (true for every multiplier below 2**30, i.e. all real layers).
    """
    acc = acc.to(torch.int64)
    half = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)
    return torch.bitwise_right_shift(acc * m0 + half, shift)


def rounding_divide(x: torch.Tensor, d: int) -> torch.Tensor:
    """``round_half_up(x / d)`` for int64 ``x`` and a positive int ``d`` (floor division based)."""
    return torch.div(2 * x + d, 2 * d, rounding_mode="floor")


def multiplier_value(m0: int, shift: int) -> float:
    """The real number ``M0 * 2**-shift`` exactly as a float64."""
    return float(np.ldexp(float(m0), -int(shift)))
