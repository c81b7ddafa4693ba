"""The direct replay's plan: tap tables of the replayed outputs' segments, and the task split."""
from __future__ import annotations

import numpy as np
from numba import njit

from sysarray.engines.conv.exact import F32_LIMIT
from sysarray.engines.psum import chain_plan


@njit(cache=True)
def direct_taps(Wp, group, col, seg_of_row, n_seg, S, K, kh, kw, sh, sw, Hq, GWq, min_taps, all_rows):
    """The direct kernel's tap tables. For every replayed output, fold and segment, the nonzero
    latched weights of its rows (K order), padded with zero taps to at least ``min_taps``:
    segment ``(o, fold, s)`` is ``ptr[(o*Fr + fold)*S + s] .. ptr[... + 1]``, tap ``t`` reads the
    phase planes at offset ``toff[t]`` with weight ``tw[t]`` (float64). Output ``o`` is column
    ``col[o]`` of group ``group[o]``'s GEMM, whose latched weights are ``Wp[group[o]]`` (Fr*R,
    Fc*C) and whose row ``k`` reads input channel ``group[o] * K / (kh*kw) + k // (kh*kw)``.
    ``plane_of`` maps a stride phase ``(ti % sh)*sw + tj % sw`` to its plane (-1: no tap reads
    it, so it is not laid out); ``GWq``: values per plane row (images per group x plane width).
    Returns ``(ptr, toff, tw, plane_of, wmax)``. Rows are walked fold by fold, once, up to an
    output's last segment (segments only grow along a fold's rows; no division per row of
    ``K``). ``min_taps``: 4 for :func:`~sysarray.engines.conv.replay_passes.direct_chains` (its
    passes take four taps), 0 for :func:`~sysarray.engines.conv.replay_simd.direct_chains_simd`;
    ``all_rows``: every row of a segment is a tap, zero weights included (outputs of one array
    column then have the same taps, which the SIMD kernel's pairs share)."""
    R = seg_of_row.shape[1]
    Fr = Wp.shape[1] // R
    O = col.shape[0]
    taps = kh * kw
    cg = K // taps  # input channels per group
    phase = np.empty(taps, dtype=np.int64)  # per kernel tap: its stride phase and plane shifts
    drow = np.empty(taps, dtype=np.int64)
    dcol = np.empty(taps, dtype=np.int64)
    for t in range(taps):
        ti, tj = t // kw, t % kw
        phase[t] = (ti % sh) * sw + tj % sw
        drow[t] = ti // sh
        dcol[t] = tj // sw
    # One walk records every nonzero tap in K order: its segment and its row.
    seg_id = np.empty(O * Fr * R, dtype=np.int64)
    row_k = np.empty(O * Fr * R, dtype=np.int64)
    m = 0
    count = np.zeros(O * Fr * S, dtype=np.int64)
    plane_of = np.full(sh * sw, -1, dtype=np.int64)
    wmax = 0
    for o in range(O):
        for f in range(Fr):
            k = f * R
            for r in range(min(R, K - k)):
                s = seg_of_row[o, r]
                if s >= n_seg[o]:
                    break
                w = np.int64(Wp[group[o], k + r, col[o]])
                if w != 0 or all_rows:
                    seg_id[m] = (o * Fr + f) * S + s
                    row_k[m] = k + r
                    m += 1
                    count[(o * Fr + f) * S + s] += 1
                    plane_of[phase[(k + r) % taps]] = 0
                    wmax = max(wmax, abs(w))
    P = 0
    for i in range(sh * sw):
        if plane_of[i] == 0:
            plane_of[i] = P
            P += 1
    ptr = np.zeros(O * Fr * S + 1, dtype=np.int64)
    for i in range(O * Fr * S):
        ptr[i + 1] = ptr[i] + max(min_taps, count[i])
    toff = np.zeros(ptr[-1], dtype=np.int64)
    tw = np.zeros(ptr[-1], dtype=np.float64)
    at = ptr[:-1].copy()
    for j in range(m):
        i = seg_id[j]
        o = i // (Fr * S)
        k = row_k[j]
        c = k // taps  # input channel of row k within the group
        t = k - c * taps
        toff[at[i]] = (((group[o] * cg + c) * P + plane_of[phase[t]]) * Hq + drow[t]) * GWq + dcol[t]
        tw[at[i]] = Wp[group[o], k, col[o]]
        at[i] += 1
    return ptr, toff, tw, plane_of, wmax


