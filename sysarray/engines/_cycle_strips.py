"""The WS-style clock loop on vectors: one SIMD lane per PE column, tiles kept in the L1 cache.

The same machine as ``_cycle_kernels._stationary_fold``, clocked in another order. Every PE
register still takes its value in every cycle: one pass over a row of ``LANES`` PEs (a strip
row) shifts the activations east, forces them, multiplies, adds the partial sum from the north
and forces it, for four cycles in a row, the values between them held in vector registers and
those after the fourth stored. The order exploits the two directions of flow: partial sums only
move south and activations only east, so a tile of ``TILE_ROWS`` rows by one strip can run a
whole span of ``span`` cycles on its own, given the activations entering its west column and the
partial sums entering its north row in each cycle of the span; it records what leaves its east
column and south row for the tiles east and south of it. A tile's registers and those records
fit the L1 cache. Strips run west to east and tiles north to south, so every input is ready when
read.

Parallel work: whole folds per thread where they divide evenly among the threads; otherwise the
column strips of a fold are cut into ``parts`` pipeline stages, and in each step every (fold,
part) pair runs a few spans, part ``p`` those of step ``step - p``, so the parts of one fold
overlap in time and a few large folds still occupy every thread.

Callers validate everything (sysarray.engines.cycle); these kernels never re-check. Masks are
int32 bit patterns (``registers.force_i32``: the register formula commutes with truncation to 32
bits); the psum of a 32-bit register wraps mod 2**32 in the lane arithmetic itself.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from sysarray.engines._cycle_kernels import preload_chain
from sysarray.engines._cycle_simd import get, last, mul16, put, sext, shift_in, vload, vstore
from sysarray.engines.simd import LANES, i32_zeros

# Rows of one tile: its registers (TILE_ROWS * 3 vectors) and records stay in the L1 cache.
TILE_ROWS = 32


@njit(cache=True, nogil=True)
def _latch(stat, stat_signed, fr, fc, R, C, stat_keep, stat_ones, stat_sign, enable, blk):
    """Preload fold (fr, fc)'s stationary operands (bytes of int8 values where ``stat_signed``,
    else of uint8 ones) and latch them into ``blk``'s weight slots.

    R cycles down a fault-free preload chain (row R-1-t enters at cycle t), then every PE latches
    its own operand through its own register (stuck bits apply; a bypassed PE is gated off).
    Stored as ``x & 0xFFFF``: the int16 value in the low half of the lane (:func:`mul16`).
    """
    L = LANES
    Kd, Nd = stat.shape
    k0 = fr * R
    n0 = fc * C
    rows_used = min(R, Kd - k0)
    cols_used = min(C, Nd - n0)
    pre = np.zeros((R, C), dtype=np.int32)
    preload_chain(stat, k0, n0, rows_used, cols_used, pre)
    if stat_signed:
        for r in range(R):
            for c in range(C):
                pre[r, c] = (pre[r, c] ^ 128) - 128
    for r in range(R):
        for c in range(C):
            x = (((np.int64(pre[r, c]) & stat_keep[r, c]) | stat_ones[r, c]) ^ stat_sign) - stat_sign
            blk[((c // L) * R + r) * 3 * L + L + c % L] = (x * enable[r, c]) & 0xFFFF


@njit(cache=True, nogil=True)
def _span(
    stream_t, signed, k0, rows_used, cols_used, R, t0, n_s, j0, j1,
    blk, hist, north, south, keep_a, ones_a, keep_p, ones_p, faulty, drop, part,
):
    """Clock strips ``j0 <= j < j1`` of one fold through cycles ``t0 .. t0 + n_s - 1``.

    blk: (n_strips * R * 3 * LANES,) int32, strip row ``b = j*R + r`` at ``b * 3 * LANES``: its
    act, weight and psum registers. hist: (span * R,) int32, ``hist[s*R + r]`` holds the
    activation entering strip j0's west column in row r at cycle t0 + s; when ``j0 == 0`` it is
    filled here from the stream (bytes of int8 values where ``signed``, else of uint8), and on
    return it holds what left strip ``j1 - 1``'s east column. north, south: (span * LANES,) int32
    scratch, a tile's psum records.
    keep_a/ones_a, keep_p/ones_p: (n_strips * R * LANES,) int32 act and psum masks, forced only in
    the strip rows where ``faulty`` (n_strips * R,) uint8 is set (identity masks elsewhere in such
    a row). The act masks are sign-extended from 8 bits for a signed register, so that
    ``(a & keep) | ones`` of a lane holding a sign-extended 8-bit value is its signed read-back.
    drop: 32 - psum_bits (0: the lanes' own wrap is the register's). part: (T, C) int32 south-edge
    sums of this fold. Returns the MACs on real data that reached the south edge.
    """
    L = LANES
    B = 3 * L
    T = stream_t.shape[1]
    if j0 == 0:
        # The west edge: row r takes stream element t - r at cycle t (0 outside the stream).
        for r in range(R):
            lo = 0
            hi = 0
            if r < rows_used:
                lo = min(max(0, r - t0), n_s)
                hi = max(min(n_s, T + r - t0), lo)
            for s in range(lo):
                hist[s * R + r] = 0
            for s in range(lo, hi):
                x = np.int32(stream_t[k0 + r, t0 + s - r])
                hist[s * R + r] = (x ^ 128) - 128 if signed else x
            for s in range(hi, n_s):
                hist[s * R + r] = 0
    zero = i32_zeros()
    useful = 0
    for j in range(j0, j1):
        north[:] = 0
        for r0 in range(0, R, TILE_ROWS):
            b0 = j * R + r0
            nr = min(R - r0, TILE_ROWS)
            s = 0
            while s + 3 < n_s:
                # Four cycles per pass over the rows: row r's cycle s+u needs row r-1's cycle
                # s+u-1, computed just before, so the registers' values between the four cycles
                # stay in vector registers and only those after the fourth are stored.
                above0 = vload(north, s * L)
                above1 = vload(north, (s + 1) * L)
                above2 = vload(north, (s + 2) * L)
                above3 = vload(north, (s + 3) * L)
                p1 = zero
                p2 = zero
                p3 = zero
                p4 = zero
                h = s * R + r0
                for q in range(nr):
                    b = b0 + q
                    o = b * B
                    hq = h + q
                    x0 = get(hist, hq)
                    x1 = get(hist, hq + R)
                    x2 = get(hist, hq + 2 * R)
                    x3 = get(hist, hq + 3 * R)
                    a0 = vload(blk, o)
                    wt = vload(blk, o + L)
                    p_old = vload(blk, o + 2 * L)
                    put(hist, hq, get(blk, o + L - 1))
                    if get(faulty, b):
                        ka = vload(keep_a, b * L)
                        oa = vload(ones_a, b * L)
                        kp = vload(keep_p, b * L)
                        op = vload(ones_p, b * L)
                        a1 = (shift_in(a0, x0) & ka) | oa
                        a2 = (shift_in(a1, x1) & ka) | oa
                        a3 = (shift_in(a2, x2) & ka) | oa
                        a4 = (shift_in(a3, x3) & ka) | oa
                        put(hist, hq + R, last(a1))
                        put(hist, hq + 2 * R, last(a2))
                        put(hist, hq + 3 * R, last(a3))
                        n1 = ((above0 + mul16(a1, wt)) & kp) | op
                        n2 = ((above1 + mul16(a2, wt)) & kp) | op
                        n3 = ((above2 + mul16(a3, wt)) & kp) | op
                        n4 = ((above3 + mul16(a4, wt)) & kp) | op
                    else:
                        # A healthy row only shifts: the lane leaving after cycle s+u is a0's lane L-1-u.
                        put(hist, hq + R, get(blk, o + L - 2))
                        put(hist, hq + 2 * R, get(blk, o + L - 3))
                        put(hist, hq + 3 * R, get(blk, o + L - 4))
                        a1 = shift_in(a0, x0)
                        a2 = shift_in(a1, x1)
                        a3 = shift_in(a2, x2)
                        a4 = shift_in(a3, x3)
                        n1 = above0 + mul16(a1, wt)
                        n2 = above1 + mul16(a2, wt)
                        n3 = above2 + mul16(a3, wt)
                        n4 = above3 + mul16(a4, wt)
                    if drop:
                        n1 = sext(n1, drop)
                        n2 = sext(n2, drop)
                        n3 = sext(n3, drop)
                        n4 = sext(n4, drop)
                    vstore(blk, o, a4)
                    vstore(blk, o + 2 * L, n4)
                    above0 = p_old
                    above1 = n1
                    above2 = n2
                    above3 = n3
                    p1 = n1
                    p2 = n2
                    p3 = n3
                    p4 = n4
                vstore(north, s * L, above0)
                vstore(north, (s + 1) * L, above1)
                vstore(north, (s + 2) * L, above2)
                vstore(north, (s + 3) * L, above3)
                vstore(south, s * L, p1)
                vstore(south, (s + 1) * L, p2)
                vstore(south, (s + 2) * L, p3)
                vstore(south, (s + 3) * L, p4)
                s += 4
            while s < n_s:
                # One cycle per pass: row r reads the psum row r-1 held before this cycle.
                above = vload(north, s * L)
                p = zero
                h = s * R + r0
                for q in range(nr):
                    b = b0 + q
                    o = b * B
                    x_west = get(hist, h + q)
                    put(hist, h + q, get(blk, o + L - 1))
                    a = shift_in(vload(blk, o), x_west)
                    if get(faulty, b):
                        a = (a & vload(keep_a, b * L)) | vload(ones_a, b * L)
                        vstore(blk, o, a)
                        p_old = vload(blk, o + 2 * L)
                        p = above + mul16(a, vload(blk, o + L))
                        p = (p & vload(keep_p, b * L)) | vload(ones_p, b * L)
                    else:
                        vstore(blk, o, a)
                        p_old = vload(blk, o + 2 * L)
                        p = above + mul16(a, vload(blk, o + L))
                    if drop:
                        p = sext(p, drop)
                    vstore(blk, o + 2 * L, p)
                    above = p_old
                vstore(north, s * L, above)
                vstore(south, s * L, p)
                s += 1
        # The south edge: psum of column c at cycle t belongs to stream element t - (R-1) - c.
        for s in range(n_s):
            top = t0 + s - (R - 1) - j * L
            lo = max(0, top - T + 1)
            hi = min(L, cols_used - j * L, top + 1)
            for lane in range(lo, hi):
                part[top - lane, j * L + lane] = south[s * L + lane]
            if hi > lo:
                useful += (hi - lo) * rows_used
    return useful


@njit(cache=True, nogil=True)
def _fold_spans(stream_t, signed, Kd, Nd, R, C, n_fc, fr_lo, f, k0, k1, span, n_cyc, p, parts, n_strips,
                blk, hist, scratch, keep_a, ones_a, keep_p, ones_p, faulty, drop, part):
    """Part ``p`` of fold ``f`` (column fold outer) through spans ``k0 <= k < k1``: :func:`_span`
    on its strips, span k with the activation record ``hist[(k - k0) % len(hist)]``."""
    fr = fr_lo + f // n_fc
    fc = f % n_fc
    useful = 0
    for k in range(k0, k1):
        t0 = k * span
        useful += _span(
            stream_t, signed, fr * R, min(R, Kd - fr * R), min(C, Nd - fc * C), R,
            t0, min(span, n_cyc - t0), p * n_strips // parts, (p + 1) * n_strips // parts,
            blk, hist[(k - k0) % hist.shape[0]], scratch[0], scratch[1], keep_a, ones_a, keep_p, ones_p, faulty, drop,
            part[f // n_fc, :, fc * C:(fc + 1) * C],
        )
    return useful


@njit(cache=True, parallel=True)
def stationary_gemm(
    stream_t, stream_signed, stat, stat_signed, R, C, span, parts, step_spans,
    keep_a, ones_a, keep_p, ones_p, faulty, drop,
    stat_keep, stat_ones, stat_sign,
    enable, fr_lo, fr_hi, out, fold_stats,
):
    """Clock the row folds ``fr_lo <= fr < fr_hi`` (all column folds) and add them into ``out``.

    stream_t: (Kd, T) uint8, the bytes of the streamed operand transposed (element m enters row r
    at cycle m + r), int8 values where ``stream_signed``; stat: (Kd, Nd) uint8, the bytes of the
    stationary operand (int8 where ``stat_signed``), PE (r, c) of fold (fr, fc) latching
    stat[fr*R + r, fc*C + c].
    parts: pipeline stages per fold (1: whole folds per task, no steps); step_spans: spans per
    pipeline step. Masks as :func:`_span` takes them.
    out: (T, Nd) int32, accumulated with int32 wraparound (the accumulator outside the array).
    fold_stats: (n_row_folds * n_col_folds, 3) int64 rows (cycles, mapped PEs, useful MACs),
    indexed in SCALE-Sim's execution order, column folds outer: fc * n_row_folds + fr.
    """
    L = LANES
    Kd = stream_t.shape[0]
    T = stream_t.shape[1]
    Nd = stat.shape[1]
    n_fr = (Kd + R - 1) // R
    n_fc = (Nd + C - 1) // C
    n_strips = (C + L - 1) // L
    n_f = (fr_hi - fr_lo) * n_fc
    n_cyc = T + R + C - 2
    n_spans = (n_cyc + span - 1) // span
    part = np.empty((fr_hi - fr_lo, T, n_fc * C), dtype=np.int32)
    useful = np.zeros((n_f, parts), dtype=np.int64)
    if parts == 1:
        # Whole folds per task, no step barriers; a fold's state lives only while it runs.
        for f in prange(n_f):
            blk = np.zeros(n_strips * R * 3 * L, dtype=np.int32)
            rec = np.empty((1, span * R), dtype=np.int32)
            scratch = np.empty((2, span * L), dtype=np.int32)
            _latch(stat, stat_signed, fr_lo + f // n_fc, f % n_fc, R, C, stat_keep, stat_ones, stat_sign, enable, blk)
            useful[f, 0] = _fold_spans(stream_t, stream_signed, Kd, Nd, R, C, n_fc, fr_lo, f, 0, n_spans, span, n_cyc,
                                       0, 1, n_strips, blk, rec, scratch, keep_a, ones_a, keep_p, ones_p, faulty, drop,
                                       part)
    else:
        # Part p works on step - p: one set of step_spans records per part in flight per fold.
        n_steps = (n_spans + step_spans - 1) // step_spans
        blks = np.zeros((n_f, n_strips * R * 3 * L), dtype=np.int32)
        recs = np.empty((n_f, parts, step_spans, span * R), dtype=np.int32)
        scratch = np.empty((n_f, parts, 2, span * L), dtype=np.int32)
        for step in range(n_steps + parts - 1):
            for task in prange(n_f * parts):
                f = task // parts
                p = task % parts
                g = step - p
                if g == 0 and p == 0:
                    # The first stage latches every strip's weights; later stages start a step later.
                    _latch(stat, stat_signed, fr_lo + f // n_fc, f % n_fc, R, C, stat_keep, stat_ones, stat_sign,
                           enable, blks[f])
                if 0 <= g < n_steps:
                    useful[f, p] += _fold_spans(stream_t, stream_signed, Kd, Nd, R, C, n_fc, fr_lo, f, g * step_spans,
                                                min(n_spans, (g + 1) * step_spans), span, n_cyc, p, parts, n_strips,
                                                blks[f], recs[f, g % parts], scratch[f, p], keep_a, ones_a, keep_p,
                                                ones_p, faulty, drop, part)
    for f in range(n_f):
        fr = fr_lo + f // n_fc
        fc = f % n_fc
        fold_stats[fc * n_fr + fr, 0] = R + n_cyc
        fold_stats[fc * n_fr + fr, 1] = min(R, Kd - fr * R) * min(C, Nd - fc * C)
        u = 0
        for p in range(parts):  # a loop, not .sum(): in a parallel function that would launch threads
            u += useful[f, p]
        fold_stats[fc * n_fr + fr, 2] = u
    # Row folds summed a row at a time (each fold's row is contiguous; one fold per page apart).
    for mb in prange((T + 15) // 16):
        acc = np.empty(Nd, dtype=np.int64)
        for m in range(mb * 16, min(T, mb * 16 + 16)):
            for n in range(Nd):
                acc[n] = out[m, n]
            for i in range(fr_hi - fr_lo):
                for n in range(Nd):
                    acc[n] += part[i, m, n]
            for n in range(Nd):
                out[m, n] = np.int32(((acc[n] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000)
