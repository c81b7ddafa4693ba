"""The stationary weights of a convolution as the array's PEs latch them, in conv form."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from sysarray.config import ArrayConfig
from sysarray.engines.registers import ChipMasks, latched
from sysarray.tensor_memo import TensorMemo


@dataclass(frozen=True)
class ConvWeights:
    """Integer conv weights ``w`` (N, C, kh, kw) int64 and what :func:`~sysarray.engines.conv.exact.exact_conv` needs of
    them: ``wmax`` = max |w|, ``l1`` (N, C) the per-filter, per-channel L1 norms."""

    w: torch.Tensor
    wmax: int
    l1: torch.Tensor

    @classmethod
    def of(cls, w: torch.Tensor, wmax: int | None = None) -> "ConvWeights":
        if wmax is None:
            wmax = int(w.abs().max()) if w.numel() else 0
        return cls(w, int(wmax), w.abs().sum(dim=(2, 3)).to(torch.int64))

    @cached_property
    def l1_max(self) -> int:
        """The largest filter L1 norm (0 without weights)."""
        return int(self.l1.sum(dim=1).max()) if self.w.numel() else 0

    @cached_property
    def f32(self) -> torch.Tensor:
        """``w`` as float32 (contiguous): computed once per cached layer, not per call."""
        return self.w.to(torch.float32)


# Latched weights of healthy weight registers, per weight tensor and array shape: small torch ops
# that a campaign would otherwise redo for every chip and run.
_CLEAN_WEIGHTS = TensorMemo()


def latched_weights(weight: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks) -> tuple[torch.Tensor, ConvWeights]:
    """Conv weights (N, C, kh, kw) -> ``(Wp, cw)``: ``Wp`` (Fr*R, Fc*C) int64 (the GEMM's ``W = weight.reshape(N, K).t()``, folds ``Fr = ceil(K/R)``,
    ``Fc = ceil(N/C)``) as every PE of
    every fold latches them (zero-padded, forced through the PE's weight register, zero where the
    PE is bypassed) and ``cw`` the conv weights (N, C, kh, kw) they amount to. Read-only: the
    fault-free result is shared between calls."""
    N = int(weight.shape[0])
    compute = lambda: _conv_weights(latched(weight.reshape(N, -1).t().to(torch.int64), cm.weight, cm.bypassed,  # noqa: E731
                                            torch.int64), weight.shape)
    if not cm.latches_sent_weights:
        return compute()
    # sized with the float32 copy ConvWeights makes on first use
    return _CLEAN_WEIGHTS.get((weight,), (cfg.rows, cfg.cols), compute,
                              nbytes=lambda v: v[0].nbytes + v[1].w.nbytes * 3 // 2 + v[1].l1.nbytes)


def _conv_weights(Wp: torch.Tensor, shape) -> tuple[torch.Tensor, ConvWeights]:
    N, _, kh, kw = shape
    K = int(np.prod(shape[1:]))
    return Wp, ConvWeights.of(Wp[:K, :N].t().reshape(N, -1, kh, kw).contiguous(),
                              int(Wp.abs().max()) if Wp.numel() else 0)
