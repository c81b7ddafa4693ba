"""Psum chains of GEMMs from their int8 operands on AVX-512 VNNI: four multiply-adds per lane and instruction.

The int8 form of :func:`~sysarray.engines.chains_simd.bmm_chains` (same results): a segment sum
of output ``n`` over rows ``k`` of a fold is ``sum_k a[t, k] * w[k, n]``, and ``vpdpbusd`` adds
four such products, of four consecutive rows, in each 32-bit lane. So the stream is packed once
per call: for every block of ``BLOCK`` stream values and every group of four rows ``4q .. 4q +
3``, one 32-bit word per stream value holding its four 8-bit codes (:func:`_pack`), the codes
flipped to unsigned bytes (int8 ``c`` becomes ``c + 128``; uint8 codes arrive shifted by -128,
:func:`sysarray.engines.int8.as_int8`, and come back as themselves). A segment is a run of
groups whose weights are one 32-bit word each, its four int8 weights with those of rows outside
the segment zero (a group a segment boundary cuts is visited by both segments). A task holds one
block of the stream, about ``Kd`` times ``BLOCK`` bytes (in L1 or L2), for all replayed outputs.

Every sum is exact: a lane's four products are below ``2**17`` in magnitude and a fold of ``R``
rows below ``2**31`` for any array of up to 2**14 rows; a signed stream's ``+128`` is taken back
per segment (``128 * sum`` of its weights). Only where numba's target has AVX-512 VNNI
(:data:`sysarray.engines.simd.VNNI`); callers measure it against the other replays.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from sysarray.engines.chains_simd import SIMD_BLOCK as BLOCK
from sysarray.engines.chains_simd import chain4, store4, zeros4
from sysarray.engines.registers import force_jit
from sysarray.engines.simd import LANES, VNNI, add, dpbusd, i32_splat, load_i32, sub, transpose_block
from sysarray.parallel import ELEMENTWISE, threaded

_FLIP = np.int32(-0x7F7F7F80)  # 0x80808080: every byte's top bit


@njit(cache=True)
def segment_words(w, n_idx, seg_of_row, n_seg, rows, Kd, signed):
    """The replay's weights: ``(q_lo, q_hi, words, corr)``. For output ``o`` and segment ``s``,
    groups ``q_lo[o, s] <= q < q_hi[o, s]`` of a fold (row groups ``4q .. 4q + 3``; both 0 for an
    empty segment); ``words[g, o, f, s, q]`` the int32 word of the four int8 latched weights
    ``w[g, f*rows + 4q + j, n_idx[o]]`` (byte ``j``), zero where row ``4q + j`` is not in the
    segment or past ``Kd``; ``corr[g, o, f, s]`` 128 times the segment's weight sum where the
    stream is ``signed`` (its codes packed as ``c + 128``), else 0. w: (G, Kd, Nd) integer
    values in [-128, 127] (any float or integer dtype, any strides); rows a multiple of 4."""
    G = w.shape[0]
    O, S = seg_of_row.shape[0], max(1, n_seg.max()) if n_seg.size else 1
    Fr = (Kd + rows - 1) // rows
    Qf = rows // 4
    q_lo = np.zeros((O, S), dtype=np.int64)
    q_hi = np.zeros((O, S), dtype=np.int64)
    for o in range(O):
        for s in range(n_seg[o]):
            first, last = -1, -1
            for r in range(rows):
                if seg_of_row[o, r] == s:
                    if first < 0:
                        first = r
                    last = r
            if first >= 0:
                q_lo[o, s] = first // 4
                q_hi[o, s] = last // 4 + 1
    words = np.zeros((G, O, Fr, S, Qf), dtype=np.int32)
    corr = np.zeros((G, O, Fr, S), dtype=np.int32)
    for g in range(G):
        for o in range(O):
            n = n_idx[o]
            for f in range(Fr):
                for s in range(n_seg[o]):
                    total = 0
                    for q in range(q_lo[o, s], q_hi[o, s]):
                        word = np.uint32(0)
                        for j in range(4):
                            r = 4 * q + j
                            k = f * rows + r
                            if k < Kd and seg_of_row[o, r] == s:
                                v = np.int64(w[g, k, n])
                                total += v
                                word |= np.uint32(v & 0xFF) << np.uint32(8 * j)
                        words[g, o, f, s, q] = np.int32(word)
                    if signed:
                        corr[g, o, f, s] = 128 * total
    return q_lo, q_hi, words, corr


@threaded(ELEMENTWISE)
def _pack(src, G, T, Qp, NB, out):
    """The stream in the replay's layout: ``src`` (G, T, Qp) int32 words (each four int8 codes of
    a row group), flat, as float32 bit patterns; ``out`` (G, NB, Qp, 4, LANES) the same words with
    every byte's top bit flipped, flat, as int32, a block of ``BLOCK`` stream values per ``(g,
    b)`` (stream values past ``T`` zero). Whole LANES x LANES tiles move by register transposes
    (:func:`~sysarray.engines.simd.transpose_block`, bit patterns only), the edges one by one."""
    out_f = out.view(np.float32)
    src_i = src.view(np.int32)
    for task in prange(G * NB):
        g = task // NB
        b = task % NB
        base = task * Qp * BLOCK
        for v in range(4):
            t0 = b * BLOCK + v * LANES
            for q0 in range(0, Qp, LANES):
                if t0 + LANES <= T and q0 + LANES <= Qp:
                    transpose_block(src, (g * T + t0) * Qp + q0, Qp, out_f, base + q0 * BLOCK + v * LANES, BLOCK)
                else:
                    for i in range(LANES):
                        for k in range(min(LANES, Qp - q0)):
                            out[base + (q0 + k) * BLOCK + v * LANES + i] = \
                                src_i[(g * T + t0 + i) * Qp + q0 + k] if t0 + i < T else 0
        for i in range(base, base + Qp * BLOCK):
            out[i] ^= _FLIP


@threaded(1 << 20)  # work: multiply-adds
def _replay(packed, G, T, Qp, NB, q_lo, q_hi, words, corr, n_idx, keep, ones, n_seg, sign, linear_tail, y):
    """Per task (GEMM ``g``, block ``b`` of its stream): every replayed output's chains over the
    block, each segment sum ``vpdpbusd`` of the packed stream and the segment's weight words,
    the chain step and its totals in registers across the folds; then the block's values into
    ``y`` (G, T, Nd) int32: with ``linear_tail`` the plain sums plus the correction, else the
    chain totals, wrapped to int32 as the accumulator outside the array."""
    Fr, Qf = words.shape[2], words.shape[4]
    sg = i32_splat(sign)  # 2**31 for 32-bit psums: -2**31 as an int32 bit pattern
    for task in prange(G * NB):
        g = task // NB
        b = task % NB
        base = task * Qp * BLOCK
        tots = np.empty(BLOCK, dtype=np.int32)
        for o in range(n_idx.shape[0]):
            t0, t1, t2, t3 = zeros4()  # the chain's running totals
            for f in range(Fr):
                p0, p1, p2, p3 = zeros4()  # the chain's value
                for s in range(n_seg[o]):
                    a0, a1, a2, a3 = zeros4()  # the segment's sums
                    for q in range(q_lo[o, s], q_hi[o, s]):
                        if f * Qf + q < Qp:
                            wv = i32_splat(words[g, o, f, s, q])
                            at = base + (f * Qf + q) * BLOCK
                            a0 = dpbusd(a0, load_i32(packed, at), wv)
                            a1 = dpbusd(a1, load_i32(packed, at + LANES), wv)
                            a2 = dpbusd(a2, load_i32(packed, at + 2 * LANES), wv)
                            a3 = dpbusd(a3, load_i32(packed, at + 3 * LANES), wv)
                    c = i32_splat(corr[g, o, f, s])  # the signed stream's +128, taken back
                    a0, a1, a2, a3 = sub(a0, c), sub(a1, c), sub(a2, c), sub(a3, c)
                    p0, p1, p2, p3, t0, t1, t2, t3 = chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3,
                                                            i32_splat(keep[o, s]), i32_splat(ones[o, s]), sg,
                                                            linear_tail)
                if not linear_tail:
                    t0, t1, t2, t3 = add(t0, p0), add(t1, p1), add(t2, p2), add(t3, p3)
            store4(tots, 0, t0, t1, t2, t3)
            n = n_idx[o]
            for i in range(min(BLOCK, T - b * BLOCK)):
                t = b * BLOCK + i
                val = np.int64(tots[i]) + y[g, t, n] if linear_tail else np.int64(tots[i])
                y[g, t, n] = force_jit(val, 0xFFFFFFFF, 0, 0x80000000)


def bmm_chains_vnni(s8: torch.Tensor, w: np.ndarray, n_idx, seg_of_row, keep, ones, n_seg, rows: int, sign: int,
                    linear_tail: bool, signed: bool, y: np.ndarray) -> None:
    """:func:`~sysarray.engines.chains_simd.bmm_chains` from the int8 stream: ``s8`` (G, T, Kd)
    int8 codes as :func:`~sysarray.engines.int8.as_int8` gives them (uint8 codes shifted by -128;
    ``signed``: int8 codes as they are), ``w`` (G, Kd, Nd) latched weights in [-128, 127], the
    plan of :class:`~sysarray.engines.psum.PsumPlan`, ``rows`` a multiple of 4; ``y`` (G, T, Nd)
    int32 as there. Needs :data:`~sysarray.engines.simd.VNNI`."""
    if not VNNI:
        raise RuntimeError("the VNNI replay needs AVX-512 VNNI in numba's target")
    G, T, Kd = s8.shape
    Qp = -(-Kd // 4)
    if Kd % 4 or not s8.is_contiguous():
        s8 = torch.nn.functional.pad(s8, (0, 4 * Qp - Kd)).contiguous()
    NB = -(-T // BLOCK)
    packed = np.empty(G * NB * Qp * BLOCK, dtype=np.int32)
    _pack(s8.numpy().reshape(-1).view(np.float32), G, T, Qp, NB, packed, work=G * T * Qp)
    q_lo, q_hi, words, corr = segment_words(w, n_idx, seg_of_row, n_seg, rows, Kd, signed)
    _replay(packed, G, T, Qp, NB, q_lo, q_hi, words, corr, n_idx, keep, ones, n_seg, sign, linear_tail, y,
            work=G * T * Kd * len(n_idx))
