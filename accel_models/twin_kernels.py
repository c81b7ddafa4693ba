"""Numba kernels of the fake-quant twin (:mod:`accel_models.fakequant`).

:func:`weight_codes` quantizes a layer's weights per output channel in one pass over them.
A layer's output codes are ``clamp(requantize(acc + bias) + zero_point, lo, hi)``; the twin's
gradient of that is ``grad * multiplier`` where the unclamped code ``raw`` lies in ``[lo, hi]``
and 0 elsewhere (the gradient of ``torch.clamp``). One pass here computes it, where torch's
autograd makes five passes over the outputs.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from sysarray.parallel import ELEMENTWISE, threaded


@threaded(ELEMENTWISE)
def clamped_grad(grad, raw, mult, lo, hi, out):
    """grad, raw, out: (P, N, L) float32 with channels on dim 1 (planes: (B, N, H*W); rows of a
    linear layer: (M, N, 1)); mult: (N,) float32; lo, hi: float32 bounds."""
    P, N, L = grad.shape
    zero = np.float32(0.0)
    for p in prange(P):
        for n in range(N):
            m = mult[n]
            g = grad[p, n]
            r = raw[p, n]
            o = out[p, n]
            for i in range(L):
                # a select, not a branch: which codes are clamped is data, and unpredictable
                o[i] = g[i] * m if (r[i] >= lo) & (r[i] <= hi) else zero


@njit(cache=True)
def weight_codes(w, qmax, codes, scale, sums):
    """w: (N, K) float32 or float64 weights; codes: (N, K) float32 out, ``clip(round(w / scale), -qmax,
    qmax)`` rounded half to even in float64 with ``scale = max(max|w|, 1e-12) / qmax`` per row
    (:func:`accel_models.quant.quantize_weight`'s arithmetic); scale: (N,) float64 out; sums:
    (N,) float64 out, each row's code sum."""
    N, K = w.shape
    for n in range(N):
        top = 0.0
        for k in range(K):
            top = max(top, abs(np.float64(w[n, k])))
        s = max(top, 1e-12) / qmax
        scale[n] = s
        total = 0.0
        for k in range(K):
            c = min(max(np.round(np.float64(w[n, k]) / s), -qmax), qmax)
            codes[n, k] = c
            total += c
        sums[n] = total
