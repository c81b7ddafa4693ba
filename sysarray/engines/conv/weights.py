"""The stationary weights of a convolution as the array's PEs latch them, in conv and GEMM form.

A convolution with ``groups`` groups is one GEMM per group on the array: group ``g`` multiplies
its ``K = C/groups * kh * kw`` input columns with ``W_g = weight[g*Ng:(g+1)*Ng].reshape(Ng, K).t()``
(:mod:`sysarray.mapping`). The latched weights are held in the narrowest exact types: int8 in GEMM
form (a weight register reads back a signed 8-bit value) and float32 in conv form (what the float
convolution reads; every int8 value is exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from sysarray.config import ArrayConfig
from sysarray.engines.exact import abs_max
from sysarray.engines.registers import ChipMasks, latched
from sysarray.tensor_memo import TensorMemo


@dataclass(frozen=True, eq=False)
class ConvWeights:
    """Integer conv weights ``w`` (N, C/groups, kh, kw) float32 (exact integer values) and what
    :func:`~sysarray.engines.conv.exact.exact_conv` needs of them: ``wmax`` = max |w|, the
    ``groups``, the largest filter L1 norm and the channel chunks that keep float32 sums exact."""

    w: torch.Tensor
    wmax: int
    groups: int = 1
    _chunks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, w: torch.Tensor, wmax: int | None = None, groups: int = 1) -> "ConvWeights":
        """From integer-valued weights of any dtype (int8 range)."""
        return cls(w.to(torch.float32).contiguous(), abs_max(w) if wmax is None else int(wmax), groups)

    @cached_property
    def l1_max(self) -> int:
        """The largest filter L1 norm (0 without weights)."""
        return int(self.w.abs().sum(dim=(1, 2, 3), dtype=torch.float64).max()) if self.w.numel() else 0

    @cached_property
    def int8_gemm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A pointwise (1x1, one group) ``w`` as the int8 GEMM operand (K, N) and ``128 * sum_k
        w[n, k]`` (N,) int32: what :mod:`sysarray.engines.conv.pointwise` adds back for codes
        shifted from uint8 to int8."""
        w2 = self.w.reshape(self.w.shape[0], -1)
        w8 = torch.empty(w2.shape[::-1], dtype=torch.int8).copy_(w2.t())  # canonical strides (pointwise.py)
        return w8, (128 * w2.sum(1, dtype=torch.float64)).to(torch.int32)

    @cached_property
    def int8_im2col(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One group's ``w`` as the int8 GEMM operand (kh*kw*C, N) of im2col rows ordered (tap row,
        tap column, channel), and ``128 * sum_k w[n, k]`` (N,) int32: what
        :func:`sysarray.engines.int8.conv_int8` adds back for codes shifted from uint8 to int8."""
        N = self.w.shape[0]
        w8 = torch.empty((self.w[0].numel(), N), dtype=torch.int8, device=self.w.device).copy_(
            self.w.permute(2, 3, 1, 0).reshape(-1, N))
        return w8, (128 * self.w.reshape(N, -1).sum(1, dtype=torch.float64)).to(torch.int32)

    def channel_chunks(self, limit: int) -> tuple[tuple[int, int], ...]:
        """Input channel ranges ``lo..hi-1`` (of a group), in order, each as long as every
        filter's L1 norm over it stays below ``limit`` (at least one channel each): computed
        once per limit."""
        if limit not in self._chunks:
            run = torch.cumsum(self.w.abs().sum(dim=(2, 3), dtype=torch.float64), dim=1)  # (N, C)
            chunks, lo, C = [], 0, self.w.shape[1]
            while lo < C:
                base = run[:, lo - 1:lo] if lo else torch.zeros_like(run[:, :1])
                hi = lo + max(1, int(((run[:, lo:] - base).max(dim=0).values < limit).sum()))
                chunks.append((lo, hi))
                lo = hi
            self._chunks[limit] = tuple(chunks)
        return self._chunks[limit]


class LatchedWeights:
    """A convolution's weights as every PE of every fold latches them: ``conv``, a
    :class:`ConvWeights` (N, C/groups, kh, kw), and ``gemm`` (groups, Fr*R, Fc*C) int8, each
    group's ``W_g`` zero-padded to whole folds and forced (``Fr = ceil(K/R)``, ``Fc =
    ceil(Ng/C)``). The GEMM form is made on first use (only psum replays read it)."""

    def __init__(self, conv: ConvWeights, gemm) -> None:
        self.conv = conv
        self._gemm = gemm  # the tensor, or a function making it

    @cached_property
    def gemm(self) -> torch.Tensor:
        return self._gemm if isinstance(self._gemm, torch.Tensor) else self._gemm()

    def nbytes(self) -> int:
        """Bytes held once the GEMM form is made (it is counted from the start)."""
        g = self._gemm if isinstance(self._gemm, torch.Tensor) else None
        return self.conv.w.nbytes + (g.nbytes if g is not None else self.conv.w.numel() * 5 // 4)


# Latched weights of healthy weight registers, per weight tensor, array shape and groups: a
# campaign would otherwise redo them for every chip and run. Big enough for the weights of a
# large model (ResNet-50, VGG-11 at 224x224); TensorMemo keeps a stable part of a larger one.
_CLEAN_WEIGHTS = TensorMemo(max_entries=1024, max_bytes=1 << 30)


def gemm_weights(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Conv weights (N, C/groups, kh, kw) -> each group's GEMM operand ``W_g`` (groups, K, N/groups)."""
    N = int(weight.shape[0])
    return weight.reshape(groups, N // groups, -1).transpose(1, 2)


def latched_weights(weight: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, groups: int = 1) -> LatchedWeights:
    """Conv weights (N, C/groups, kh, kw) of integer values -> their :class:`LatchedWeights` on
    this chip (zero-padded, forced through each PE's weight register, zero where the PE is
    bypassed). Read-only: the fault-free result is shared between calls."""
    if not cm.latches_sent_weights:
        Wp = latched(gemm_weights(weight, groups), cm.weight, cm.bypassed, torch.int8)
        K, Ng = int(weight[0].numel()), int(weight.shape[0]) // groups
        conv = Wp[:, :K, :Ng].transpose(1, 2).reshape(weight.shape)
        return LatchedWeights(ConvWeights.of(conv, groups=groups), Wp)
    # every PE holds the weight it is sent: the conv form is the weight itself
    compute = lambda: LatchedWeights(ConvWeights.of(weight, groups=groups),  # noqa: E731
                                     lambda: latched(gemm_weights(weight, groups), cm.weight, cm.bypassed, torch.int8))
    return _CLEAN_WEIGHTS.get((weight,), (cfg.rows, cfg.cols, groups), compute, nbytes=LatchedWeights.nbytes)
