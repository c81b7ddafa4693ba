"""The fast exact engine: whole-matrix GEMMs plus exact fault corrections (torch, CPU or CUDA).

It returns, bit for bit, what the cycle engine clocks out (docs/design.md §3.2):

- stationary dataflows (WS, and IS as WS on the transposed problem): the stuck bits of the
  stationary register give a modified stationary matrix; streamed-register faults give exact
  corrections ``(a' - a) * w`` on the affected (k, n); a column with psum faults is split at
  its faulty rows into segments whose sums are extra GEMM columns, and the psum chain is then
  replayed on those few segment sums per fold;
- OS: outputs owned by PEs whose operands pass a stuck act/weight register are recomputed
  from the corrupted operands; outputs owned by PEs with a stuck accumulator replay their K
  accumulation steps in a small jitted loop.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit

from sysarray import mapping
from sysarray.config import ArrayConfig, Dataflow
from sysarray.engines import psum
from sysarray.engines.exact import exact_matmul, float_dtype_for, float_gemm_is_exact
from sysarray.engines.registers import (ChipMasks, RegisterMasks, chip_masks, compose, force, force_jit, keep_of, latched,
                                        wrap)
from sysarray.faults import FaultMap

# Largest segment-sum tensor (elements) held at once; the stream is processed in chunks above it.
_SEG_BUDGET = 8 << 20


def _operand_max(x: torch.Tensor, reg: RegisterMasks) -> int:
    """Largest |value| the register can pass on for operand ``x``."""
    # Not x.abs(): abs(-128) overflows in int8.
    top = max(-int(x.min()), int(x.max())) if x.numel() else 0
    if reg.faulty.any():
        top = max(top, 255 if reg.sign == 0 else 128)
    return top


def _row_intervals(faulty_cols: np.ndarray, keep: np.ndarray, ones: np.ndarray, width: int, C: int):
    """Composite masks along one row of a streamed register.

    Returns ``[(c_start, c_end, stuck, ones), ...]``: PEs ``c_start <= c < c_end`` see the
    operand forced by every stuck register at columns ``<= c_start`` in flow order.
    """
    full = (1 << width) - 1
    out = []
    acc = (0, 0)
    cols = list(faulty_cols)
    for i, c in enumerate(cols):
        acc = compose(acc, (int(~keep[c] & full), int(ones[c])))
        end = cols[i + 1] if i + 1 < len(cols) else C
        out.append((int(c), int(end), acc[0], acc[1]))
    return out


def _strided(start: int, stop: int, step: int, dev) -> torch.Tensor:
    """Indices ``start, start + step, ... < stop`` (empty when ``start >= stop``)."""
    return torch.arange(min(start, stop), stop, step, device=dev, dtype=torch.int64)


def _apply(x: torch.Tensor, stuck: int, ones: int, width: int, sign: int) -> torch.Tensor:
    return force(x, keep_of(stuck, width), ones, sign)


def _stationary_fast(S: torch.Tensor, Wst: torch.Tensor, cfg: ArrayConfig,
                     sreg: RegisterMasks, treg: RegisterMasks, cm: ChipMasks) -> torch.Tensor:
    """WS-style array: ``S`` (T, Kd) streams east, ``Wst`` (Kd, Nd) is stationary.

    Returns the (T, Nd) int64 output already wrapped to int32 range.
    """
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    dev = S.device
    T, Kd = S.shape
    Nd = Wst.shape[1]
    Fr, Fc = -(-Kd // R), -(-Nd // C)
    Kp, Np = Fr * R, Fc * C

    # Stationary operand as latched by each PE (forced; gated off where bypassed), held as exact
    # float values: it is a GEMM operand, and in IS it is the (large) activation matrix.
    fdt = float_dtype_for(dev)
    Wp = latched(Wst, treg, cm.bypassed, fdt)
    smax = _operand_max(S, sreg)
    wmax = max(-int(Wp.min()), int(Wp.max())) if Wp.numel() else 0
    S_int = S
    S = S.to(float_dtype_for(dev))  # converted once; every GEMM below reads exact float values

    # Streamed-register faults: one correction term per (row, interval of equal forcing).
    corr_rows, corr_lo, corr_hi, corr_delta = [], [], [], []
    for r in np.flatnonzero(sreg.faulty.any(axis=1)):
        cols = np.flatnonzero(sreg.faulty[r])
        X = torch.zeros((T, Fr), dtype=torch.int64, device=dev)
        ks = np.arange(r, Kd, R)
        X[:, : len(ks)] = S_int[:, torch.from_numpy(ks).to(dev)].to(torch.int64)
        for lo, hi, stuck, ones in _row_intervals(cols, sreg.keep[r], sreg.ones[r], sreg.width, C):
            corr_rows.append(int(r))
            corr_lo.append(lo)
            corr_hi.append(hi)
            corr_delta.append(_apply(X, stuck, ones, sreg.width, sreg.sign) - X)  # (T, Fr)
    n_corr = len(corr_rows)
    dmax = 255

    _, col_of_n = mapping.pe_of(0, torch.arange(Np, device=dev), R, C)
    # A column must replay its psum chain per fold when it has psum faults, or when a partial
    # sum could wrap inside the array (then even healthy columns need the per-fold wrap).
    wrap_possible = R * max(smax, dmax if n_corr else 0) * wmax >= (1 << (pb - 1))
    chain_cols = np.arange(C) if wrap_possible else np.flatnonzero(cm.psum.faulty.any(axis=0))

    Y = torch.zeros((T, Nd), dtype=torch.int64, device=dev)
    if len(chain_cols) < C:
        Y = exact_matmul(S, Wp[:Kd, :Nd], smax, wmax)
        if n_corr:
            D = torch.cat(corr_delta, dim=1)  # (T, n_corr * Fr)
            Wd = torch.zeros((n_corr, Fr, Nd), dtype=torch.int64, device=dev)
            Wrows = Wp.view(Fr, R, Np)
            for j, (r, lo, hi) in enumerate(zip(corr_rows, corr_lo, corr_hi)):
                in_iv = ((col_of_n >= lo) & (col_of_n < hi))[:Nd]
                Wd[j] = Wrows[:, r, :Nd] * in_iv
            Y = Y + exact_matmul(D, Wd.view(n_corr * Fr, Nd), dmax, wmax)
        Y = wrap(Y, 32)
    if len(chain_cols):
        _replay_psum_chains(S_int, Wp, cfg, cm, chain_cols, corr_rows, corr_lo, corr_hi, corr_delta,
                            max(smax, dmax if n_corr else 0), wmax, Y,
                            linear_tail=pb == 32 and len(chain_cols) < C)
    return Y


def _replay_psum_chains(S, Wp, cfg, cm: ChipMasks, chain_cols, corr_rows, corr_lo, corr_hi, corr_delta, amax, wmax,
                        Y, linear_tail: bool) -> None:
    """Overwrite the outputs of array columns ``chain_cols`` by replaying their psum chains
    (:mod:`sysarray.engines.psum`): each segment's sum is one GEMM column per fold, the act
    corrections of the segment's rows extra inputs, and the chain runs over those sums.
    ``linear_tail``: Y already holds the plain sums and the register is 32 bits wide, so the chain
    stops at each column's last faulty row and its correction is added."""
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    dev = S.device
    T, Kd = S.shape
    Kp, Np = Wp.shape
    Fr = Kp // R
    p = psum.plan(cm, cfg, chain_cols, Np // C, Y.shape[1], linear_tail)
    if p is None:
        return
    O, S_n = p.keep.shape
    n_t = torch.from_numpy(p.n_idx).to(dev)
    Wv = psum.segment_weights(Wp, p, R)  # (Fr, R, S_n, O)
    V = S_n * O
    parts = [Wv.reshape(Fr, R, V)]
    if corr_rows:
        _, col_o = mapping.pe_of(0, n_t, R, C)
        for r, lo, hi in zip(corr_rows, corr_lo, corr_hi):
            in_iv = ((col_o >= lo) & (col_o < hi)).view(1, 1, O)
            parts.append((Wv[:, r] * in_iv).reshape(Fr, 1, V))
    Wall = torch.cat(parts, dim=1)  # (Fr, R + n_corr, V)
    keep_v = np.ascontiguousarray(p.keep.T)  # (S_n, O)
    ones_v = np.ascontiguousarray(p.ones.T)
    sign = 1 << (pb - 1)
    n_in = R + len(corr_rows)
    fdt = float_dtype_for(dev)
    if not float_gemm_is_exact(n_in, amax, wmax, fdt):
        fdt = torch.int64  # exact_matmul below then chunks the inner dimension
    Wall_f = Wall.to(fdt) if fdt != torch.int64 else Wall
    Fr_full = Kd // R
    step = max(1, _SEG_BUDGET // max(1, Fr * max(V, n_in)))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        # Fold-major stream (Fr, t, R) plus the act deltas as extra inputs: one batched GEMM.
        x = torch.empty((Fr, t1 - t0, n_in), dtype=fdt, device=dev)
        if Fr_full:
            x[:Fr_full, :, :R] = S[t0:t1, :Fr_full * R].view(t1 - t0, Fr_full, R).permute(1, 0, 2)
        if Kd > Fr_full * R:
            x[Fr_full, :, :Kd - Fr_full * R] = S[t0:t1, Fr_full * R:]
            x[Fr_full, :, Kd - Fr_full * R:R] = 0
        for j, dl in enumerate(corr_delta):
            x[:, :, R + j] = dl[t0:t1].t()
        seg = exact_matmul(x, Wall, amax, wmax) if fdt == torch.int64 else torch.bmm(x, Wall_f)
        seg = seg.view(Fr, t1 - t0, S_n, O)
        if dev.type == "cpu":
            out = torch.empty((t1 - t0, O), dtype=torch.int64)
            psum.chain_totals_cpu(seg.numpy(), keep_v, ones_v, sign, linear_tail, out.numpy(), work=seg.numel())
        else:
            keep_t = torch.from_numpy(keep_v).to(dev).view(S_n, 1, 1, O)
            ones_t = torch.from_numpy(ones_v).to(dev).view(S_n, 1, 1, O)
            folds = psum.fold_chain_torch(seg.to(torch.int64).permute(2, 0, 1, 3), keep_t, ones_t, sign, linear_tail)
            out = wrap(folds.sum(dim=0), 32)
        if linear_tail:
            out = wrap(Y[t0:t1, n_t] + out, 32)
        Y[t0:t1, n_t] = out


@njit(cache=True)
def _accumulate_chain(prod, keep, ones, sign, out):
    """OS accumulators with stuck bits: ``acc = force(force(0) + ...)`` over K, row by row.

    prod: (L, K) int64 products; keep/ones: (L,) masks; out: (L,) int64 results.
    """
    L, K = prod.shape
    for i in range(L):
        acc = force_jit(0, keep[i], ones[i], sign)  # the clear at the start of a fold is forced too
        for k in range(K):
            acc = force_jit(acc + prod[i, k], keep[i], ones[i], sign)
        out[i] = acc


def _chain_torch(prod, keep, ones, sign):
    """:func:`_accumulate_chain` in torch ops (CUDA)."""
    acc = force(torch.zeros_like(ones), keep, ones, sign)
    for k in range(prod.shape[1]):
        acc = force(acc + prod[:, k], keep, ones, sign)
    return acc


def _os_fast(A: torch.Tensor, W: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks) -> torch.Tensor:
    """Output-stationary array; returns (M, N) int64 in int32 range."""
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    dev = A.device
    M, K = A.shape
    N = W.shape[1]
    amax, wmax = _operand_max(A, cm.act), _operand_max(W, cm.weight)
    Y = wrap(exact_matmul(A, W, amax, wmax), pb)
    if cm.bypassed.any():
        for r, c in zip(*np.nonzero(cm.bypassed)):
            Y[mapping.pe_elements(r, c, R, C)] = 0
        return Y
    act, wt, ps = cm.act, cm.weight, cm.psum
    # Composite forcing seen by PE (r, c): act faults at (r, <=c), weight faults at (<=r, c).
    act_comp = {}
    for r in np.flatnonzero(act.faulty.any(axis=1)):
        for lo, hi, stuck, ones in _row_intervals(np.flatnonzero(act.faulty[r]), act.keep[r], act.ones[r], 8, C):
            for c in range(lo, hi):
                act_comp[(int(r), c)] = (stuck, ones)
    wt_comp = {}
    for c in np.flatnonzero(wt.faulty.any(axis=0)):
        for lo, hi, stuck, ones in _row_intervals(np.flatnonzero(wt.faulty[:, c]), wt.keep[:, c], wt.ones[:, c], 8, R):
            for r in range(lo, hi):
                wt_comp[(r, int(c))] = (stuck, ones)
    psum_pes = {(int(r), int(c)) for r, c in zip(*np.nonzero(ps.faulty))}

    def operands(r, c):
        rows, cols = mapping.pe_elements(r, c, R, C)  # PE (r, c) owns outputs Y[rows, cols]
        a = A[rows].to(torch.int64)
        w = W[:, cols].to(torch.int64)
        if (r, c) in act_comp:
            a = _apply(a, *act_comp[(r, c)], 8, act.sign)
        if (r, c) in wt_comp:
            w = _apply(w, *wt_comp[(r, c)], 8, wt.sign)
        return a, w

    # Group PEs that read the same corrupted operands into one GEMM per (row, act forcing)
    # and per (column, weight forcing); PEs corrupted on both sides go one by one.
    both = set(act_comp) & set(wt_comp)
    groups: dict = {}
    for (r, c) in set(act_comp) - both - psum_pes:
        groups.setdefault(("a", r, act_comp[(r, c)]), []).append(c)
    for (r, c) in set(wt_comp) - both - psum_pes:
        groups.setdefault(("w", c, wt_comp[(r, c)]), []).append(r)
    for (kind, idx, masks), members in groups.items():
        members = sorted(members)
        if kind == "a":
            rows = mapping.pe_elements(idx, 0, R, C)[0]
            a = _apply(A[rows].to(torch.int64), *masks, 8, act.sign)
            ns = torch.cat([_strided(c, N, C, dev) for c in members])
            Y[rows, ns] = wrap(exact_matmul(a, W[:, ns], 255, wmax), pb)
        else:
            cols = mapping.pe_elements(0, idx, R, C)[1]
            w = _apply(W[:, cols].to(torch.int64), *masks, 8, wt.sign)
            ms = torch.cat([_strided(r, M, R, dev) for r in members])
            Y[ms, cols] = wrap(exact_matmul(A[ms], w, amax, 128), pb)
    for (r, c) in both - psum_pes:
        a, w = operands(r, c)
        Y[mapping.pe_elements(r, c, R, C)] = wrap(exact_matmul(a, w, 255, 128), pb)
    if psum_pes:
        prods, keeps, oness, where = [], [], [], []
        for (r, c) in sorted(psum_pes):
            a, w = operands(r, c)
            if a.shape[0] == 0 or w.shape[1] == 0:
                continue
            p = (a.unsqueeze(1) * w.t().unsqueeze(0)).reshape(-1, K)  # (Mr * Nc, K)
            prods.append(p)
            keeps.append(torch.full((p.shape[0],), int(ps.keep[r, c]), dtype=torch.int64, device=dev))
            oness.append(torch.full((p.shape[0],), int(ps.ones[r, c]), dtype=torch.int64, device=dev))
            where.append((r, c, a.shape[0], w.shape[1]))
        if prods:
            prod, keep, ones = torch.cat(prods), torch.cat(keeps), torch.cat(oness)
            if dev.type == "cpu":
                res = np.empty(prod.shape[0], dtype=np.int64)
                _accumulate_chain(prod.numpy(), keep.numpy(), ones.numpy(), ps.sign, res)
                res = torch.from_numpy(res)
            else:
                res = _chain_torch(prod, keep, ones, ps.sign)
            i = 0
            for r, c, mr, nc in where:
                Y[mapping.pe_elements(r, c, R, C)] = res[i:i + mr * nc].view(mr, nc)
                i += mr * nc
    return Y


def fast_gemm(a: torch.Tensor, w: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None,
              act_signed: bool | None = None, *, masks: ChipMasks | None = None) -> torch.Tensor:
    """``a @ w`` on the faulty array, exact; a: (M, K) int8/uint8, w: (K, N) int8 tensors on
    one device. Returns (M, N) int32 on that device.

    ``a`` may also be a float tensor holding 8-bit codes (callers that keep activations in float
    to save conversions); then ``act_signed`` says whether they are int8 or uint8 codes.
    ``masks``: ``chip_masks(cfg, faults, act_signed)`` when the caller already has them (layers of
    one network on one chip share them).
    """
    if act_signed is None:
        act_signed = a.dtype != torch.uint8
    cm = masks if masks is not None else chip_masks(cfg, faults, act_signed=act_signed)
    if cfg.dataflow is Dataflow.WS:
        y = _stationary_fast(a, w, cfg, cm.act, cm.weight, cm)
    elif cfg.dataflow is Dataflow.IS:
        y = _stationary_fast(w.t(), a.t(), cfg, cm.weight, cm.act, cm).t()
    else:
        y = _os_fast(a, w, cfg, cm)
    return y.to(torch.int32)
