"""The direct replay on AVX-512 VNNI: the taps of one kernel row as the four bytes of one word.

At stride 1 the taps ``(c, ti, 0 .. kw-1)`` of a kernel row read one plane at consecutive
offsets, so with the phase planes held as bytes (:mod:`sysarray.engines.conv.planes`, the codes as
unsigned bytes: int8 codes plus 128) the word of bytes ``planes[off + e .. off + e + 3]`` holds
all of a run value's taps of that kernel row (``kw <= 4``), and ``vpdpbusd`` with the kernel
row's int8 weights as one word (zero for taps outside the segment, and past ``kw``) adds them in
one instruction per lane. A lane's words overlap their neighbours': one load of the run and one
byte shuffle give sixteen of them (:func:`~sysarray.engines.simd.byte_windows`). A segment is a
list of kernel rows (a kernel row that a segment boundary or a fold boundary cuts is listed in
both, each with its own taps); signed codes are taken back by ``128 * sum`` of the segment's
weights. Results equal :func:`~sysarray.engines.conv.replay_simd.direct_chains_simd`'s.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from sysarray.engines.chains_simd import SIMD_BLOCK as BLOCK
from sysarray.engines.chains_simd import chain4, store4, zeros4
from sysarray.engines.conv.plan import group_chains, task_outputs, tasks
from sysarray.engines.conv.planes import filled_planes, scatter_runs
from sysarray.engines.simd import LANES, add, byte_windows, dpbusd, i32_splat, sub
from sysarray.parallel import threaded

def applies(kernel: tuple[int, int], stride, x_dtype, run: int) -> bool:
    """Whether a layer can take this kernel: stride 1, kernel rows of 2 to 4 taps (one word; a
    single tap would waste three of its bytes), float32 codes, runs of at least a block."""
    return tuple(stride) == (1, 1) and 2 <= kernel[1] <= 4 and x_dtype == np.float32 and run >= BLOCK


@njit(cache=True)
def vnni_plan(faulty, pkeep, pones, chain_cols, Wp, N, C, full, linear_tail, K, kh, kw, Hq, GWq, signed):
    """The chains (:func:`~sysarray.engines.conv.plan.group_chains`) and the kernel rows of every
    replayed output's segments: ``(n_idx, keep, ones, n_seg, eptr, eoff, eword, corr)``. Segment
    ``i = (o*Fr + f)*S + s`` is entries ``eptr[i] .. eptr[i + 1]``: a kernel row ``(c, ti)``
    reading the byte planes from offset ``eoff`` with ``eword`` its int8 weights of the taps
    ``tj`` in the segment as byte ``tj`` of an int32; ``corr[i]`` 128 times the segment's weight
    sum for ``signed`` codes (their bytes are the codes plus 128), else 0. Stride 1: one plane per
    channel, ``(c*Hq + ti)*GWq + tj`` the offset of tap ``(c, ti, tj)``."""
    n_idx, group, col, _, seg_of_row, keep, ones, n_seg = group_chains(faulty, pkeep, pones, chain_cols, Wp, N, C,
                                                                       full, linear_tail)
    R = faulty.shape[0]
    Fr = Wp.shape[1] // R
    O, S = keep.shape
    taps = kh * kw
    cg = K // taps  # input channels per group
    # One walk in the order of the segments' index: each kernel row a segment touches is appended
    # once, so a segment's entries are contiguous (at most one entry per row).
    eptr = np.zeros(O * Fr * S + 1, dtype=np.int64)
    eoff = np.empty(O * Fr * R, dtype=np.int64)
    eword = np.zeros(O * Fr * R, dtype=np.uint32)
    corr = np.zeros(O * Fr * S, dtype=np.int32)
    n = 0
    for o in range(O):
        for f in range(Fr):
            last = -1  # the current entry's (segment, kernel row)
            for r in range(min(R, K - f * R)):
                s = seg_of_row[o, r]
                if s >= n_seg[o]:
                    break
                k = f * R + r
                c = k // taps
                ti = (k - c * taps) // kw
                tj = k - c * taps - ti * kw
                i = (o * Fr + f) * S + s
                key = i * K + c * kh + ti
                if key != last:
                    eoff[n] = ((group[o] * cg + c) * Hq + ti) * GWq
                    n += 1
                    last = key
                w = np.int64(Wp[group[o], k, col[o]])
                eword[n - 1] |= np.uint32(w & 0xFF) << np.uint32(8 * tj)
                if signed:
                    corr[i] += 128 * w
                eptr[i + 1] = n
    for i in range(O * Fr * S):  # segments without rows: empty ranges
        eptr[i + 1] = max(eptr[i + 1], eptr[i])
    eoff, eword = eoff[:n].copy(), eword[:n].copy()
    return n_idx, keep, ones, n_seg, eptr, eoff, eword.view(np.int32), corr


@threaded(1 << 20)  # work: multiply-adds
def direct_chains_vnni(xg, x, in_place, geometry, plane_of, eptr, eoff, eword, corr, n_seg, keep, ones, sign,
                       linear_tail, Fr, chunks, oh, ow, out, xcl, offset):
    """:func:`~sysarray.engines.conv.replay_simd.direct_chains_simd` (same task split, runs and
    results) with each task's planes as bytes (the float32 codes plus ``offset``: 128 for int8
    codes, 0 for uint8) and each segment sum one ``vpdpbusd`` per kernel row and vector of lanes
    (:func:`vnni_plan`'s entries)."""
    O, S = keep.shape
    G, Wq, NG, L, per = tasks(x.shape[0], O, geometry, chunks, oh, ow)
    sg = i32_splat(sign)  # 2**31 for 32-bit psums: -2**31 as an int32 bit pattern
    for task in prange(NG * chunks):
        g0 = task // chunks
        xs = filled_planes(xg, x, in_place, geometry, plane_of, g0, xcl)
        ub = np.zeros(xs.size + 2 * LANES, dtype=np.uint8)  # a window's load reads past the last value
        for i in range(xs.size):
            ub[i] = np.uint8(np.int32(xs[i]) + offset)
        o_lo, o_hi, tots = task_outputs(task, chunks, per, O, L)
        for block in range(0, L, BLOCK):
            e = min(block, L - BLOCK)
            for o in range(o_lo, o_hi):
                t0, t1, t2, t3 = zeros4()  # the chain's running totals
                for f in range(Fr):
                    p0, p1, p2, p3 = zeros4()  # the chain's value
                    for s in range(n_seg[o]):
                        i = (o * Fr + f) * S + s
                        a0, a1, a2, a3 = zeros4()  # the segment's sums
                        for j in range(np.uint64(eptr[i]), np.uint64(eptr[i + 1])):
                            wv = i32_splat(eword[j])
                            at = eoff[j] + e
                            a0 = dpbusd(a0, byte_windows(ub, at), wv)
                            a1 = dpbusd(a1, byte_windows(ub, at + LANES), wv)
                            a2 = dpbusd(a2, byte_windows(ub, at + 2 * LANES), wv)
                            a3 = dpbusd(a3, byte_windows(ub, at + 3 * LANES), wv)
                        c = i32_splat(corr[i])  # signed codes' +128, taken back
                        a0, a1, a2, a3 = sub(a0, c), sub(a1, c), sub(a2, c), sub(a3, c)
                        p0, p1, p2, p3, t0, t1, t2, t3 = chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3,
                                                                i32_splat(keep[o, s]), i32_splat(ones[o, s]), sg,
                                                                linear_tail)
                    if not linear_tail:  # the chain's end
                        t0, t1, t2, t3 = add(t0, p0), add(t1, p1), add(t2, p2), add(t3, p3)
                store4(tots, (o - o_lo) * L + e, t0, t1, t2, t3)
        scatter_runs(tots.reshape(-1, L), out, g0, G, o_lo, oh, ow, Wq)
