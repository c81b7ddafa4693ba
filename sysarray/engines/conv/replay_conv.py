"""The psum replay of single-fold layers on CPU: segment sums from one grouped convolution, the
chains in one numba pass over them."""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from sysarray.config import ArrayConfig
from sysarray.engines import psum
from sysarray.engines.conv.exact import exact_conv
from sysarray.engines.conv.fix import ChainFix, is_pixel_major
from sysarray.engines.conv.weights import ConvWeights
from sysarray.engines.registers import ChipMasks, force_i32
from sysarray.parallel import ELEMENTWISE, threaded
from sysarray.tensor_memo import TensorMemo


def replay_by_segment_conv(xp: torch.Tensor, Wp: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, chain_cols: np.ndarray,
                           kernel, stride, padding, amax: int, N: int, linear_tail: bool) -> ChainFix | None:
    """For layers whose every GEMM fits one row fold (``K <= R``, as a depthwise convolution's
    ``K = kh*kw``): the sums of each replayed output's segments are the outputs of its "segment
    filters" (its latched weights on a segment's rows, zero elsewhere:
    :func:`~sysarray.engines.psum.segment_weights`), all in one grouped convolution of the input
    (:func:`~sysarray.engines.conv.exact.exact_conv`); one numba pass runs the chains over them.
    Wp: (groups, R, Fc*C) each group's latched GEMM weights; N: the layer's output channels.
    Returns the :class:`ChainFix` the direct kernels give (in the input's layout), or None when
    no output is replayed."""
    cin = int(xp.shape[1])
    plan = _SEGMENT_PLANS.get_for(cm, (Wp,), (cfg, chain_cols.tobytes(), tuple(kernel), N, linear_tail, cin),
                                  lambda: _segment_plan(Wp, cfg, cm, chain_cols, kernel, N, linear_tail, cin),
                                  nbytes=lambda v: 0 if v is None or v[0] is None else v[0].w.nbytes)
    if plan is None:
        return None
    filters, n_idx, keep, ones = plan
    if filters is None:  # one step whose segment holds every tap: the plain sums read back
        return ChainFix(n_idx, None, True, keep=keep, ones=ones)
    O = len(n_idx)
    seg = exact_conv(xp, filters, stride, padding, amax)  # (B, groups*O*S, oh, ow)
    B, _, oh, ow = seg.shape
    one_pixel = oh * ow == 1  # linear layers: the batch as the pixels of one image, outputs innermost
    pixel_major = one_pixel or is_pixel_major(seg)
    if pixel_major:
        seg3 = seg.reshape(B, -1).contiguous().numpy()[None] if one_pixel else \
            seg.permute(0, 2, 3, 1).numpy().reshape(B, oh * ow, -1)
        tot = np.empty((1, B, O) if one_pixel else (B, oh * ow, O), dtype=np.int32)
    else:
        seg3 = seg.contiguous().numpy().reshape(B, -1, oh * ow)
        tot = np.empty((B, O, oh * ow), dtype=np.int32)
    segment_chains(seg3, keep, ones, 1 << (cfg.psum_bits - 1), linear_tail, pixel_major, tot, work=seg.numel())
    return ChainFix(n_idx, tot.reshape(B, oh * ow, -1) if one_pixel else tot, linear_tail, pixel_major)


# Per chip (its masks), latched weights and replayed columns: what the replay needs besides the
# input (a chip runs every batch through the same plans).
_SEGMENT_PLANS = TensorMemo(max_entries=1024, max_bytes=256 << 20)


