"""A plain numpy int64 interpreter of an :class:`accel_models.program.Program`: the test reference.

Written from the op docstrings and docs/design.md §5, independently of the torch kernels in
``accel_models/program.py`` (no ``F.unfold``, no float pooling, no float GEMM): every op is
evaluated on int64 numpy arrays with explicit window loops, so it is slow and obviously right.
The only floating-point step is the input quantization, as in the program.

Op semantics implemented here (codes are the 8-bit integers of ``x ~ scale * (q - zp)``):

- QuantizeInput: ``q = clip(floor(x / scale + 0.5) + zp, qmin, qmax)`` (x in float64).
- Gemm (conv): pad with the input zero point, im2col with K order ``(c, kh, kw)`` (PyTorch's
  ``weight.reshape(N, -1)``), per group ``acc = A @ W^T`` in int64, wrapped to int32 as the chip's
  output accumulator is; Gemm (linear): the flattened input times ``W^T``. Then ``acc + bias``;
  the last layer (``out_qp is None``) returns that; otherwise requantize
  ``(acc * m0 + 2**(shift - 1)) >> shift`` (arithmetic shift: round half up), add the output zero
  point, clip to ``[lo, hi]``.
- MaxPool: windows over the input padded with a value below every code (padding never wins).
- AvgPool: pad with the zero point, integer window sum ``s``, ``floor((2*s + d) / (2*d))`` with
  ``d`` the kernel area (count_include_pad).
- Add: ``clip((((a - za)*ma + (b - zb)*mb + 2**(SHIFT-1)) >> SHIFT) + z, lo, hi)``, SHIFT = 20.
- Clamp: ``clip(x, lo, hi)``.
- Clipped activations (Gemm ``clip_codes``, the Clip op): threshold codes ``t`` broadcast against
  one sample in NCHW layout; "clamp": ``min(q, t)``; "zero": ``q`` where the value before the 8-bit
  clip is ``<= t``, else the zero point.
"""
from __future__ import annotations

import numpy as np

from tests.accel_models import numpy_ppu

ADD_SHIFT = 20  # docs/design.md §5 / Add docstring: the residual-add multipliers have 20 fractional bits


def _np(t) -> np.ndarray:
    """A torch tensor (or array) as an int64 numpy array."""
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t).astype(np.int64)


def _wrap32(x: np.ndarray) -> np.ndarray:
    """Two's complement wrap to int32 (the chip's output accumulator), kept as int64."""
    return ((x + (1 << 31)) & ((1 << 32) - 1)) - (1 << 31)


