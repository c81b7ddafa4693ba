"""The direct replay's SIMD kernel: a block of run values held in vector registers across all taps."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from sysarray.engines.conv.planes import filled_planes, scatter_runs
from sysarray.engines.conv.plan import task_outputs, tasks
from sysarray.engines.chains_simd import SIMD_BLOCK, chain4, store4, zeros4
from sysarray.engines.simd import LANES, add, f32_zeros, fma, i32_splat, load
from sysarray.parallel import threaded

# Run values per block: four vectors of lanes (the width comes from the target, see sysarray.engines.simd).


@threaded(1 << 20)  # work: multiply-adds
def direct_chains_simd(xg, x, in_place, geometry, plane_of, toff, tw, ptr, n_seg, keep, ones, sign, linear_tail, Fr,
                       chunks, oh, ow, out, xcl, mate):
    """:func:`~sysarray.engines.conv.replay_passes.direct_chains` (same arguments and results) with the lanes of a block of
    ``SIMD_BLOCK`` run values in registers (:mod:`sysarray.engines.simd`): every segment sum is
    one fused multiply-add per tap and lane, and the chain step and its total stay in registers
    across all folds, with one store per block and output. Taps need no zero padding
    (``min_taps`` 0). float32 planes and weights (sums exact below 2**24); runs of at least a
    block: the last block of a run starts ``SIMD_BLOCK`` values before its end, recomputing
    values of the one before (the same values: stores, not sums). ``xcl``: the input's
    channels-last storage, flat, where :func:`~sysarray.engines.conv.planes.fill_planes_cl` applies (else empty)."""
    O, S = keep.shape
    G, Wq, NG, L, per = tasks(x.shape[0], O, geometry, chunks, oh, ow)
    sg = i32_splat(sign)  # 2**31 for 32-bit psums: -2**31 as an int32 bit pattern
    for task in prange(NG * chunks):
        g0 = task // chunks
        xs = filled_planes(xg, x, in_place, geometry, plane_of, g0, xcl)
        o_lo, o_hi, tots = task_outputs(task, chunks, per, O, L)
        for block in range(0, L, SIMD_BLOCK):
            e = min(block, L - SIMD_BLOCK)
            for o in range(o_lo, o_hi):
                m = mate[o]
                if o_lo <= m < o_hi:
                    if m > o:
                        _pair_block(xs, toff, tw, ptr, n_seg, keep, ones, sg, linear_tail, Fr, S, o, m, e, tots,
                                    (o - o_lo) * L + e, (m - o_lo) * L + e)
                    continue
                dst = (o - o_lo) * L + e
                t0, t1, t2, t3 = zeros4()
                for f in range(Fr):
                    p0, p1, p2, p3 = zeros4()
                    for s in range(n_seg[o]):
                        base = (o * Fr + f) * S + s
                        a0 = f32_zeros()
                        a1 = f32_zeros()
                        a2 = f32_zeros()
                        a3 = f32_zeros()
                        # unsigned indices: no negative-index code (slices here cost reference counts)
                        for t in range(np.uint64(ptr[base]), np.uint64(ptr[base + 1])):
                            w = tw[t]
                            at = toff[t] + e
                            a0 = fma(a0, w, load(xs, at))
                            a1 = fma(a1, w, load(xs, at + LANES))
                            a2 = fma(a2, w, load(xs, at + 2 * LANES))
                            a3 = fma(a3, w, load(xs, at + 3 * LANES))
                        k = i32_splat(keep[o, s])
                        on = i32_splat(ones[o, s])
                        p0, p1, p2, p3, t0, t1, t2, t3 = chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3, k, on,
                                                                 sg, linear_tail)
                    if not linear_tail:  # the chain's end
                        t0, t1, t2, t3 = add(t0, p0), add(t1, p1), add(t2, p2), add(t3, p3)
                store4(tots, dst, t0, t1, t2, t3)
        scatter_runs(tots.reshape(-1, L), out, g0, G, o_lo, oh, ow, Wq)


@njit(cache=True, inline="always")
def _pair_block(xs, toff, tw, ptr, n_seg, keep, ones, sg, linear_tail, Fr, S, o, m, e, tots, dst_o, dst_m):
    """One block of :func:`direct_chains_simd` for two outputs of one array column (``m`` has
    the same segments and taps as ``o``, its own weights): each tap's four input vectors serve
    both."""
    t0, t1, t2, t3 = zeros4()
    u0, u1, u2, u3 = zeros4()
    for f in range(Fr):
        p0, p1, p2, p3 = zeros4()
        r0, r1, r2, r3 = zeros4()
        for s in range(n_seg[o]):
            base = (o * Fr + f) * S + s
            shift = ptr[(m * Fr + f) * S + s] - ptr[base]
            a0 = f32_zeros()
            a1 = f32_zeros()
            a2 = f32_zeros()
            a3 = f32_zeros()
            b0 = f32_zeros()
            b1 = f32_zeros()
            b2 = f32_zeros()
            b3 = f32_zeros()
            for t in range(np.uint64(ptr[base]), np.uint64(ptr[base + 1])):
                w = tw[t]
                v = tw[np.uint64(t + shift)]
                at = toff[t] + e
                x0 = load(xs, at)
                x1 = load(xs, at + LANES)
                x2 = load(xs, at + 2 * LANES)
                x3 = load(xs, at + 3 * LANES)
                a0 = fma(a0, w, x0)
                a1 = fma(a1, w, x1)
                a2 = fma(a2, w, x2)
                a3 = fma(a3, w, x3)
                b0 = fma(b0, v, x0)
                b1 = fma(b1, v, x1)
                b2 = fma(b2, v, x2)
                b3 = fma(b3, v, x3)
            k = i32_splat(keep[o, s])
            on = i32_splat(ones[o, s])
            p0, p1, p2, p3, t0, t1, t2, t3 = chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3, k, on, sg,
                                                     linear_tail)
            r0, r1, r2, r3, u0, u1, u2, u3 = chain4(b0, b1, b2, b3, r0, r1, r2, r3, u0, u1, u2, u3, k, on, sg,
                                                     linear_tail)
        if not linear_tail:  # the chains' ends
            t0, t1, t2, t3 = add(t0, p0), add(t1, p1), add(t2, p2), add(t3, p3)
            u0, u1, u2, u3 = add(u0, r0), add(u1, r1), add(u2, r2), add(u3, r3)
    store4(tots, dst_o, t0, t1, t2, t3)
    store4(tots, dst_m, u0, u1, u2, u3)
