"""Fused CPU kernels of the post-processing unit's normalisation units: one pass per row in int64,
the same integer formulas as :class:`accel_models.ppu.LayerNorm` and :class:`~accel_models.ppu.Softmax`
(which the fake-quant twin and CUDA runs compute with torch ops; the tests compare them)."""
from __future__ import annotations

import numpy as np
from numba import prange

from sysarray.parallel import ELEMENTWISE, threaded


@threaded(ELEMENTWISE)
def layer_norm_rows(q, eps_codes, gain, offset, fraction_bits, gain_bits, zero_point, lo, hi, out):
    """q (R, D) codes (float32 holding integers); gain, offset (D,) int64; out (R, D) float32."""
    rows, size = q.shape
    bits = fraction_bits + gain_bits
    half = np.int64(1) << (bits - 1)
    one = np.int64(1) << fraction_bits
    for r in prange(rows):
        s1 = np.int64(0)
        s2 = np.int64(0)
        for c in range(size):
            v = np.int64(q[r, c])
            s1 += v
            s2 += v * v
        var = size * s2 - s1 * s1 + eps_codes
        root = np.int64(np.sqrt(np.float64(var)))
        while root * root > var:
            root -= 1
        while (root + 1) * (root + 1) <= var:
            root += 1
        den = 2.0 * root
        for c in range(size):
            n = np.int64(0)
            if root > 0:
                # float64 floor division is exact: numerator below 2**53, and a non-integer quotient
                # is at least 1/(2 root) from an integer
                n = np.int64(np.floor((2.0 * (size * np.float64(q[r, c]) - s1) * one + root) / den))
            y = ((n * gain[c] + offset[c] + half) >> bits) + zero_point
            out[r, c] = min(max(y, lo), hi)


@threaded(ELEMENTWISE)
def softmax_rows(q, table, levels, out):
    """q (R, N) codes (float32 holding integers), softmax along N; table (256,) float64 holding
    the exp table's integers; out (R, N) float32: ``floor((2 * levels * e + S) / (2 * S))`` with
    ``e = table[max q - q]``. float64 holds every step exactly and its quotient's floor is exact
    (a non-integer quotient is at least ``1 / (2S)`` from an integer)."""
    rows, size = q.shape
    for r in prange(rows):
        top = q[r, 0]
        for c in range(1, size):
            top = max(top, q[r, c])
        total = 0.0
        for c in range(size):
            total += table[np.int64(top - q[r, c])]
        inv = 1.0 / (2.0 * total)
        for c in range(size):
            t = (2.0 * levels * table[np.int64(top - q[r, c])] + total)
            f = np.floor(t * inv)
            # t * inv may round across an integer: fix with the exact products (integers below 2**53)
            if f * 2.0 * total > t:
                f -= 1.0
            elif (f + 1.0) * 2.0 * total <= t:
                f += 1.0
            out[r, c] = f


@threaded(ELEMENTWISE)
def product_codes(acc, a, b, za, zb, m0, shift, zero_point, lo, hi, out):
    """Output codes of activation products (:mod:`accel_models.matmul`) in one pass: acc (G, M, N)
    int32 chip sums ``sum_k a * b``; a (G, M, K), b (G, K, N) the operands as the chip took them
    (float32 codes); out (G, M, N) float32 = ``clamp(((acc - zb * sum_k a - za * sum_k b + K za zb)
    * m0 + 2**(shift - 1)) >> shift) + zero_point, lo, hi)`` in int64 (wrapping, as torch's)."""
    groups, rows, size = acc.shape
    depth = a.shape[2]
    half = np.int64(1) << (shift - 1)
    for g in prange(groups):
        cols = np.zeros(size, dtype=np.int64)
        for k in range(depth):
            for n in range(size):
                cols[n] += np.int64(b[g, k, n])
        for m in range(rows):
            row = np.int64(0)
            for k in range(depth):
                row += np.int64(a[g, m, k])
            base = depth * za * zb - zb * row
            for n in range(size):
                total = np.int64(acc[g, m, n]) + base - za * cols[n]
                q = ((total * m0 + half) >> shift) + zero_point
                out[g, m, n] = min(max(q, lo), hi)
