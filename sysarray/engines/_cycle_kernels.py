"""numba clock loops of the systolic array. Arrays and scalars in, arrays out.

Callers validate everything (sysarray.engines.cycle); these kernels never re-check.

Register forcing, branch-free and identical for healthy PEs: a register of width w reads
``(((x & keep) | ones) ^ sign) - sign`` where ``keep = ~stuck & (2**w - 1)``, ``ones`` are the
bits stuck at 1 and ``sign`` is ``2**(w-1)`` for a signed read-back (0 for unsigned). For a
healthy register (``stuck = ones = 0``) this is the identity on in-range values and, for the
psum register, it is also the wrap to ``w`` bits. All arithmetic is int64; values are stored in
int32 (every register is at most 32 bits wide, so the store is exact).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, inline="always")
def preload_chain(stat, k0, n0, rows_used, cols_used, pre):
    """Clock the fault-free preload chain of a fold for R cycles: ``pre`` (R, C), zero on entry,
    ends holding ``stat[k0 + r, n0 + c]`` at (r, c) (0 past ``rows_used`` / ``cols_used``); row
    R-1-t enters the north edge at cycle t and every row moves one south per cycle."""
    R, C = pre.shape
    for t in range(R):
        for r in range(R - 1, 0, -1):
            for c in range(C):
                pre[r, c] = pre[r - 1, c]
        src = R - 1 - t
        for c in range(C):
            pre[0, c] = stat[k0 + src, n0 + c] if (src < rows_used and c < cols_used) else 0


@njit(cache=True, nogil=True)
def _stationary_fold(
    stream, stat, fr, fc, R, C,
    str_ptr, str_col, str_keep, str_ones, str_sign,
    stat_keep, stat_ones, stat_sign,
    ps_ptr, ps_col, ps_keep, ps_ones, ps_mask, ps_sign,
    enable, part,
):
    """Clock one fold of the WS-style array; write its south-edge sums into ``part`` (T x C).

    stream: (T, Kd) int32, element m enters row r at streaming cycle m + r and moves east.
    stat: (Kd, Nd) int32, PE (r, c) latches stat[fr*R + r, fc*C + c] (0 where padded).
    Streamed-register and psum faults come as per-row lists (CSR: ``ptr`` (R+1,), ``col``,
    ``keep``, ``ones``): every register is clocked every cycle, then the stuck bits of the
    registers in the lists are forced, which is the same as forcing every register with
    identity masks for the healthy ones.
    Returns (cycles, mapped_pes, useful_macs) counted from this fold's clock.
    """
    T = stream.shape[0]
    Kd = stream.shape[1]
    Nd = stat.shape[1]
    k0 = fr * R
    n0 = fc * C
    rows_used = min(R, Kd - k0)
    cols_used = min(C, Nd - n0)

    # Weight preload (R cycles), then every PE latches its own stationary operand through its
    # own register (stuck bits apply; a bypassed PE is gated off).
    pre = np.zeros((R, C), dtype=np.int64)
    preload_chain(stat, k0, n0, rows_used, cols_used, pre)
    cycles = R
    w = np.empty((R, C), dtype=np.int32)
    for r in range(R):
        for c in range(C):
            x = (((pre[r, c] & stat_keep[r, c]) | stat_ones[r, c]) ^ stat_sign) - stat_sign
            w[r, c] = x * enable[r, c]

    act_a = np.zeros((R, C), dtype=np.int32)
    act_b = np.zeros((R, C), dtype=np.int32)
    ps_a = np.zeros((R, C), dtype=np.int32)
    ps_b = np.zeros((R, C), dtype=np.int32)
    zero_row = np.zeros(C, dtype=np.int32)
    useful = 0
    for t in range(T + R + C - 2):
        if t % 2 == 0:
            act, nact, ps, nps = act_a, act_b, ps_a, ps_b
        else:
            act, nact, ps, nps = act_b, act_a, ps_b, ps_a
        for r in range(R):
            a_old = act[r]
            a_new = nact[r]
            p_in = ps[r - 1] if r > 0 else zero_row
            p_new = nps[r]
            wr = w[r]
            m = t - r
            a_new[0] = stream[m, k0 + r] if (0 <= m < T and r < rows_used) else 0
            for c in range(1, C):
                a_new[c] = a_old[c - 1]
            for i in range(str_ptr[r], str_ptr[r + 1]):
                c = str_col[i]
                a_new[c] = (((np.int64(a_new[c]) & str_keep[i]) | str_ones[i]) ^ str_sign) - str_sign
            for c in range(C):
                s = np.int64(p_in[c]) + np.int64(a_new[c]) * np.int64(wr[c])
                p_new[c] = ((s & ps_mask) ^ ps_sign) - ps_sign
            for i in range(ps_ptr[r], ps_ptr[r + 1]):
                c = ps_col[i]
                p_new[c] = (((np.int64(p_new[c]) & ps_keep[i]) | ps_ones[i]) ^ ps_sign) - ps_sign
            if r < rows_used:
                lo = max(0, t - r - T + 1)
                hi = min(cols_used - 1, t - r)
                if hi >= lo:
                    useful += hi - lo + 1
        # The south edge: psum of column c at cycle t belongs to stream element t - (R-1) - c.
        for c in range(cols_used):
            m = t - (R - 1) - c
            if 0 <= m < T:
                part[m, c] = nps[R - 1, c]
        cycles += 1
    return cycles, rows_used * cols_used, useful


@njit(cache=True, parallel=True)
def stationary_gemm(
    stream, stat, R, C,
    str_ptr, str_col, str_keep, str_ones, str_sign,
    stat_keep, stat_ones, stat_sign,
    ps_ptr, ps_col, ps_keep, ps_ones, ps_mask, ps_sign,
    enable, fr_lo, fr_hi, out, fold_stats,
):
    """Clock the row folds ``fr_lo <= fr < fr_hi`` (all column folds) and add them into ``out``.

    out: (T, Nd) int32, accumulated with int32 wraparound (the accumulator outside the array).
    fold_stats: (n_row_folds * n_col_folds, 3) int64 rows (cycles, mapped PEs, useful MACs),
    indexed in SCALE-Sim's execution order, column folds outer: fc * n_row_folds + fr.
    """
    T = stream.shape[0]
    Nd = stat.shape[1]
    n_fr = (stream.shape[1] + R - 1) // R
    n_fc = (Nd + C - 1) // C
    n_f = (fr_hi - fr_lo) * n_fc
    part = np.zeros((fr_hi - fr_lo, T, n_fc * C), dtype=np.int32)
    for f in prange(n_f):
        i = f // n_fc
        fc = f % n_fc
        fr = fr_lo + i
        cyc, mapped, useful = _stationary_fold(
            stream, stat, fr, fc, R, C,
            str_ptr, str_col, str_keep, str_ones, str_sign,
            stat_keep, stat_ones, stat_sign,
            ps_ptr, ps_col, ps_keep, ps_ones, ps_mask, ps_sign,
            enable, part[i, :, fc * C:(fc + 1) * C],
        )
        fold_stats[fc * n_fr + fr, 0] = cyc
        fold_stats[fc * n_fr + fr, 1] = mapped
        fold_stats[fc * n_fr + fr, 2] = useful
    for m in prange(T):
        for n in range(Nd):
            acc = np.int64(out[m, n])
            for i in range(fr_hi - fr_lo):
                acc += part[i, m, n]
            out[m, n] = np.int32(((acc & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000)


@njit(cache=True, nogil=True)
def _os_fold(
    a, w, fm, fn, R, C,
    act_keep, act_ones, act_sign,
    wt_keep, wt_ones, wt_sign,
    ps_keep, ps_ones, ps_sign,
    enable, out,
):
    """Clock one output-stationary fold; write its accumulators into ``out`` (M x N).

    a: (M, K) int32, a[m, k] enters row r (m = fm*R + r) at cycle k + r and moves east.
    w: (K, N) int32, w[k, n] enters column c (n = fn*C + c) at cycle k + c and moves south.
    """
    M = a.shape[0]
    K = a.shape[1]
    N = w.shape[1]
    m0 = fm * R
    n0 = fn * C
    rows_used = min(R, M - m0)
    cols_used = min(C, N - n0)
    act_a = np.zeros((R, C), dtype=np.int64)
    act_b = np.zeros((R, C), dtype=np.int64)
    wt_a = np.zeros((R, C), dtype=np.int64)
    wt_b = np.zeros((R, C), dtype=np.int64)
    acc = np.empty((R, C), dtype=np.int64)
    # Clear at the fold start: a stuck accumulator bit stays stuck through the clear.
    for r in range(R):
        for c in range(C):
            acc[r, c] = ((ps_ones[r, c]) ^ ps_sign) - ps_sign
    useful = 0
    cycles = 0
    for t in range(K + R + C - 2):
        if t % 2 == 0:
            act, nact, wt, nwt = act_a, act_b, wt_a, wt_b
        else:
            act, nact, wt, nwt = act_b, act_a, wt_b, wt_a
        # Weights enter the north edge (column c skewed by c cycles) and move south.
        for c in range(C):
            k = t - c
            x = np.int64(0)
            if 0 <= k < K and c < cols_used:
                x = np.int64(w[k, n0 + c])
            nwt[0, c] = (((x & wt_keep[0, c]) | wt_ones[0, c]) ^ wt_sign) - wt_sign
        for r in range(1, R):
            for c in range(C):
                nwt[r, c] = (((wt[r - 1, c] & wt_keep[r, c]) | wt_ones[r, c]) ^ wt_sign) - wt_sign
        for r in range(R):
            k = t - r
            x = np.int64(0)
            if 0 <= k < K and r < rows_used:
                x = np.int64(a[m0 + r, k])
            nact[r, 0] = (((x & act_keep[r, 0]) | act_ones[r, 0]) ^ act_sign) - act_sign
            for c in range(1, C):
                nact[r, c] = (((act[r, c - 1] & act_keep[r, c]) | act_ones[r, c]) ^ act_sign) - act_sign
            # Only PEs whose operands are valid this cycle (0 <= t - r - c < K) accumulate.
            lo = max(0, t - r - K + 1)
            hi = min(C - 1, t - r)
            for c in range(lo, hi + 1):
                s = acc[r, c] + enable[r, c] * nact[r, c] * nwt[r, c]
                acc[r, c] = (((s & ps_keep[r, c]) | ps_ones[r, c]) ^ ps_sign) - ps_sign
            if r < rows_used:
                hi_u = min(cols_used - 1, t - r)
                if hi_u >= lo:
                    useful += hi_u - lo + 1
        cycles += 1
    for r in range(rows_used):
        for c in range(cols_used):
            out[m0 + r, n0 + c] = acc[r, c]
    return cycles, rows_used * cols_used, useful


@njit(cache=True, parallel=True)
def os_gemm(
    a, w, R, C,
    act_keep, act_ones, act_sign,
    wt_keep, wt_ones, wt_sign,
    ps_keep, ps_ones, ps_sign,
    enable, out, fold_stats,
):
    """Clock every OS fold; folds write disjoint outputs. ``fold_stats`` is indexed in
    SCALE-Sim's execution order, column folds outer: fn * n_row_folds + fm."""
    M = a.shape[0]
    N = w.shape[1]
    n_fm = (M + R - 1) // R
    n_fn = (N + C - 1) // C
    for f in prange(n_fm * n_fn):
        fm = f // n_fn
        fn = f % n_fn
        cyc, mapped, useful = _os_fold(
            a, w, fm, fn, R, C,
            act_keep, act_ones, act_sign,
            wt_keep, wt_ones, wt_sign,
            ps_keep, ps_ones, ps_sign,
            enable, out,
        )
        fold_stats[fn * n_fm + fm, 0] = cyc
        fold_stats[fn * n_fm + fm, 1] = mapped
        fold_stats[fn * n_fm + fm, 2] = useful
