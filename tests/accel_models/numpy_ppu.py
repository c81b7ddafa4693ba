"""numpy int64 references of the post-processing-unit ops and activation products
(:mod:`accel_models.ppu`, :mod:`accel_models.matmul`), written from their docstrings and
docs/design.md §5 with explicit loops where the torch kernels vectorize. Data movement (Layout)
uses torch on int64 tensors: it moves values and computes nothing."""
from __future__ import annotations

import math

import numpy as np
import torch

LN_F, LN_G = 16, 16  # LayerNorm's fraction and gain bits
EXP_BITS, LEVELS = 16, 255  # softmax's exp table and output levels


def _np(t) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t).astype(np.int64)


def lut(x: np.ndarray, op) -> np.ndarray:
    table = _np(op.table)
    out = np.empty_like(x)
    if table.shape[0] == 1:
        return table[0][x - op.qmin]
    moved = np.moveaxis(x, op.axis, 0)
    res = np.moveaxis(out, op.axis, 0)
    for c in range(table.shape[0]):
        res[c] = table[c][moved[c] - op.qmin]
    return out


def requantize(t: np.ndarray, m0: int, shift: int) -> np.ndarray:
    return (t * np.int64(m0) + (np.int64(1) << (shift - 1))) >> shift


def mul(a: np.ndarray, b: np.ndarray, op) -> np.ndarray:
    return np.clip(requantize((a - op.za) * (b - op.zb), op.m0, op.shift) + op.zero_point, op.lo, op.hi)


def layout(x: np.ndarray, op, batch: int) -> np.ndarray:
    from accel_models.ppu import RunContext

    return op.run([torch.from_numpy(np.ascontiguousarray(x))], RunContext(batch, torch.device("cpu"))).numpy()


def mean(x: np.ndarray, op) -> np.ndarray:
    s = x.sum(axis=op.dims, keepdims=op.keepdim)
    d = int(np.prod([x.shape[i] for i in op.dims]))
    return np.floor_divide(2 * s + d, 2 * d)


def adaptive_avg_pool(x: np.ndarray, op) -> np.ndarray:
    B, C, H, W = x.shape
    oh, ow = op.size
    out = np.empty((B, C, oh, ow), dtype=np.int64)
    for i in range(oh):
        h0, h1 = (i * H) // oh, -((-(i + 1) * H) // oh)
        for j in range(ow):
            w0, w1 = (j * W) // ow, -((-(j + 1) * W) // ow)
            s = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3))
            d = (h1 - h0) * (w1 - w0)
            out[:, :, i, j] = np.floor_divide(2 * s + d, 2 * d)
    return out


def max_pool(x: np.ndarray, op) -> np.ndarray:
    """Max pool with dilation and torch's ceil-mode rule (a window must start inside the input or
    its left padding)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = op.kernel, op.stride, op.padding, op.dilation
    B, C, H, W = x.shape

    def size(n, k, s, p, d):
        span = n + 2 * p - d * (k - 1) - 1
        o = (span + (s - 1 if op.ceil_mode else 0)) // s + 1
        if op.ceil_mode and (o - 1) * s >= n + p:
            o -= 1
        return o

    oh, ow = size(H, kh, sh, ph, dh), size(W, kw, sw, pw, dw)
    floor = np.iinfo(np.int64).min
    out = np.full((B, C, oh, ow), floor, dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    y, z = i * sh - ph + a * dh, j * sw - pw + b * dw
                    if 0 <= y < H and 0 <= z < W:
                        out[:, :, i, j] = np.maximum(out[:, :, i, j], x[:, :, y, z])
    return out


def layer_norm(x: np.ndarray, op) -> np.ndarray:
    gain, offset = _np(op.gain), _np(op.offset)
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty_like(rows)
    D = rows.shape[1]
    for r, q in enumerate(rows):
        s1, s2 = int(q.sum()), int((q * q).sum())
        root = math.isqrt(D * s2 - s1 * s1 + op.eps_codes)
        for c in range(D):
            d = D * int(q[c]) - s1
            n = (2 * d * (1 << LN_F) + root) // (2 * root) if root else 0
            y = (n * int(gain[c]) + int(offset[c]) + (1 << (LN_F + LN_G - 1))) >> (LN_F + LN_G)
            out[r, c] = min(op.hi, max(op.lo, y + op.zero_point))
    return out.reshape(x.shape)


def softmax(x: np.ndarray, op) -> np.ndarray:
    table = np.floor(np.exp(-op.in_scale * np.arange(256)) * (1 << EXP_BITS) + 0.5).astype(np.int64)
    moved = np.moveaxis(x, op.dim, -1)
    e = table[moved.max(axis=-1, keepdims=True) - moved]
    s = e.sum(axis=-1, keepdims=True)
    return np.moveaxis(np.floor_divide(2 * LEVELS * e + s, 2 * s), -1, op.dim)


def matmul(a: np.ndarray, b: np.ndarray, op) -> np.ndarray:
    total = np.matmul(a - op.a_qp.zero_point, b - op.b_qp.zero_point)
    return np.clip(requantize(total, op.m0, op.shift) + op.zero_point, op.lo, op.hi)


def run_op(op, env: dict, batch: int) -> np.ndarray | None:
    """The op's output from ``env``, or None for an op this module does not handle."""
    kind = type(op).__name__
    if kind == "Lut":
        return lut(env[op.input], op)
    if kind == "Mul":
        return mul(env[op.a], env[op.b], op)
    if kind == "Div":
        return divide(env[op.a], env[op.b], op)
    if kind == "Cat":
        return np.concatenate([env[p] for p in op.parts], axis=op.dim)
    if kind == "Layout":
        return layout(env[op.input], op, batch)
    if kind == "Constant":
        return _np(op.codes)
    if kind == "Mean":
        return mean(env[op.input], op)
    if kind == "AdaptiveAvgPool":
        return adaptive_avg_pool(env[op.input], op)
    if kind == "LayerNorm":
        return layer_norm(env[op.input], op)
    if kind == "Softmax":
        return softmax(env[op.input], op)
    if kind == "MatMul":
        return matmul(env[op.a], env[op.b], op)
    return None


def divide(a: np.ndarray, b: np.ndarray, op) -> np.ndarray:
    """Quotient unit, element by element with Python integers."""
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape, dtype=np.int64)
    for i, (x, y) in enumerate(zip(a.reshape(-1).tolist(), b.reshape(-1).tolist())):
        num, den = (x - op.za) * op.m0, (y - op.zb) << op.shift
        if den == 0:
            q = op.hi if num > 0 else op.lo if num < 0 else op.zero_point
        else:
            if den < 0:
                num, den = -num, -den
            q = min(op.hi, max(op.lo, (2 * num + den) // (2 * den) + op.zero_point))
        out.reshape(-1)[i] = q
    return out
