"""Fused CPU kernels of the post-processing unit: lookup tables, the normalisation units (one pass
per row) and activation products, the same integer formulas as :class:`accel_models.ppu.Lut`,
:class:`~accel_models.ppu.LayerNorm`, :class:`~accel_models.ppu.Softmax` and
:mod:`accel_models.matmul` (which the fake-quant twin and CUDA runs compute with torch ops; the
tests compare them)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from sysarray.parallel import ELEMENTWISE, threaded

_ROW_BLOCK = 64  # rows per task of the row kernels: one scratch row serves them all


@threaded(ELEMENTWISE)
def layer_norm_rows(q, eps_codes, gain, offset, fraction_bits, gain_bits, zero_point, lo, hi, out):
    """q (R, D) codes (float32 holding integers); gain, offset (D,) int64; out (R, D) float32.
    Per row: the sums, the integer square root, then the normalised values ``n`` (one pass with
    the row's constants hoisted: ``2*d*2**F + r = scale * q + base`` exactly in float64), then the
    gain and offset in int64."""
    rows, size = q.shape
    bits = fraction_bits + gain_bits
    half = np.int64(1) << (bits - 1)
    one = np.float64(np.int64(1) << fraction_bits)
    for b in prange((rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        n = np.empty(size, dtype=np.int64)
        for r in range(b * _ROW_BLOCK, min(rows, b * _ROW_BLOCK + _ROW_BLOCK)):
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
            if root > 0:
                den = 2.0 * root
                inv = 1.0 / den
                scale = 2.0 * np.float64(size) * one
                base = np.float64(root) - 2.0 * np.float64(s1) * one
                for c in range(size):
                    n[c] = np.int64(_floor_quotient(scale * np.float64(q[r, c]) + base, den, inv))
            else:
                for c in range(size):
                    n[c] = 0
            for c in range(size):
                y = ((n[c] * gain[c] + offset[c] + half) >> bits) + zero_point
                out[r, c] = min(max(y, lo), hi)


@njit(cache=True, inline="always")
def _floor_quotient(t, den, inv):
    """``floor(t / den)`` for integers ``t``, ``den > 0`` held exactly in float64 with
    ``|t| < 2**53``: the product by the reciprocal ``inv``, floored, is at most one off, and the
    exact products ``f * den`` (integers near ``t``) say which way."""
    f = np.floor(t * inv)
    f -= 1.0 if f * den > t else 0.0
    f += 1.0 if (f + 1.0) * den <= t else 0.0
    return f



@threaded(ELEMENTWISE)
def softmax_rows(q, table, levels, out):
    """q (R, N) codes (float32 holding integers), softmax along N; table (256,) int64, the exp
    table (at most 2**16); out (R, N) float32: ``floor((2 * levels * e + S) / (2 * S))`` with
    ``e = table[max q - q]`` and ``S`` the row's sum of ``e``. The maximum and the sum run on
    integers (they vectorise, where a float sum would wait on each addition); the quotient's
    operands are integers below 2**53, exact in float64, and so is the floor of the rounded
    quotient: a quotient below 256 that is not an integer lies at least ``1 / (2S)`` from one,
    more than its rounding error while ``2S < 2**46``."""
    rows, size = q.shape
    lv = 2.0 * levels
    for b in prange((rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        e = np.empty(size, dtype=np.int64)
        for r in range(b * _ROW_BLOCK, min(rows, b * _ROW_BLOCK + _ROW_BLOCK)):
            top = np.int32(q[r, 0])
            for c in range(1, size):
                top = max(top, np.int32(q[r, c]))
            total = np.int64(0)
            for c in range(size):
                v = table[np.uint32(top - np.int32(q[r, c])) & 255]  # max - q is 0..255: no index check
                e[c] = v
                total += v
            ft = np.float64(total)
            den = 2.0 * ft
            for c in range(size):
                out[r, c] = np.floor((lv * np.float64(e[c]) + ft) / den)


@threaded(ELEMENTWISE)
def lut_codes(q, table, qmin, out):
    """A lookup table on codes, one row per channel: q (P, C, I) float32 codes in ``[qmin, qmin +
    255]``, table (C, 256) float32, out (P, C, I) float32 ``table[c, q - qmin]``. An index outside
    the table (not a code of the op's input) reads its nearest end."""
    P, C, I = q.shape
    for p in prange(P):
        for c in range(C):
            for i in range(I):
                out[p, c, i] = table[c, np.uint32(min(max(np.int32(q[p, c, i]) - qmin, 0), 255))]


_LUT_BLOCK = 1 << 14  # codes per task of lut_flat


@threaded(ELEMENTWISE)
def lut_flat(q, table, qmin, out):
    """:func:`lut_codes` with one table for all: q, out (n,) float32, table (256,) float32."""
    n = q.shape[0]
    for j in prange((n + _LUT_BLOCK - 1) // _LUT_BLOCK):
        lo = j * _LUT_BLOCK
        src = q[lo:min(n, lo + _LUT_BLOCK)]
        dst = out[lo:min(n, lo + _LUT_BLOCK)]
        # indices from 0 (no negative-index code), int32 arithmetic and an unsigned table index:
        # the loop vectorises into gathers
        for i in range(src.shape[0]):
            dst[i] = table[np.uint32(min(max(np.int32(src[i]) - qmin, 0), 255))]


@threaded(ELEMENTWISE)
def product_codes(acc, a, b, za, zb, m0, shift, zero_point, lo, hi, out):
    """Output codes of activation products (:mod:`accel_models.matmul`) in one pass: acc (G, M, N)
    int32 chip sums ``sum_k a * b`` (or float32 holding them); a (G, M, K), b (G, K, N) the operands as the chip took them
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


@threaded(ELEMENTWISE)
def mul_codes(a, b, za, zb, m0, shift, zero_point, lo, hi, out):
    """:class:`accel_models.ppu.Mul` in one pass: a, b, out (D0, D1, D2, D3) float32 codes (``b``
    may be a broadcast view with zero strides); ``out = clamp(((a - za) * (b - zb) * m0 +
    2**(shift - 1)) >> shift) + zero_point, lo, hi)`` in int64, as torch computes it."""
    D0, D1, D2, D3 = out.shape
    half = np.int64(1) << (shift - 1)
    for i in prange(D0 * D1):
        i0, i1 = i // D1, i % D1
        for i2 in range(D2):
            for i3 in range(D3):
                p = (np.int64(a[i0, i1, i2, i3]) - za) * (np.int64(b[i0, i1, i2, i3]) - zb)
                q = ((p * m0 + half) >> shift) + zero_point
                out[i0, i1, i2, i3] = min(max(q, lo), hi)


@threaded(ELEMENTWISE)
def div_codes(a, b, za, zb, m0, shift, zero_point, lo, hi, out):
    """:class:`accel_models.ppu.Div` in one pass, shapes as :func:`mul_codes`: with ``num = (a -
    za) * m0`` and ``den = (b - zb) * 2**shift`` (signs moved onto ``num``), ``floor((2 * num +
    den) / (2 * den))``, and for ``den == 0`` the numerator's sign times ``2**20`` (beyond any
    clamp); plus ``zero_point``, clamped to ``[lo, hi]``, in int64."""
    D0, D1, D2, D3 = out.shape
    for i in prange(D0 * D1):
        i0, i1 = i // D1, i % D1
        for i2 in range(D2):
            for i3 in range(D3):
                num = (np.int64(a[i0, i1, i2, i3]) - za) * m0
                den = np.int64(b[i0, i1, i2, i3]) - zb
                if den < 0:
                    num, den = -num, -den
                if den == 0:
                    q = (np.int64(1) << 20) * ((num > 0) - (num < 0))
                else:
                    den = den << shift
                    q = (2 * num + den) // (2 * den)
                out[i0, i1, i2, i3] = min(max(q + zero_point, lo), hi)