@njit(cache=True)
def group_chains(faulty, pkeep, pones, chain_cols, Wp, N, C, full, linear_tail):
    """:func:`~sysarray.engines.psum.chain_plan` for every group's GEMM of a layer (Wp (groups,
    Fr*R, Fc*C), ``N`` outputs per group; every group replays the same columns through the same
    chains): ``(n_idx, group, col, pair_key, seg_of_row, keep, ones, n_seg)`` per replayed output
    ``o``: its channel of the layer, its group, its column of the group's GEMM, a key whose
    outputs ``C`` apart are the column folds of one array column (:func:`pair_outputs`), and its
    chain."""
    R = faulty.shape[0]
    groups = Wp.shape[0]
    Fc = Wp.shape[2] // C
    local, seg1, keep1, ones1, n_seg1, _ = chain_plan(faulty, pkeep, pones, chain_cols, Fc, N, full, linear_tail)
    n_loc = local.shape[0]
    O = groups * n_loc
    S = keep1.shape[1]
    n_idx = np.empty(O, dtype=np.int64)
    group = np.empty(O, dtype=np.int64)
    col = np.empty(O, dtype=np.int64)
    pair_key = np.empty(O, dtype=np.int64)
    seg_of_row = np.empty((O, R), dtype=np.int64)
    keep = np.empty((O, S), dtype=np.int64)
    ones = np.empty((O, S), dtype=np.int64)
    n_seg = np.empty(O, dtype=np.int64)
    even = Fc + Fc % 2  # column folds per group rounded up to even: pairs never cross groups
    for g in range(groups):
        for i in range(n_loc):
            o = g * n_loc + i
            n_idx[o] = g * N + local[i]
            group[o] = g
            col[o] = local[i]
            pair_key[o] = g * even * C + local[i]
            seg_of_row[o] = seg1[i]
            keep[o] = keep1[i]
            ones[o] = ones1[i]
            n_seg[o] = n_seg1[i]
    return n_idx, group, col, pair_key, seg_of_row, keep, ones, n_seg


@njit(cache=True)
def direct_plan(faulty, pkeep, pones, chain_cols, Wp, N, C, full, linear_tail, K, kh, kw, sh, sw, Hq, GWq, simd,
                amax, pairs):
    """:func:`~sysarray.engines.psum.chain_plan` and :func:`direct_taps` for the direct replay, in one call, for
    every group's GEMM (Wp (groups, Fr*R, Fc*C) each group's latched weights, ``N`` outputs and
    ``K`` rows per group): returns ``(n_idx, keep, ones, n_seg, ptr, toff, tw, f32, plane_of,
    mates, simd)`` with ``n_idx`` the replayed output channels of the layer (group by group);
    ``f32`` when every partial sum of at most ``R`` products is exact in float32 (``R * amax *
    wmax < 2**24``); ``simd`` is the caller's choice, off when the sums need float64 (the SIMD
    kernel is float32-only); ``mates`` (:func:`pair_outputs`) all -1 without it or ``pairs``. No
    replayed output: ``n_idx`` is empty. The weights ``tw`` come back float64 either way
    (numba returns one type); the caller casts them."""
    n_idx, group, col, pair_key, seg_of_row, keep, ones, n_seg = group_chains(faulty, pkeep, pones, chain_cols, Wp, N,
                                                                              C, full, linear_tail)
    S = keep.shape[1]
    ptr, toff, tw, plane_of, wmax = direct_taps(Wp, group, col, seg_of_row, n_seg, S, K, kh, kw, sh, sw, Hq, GWq,
                                                 0 if simd else 4, simd and pairs)
    f32 = faulty.shape[0] * max(1, amax) * max(1, wmax) < F32_LIMIT
    if simd and not f32:
        simd = False
        ptr, toff, tw, plane_of, wmax = direct_taps(Wp, group, col, seg_of_row, n_seg, S, K, kh, kw, sh, sw, Hq, GWq,
                                                     4, False)
    mates = pair_outputs(pair_key, C) if simd and pairs else np.full(n_idx.shape[0], -1, dtype=np.int64)
    return n_idx, keep, ones, n_seg, ptr, toff, tw, f32, plane_of, mates, simd


@njit(cache=True)
def pair_outputs(n_idx, C):
    """(O,) int64: for each replayed output, the one of the next column fold in the same array
    column (channel ``n + C``) when ``n`` is in an even column fold, and back; -1 for none (in
    numba: a Python dict would cost more than a small layer's replay)."""
    O = n_idx.shape[0]
    mate = np.full(O, -1, dtype=np.int64)
    at = np.full(n_idx.max() + C + 1 if O else 1, -1, dtype=np.int64)
    for o in range(O):
        at[n_idx[o]] = o
    for o in range(O):
        q = at[n_idx[o] + C]
        if (n_idx[o] // C) % 2 == 0 and q >= 0:
            mate[o] = q
            mate[q] = o
    return mate


@njit(cache=True, inline="always")
def tasks(B, O, geometry, chunks, oh, ow):
    """``(G, Wq, NG, L, per)``: images per group, plane width, groups, values per run, outputs per
    task of the direct kernels."""
    G, Wq = geometry[8], geometry[9]
    return G, Wq, (B + G - 1) // G, ((oh - 1) * G + G - 1) * Wq + ow, (O + chunks - 1) // chunks


@njit(cache=True, inline="always")
def task_outputs(task, chunks, per, O, L):
    """``(o_lo, o_hi, tots)`` of a direct kernel's task: its chunk of the replayed outputs and an
    int32 buffer of a run of ``L`` values for each."""
    o_lo = (task % chunks) * per
    o_hi = min(O, o_lo + per)
    return o_lo, o_hi, np.empty(max(0, o_hi - o_lo) * L, dtype=np.int32)
