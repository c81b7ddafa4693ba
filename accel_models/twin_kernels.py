"""Numba kernels of the fake-quant twin (:mod:`accel_models.fakequant`).

:func:`layer_codes` quantizes a layer's weights per output channel in one pass over them, and
:func:`model_codes` every layer's in one call.
A layer's output codes are ``clamp(requantize(acc + bias) + zero_point, lo, hi)``; the twin's
gradient of that is ``grad * multiplier`` where the unclamped code ``raw`` lies in ``[lo, hi]``
and 0 elsewhere (the gradient of ``torch.clamp``), and the bias gradient its sum over all but the
channel dimension. One pass here computes them, where torch's autograd makes six passes over the
outputs.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sysarray.parallel import ELEMENTWISE, threaded


@threaded(ELEMENTWISE, fastmath={"reassoc", "nsz"})
def clamped_grad_planes(grad, raw, mult, lo, hi, out, sums):
    """grad, raw, out: (P, N, L) float32 planes, channels on dim 1 (a convolution's (B, N,
    H*W)); mult: (N,) float32; lo, hi: float32 bounds; sums: (P, N) float32 out, each plane's
    sum of ``out`` (the bias gradient's parts; added in any order)."""
    P, N, L = grad.shape
    zero = np.float32(0.0)
    for p in prange(P):
        for n in range(N):
            m = mult[n]
            g = grad[p, n]
            r = raw[p, n]
            o = out[p, n]
            s = zero
            for i in range(L):
                # a select, not a branch: which codes are clamped is data, and unpredictable
                v = g[i] * m if (r[i] >= lo) & (r[i] <= hi) else zero
                o[i] = v
                s += v
            sums[p, n] = s


@threaded(ELEMENTWISE)
def add_grads(grad, raw, lo, hi, fa, fb, ga, gb):
    """The gradients of a clamped residual add of codes: grad, raw, ga, gb flat float32 (raw the
    unclamped output codes), lo, hi float32 bounds, fa, fb float32 factors (each multiplier over
    2**shift): ``ga = grad * fa`` and ``gb = grad * fb`` where ``lo <= raw <= hi``, else 0."""
    n = grad.shape[0]
    zero = np.float32(0.0)
    block = 1 << 14
    for j in prange((n + block - 1) // block):
        lo_j, hi_j = j * block, min(n, (j + 1) * block)
        g, r = grad[lo_j:hi_j], raw[lo_j:hi_j]  # slices indexed from zero: the loop vectorises
        a, b = ga[lo_j:hi_j], gb[lo_j:hi_j]
        for i in range(g.shape[0]):
            v = g[i] if (r[i] >= lo) & (r[i] <= hi) else zero
            a[i] = v * fa
            b[i] = v * fb


@threaded(ELEMENTWISE)
def clamped_grad_rows(grad, raw, mult, lo, hi, out):
    """:func:`clamped_grad_planes` for rows: grad, raw, out (M, N) float32, channels last."""
    M, N = grad.shape
    zero = np.float32(0.0)
    for i in prange(M):
        g = grad[i]
        r = raw[i]
        o = out[i]
        for n in range(N):
            o[n] = g[n] * mult[n] if (r[n] >= lo) & (r[n] <= hi) else zero


@njit(cache=True)
def layer_codes(w, b, s_in, z_in, out_scale, qmax, codes, bq, acc_scale, mult, m0, shift, scale):
    """A layer's integer codes and requantization from its float parameters, per output channel:

    - w: (N, K) float32 weights -> codes (N, K) float32, ``clip(round(w / scale), -qmax, qmax)``
      rounded half to even in float64 with ``scale = max(max|w|, 1e-12) / qmax``
      (:func:`accel_models.quant.quantize_weight`'s arithmetic); scale (N,) float64 out;
    - b: (N,) float64 biases -> bq (N,) float32 = ``round(b / acc_scale) - z_in * sum(codes)``
      with acc_scale (N,) float64 = ``s_in * scale``;
    - mult (N,) float64 = ``acc_scale / out_scale`` (``acc_scale`` where ``out_scale`` is 0: the
      logits) and its fixed point ``m0 * 2**-shift`` (N,) int64, ``2**30 <= m0 < 2**31``
      (:func:`accel_models.quant.quantize_multiplier`).
    """
    N, K = w.shape
    bits = w.view(np.int32)
    top = np.zeros(1, dtype=np.int32)
    for n in range(N):
        # |w| orders as its bit pattern without the sign: an integer maximum, which vectorises
        t = np.int32(0)
        for k in range(K):
            t = max(t, np.int32(bits[n, k] & 0x7FFFFFFF))
        top[0] = t
        s = max(np.float64(top.view(np.float32)[0]), 1e-12) / qmax
        scale[n] = s
        inv = 1.0 / s
        row = codes[n]
        near = False
        for k in range(K):
            # w * (1 / s) is within two ulps of w / s: it rounds alike unless within 1e-9 of a half
            x = np.float64(w[n, k]) * inv
            r = np.rint(x)
            row[k] = min(max(r, -qmax), qmax)
            near |= abs(abs(x - r) - 0.5) < 1e-9
        if near:
            for k in range(K):
                row[k] = min(max(np.rint(np.float64(w[n, k]) / s), -qmax), qmax)
        total = 0
        for k in range(K):
            total += np.int32(row[k])
        a = s_in * s
        acc_scale[n] = a
        bq[n] = np.float32(np.rint(b[n] / a)) - np.float32(z_in) * np.float32(total)
        m = a if out_scale == 0.0 else a / out_scale
        mult[n] = m
        mant, exp = math.frexp(m)
        q = np.int64(np.rint(mant * 2.0**31))
        sh = np.int64(31 - exp)
        if q == np.int64(1) << 31:
            q //= 2
            sh -= 1
        m0[n] = q
        shift[n] = sh


@njit(cache=True)
def model_codes(w, b, rows, cols, s_in, z_in, out_scale, qmax, codes, bq, acc_scale, mult, m0, shift, scale, l1):
    """:func:`layer_codes` of every layer of a model in one call. Layer ``i`` has ``rows[i]``
    output channels of ``cols[i]`` weights: its weights are the next ``rows[i] * cols[i]`` values
    of ``w`` (flat float32, the layers one after another; ``codes`` alike) and its per-channel
    values the next ``rows[i]`` of ``b``, ``bq``, ``acc_scale``, ``mult``, ``m0``, ``shift`` and
    ``scale``. ``s_in``, ``z_in``, ``out_scale``: (L,) float64, each layer's input scale and zero
    point and its output scale (0: the logits). ``l1`` (L,) float64 out: each layer's largest
    channel L1 norm of its codes."""
    wo = 0
    no = 0
    for i in range(rows.shape[0]):
        n, k = rows[i], cols[i]
        layer_codes(w[wo:wo + n * k].reshape((n, k)), b[no:no + n], s_in[i], z_in[i], out_scale[i], qmax,
                    codes[wo:wo + n * k].reshape((n, k)), bq[no:no + n], acc_scale[no:no + n], mult[no:no + n],
                    m0[no:no + n], shift[no:no + n], scale[no:no + n])
        top = 0.0
        for r in range(n):
            t = 0.0
            for c in range(k):
                t += abs(codes[wo + r * k + c])
            top = max(top, t)
        l1[i] = top
        wo += n * k
        no += n


@njit(cache=True)
def model_codes_grad(g_codes, g_bq, rows, cols, z_in, scale, acc_scale, g_w, g_b):
    """The straight-through gradients of :func:`model_codes`, laid out as its arrays, in float32
    as torch computes them: ``g_w = (g_codes - z_in * g_bq) / scale`` per channel and ``g_b =
    g_bq / acc_scale`` (``scale``, ``acc_scale`` float32)."""
    wo = 0
    no = 0
    for i in range(rows.shape[0]):
        n, k = rows[i], cols[i]
        z = np.float32(z_in[i])
        for r in range(n):
            gb = g_bq[no + r]
            zg = z * gb
            s = scale[no + r]
            row = wo + r * k
            for c in range(k):
                g_w[row + c] = (g_codes[row + c] - zg) / s
            g_b[no + r] = gb / acc_scale[no + r]
        wo += n * k
        no += n
