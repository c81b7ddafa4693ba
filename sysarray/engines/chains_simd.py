"""Psum chains of small GEMMs straight from their operands, a block of stream values in SIMD registers.

The vector form of :func:`~sysarray.engines.psum.bmm_chains_direct` and
:func:`~sysarray.engines.psum.gemm_chain_totals` (same arguments, same bits): for each replayed
output and block of ``SIMD_BLOCK`` stream values, every segment sum is one fused multiply-add per
row and lane into registers (:mod:`sysarray.engines.simd`), and the chain step and its running
total stay in registers across the folds, one store per block. Streams of at least a block (the
last block of a stream starts ``SIMD_BLOCK`` values before its end, recomputing values of the one
before: the same values); every segment sum exact in float32. :func:`bmm_chains` and
:func:`gemm_chains` take the vector kernel where a stream is long enough, the scalar one else.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from sysarray.engines import psum
from sysarray.engines.registers import force_jit
from sysarray.engines.simd import LANES, add, f32_zeros, fma, i32_splat, i32_store, i32_zeros, load, sub, to_i32
from sysarray.parallel import threaded

SIMD_BLOCK = 4 * LANES  # stream values per block: four vectors


@njit(cache=True, inline="always")
def chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3, k, on, sg, linear_tail):
    """The chain step of four vectors of segment sums ``a``: ``q = p + a`` (wrapping), ``p =
    force(q)``; with a linear tail the totals ``t`` gather ``force(q) - q``. Returns ``(p, t)``."""
    q0 = add(to_i32(a0), p0)
    q1 = add(to_i32(a1), p1)
    q2 = add(to_i32(a2), p2)
    q3 = add(to_i32(a3), p3)
    p0 = force_jit(q0, k, on, sg)
    p1 = force_jit(q1, k, on, sg)
    p2 = force_jit(q2, k, on, sg)
    p3 = force_jit(q3, k, on, sg)
    if linear_tail:
        t0 = add(t0, sub(p0, q0))
        t1 = add(t1, sub(p1, q1))
        t2 = add(t2, sub(p2, q2))
        t3 = add(t3, sub(p3, q3))
    return p0, p1, p2, p3, t0, t1, t2, t3


@njit(cache=True, inline="always")
def zeros4():
    """Four int32 vectors of zeros (a block's chain values, totals or segment sums)."""
    return i32_zeros(), i32_zeros(), i32_zeros(), i32_zeros()


@njit(cache=True, inline="always")
def store4(tots, at, t0, t1, t2, t3):
    """Four vectors of chain totals to ``tots[at:at + 4*LANES]``."""
    i32_store(tots, at, t0)
    i32_store(tots, at + LANES, t1)
    i32_store(tots, at + 2 * LANES, t2)
    i32_store(tots, at + 3 * LANES, t3)


@njit(cache=True, inline="always")
def _chain_block(st, base, T, w, g, n, o, seg_of_row, keep, ones, n_seg, rows, Kd, sg, linear_tail, e, tots):
    """Stream values ``e .. e + SIMD_BLOCK - 1`` of output ``o`` (column ``n``) of GEMM ``g``:
    its chain correction (``linear_tail``) or total into ``tots[e:]`` (int32, wrapped). ``st``:
    the streams flat, row ``k`` of GEMM ``g`` at ``base + k * T``."""
    t0, t1, t2, t3 = zeros4()
    for f in range((Kd + rows - 1) // rows):
        p0, p1, p2, p3 = zeros4()
        r = 0
        for s in range(n_seg[o]):
            a0 = f32_zeros()
            a1 = f32_zeros()
            a2 = f32_zeros()
            a3 = f32_zeros()
            while r < rows and seg_of_row[o, r] == s:
                k = f * rows + r
                if k < Kd:
                    wk = w[g, k, n]
                    if wk != 0.0:
                        at = base + k * T + e
                        a0 = fma(a0, wk, load(st, at))
                        a1 = fma(a1, wk, load(st, at + LANES))
                        a2 = fma(a2, wk, load(st, at + 2 * LANES))
                        a3 = fma(a3, wk, load(st, at + 3 * LANES))
                r += 1
            p0, p1, p2, p3, t0, t1, t2, t3 = chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3,
                                                    i32_splat(keep[o, s]), i32_splat(ones[o, s]), sg, linear_tail)
        if not linear_tail:
            t0 = add(t0, p0)
            t1 = add(t1, p1)
            t2 = add(t2, p2)
            t3 = add(t3, p3)
    store4(tots, e, t0, t1, t2, t3)


@njit(cache=True, inline="always")
def _output_totals(st, base, T, w, g, n, o, seg_of_row, keep, ones, n_seg, rows, Kd, sg, linear_tail, tots):
    """Every block of output ``o``'s stream into ``tots`` (T,) int32."""
    for block in range(0, T, SIMD_BLOCK):
        _chain_block(st, base, T, w, g, n, o, seg_of_row, keep, ones, n_seg, rows, Kd, sg, linear_tail,
                     min(block, T - SIMD_BLOCK), tots)


@threaded(1 << 20)  # work: multiply-adds
def bmm_chains_simd(st, G, Kd, T, w, n_idx, seg_of_row, keep, ones, n_seg, rows, sign, linear_tail, y):
    """:func:`~sysarray.engines.psum.bmm_chains_direct` with ``st`` the (G, Kd, T) streams flat
    (float32, contiguous) and ``T >= SIMD_BLOCK``."""
    sg = i32_splat(sign)  # 2**31 for 32-bit psums: -2**31 as an int32 bit pattern
    for g in prange(G):
        tots = np.empty(T, dtype=np.int32)
        for o in range(n_idx.shape[0]):
            n = n_idx[o]
            _output_totals(st, g * Kd * T, T, w, g, n, o, seg_of_row, keep, ones, n_seg, rows, Kd, sg, linear_tail,
                           tots)
            for i in range(T):
                val = np.int64(tots[i]) + y[g, i, n] if linear_tail else np.int64(tots[i])
                y[g, i, n] = force_jit(val, 0xFFFFFFFF, 0, 0x80000000)


@threaded(1 << 20)  # work: multiply-adds
def gemm_chains_simd(st, Kd, T, w, n_idx, seg_of_row, keep, ones, n_seg, rows, sign, linear_tail, out):
    """:func:`~sysarray.engines.psum.gemm_chain_totals` with ``st`` the (1, Kd, T) stream flat
    (float32, contiguous) and ``T >= SIMD_BLOCK``; outputs in parallel."""
    sg = i32_splat(sign)
    for o in prange(n_idx.shape[0]):
        tots = np.empty(T, dtype=np.int32)
        _output_totals(st, 0, T, w, 0, n_idx[o], o, seg_of_row, keep, ones, n_seg, rows, Kd, sg, linear_tail, tots)
        for i in range(T):
            out[i, o] = tots[i]


def bmm_chains(st: np.ndarray, w: np.ndarray, n_idx, seg_of_row, keep, ones, n_seg, rows: int, sign: int,
               linear_tail: bool, y: np.ndarray) -> None:
    """:func:`~sysarray.engines.psum.bmm_chains_direct` (``st`` (G, Kd, T) float32, contiguous) on
    this module's vector kernel where the streams are at least a block long."""
    G, Kd, T = st.shape
    plan = (n_idx, seg_of_row, keep, ones, n_seg, rows, sign, linear_tail, y)
    if T >= SIMD_BLOCK:
        bmm_chains_simd(st.reshape(-1), G, Kd, T, w, *plan, work=G * T * Kd * len(n_idx))
    else:
        psum.bmm_chains_direct(st, w, *plan, work=G * T * Kd * len(n_idx))


def gemm_chains(st: np.ndarray, w: np.ndarray, n_idx, seg_of_row, keep, ones, n_seg, rows: int, sign: int,
                linear_tail: bool, out: np.ndarray) -> None:
    """:func:`~sysarray.engines.psum.gemm_chain_totals` (``st`` (Kd, T) float32, contiguous) on this
    module's vector kernel where the stream is at least a block long."""
    Kd, T = st.shape
    plan = (n_idx, seg_of_row, keep, ones, n_seg, rows, sign, linear_tail, out)
    if T >= SIMD_BLOCK:
        gemm_chains_simd(st.reshape(-1), Kd, T, w, *plan, work=T * Kd * len(n_idx))
    else:
        psum.gemm_chain_totals(st[None], w, *plan, work=T * Kd * len(n_idx))
