"""The direct replay's result and how it lands in a layer's output (CPU)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from sysarray.parallel import ELEMENTWISE, threaded


@dataclass(frozen=True)
class ChainFix:
    """The direct psum replay's result: outputs ``y[:, n_idx]`` become ``wrap32(y[:, n_idx] +
    tot)`` (``add``) or ``wrap32(tot)`` (:func:`apply_fix`). tot: (B, O, oh*ow) int32. The replay
    runs before the layer's convolution, while its input is still in cache, and is applied to the
    convolution's result afterwards."""

    n_idx: np.ndarray
    tot: np.ndarray
    add: bool


def apply_fix(y: torch.Tensor, fix: ChainFix, saturate: int = 1 << 31) -> None:
    """Apply a :class:`ChainFix` to ``y`` (B, N, oh, ow) (any strides), in place: int32, or
    float32 with the corrected values clamped to ``[-saturate, saturate]`` (at most 2**24, so
    that they are exact; see :func:`~sysarray.engines.conv.conv2d.fast_conv2d_exact`)."""
    lo, hi = max(-saturate, -(1 << 31)), min(saturate, (1 << 31) - 1)  # int32 bounds (a no-op for 2**31)
    _apply_fix(y.numpy(), fix.n_idx, fix.tot, fix.add, np.int32(lo), np.int32(hi), work=fix.tot.size)


@njit(cache=True, inline="always")
def _corrected(y, t, add, lo, hi):
    """One replayed output: ``wrap32(y + t)`` (``add``) or ``wrap32(t)``, clamped to ``[lo,
    hi]`` (int32). In 32-bit lanes: ``y`` is an int32 or an integer float32 below 2**24 in
    magnitude (exact both ways), and an int32 sum truncated to 32 bits is the sum mod 2**32
    (int64 lanes would halve the vector width, and AVX2 cannot convert them from float)."""
    val = np.int32(np.int32(t) + np.int32(y)) if add else np.int32(t)
    return min(max(val, lo), hi)


@threaded(ELEMENTWISE)
def _apply_fix(y, n_idx, tot, add, lo, hi):
    """y (B, N, oh, ow), any strides: plane by plane, or pixel by pixel for channels-last ``y``
    (all replayed outputs of a pixel share its cache lines) and for linear layers' 1x1 planes
    (where a plane is a single value)."""
    B, N, oh, ow = y.shape
    O = n_idx.shape[0]
    if y.strides[1] < y.strides[3] or oh * ow == 1:
        for b in prange(B):
            for r in range(oh):
                for q in range(ow):
                    for o in range(O):
                        y[b, n_idx[o], r, q] = _corrected(y[b, n_idx[o], r, q], tot[b, o, r * ow + q], add, lo, hi)
        return
    for bo in prange(B * O):
        b = bo // O
        o = bo % O
        yp = y[b, n_idx[o]]
        for r in range(oh):
            for q in range(ow):
                yp[r, q] = _corrected(yp[r, q], tot[b, o, r * ow + q], add, lo, hi)