def _segment_plan(Wp: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, chain_cols: np.ndarray, kernel, N: int,
                  linear_tail: bool, cin: int):
    """``(filters, n_idx, keep, ones)`` for :func:`replay_by_segment_conv`: the segment filters as
    :class:`ConvWeights` (None when every output is one step holding every tap, read back through
    ``keep``, ``ones`` (O,) int32), the replayed output channels, and each step's register bit
    patterns (S, groups*O) int32. None when no output is replayed. ``cin``: the input's channels."""
    R = cfg.rows
    groups = Wp.shape[0]
    Ng = N // groups
    p = psum.plan(cm, cfg, chain_cols, Wp.shape[2] // cfg.cols, Ng, linear_tail)
    if p is None:
        return None
    O, S = p.keep.shape
    kh, kw = kernel
    cg = cin // groups
    K = cg * kh * kw
    Wcols = Wp[..., torch.from_numpy(p.n_idx)]  # (groups, R, O): the fold, K rows used
    Wv = psum.segment_weights(Wcols, p, R)[:, 0, :K]  # (groups, K, S, O)
    n_idx = (np.arange(groups)[:, None] * Ng + p.n_idx).ravel()
    if linear_tail and S == 1 and torch.equal(Wv[..., 0, :], Wcols[:, :K]):
        keep, ones = (np.tile(m[:, 0], groups).astype(np.int32) for m in (p.keep, p.ones))
        return None, n_idx, keep, ones
    filters = Wv.permute(0, 3, 2, 1).reshape(groups * O * S, cg, kh, kw)  # filter (g, o, s)
    keep = np.ascontiguousarray(np.tile(p.keep, (groups, 1)).T).astype(np.int32)  # (S, groups*O) bit patterns
    ones = np.ascontiguousarray(np.tile(p.ones, (groups, 1)).T).astype(np.int32)
    return ConvWeights.of(filters, groups=groups), n_idx, keep, ones


@threaded(ELEMENTWISE)
def segment_chains(seg, keep, ones, sign, linear_tail, pixel_major, tot):
    """One fold's chains over its segment sums: output ``j``'s segment ``s`` is ``seg[b, j*S + s,
    i]`` (B, J*S, L), or ``seg[b, i, j*S + s]`` (B, L, J*S) with ``pixel_major``; ``tot`` (B, J,
    L), or (B, L, J), gets the sum of ``force(q) - q`` over the steps (``linear_tail``: the
    correction to the plain sums) or the chain's value. keep, ones: (S, J) int32 bit patterns of
    each step's register (``keep`` all ones, ``ones`` 0 past an output's last faulty row, where
    a step changes nothing); sign: the register's sign bit ``2**(psum_bits-1)``. In 32-bit
    lanes, as :func:`~sysarray.engines.registers.force_i32`; vectorised along the segment sums'
    rows (plane by plane, or over the outputs of a pixel)."""
    S, J = keep.shape
    B = seg.shape[0]
    sign = np.int32(sign)  # 2**31 for 32-bit psums: -2**31 as an int32 bit pattern
    if pixel_major:
        L = seg.shape[1]
        chunk = 64  # pixels per task
        nc = (L + chunk - 1) // chunk
        for task in prange(B * nc):
            b = task // nc
            p = np.empty(J, dtype=np.int32)
            fix = np.empty(J, dtype=np.int32)
            for i in range((task % nc) * chunk, min(L, (task % nc + 1) * chunk)):
                sp = seg[b, i]
                if S == 1:  # one step (every replayed column has one faulty row): one vectorised loop
                    _one_step(sp, keep[0], ones[0], sign, linear_tail, tot[b, i])
                    continue
                p[:] = 0
                fix[:] = 0
                for s in range(S):
                    for j in range(J):
                        q = np.int32(p[j] + np.int32(sp[j * S + s]))
                        f = force_i32(q, keep[s, j], ones[s, j], sign)
                        fix[j] = np.int32(fix[j] + np.int32(f - q))
                        p[j] = f
                tot[b, i] = fix if linear_tail else p
        return
    L = seg.shape[2]
    for bj in prange(B * J):
        b = bj // J
        j = bj % J
        tp = tot[b, j, :L]
        if S == 1:
            _one_step(seg[b, j], keep[0, j:j + 1], ones[0, j:j + 1], sign, linear_tail, tp)
            continue
        p = np.zeros(L, dtype=np.int32)
        fix = np.zeros(L, dtype=np.int32)
        for s in range(S):
            row = seg[b, j * S + s]
            k = keep[s, j]
            on = ones[s, j]
            for i in range(L):
                q = np.int32(p[i] + np.int32(row[i]))
                f = force_i32(q, k, on, sign)
                fix[i] = np.int32(fix[i] + np.int32(f - q))
                p[i] = f
        tp[:] = fix if linear_tail else p


@njit(cache=True, inline="always")
def _one_step(seg, keep, ones, sign, linear_tail, out):
    """Chains of one step: ``out[i]`` = ``force(q) - q`` (``linear_tail``) or ``force(q)`` for
    ``q = seg[i]``, through masks ``keep[i]``, ``ones[i]`` (or ``keep[0]``, ``ones[0]`` for all:
    arrays of one element). Branch-free loops, so that they vectorise."""
    n = out.shape[0]
    if keep.shape[0] == 1:
        k, on = keep[0], ones[0]
        if linear_tail:
            for i in range(n):
                q = np.int32(seg[i])
                out[i] = np.int32(force_i32(q, k, on, sign) - q)
        else:
            for i in range(n):
                out[i] = force_i32(np.int32(seg[i]), k, on, sign)
    elif linear_tail:
        for i in range(n):
            q = np.int32(seg[i])
            out[i] = np.int32(force_i32(q, keep[i], ones[i], sign) - q)
    else:
        for i in range(n):
            out[i] = force_i32(np.int32(seg[i]), keep[i], ones[i], sign)
