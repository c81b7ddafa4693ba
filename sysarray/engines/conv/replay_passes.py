"""The direct replay's portable kernel: segment sums as vectorised passes over a run buffer."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from sysarray.engines.conv.planes import scatter_runs, task_planes
from sysarray.engines.conv.plan import tasks
from sysarray.engines.registers import force_i32
from sysarray.parallel import threaded


@njit(cache=True, inline="always")
def _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign, L, use_v, use_p):
    """The last four taps of a segment and the chain step in one pass: ``q = p + segment``
    (``p`` read if ``use_p``, the taps so far in ``v`` if ``use_v``), ``p = force(q)``, ``tot +=
    force(q) - q``. Called with constant flags, so each call site compiles to a branch-free loop."""
    for e in range(L):
        seg = w0 * x0[e] + w1 * x1[e] + w2 * x2[e] + w3 * x3[e]
        if use_v:
            seg += v[e]
        q = np.int32(seg)
        if use_p:
            q = np.int32(q + p[e])
        fq = force_i32(q, k, on, sign)
        p[e] = fq
        tot[e] = np.int32(tot[e] + np.int32(fq - q))


# Multiply-adds fused (FMA): every product and partial sum is an integer float32 (or float64)
# holds exactly (the caller checks the bound), so fusing cannot change a result.
@threaded(1 << 20, fastmath={"contract"})  # work: multiply-adds
def direct_chains(xg, x, in_place, geometry, plane_of, toff, tw, ptr, n_seg, keep, ones, sign, linear_tail, Fr,
                  chunks, oh, ow, out):
    """Segment sums and psum chains of the replayed outputs, straight from the input.

    Each task takes a group of ``G`` images and a chunk of the replayed outputs, fills the
    group's phase planes from ``x`` (B, C, H, W) (:func:`~sysarray.engines.conv.planes.fill_planes`; with ``in_place``,
    ``xg[group]`` already is them) and runs its outputs over them. The output values of a group
    form one run ``e = (r*G + g)*Wq + q`` (row ``r``, image ``g``, column ``q``; columns ``q >=
    ow`` are padding, computed and dropped), read for tap ``t`` at ``planes[toff[t] + e]``. Taps
    of segment ``(o, fold, s)`` are ``ptr[(o*Fr + fold)*S + s] .. ptr[...+1]``, at least four
    (zero-weight taps pad them), with weights ``tw``, for ``s < n_seg[o]``;
    keep/ones: (O, S) int64. ``out`` (B, O, >= oh*ow) int32 gets, per replayed output, the sum over
    folds of the chain's final value or, with ``linear_tail``, of ``chain - sum of segments``
    (the sum of ``force(q) - q`` over the chain's steps ``q = p + segment``): the correction to
    the plain sums (a :class:`~sysarray.engines.conv.fix.ChainFix`). The chain state is int32: a psum register value fits
    (psum_bits <= 32, and p + segment < 2**psum_bits by the caller's wrap guard) and the fold
    totals are only needed mod 2**32.
    """
    O, S = keep.shape
    G, Wq, NG, L, per = tasks(x.shape[0], O, geometry, chunks, oh, ow)
    sign32 = np.int32(sign)  # 2**31 for 32-bit psums: -2**31 as an int32 bit pattern
    for task in prange(NG * chunks):
        g0 = task // chunks
        xs_all = task_planes(xg, x, in_place, geometry, plane_of, g0)
        o_lo = (task % chunks) * per
        o_hi = min(O, o_lo + per)
        tots = np.zeros((max(0, o_hi - o_lo), L), dtype=np.int32)
        v = np.empty(L, dtype=tw.dtype)
        p = np.empty(L, dtype=np.int32)
        for o in range(o_lo, o_hi):
            tot = tots[o - o_lo]
            for f in range(Fr):
                for s in range(n_seg[o]):
                    base = (o * Fr + f) * S + s
                    t0, t1 = ptr[base], ptr[base + 1]
                    k = np.int32(keep[o, s])  # int32 bit patterns (see force_i32)
                    on = np.int32(ones[o, s])
                    # Four taps per pass over v (one store per four multiply-adds: stores bound an
                    # axpy), the first pass taking the remainder; with a linear tail the last four
                    # taps and the chain step share a pass. Every loop has fixed arrays (slices keep
                    # the indices non-negative): choosing arrays at run time, or branching inside a
                    # loop, stops LLVM vectorizing it.
                    rem = (t1 - t0) % 4
                    if rem:
                        w0 = tw[t0]
                        x0 = xs_all[toff[t0]:toff[t0] + L]
                        if rem == 1:
                            for e in range(L):
                                v[e] = w0 * x0[e]
                        else:
                            w1 = tw[t0 + 1]
                            x1 = xs_all[toff[t0 + 1]:toff[t0 + 1] + L]
                            if rem == 2:
                                for e in range(L):
                                    v[e] = w0 * x0[e] + w1 * x1[e]
                            else:
                                w2 = tw[t0 + 2]
                                x2 = xs_all[toff[t0 + 2]:toff[t0 + 2] + L]
                                for e in range(L):
                                    v[e] = w0 * x0[e] + w1 * x1[e] + w2 * x2[e]
                    for t in range(t0 + rem, t1 - 4 if linear_tail else t1, 4):
                        w0, w1, w2, w3 = tw[t], tw[t + 1], tw[t + 2], tw[t + 3]
                        x0 = xs_all[toff[t]:toff[t] + L]
                        x1 = xs_all[toff[t + 1]:toff[t + 1] + L]
                        x2 = xs_all[toff[t + 2]:toff[t + 2] + L]
                        x3 = xs_all[toff[t + 3]:toff[t + 3] + L]
                        if t == t0:
                            for e in range(L):
                                v[e] = w0 * x0[e] + w1 * x1[e] + w2 * x2[e] + w3 * x3[e]
                        else:
                            for e in range(L):
                                v[e] += w0 * x0[e] + w1 * x1[e] + w2 * x2[e] + w3 * x3[e]
                    if linear_tail:
                        t = t1 - 4
                        w0, w1, w2, w3 = tw[t], tw[t + 1], tw[t + 2], tw[t + 3]
                        x0 = xs_all[toff[t]:toff[t] + L]
                        x1 = xs_all[toff[t + 1]:toff[t + 1] + L]
                        x2 = xs_all[toff[t + 2]:toff[t + 2] + L]
                        x3 = xs_all[toff[t + 3]:toff[t + 3] + L]
                        if t == t0 and s == 0:
                            _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign32, L, False, False)
                        elif t == t0:
                            _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign32, L, False, True)
                        elif s == 0:
                            _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign32, L, True, False)
                        else:
                            _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign32, L, True, True)
                    elif s == 0:
                        for e in range(L):
                            p[e] = force_i32(np.int32(v[e]), k, on, sign32)
                    else:
                        for e in range(L):
                            p[e] = force_i32(np.int32(np.int32(v[e]) + p[e]), k, on, sign32)
                if not linear_tail:
                    for e in range(L):
                        tot[e] += p[e]
        scatter_runs(tots, out, g0, G, o_lo, oh, ow, Wq)
