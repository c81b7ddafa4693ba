"""The psum chain: how the fast engine reproduces stuck partial-sum bits exactly.

In WS (and IS, which runs as WS on the transposed problem) the partial sum that leaves array
column ``c`` in a row fold is ``p_R`` of the chain ``p_0 = 0, p_{r+1} = force_r(p_r + a_r * w_r)``
down the rows, where ``force_r`` is row ``r``'s psum register (:func:`registers.force`). Healthy
rows only wrap, and wrapping commutes with addition, so the chain only needs to stop at the
*faulty* rows: cut the column after each faulty row into segments, sum each segment (a GEMM
column), and run ``p = force_s(p + segment_s)`` over the few segment sums (docs/design.md,
"Where each fault is applied").

This module is the single definition of that plan and of the chain step for every fast path:
:func:`chain_plan` says which outputs replay which segments through which masks; the chain
itself runs in torch (:func:`fold_chain_torch`, any device), in numba over precomputed segment
sums (:func:`chain_totals_cpu`), straight from the operands of small GEMMs
(:func:`bmm_chains_direct`, :func:`gemm_chain_totals`), or fused with the segment sums in the
convolution kernels of :mod:`sysarray.engines.conv`, all through
:func:`~sysarray.engines.registers.force`.

With a 32-bit psum register, a column's healthy tail below its last faulty row adds linearly
mod 2**32 (the int32 accumulator outside the array wraps the same way), so a replay can stop at
the last faulty row and return only the correction ``sum over steps of (force(q) - q)`` to add to
the plain GEMM (``linear_tail``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numba import njit, prange

from sysarray.config import ArrayConfig
from sysarray.engines.registers import ChipMasks, force, force_jit
from sysarray.parallel import ELEMENTWISE, threaded
from sysarray.tensor_memo import TensorMemo


class PsumPlan(NamedTuple):
    """The replayed outputs of one layer and their chains.

    n_idx: (O,) int64 output channels ``n`` replayed (column fold outer, then the array column);
    seg_of_row: (O, R) int64 segment of each array row; keep, ones: (O, S) int64 masks of each
    segment's last register (``keep`` all ones, ``ones`` 0 past an output's faulty rows);
    n_seg: (O,) segments each output replays; J: the most faulty rows of any replayed column.
    """

    n_idx: np.ndarray
    seg_of_row: np.ndarray
    keep: np.ndarray
    ones: np.ndarray
    n_seg: np.ndarray
    J: int


@njit(cache=True)
def _plan_size(faulty, chain_cols, col_folds, N):
    """``(O, J)``: the outputs :func:`chain_plan` replays and the most faulty rows of a column."""
    C = faulty.shape[1]
    O = 0
    J = 0
    for c in chain_cols:
        if c < N:  # a column without outputs adds no chain (nor segments to the others)
            J = max(J, faulty[:, c].sum())
        for fc in range(col_folds):
            O += fc * C + c < N
    return O, J


@njit(cache=True)
def _fill_plan(faulty, pkeep, pones, chain_cols, col_folds, N, linear_tail, n_idx, seg_of_row, keep, ones, n_seg):
    """The fields of :func:`chain_plan` into arrays the caller made (``keep`` all ones and
    ``n_seg`` all ``S`` on entry, ``seg_of_row`` and ``ones`` zero)."""
    R, C = faulty.shape
    o = 0
    for fc in range(col_folds):
        for c in chain_cols:
            if fc * C + c >= N:
                continue
            n_idx[o] = fc * C + c
            s = 0
            for r in range(R):
                seg_of_row[o, r] = s
                if faulty[r, c]:
                    keep[o, s] = pkeep[r, c]
                    ones[o, s] = pones[r, c]
                    s += 1
            if linear_tail:
                n_seg[o] = s
            o += 1


@njit(cache=True, inline="always")
def _plan_arrays(O, R, S, full):
    """The plan's arrays before :func:`_fill_plan`: ``n_idx`` (O,), ``seg_of_row`` (O, R) zero,
    ``keep`` (O, S) all ``full``, ``ones`` (O, S) zero, ``n_seg`` (O,) all ``S``."""
    return (np.empty(O, dtype=np.int64), np.zeros((O, R), dtype=np.int64), np.full((O, S), full, dtype=np.int64),
            np.zeros((O, S), dtype=np.int64), np.full(O, S, dtype=np.int64))


@njit(cache=True)
def chain_plan(faulty, pkeep, pones, chain_cols, col_folds, N, full, linear_tail):
    """:class:`PsumPlan` fields for the array columns ``chain_cols`` of an ``N``-output GEMM.

    faulty, pkeep, pones: (R, C) the psum register's faulty flags and masks; every output
    channel ``n = fc*C + c < N`` with ``c`` in ``chain_cols`` is replayed. Segment ``s`` of a
    column is its rows after faulty row ``s-1`` up to faulty row ``s`` (inclusive), read back
    through that row's register; segment ``J`` (kept only without ``linear_tail``) is the healthy
    tail, read through a healthy register (a wrap to the register's width). With a linear tail an
    output's chain ends at its own last faulty row (``n_seg``). For jitted callers;
    :func:`plan` makes the arrays in Python."""
    O, J = _plan_size(faulty, chain_cols, col_folds, N)
    n_idx, seg_of_row, keep, ones, n_seg = _plan_arrays(O, faulty.shape[0], J if linear_tail else J + 1, full)
    _fill_plan(faulty, pkeep, pones, chain_cols, col_folds, N, linear_tail, n_idx, seg_of_row, keep, ones, n_seg)
    return n_idx, seg_of_row, keep, ones, n_seg, J


# Per chip (its masks) and GEMM geometry: the plan, kept for every batch the chip runs.
_PLANS = TensorMemo(max_entries=1024)


def plan(cm: ChipMasks, cfg: ArrayConfig, chain_cols: np.ndarray, col_folds: int, N: int,
         linear_tail: bool) -> PsumPlan | None:
    """:func:`chain_plan` of a chip's psum register for a GEMM of ``N`` outputs in ``col_folds``
    column folds (None when no output is replayed), made once per chip and geometry (shared:
    not to be written). The arrays are made here and filled by the jitted part: a cached numba
    function that returns new arrays has been seen to fail on load in some processes ("'descr'
    is NULL")."""
    cols = np.asarray(chain_cols, dtype=np.int64)
    return _PLANS.get_for(cm, (), (cols.tobytes(), col_folds, N, cfg.psum_bits, linear_tail),
                          lambda: _make_plan(cm.psum, cfg.psum_bits, cols, col_folds, N, linear_tail))


def _make_plan(preg, psum_bits: int, cols: np.ndarray, col_folds: int, N: int, linear_tail: bool) -> PsumPlan | None:
    O, J = _plan_size(preg.faulty, cols, col_folds, N)
    if not O:
        return None
    # the same allocation as chain_plan's, run by numpy
    n_idx, seg_of_row, keep, ones, n_seg = _plan_arrays.py_func(O, preg.faulty.shape[0], J if linear_tail else J + 1,
                                                                (1 << psum_bits) - 1)
    _fill_plan(preg.faulty, preg.keep, preg.ones, cols, col_folds, N, linear_tail, n_idx, seg_of_row, keep, ones, n_seg)
    return PsumPlan(n_idx, seg_of_row, keep, ones, n_seg, int(J))


def segment_mask(p: PsumPlan, rows: int) -> np.ndarray:
    """(R, S*O) float32, 1 where row ``r`` of output ``o``'s column is in segment ``s`` (column
    ``s*O + o``), else 0: which of a fold's rows each segment sum adds."""
    O, S = p.keep.shape
    seg = p.seg_of_row.T  # (R, O)
    return (seg[:, None, :] == np.arange(S)[None, :, None]).reshape(rows, S * O).astype(np.float32)


def segment_weights(Wcols: torch.Tensor, p: PsumPlan, rows: int) -> torch.Tensor:
    """The latched weights of the replayed outputs split by segment: Wcols (..., Fr*R, O) is
    ``Wp[..., n_idx]``, the replayed columns of the latched weights (one matrix per GEMM of a
    batch); returns Wv (..., Fr, R, S, O) with ``Wv[..., fr, r, s, o] = Wcols[..., fr*R + r, o]``
    where row ``r`` of output ``o``'s column is in segment ``s``, else 0 (:func:`segment_mask`).
    A segment's sum is the product of the fold's inputs with its weights."""
    O, S = p.keep.shape
    mask = torch.from_numpy(segment_mask(p, rows)).to(Wcols.device, Wcols.dtype).view(rows, S, O)
    return Wcols.unflatten(-2, (Wcols.shape[-2] // rows, rows)).unsqueeze(-2) * mask


def fold_chain_torch(seg: torch.Tensor, keep: torch.Tensor, ones: torch.Tensor, sign: int,
                     linear_tail: bool) -> torch.Tensor:
    """One fold's chains in torch ops (any device): seg (S, ...) int64 segment sums, keep/ones
    broadcastable to seg's shape, segments first. Returns (...) int64: the chain's value, or with
    ``linear_tail`` its correction ``value - sum(seg)``."""
    p = torch.zeros_like(seg[0])
    for s in range(seg.shape[0]):
        p = force(p + seg[s], keep[s], ones[s], sign)
    return p - seg.sum(dim=0) if linear_tail else p


@njit(cache=True, inline="always")
def _direct_chain(st, w, g, n, o, seg_of_row, keep, ones, n_seg, rows, sign, a, p, fix, tot):
    """Output ``o`` (column ``n``) of GEMM ``g`` over the whole stream: ``fix`` the sum over its
    chain's steps of ``force(q) - q``, ``tot`` the sum over folds of the chain's value (T,)
    int64; ``a`` (T,) float32 and ``p`` (T,) int64 scratch. See :func:`bmm_chains_direct`."""
    Kd, T = st.shape[1], st.shape[2]
    for i in range(T):
        fix[i] = 0
        tot[i] = 0
    for f in range((Kd + rows - 1) // rows):
        for i in range(T):
            p[i] = 0
        r = 0
        for s in range(n_seg[o]):
            for i in range(T):
                a[i] = 0.0
            while r < rows and seg_of_row[o, r] == s:
                k = f * rows + r
                if k < Kd:
                    wk = w[g, k, n]
                    if wk != 0.0:
                        for i in range(T):
                            a[i] += wk * st[g, k, i]
                r += 1
            k_s = keep[o, s]
            on = ones[o, s]
            for i in range(T):
                q = p[i] + np.int64(a[i])
                v = force_jit(q, k_s, on, sign)
                fix[i] += v - q
                p[i] = v
        for i in range(T):
            tot[i] += p[i]


@threaded(1 << 20)  # work: multiply-adds
def bmm_chains_direct(st, w, n_idx, seg_of_row, keep, ones, n_seg, rows, sign, linear_tail, y):
    """The replayed outputs of G small GEMMs straight from their operands, chains fused: for
    each GEMM ``g`` and output ``o`` of plan (``n_idx .. n_seg``, :class:`PsumPlan`), each fold's
    segment sums are axpys of the stream's rows, vectorised over the stream, and the chain runs
    on them at once (no segment-sum tensor; attention's heads have a few dozen rows per GEMM).

    st: (G, Kd, T) float32, each GEMM's stream transposed (row ``k`` of the GEMM's input
    contiguous over the stream); w: (G, Kd, Nd) float32 latched weights, any strides; every
    segment sum exact in float32 (``rows * max|st| * max|w| < 2**24``); rows: the array's R;
    y: (G, T, Nd) int32, the plain sums where ``linear_tail`` (corrected in place), else
    overwritten in the replayed columns; wrapped to int32 as the accumulator outside the array."""
    G, T = st.shape[0], st.shape[2]
    for g in prange(G):
        a = np.empty(T, dtype=np.float32)
        p = np.empty(T, dtype=np.int64)
        fix = np.empty(T, dtype=np.int64)
        tot = np.empty(T, dtype=np.int64)
        for o in range(n_idx.shape[0]):
            n = n_idx[o]
            _direct_chain(st, w, g, n, o, seg_of_row, keep, ones, n_seg, rows, sign, a, p, fix, tot)
            for i in range(T):
                val = fix[i] + y[g, i, n] if linear_tail else tot[i]
                y[g, i, n] = force_jit(val, 0xFFFFFFFF, 0, 0x80000000)


@threaded(1 << 20)  # work: multiply-adds
def gemm_chain_totals(st, w, n_idx, seg_of_row, keep, ones, n_seg, rows, sign, linear_tail, out):
    """:func:`bmm_chains_direct` of one GEMM (``st`` (1, Kd, T), ``w`` (1, Kd, Nd)) into ``out``
    (T, O) int32 instead: each replayed output's correction (``linear_tail``) or value, wrapped
    to int32 (a :class:`~sysarray.engines.conv.fix.ChainFix`'s totals); outputs in parallel."""
    T = st.shape[2]
    for o in prange(n_idx.shape[0]):
        a = np.empty(T, dtype=np.float32)
        p = np.empty(T, dtype=np.int64)
        fix = np.empty(T, dtype=np.int64)
        tot = np.empty(T, dtype=np.int64)
        _direct_chain(st, w, 0, n_idx[o], o, seg_of_row, keep, ones, n_seg, rows, sign, a, p, fix, tot)
        for i in range(T):
            out[i, o] = force_jit(fix[i] if linear_tail else tot[i], 0xFFFFFFFF, 0, 0x80000000)


@threaded(ELEMENTWISE)
def chain_totals_cpu(seg, keep, ones, sign, linear_tail, y, cols):
    """Replay chains over precomputed segment sums: per fold ``p = force_s(p + seg_s)`` over the
    segments, summed over folds with int32 wraparound; vectorised over the stream.

    seg: (Fr, S, V, T) exact integers below 2**31 (float or int), any strides (fastest with the
    stream contiguous); keep/ones: (S, V) int64; y: (T, N) int32 outputs, of which output ``v``
    is column ``cols[v]`` (cols (V,) int64): ``y[t, cols[v]]`` becomes the fold sum of the chain
    values or, with ``linear_tail``, ``y`` plus the sum over all steps of ``force(q) - q`` (``y``
    holds the plain GEMM, this is its correction), wrapped to int32 as the accumulator outside
    the array does.
    """
    Fr, S, V, T = seg.shape
    block = 256  # stream values per task: a block's (strided) segment sums stay in L1 across the outputs
    for b in prange((T + block - 1) // block):
        t0 = b * block
        n = min(T, t0 + block) - t0
        p = np.empty(n, dtype=np.int64)
        fix = np.empty(n, dtype=np.int64)  # sum of force(q) - q over the steps (linear tail)
        tot = np.empty(n, dtype=np.int64)  # sum of the chains' values over the folds
        for v in range(V):
            c = cols[v]
            for i in range(n):
                fix[i] = 0
                tot[i] = 0
            for fr in range(Fr):
                for i in range(n):
                    p[i] = 0
                for s in range(S):
                    k = keep[s, v]
                    o = ones[s, v]
                    for i in range(n):
                        q = p[i] + np.int64(np.int32(seg[fr, s, v, t0 + i]))
                        f = force_jit(q, k, o, sign)
                        p[i] = f
                        fix[i] += f - q
                for i in range(n):
                    tot[i] += p[i]
            for i in range(n):
                val = fix[i] + y[t0 + i, c] if linear_tail else tot[i]
                y[t0 + i, c] = force_jit(val, 0xFFFFFFFF, 0, 0x80000000)  # the int32 accumulator's wrap