def quantize_input(x, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    xf = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    q = np.floor(xf / scale + 0.5).astype(np.int64) + zero_point
    return np.clip(q, qmin, qmax)


def pad(x: np.ndarray, ph: int, pw: int, value: int) -> np.ndarray:
    """(B, C, H, W) -> (B, C, H + 2ph, W + 2pw) with ``value`` around."""
    B, C, H, W = x.shape
    out = np.full((B, C, H + 2 * ph, W + 2 * pw), value, dtype=np.int64)
    out[:, :, ph:ph + H, pw:pw + W] = x
    return out


def windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """(B, C, H, W) -> (B, C, kh, kw, OH, OW): element ``[b, c, i, j, oy, ox] = x[b, c, sh*oy + i, sw*ox + j]``."""
    B, C, H, W = x.shape
    oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1
    out = np.empty((B, C, kh, kw, oh, ow), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i, j] = x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    return out


def im2col(x: np.ndarray, kh: int, kw: int, stride, padding, zero_point: int) -> tuple[np.ndarray, int, int]:
    """Codes (B, C, H, W) -> (B*OH*OW, C*kh*kw) rows ordered (b, oy, ox), columns (c, i, j)."""
    xp = pad(x, padding[0], padding[1], zero_point)
    win = windows(xp, kh, kw, stride[0], stride[1])  # (B, C, kh, kw, OH, OW)
    B, C, _, _, oh, ow = win.shape
    cols = win.transpose(0, 4, 5, 1, 2, 3).reshape(B * oh * ow, C * kh * kw)
    return cols, oh, ow


def gemm_layer(x: np.ndarray, op) -> np.ndarray:
    """One Gemm op on codes; returns codes (or the biased int64 accumulators of the last layer)."""
    w = _np(op.weight)
    bias = _np(op.bias)
    n = w.shape[0]
    if op.kind == "linear":
        k = w.reshape(n, -1).shape[1]
        a = x.reshape(-1, k)
        acc = _wrap32(a @ w.reshape(n, -1).T)
        out_shape = None
        tokens = x.shape[:-1] if x.ndim > 2 and x.shape[-1] == k else None
    else:
        B, C, H, W = x.shape
        g = op.groups
        cg, ng = C // g, n // g
        kh, kw = w.shape[2], w.shape[3]
        accs = []
        for i in range(g):
            cols, oh, ow = im2col(x[:, i * cg:(i + 1) * cg], kh, kw, op.stride, op.padding, op.in_qp.zero_point)
            wg = w[i * ng:(i + 1) * ng].reshape(ng, -1)  # (ng, cg*kh*kw), K order (c, kh, kw)
            accs.append(_wrap32(cols @ wg.T))
        acc = np.concatenate(accs, axis=1)  # (B*OH*OW, N)
        out_shape = (B, oh, ow)
    acc = acc + bias[None, :]
    raw = None
    if op.out_qp is not None:
        m0, shift = _np(op.m0)[None, :], _np(op.shift)[None, :]
        raw = ((acc * m0 + (np.int64(1) << (shift - 1))) >> shift) + op.out_qp.zero_point
        acc = np.clip(raw, op.lo, op.hi)
    if out_shape is not None:
        B, oh, ow = out_shape
        acc = acc.reshape(B, oh, ow, n).transpose(0, 3, 1, 2)
        raw = None if raw is None else raw.reshape(B, oh, ow, n).transpose(0, 3, 1, 2)
    if getattr(op, "clip_codes", None) is not None:
        acc = threshold(raw, acc, op.clip_codes, op.clip_policy, op.out_qp.zero_point)
    if op.kind == "linear" and tokens is not None:
        acc = acc.reshape(*tokens, n)
    return acc


def threshold(raw: np.ndarray, q: np.ndarray, codes, policy: str, zero_point: int) -> np.ndarray:
    """Clipped activation on NCHW (or N x F) codes ``q`` whose unsaturated values are ``raw``."""
    t = _np(codes)[None]
    if policy == "clamp":
        return np.minimum(q, t)
    assert policy == "zero", policy
    return np.where(raw <= t, q, zero_point)


def max_pool(x: np.ndarray, op) -> np.ndarray:
    floor = np.iinfo(np.int64).min  # below every code: padding never wins
    xp = pad(x, op.padding[0], op.padding[1], floor)
    out = windows(xp, op.kernel[0], op.kernel[1], op.stride[0], op.stride[1]).max(axis=(2, 3))
    assert (out > floor).all(), "a max-pool window saw only padding"
    return out


def avg_pool(x: np.ndarray, op) -> np.ndarray:
    xp = pad(x, op.padding[0], op.padding[1], op.zero_point)
    s = windows(xp, op.kernel[0], op.kernel[1], op.stride[0], op.stride[1]).sum(axis=(2, 3))
    d = op.kernel[0] * op.kernel[1]
    return np.floor_divide(2 * s + d, 2 * d)


def add(a: np.ndarray, b: np.ndarray, op) -> np.ndarray:
    t = (a - op.za) * op.ma + (b - op.zb) * op.mb
    q = ((t + (1 << (ADD_SHIFT - 1))) >> ADD_SHIFT) + op.zero_point
    return np.clip(q, op.lo, op.hi)


def numpy_run(program, images, *, return_env: bool = False):
    """Evaluate ``program`` on float ``images`` (N, C, H, W) with numpy int64 only.

    Returns the final accumulators int64 (N, classes); with ``return_env`` also the dict of every
    named value (int64 arrays of codes) the program computed.
    """
    env: dict[str, np.ndarray] = {}
    for op in program.ops:
        kind = type(op).__name__
        if kind == "QuantizeInput":
            qp = op.qp
            env[op.output] = quantize_input(images, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
        elif kind == "Gemm":
            env[op.output] = gemm_layer(env[op.input], op)
        elif kind == "MaxPool" and (tuple(op.dilation) != (1, 1) or op.ceil_mode):
            env[op.output] = numpy_ppu.max_pool(env[op.input], op)
        elif kind == "MaxPool":
            env[op.output] = max_pool(env[op.input], op)
        elif kind == "AvgPool":
            env[op.output] = avg_pool(env[op.input], op)
        elif kind == "Add":
            env[op.output] = add(env[op.a], env[op.b], op)
        elif kind == "Clamp":
            env[op.output] = np.clip(env[op.input], op.lo, op.hi)
        elif kind == "Clip":
            x = env[op.input]
            env[op.output] = threshold(x, np.clip(x, op.lo, op.hi), op.codes, op.policy, op.zero_point)
        else:
            out = numpy_ppu.run_op(op, env, len(images))
            if out is None:
                raise TypeError(f"numpy_run does not know the op {kind}")
            env[op.output] = out
    out = env[program.output_name]
    return (out, env) if return_env else out
