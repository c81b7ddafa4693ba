"""Pointwise convolutions (1x1 kernel, stride 1, no padding, one group; linear layers are these
on 1x1 images) as one GEMM of pixels by channels, on the faster of two exact kernels.

- float32: ``x @ w.t()`` in float32, exact when every partial sum stays below 2**24 (the caller's
  L1 bound, as for the float convolution);
- int8: ``torch._int_mm`` (oneDNN's VNNI / AMX int8 GEMM on CPU) with int32 sums, exact while
  ``K * 255 * 128 < 2**31``. Unsigned codes ``a`` in [0, 255] go in as ``a - 128`` and the GEMM
  adds ``128 * sum_k w[k, n]`` back.

Which is faster depends on the CPU (int8 instructions or none) and the shape, so it is measured
per shape class (:class:`sysarray.parallel.MeasuredChoice`, kept per machine by
:mod:`sysarray.kernel_cache`; ``sysarray.engines.int8.FORCE`` pins one); both give the same
values. CPU only; the float32 kernel alone where torch has no int8 GEMM.
"""
from __future__ import annotations

import torch

from sysarray.config import ArrayConfig
from sysarray.engines import int8
from sysarray.engines.conv.exact import F32_LIMIT
from sysarray.engines.conv.weights import ConvWeights, latched_weights
from sysarray.engines.exact import never_wraps
from sysarray.engines.registers import ChipMasks
from sysarray.parallel import MeasuredChoice
from sysarray.tensor_memo import TensorMemo

_CHOICE = MeasuredChoice(name="conv.pointwise")


def pixels(x: torch.Tensor) -> torch.Tensor | None:
    """(B, K, H, W) -> the (B*H*W, K) view of its pixels as GEMM rows, or None when ``x`` is not
    stored so (1x1 images, or channels-last storage)."""
    B, K, H, W = x.shape
    if H == W == 1:
        return x.reshape(B, K) if x.is_contiguous() or x.stride(1) == 1 else None
    if x.permute(0, 2, 3, 1).is_contiguous():
        return x.permute(0, 2, 3, 1).reshape(-1, K)
    return None


class RowProduct:
    """The exact product of GEMM rows by one pointwise ``cw`` (N, K, 1, 1), one group, on CPU,
    with what decides its kernel worked out once: ``product(rows)`` takes (M, K) float32 codes
    and returns (M, N) exact sums (float32 or int32), or None where no kernel is exact (the
    float32 GEMM is not, and the int8 one does not apply or is pinned off).

    ``act_signed``: the rows hold int8 codes (True) or uint8 codes (False), None when unknown
    (float32 only); ``amax``: a bound on |rows|; ``float_exact``: one float32 GEMM is exact (the
    L1 bound)."""

    __slots__ = ("cw", "act_signed", "float_exact", "int8_ok", "K", "N", "w2t")

    def __init__(self, cw: ConvWeights, act_signed: bool | None, amax: int, float_exact: bool) -> None:
        self.cw, self.act_signed, self.float_exact = cw, act_signed, float_exact
        self.N, self.K = int(cw.w.shape[0]), int(cw.w[0].numel())
        codes = act_signed is not None and amax <= (128 if act_signed else 255)
        self.int8_ok = int8.AVAILABLE and codes and int8.exact_in_int32(self.K)
        self.w2t = cw.w.view(self.N, self.K).t()

    def __call__(self, rows: torch.Tensor) -> torch.Tensor | None:
        int8_ok = self.int8_ok and rows.shape[0] > 0
        int8_call = lambda: _int8_gemm(rows, self.cw, self.act_signed)  # noqa: E731
        if not self.float_exact:  # the int8 GEMM alone is exact, unless pinned off
            if not int8_ok or int8.FORCE == "float32":
                return None
            return int8_call()
        key = (rows.shape[0].bit_length(), self.K, self.N, self.act_signed, torch.get_num_threads())
        return int8.choose(_CHOICE, key, lambda: rows @ self.w2t, int8_call, int8_ok)


def pointwise_gemm(x: torch.Tensor, cw: ConvWeights, act_signed: bool | None, amax: int,
                   float_exact: bool) -> torch.Tensor | None:
    """``conv2d(x, cw.w)`` for a pointwise ``cw`` (N, K, 1, 1), one group, on CPU: (B, N, H, W)
    exact integer values (float32 or int32) stored like ``x`` (channels-last, or 1x1 images), or
    None when this shape is not one GEMM here (the caller convolves). ``act_signed``, ``amax``,
    ``float_exact``: as :class:`RowProduct`'s."""
    B, K, H, W = x.shape
    rows = pixels(x) if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if rows is None:
        return None
    y = RowProduct(cw, act_signed, amax, float_exact)(rows)
    return None if y is None else y.view(B, H, W, cw.w.shape[0]).permute(0, 3, 1, 2)


def _int8_gemm(rows: torch.Tensor, cw: ConvWeights, act_signed: bool) -> torch.Tensor:
    """(M, K) codes (float32) times the int8 weights: (M, N) int32, exact."""
    w8, colsum = cw.int8_gemm
    # a new tensor with the canonical strides: oneDNN reads a size-1 dimension's odd stride as a
    # leading dimension
    y = torch._int_mm(int8.as_int8(rows, not act_signed), w8)
    return y if act_signed else y.add_(colsum)


# Per weights, array and input bound: a fault-free linear layer's product, ready to run.
_CLEAN_LINEAR = TensorMemo(max_entries=1024)


def clean_linear_product(weight: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, act_signed: bool,
                         x_bound: int | None) -> RowProduct | None:
    """A linear layer on an array without faults, prepared: ``weight`` (N, K) int8 values; the
    :class:`RowProduct` of its latched weights, which takes (B, K) float32 codes to (B, N) exact
    sums on the faster product, without the convolution path's layout steps (kept per weights
    and array: a network's layers run it on every batch). None where it does not apply (the
    caller convolves): no known bound on ``x``, or a sum that could reach the psum register's
    range (a whole GEMM's sum below it is below every partial sum's bound too, in every
    dataflow), or a product no kernel computes exactly. ``cm``: the array's masks (no stuck
    bit)."""
    if x_bound is None:
        return None

    def prepare() -> RowProduct | None:
        N, K = int(weight.shape[0]), int(weight[0].numel())
        cw = latched_weights(weight.reshape(N, K, 1, 1), cfg, cm).conv
        if not never_wraps(K, x_bound, cw.wmax, cfg.psum_bits):
            return None
        product = RowProduct(cw, act_signed, x_bound, cw.l1_max * max(1, x_bound) < F32_LIMIT)
        return product if product.float_exact or product.int8_ok else None
    return _CLEAN_LINEAR.get_for(cm, (weight,), (cfg.psum_bits, bool(act_signed), int(x_bound)), prepare,
                                 nbytes=lambda product: 0 if product is None else product.cw.w.nbytes)


def clean_linear(x: torch.Tensor, weight: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, act_signed: bool,
                 x_bound: int | None) -> torch.Tensor | None:
    """:func:`clean_linear_product` run on ``x`` (B, K) float32 codes: (B, N) exact sums, or None
    where it does not apply (also for an ``x`` not on the CPU or not float32 rows)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not (x.is_contiguous() or x.stride(1) == 1):
        return None
    product = clean_linear_product(weight, cfg, cm, act_signed, x_bound)
    return None if product is None else product(x)
