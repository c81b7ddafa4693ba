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

Every step takes a batch of G GEMMs that run one after another on the same array (a single GEMM
is a batch of one): the operands carry a leading batch dimension and each step is one batched
tensor operation over it.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from numba import njit

from sysarray import mapping
from sysarray.config import ArrayConfig, Dataflow
from sysarray.engines import chains_simd, chains_vnni, int8, psum, simd
from sysarray.engines.exact import abs_max, exact_matmul, float_dtype_for, float_gemm_is_exact, never_wraps
from sysarray.engines.registers import (ChipMasks, RegisterMasks, chip_masks, compose, force, force_jit, keep_of, latched,
                                        wrap)
from sysarray.engines.transpose import transposed
from sysarray.faults import FaultMap
from sysarray.parallel import MeasuredChoice

# Largest segment-sum tensor (elements) held at once; the stream is processed in chunks above it.
_SEG_BUDGET = 8 << 20
# The stream-major replay's block of int32 segment sums: small enough to stay in a core's L2
# between the GEMMs that write it and the chain replay that reads it.
_STREAM_SEG_BUDGET = 1 << 20


_CODE_BOUND = {torch.uint8: 255, torch.int8: 128}


def _operand_max(x: torch.Tensor, reg: RegisterMasks, known: int | None = None) -> int:
    """Largest |value| the register can pass on for operand ``x``; ``known``: a bound on |x|
    the caller has (spares a pass over ``x``; an 8-bit integer tensor's is its type's range)."""
    if known is None and x.dtype in _CODE_BOUND:
        known = _CODE_BOUND[x.dtype]
    top = abs_max(x) if known is None else int(known)
    if reg.any_faulty:
        top = max(top, 255 if reg.sign == 0 else 128)
    return top


def _to_int32(y: torch.Tensor, bound: int) -> torch.Tensor:
    """Exact integer values ``y`` (float or int64) with ``|y| <= bound`` as int32, wrapped mod 2**32."""
    if bound < 1 << 31:
        return y.to(torch.int32)
    return wrap(y.to(torch.int64), 32).to(torch.int32)


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


def _act_corrections(S: torch.Tensor, sreg: RegisterMasks, R: int, C: int, Fr: int):
    """Streamed-register faults as correction inputs: one per (row, interval of columns with
    equal composite forcing), ``[(r, lo, hi, delta), ...]`` with delta (G, T, Fr) int64 the
    change ``a' - a`` of the inputs row ``r`` streams in each fold (S (G, T, Kd))."""
    G, T, Kd = S.shape
    out = []
    for r in np.flatnonzero(sreg.faulty.any(axis=1)):
        X = torch.zeros((G, T, Fr), dtype=torch.int64, device=S.device)
        ks = np.arange(r, Kd, R)
        X[..., : len(ks)] = S[..., torch.from_numpy(ks).to(S.device)].to(torch.int64)
        for lo, hi, stuck, ones in _row_intervals(np.flatnonzero(sreg.faulty[r]), sreg.keep[r], sreg.ones[r],
                                                   sreg.width, C):
            out.append((int(r), lo, hi, _apply(X, stuck, ones, sreg.width, sreg.sign) - X))
    return out


def _stationary_fast(S: torch.Tensor, Wst: torch.Tensor, cfg: ArrayConfig,
                     sreg: RegisterMasks, treg: RegisterMasks, cm: ChipMasks,
                     bounds: tuple[int | None, int | None] = (None, None), raw: bool = False) -> torch.Tensor:
    """G GEMMs on a WS-style array, one after another: ``S`` (G, T, Kd) streams east, ``Wst``
    (G, Kd, Nd) is stationary; ``bounds`` on |S| and |Wst| where the caller knows them.
    Returns (G, T, Nd) int32 or, with ``raw``, possibly float32 holding the same values."""
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    dev = S.device
    G, T, Kd = S.shape
    Nd = Wst.shape[-1]
    Fr = -(-Kd // R)

    # Stationary operand as latched by each PE (forced; gated off where bypassed), held as exact
    # float values: it is a GEMM operand, and in IS it is the (large) activation matrix. Healthy
    # registers latch what they are sent, so the whole-fold padded copy is made only when needed.
    fdt = float_dtype_for(dev)
    smax = _operand_max(S, sreg, bounds[0])
    corr = _act_corrections(S, sreg, R, C, Fr) if sreg.any_faulty else []
    sent = not treg.any_faulty and not cm.any_bypassed and not corr
    Wp = Wst if sent else latched(Wst, treg, cm.bypassed, fdt)  # as sent (G, Kd, Nd), or whole folds (G, Fr*R, Np)
    wmax = abs_max(Wp) if bounds[1] is None else _operand_max(Wp, treg, bounds[1])
    amax = max(smax, 255 if corr else 0)

    # A column must replay its psum chain per fold when it has psum faults, or when a partial
    # sum could wrap inside the array (then even healthy columns need the per-fold wrap).
    wrap_possible = R * amax * wmax >= (1 << (pb - 1))
    chain_cols = np.arange(C) if wrap_possible else cm.psum_columns
    plain = len(chain_cols) < C  # some outputs are the plain sums
    Sf = functools.cache(lambda: S.to(fdt))  # converted at most once: the float GEMMs below read exact values
    S8 = functools.cache(lambda: int8.as_int8(S, sreg.sign == 0))  # likewise for the int8 GEMMs
    Wf = Wp.to(fdt)
    if plain:
        Y = _plain_product(S, Sf, S8, Wp[..., :Kd, :Nd], Wf[..., :Kd, :Nd], smax, wmax, sreg.sign == 0,
                           treg.sign == 0)
        if corr:
            cols = np.arange(Nd)
            D = torch.cat([delta for *_, delta in corr], dim=-1)  # (G, T, n_corr * Fr)
            Wd = torch.stack([_act_row_weights(Wf[..., :Nd], r, lo, hi, cols, R, C) for r, lo, hi, _ in corr], dim=1)
            Y = Y.to(torch.int64) + exact_matmul(D, Wd.flatten(1, 2), 255, wmax)  # Wd (G, n_corr, Fr, Nd)
    else:
        Y = torch.zeros((G, T, Nd), dtype=torch.int32, device=dev)
    linear_tail = pb == 32 and plain
    p = psum.plan(cm, cfg, chain_cols, -(-Nd // C), Nd, linear_tail) if len(chain_cols) else None
    bound = (Kd + len(corr) * Fr) * amax * wmax
    if raw and p is None and Y.dtype == torch.float32 and bound < 1 << 31:
        return Y  # exact values that need no wrap: the caller takes them as they are
    Y = _to_int32(Y, bound)
    if p is not None:
        @functools.cache
        def segment_weights() -> torch.Tensor:  # (G, Fr, R (+ n_corr), V); the direct replay needs none
            cols = np.tile(p.n_idx, p.keep.shape[1])  # segment s of output o is column s*O + o
            Wv = _columns(Wf, cols, np.tile(psum.segment_mask(p, R), (Fr, 1)))  # (G, rows, V)
            if corr:  # padded rows carry act deltas: every fold whole
                Wc = [_act_row_weights(Wv, r, lo, hi, cols, R, C).unsqueeze(-2) for r, lo, hi, _ in corr]
                return torch.cat([Wv.unflatten(-2, (Fr, R))] + Wc, dim=-2)
            if Fr == 1:  # rows past Kd stream zeros
                return Wv[:, :Kd].unsqueeze(1)
            return torch.nn.functional.pad(Wv[:, :Kd], (0, 0, 0, Fr * R - Kd)).unflatten(-2, (Fr, R))

        def fold_major() -> None:
            _replay_psum_chains(Sf(), segment_weights().transpose(0, 1), corr, cfg, p, linear_tail, amax, wmax, Y)

        def stream_major() -> None:
            _replay_stream_major(S8, Sf, Kd, segment_weights(), sreg.sign == 0, cfg, p, linear_tail, Y)

        def direct() -> None:
            # (G, Kd, T): each row of a GEMM's input over its stream, read by the kernel below only
            st = transposed(Sf(), scratch=True)
            chains_simd.bmm_chains(st.numpy(), Wf[:, :Kd, :Nd].numpy(), p.n_idx, p.seg_of_row, p.keep, p.ones,
                                   p.n_seg, R, 1 << (pb - 1), linear_tail, Y.numpy())
        def vnni() -> None:
            chains_vnni.bmm_chains_vnni(S8(), Wf[:, :Kd, :Nd].numpy(), p.n_idx, p.seg_of_row, p.keep, p.ones, p.n_seg,
                                        R, 1 << (pb - 1), linear_tail, sreg.sign != 0, Y.numpy())
        s_codes = smax <= (255 if sreg.sign == 0 else 128)
        if dev.type == "cpu" and not corr and s_codes and wmax <= 128:
            # many short streams (attention's heads) can favour one batched GEMM over one per stream,
            # and GEMMs of a few dozen rows the replay straight from the operands
            options = {"stream_major": stream_major, "fold_major": fold_major}
            if fdt == torch.float32 and float_gemm_is_exact(R, amax, wmax, fdt):
                options["direct"] = direct
            if simd.VNNI and R % 4 == 0 and wmax <= (128 if treg.sign else 127):  # int8 weights for vpdpbusd
                options["vnni"] = vnni
            key = (G, T.bit_length(), Kd, p.keep.size, R, sreg.sign == 0, torch.get_num_threads())
            _REPLAY(key, options)
        else:
            fold_major()
    return Y


_REPLAY = MeasuredChoice(name="fast.psum_replay")


_PRODUCT = MeasuredChoice(name="fast.product")


def _plain_product(S: torch.Tensor, Sf, S8, W: torch.Tensor, Wf: torch.Tensor, smax: int, wmax: int,
                   s_unsigned: bool, w_unsigned: bool) -> torch.Tensor:
    """``S @ W`` (G, T, K) x (G, K, N) exactly: the float product (float, or int64 when chunked)
    or, for 8-bit codes where the device has one, the int8 GEMM (int32), whichever measured faster for the shape
    (:mod:`sysarray.engines.int8`; ``int8.FORCE`` pins one). ``Sf()``: ``S`` as the float type
    of ``Wf``, which is ``W`` as that type; ``S8()``: ``S`` as int8 (shifted when unsigned)."""
    G, T, K = S.shape
    codes = smax <= (255 if s_unsigned else 128) and wmax <= (255 if w_unsigned else 128)
    int8_ok = (codes and not (s_unsigned and w_unsigned) and int8.exact_in_int32(K) and T > 0 and W.shape[-1] > 0
               and int8.usable(S.device))
    key = (G, T.bit_length(), K, W.shape[-1], s_unsigned, w_unsigned, torch.get_num_threads())
    return int8.choose(_PRODUCT, key, lambda: exact_matmul(Sf(), Wf, smax, wmax, keep_float=True),
                       lambda: int8.bmm_int8(S, W, s_unsigned, w_unsigned, s8=S8()), int8_ok, S.device)


def _columns(W: torch.Tensor, cols: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """``W[..., cols] * mask``: W (G, rows, n) exact float values; mask (>= rows, len(cols)) 0/1,
    its first ``rows`` rows used. (A gather from the 2-D view: torch's gathers along the last of
    three dimensions are far slower.)"""
    G, rows, n = W.shape
    picked = W.reshape(G * rows, n).index_select(1, torch.from_numpy(cols).to(W.device)).view(G, rows, len(cols))
    return picked.mul_(torch.from_numpy(mask[:rows]).to(W.device, W.dtype))


def _act_row_weights(Wx: torch.Tensor, r: int, lo: int, hi: int, cols: np.ndarray, R: int, C: int) -> torch.Tensor:
    """The weights (G, Fr, n) an act correction of row ``r`` (array columns ``lo..hi-1``) feeds:
    row ``r`` of every fold of ``Wx`` (G, Fr*R, n), whose column ``j`` belongs to output
    ``cols[j]``, for the outputs in those array columns, else 0."""
    _, col = mapping.pe_of(0, torch.from_numpy(cols).to(Wx.device), R, C)
    return Wx.unflatten(-2, (Wx.shape[-2] // R, R))[..., r, :] * ((col >= lo) & (col < hi))


def _chains(seg: torch.Tensor, p: psum.PsumPlan, cfg: ArrayConfig, linear_tail: bool, y: torch.Tensor) -> None:
    """Replay the chains of plan ``p`` over segment sums ``seg`` (Fr, S, O, n) (exact integers,
    any strides) into the replayed columns of ``y`` (n, Nd) int32, in place
    (:func:`~sysarray.engines.psum.chain_totals_cpu` on CPU, torch ops elsewhere)."""
    S_n, O = p.keep.T.shape
    sign = 1 << (cfg.psum_bits - 1)
    keep_v = np.ascontiguousarray(p.keep.T)  # (S, O)
    ones_v = np.ascontiguousarray(p.ones.T)
    if y.device.type == "cpu":
        psum.chain_totals_cpu(seg.numpy(), keep_v, ones_v, sign, linear_tail, y.numpy(), p.n_idx, work=seg.numel())
        return
    dev = y.device
    n_t = torch.from_numpy(p.n_idx).to(dev)
    keep_t = torch.from_numpy(keep_v).to(dev).view(S_n, 1, O, 1)
    ones_t = torch.from_numpy(ones_v).to(dev).view(S_n, 1, O, 1)
    out = psum.fold_chain_torch(seg.to(torch.int64).transpose(0, 1), keep_t, ones_t, sign, linear_tail).sum(dim=0)
    y[:, n_t] = wrap(y[:, n_t] + out.t() if linear_tail else out.t(), 32).to(torch.int32)


def _replay_psum_chains(S, Wall, corr, cfg, p: psum.PsumPlan, linear_tail: bool, amax, wmax, Y) -> None:
    """The replayed outputs ``p.n_idx`` of ``Y`` (G, T, Nd) int32 from their segment sums: one
    batched GEMM of the stream in fold-major order (Fr, G, T, R), with the act corrections
    ``corr`` as extra inputs, times ``Wall`` (Fr, G, R + n_corr, V) (segment weights, then the
    corrections'), in blocks of the stream; then :func:`_chains`. S (G, T, Kd) exact floats."""
    R = cfg.rows
    dev = S.device
    G, T, Kd = S.shape
    Fr, _, n_in, V = Wall.shape
    fdt = S.dtype
    if not float_gemm_is_exact(n_in, amax, wmax, fdt):
        fdt = torch.int64  # exact_matmul below then chunks the inner dimension
    Wall = Wall.to(fdt)
    Fr_full = Kd // R
    for g0, g1, t0, t1 in _blocks(G, T, Fr * max(V, n_in)):
        Sb = S[g0:g1, t0:t1]
        g, t = Sb.shape[:2]
        if Fr == 1 and not corr and fdt == S.dtype:
            x, Wb = Sb.unsqueeze(0), Wall[:, g0:g1, :Kd]  # one fold: the stream itself
        else:
            x, Wb = torch.empty((Fr, g, t, n_in), dtype=fdt, device=dev), Wall[:, g0:g1]
            if Fr_full:
                x[:Fr_full, ..., :R] = Sb[..., :Fr_full * R].unflatten(-1, (Fr_full, R)).permute(2, 0, 1, 3)
            if Kd > Fr_full * R:
                x[Fr_full, ..., :Kd - Fr_full * R] = Sb[..., Fr_full * R:]
                x[Fr_full, ..., Kd - Fr_full * R:R] = 0
            for j, (*_, delta) in enumerate(corr):
                x[..., R + j] = delta[g0:g1, t0:t1].permute(2, 0, 1)
        x, Wb = x.flatten(0, 1), Wb.flatten(0, 1)  # (Fr*g, t, n_in) @ (Fr*g, n_in, V): one bmm
        seg = exact_matmul(x, Wb, amax, wmax) if fdt == torch.int64 else torch.bmm(x, Wb)
        y = Y[g0:g1, t0:t1].view(g * t, Y.shape[-1])  # a view: _blocks keeps it contiguous
        _chains(seg.view(Fr, g * t, *p.keep.T.shape).permute(0, 2, 3, 1), p, cfg, linear_tail, y)


_SEGMENTS = MeasuredChoice(name="fast.segment_sums")


def _replay_stream_major(S8, Sf, Kd: int, Wall: torch.Tensor, s_unsigned: bool, cfg: ArrayConfig,
                         p: psum.PsumPlan, linear_tail: bool, Y: torch.Tensor) -> None:
    """:func:`_replay_psum_chains` on CPU without act corrections, with the segment sums laid out
    stream-last: for each GEMM, block of stream rows and fold, one GEMM (V, R) x (R, t) of the
    segment weights by the fold's transposed stream, in int8 (8-bit codes, unsigned ones shifted by
    -128 and ``128 * sum`` of the weights added back) or float, whichever measured faster. The
    chain replay then reads each segment's sums contiguously. ``S8()`` the stream (G, T, Kd) of
    8-bit codes as int8 (:func:`~sysarray.engines.int8.as_int8`), ``Sf()`` as exact floats; Wall
    (G, Fr, R, V) the segment weights (exact int8 values, rows past Kd zero)."""
    R = cfg.rows
    G, T = Y.shape[:2]
    Fr, V = Wall.shape[1], Wall.shape[-1]
    folds = [(fr, fr * R, min(Kd, fr * R + R)) for fr in range(Fr)]
    WT = Wall.transpose(-1, -2)  # (G, Fr, V, R)
    # a tall array's fold can sum past float32's exact range
    fdt = torch.float32 if float_gemm_is_exact(R, 255, 128, torch.float32) else torch.float64

    @functools.cache  # operands converted once, on first use
    def on_float():
        return _segments_float(Sf().to(fdt), WT.to(fdt), folds)

    @functools.cache
    def on_int8():
        w8 = WT.to(torch.int8).contiguous()
        extra = (128 * w8.sum(-1, dtype=torch.int32)).unsqueeze(-1) if s_unsigned else None  # (G, Fr, V, 1)
        return _segments_int8(S8(), w8, extra, folds)
    key = (G, T.bit_length(), Kd, V, R, s_unsigned, torch.get_num_threads())
    for g0, g1, t0, t1 in _blocks(G, T, Fr * V, _STREAM_SEG_BUDGET):
        for g in range(g0, g1):
            seg = int8.choose(_SEGMENTS, key, lambda: on_float()(g, t0, t1), lambda: on_int8()(g, t0, t1), True)
            _chains(seg.view(Fr, *p.keep.T.shape, t1 - t0), p, cfg, linear_tail, Y[g, t0:t1])


def _segments_int8(s8: torch.Tensor, w8: torch.Tensor, extra: torch.Tensor | None, folds):
    """Per GEMM ``g`` and stream rows ``t0:t1``: (Fr, V, t) int32 segment sums (see
    :func:`_replay_stream_major`); ``s8`` the int8 codes (G, T, Kd), ``w8`` (G, Fr, V, R)."""
    def run(g, t0, t1):
        out = torch.empty((len(folds), w8.shape[2], t1 - t0), dtype=torch.int32)
        for fr, k0, k1 in folds:
            torch._int_mm(int8.canonical(w8[g, fr, :, :k1 - k0]), int8.canonical(s8[g, t0:t1, k0:k1].t()), out=out[fr])
        if extra is not None:
            out += extra[g]
        return out
    return run


def _segments_float(sf: torch.Tensor, wf: torch.Tensor, folds):
    """:func:`_segments_int8` in the float type of ``sf`` and ``wf`` (one whose sums of a fold are
    exact), same layout."""
    def run(g, t0, t1):
        out = torch.empty((len(folds), wf.shape[2], t1 - t0), dtype=wf.dtype)
        for fr, k0, k1 in folds:
            torch.mm(wf[g, fr, :, :k1 - k0], sf[g, t0:t1, k0:k1].t(), out=out[fr])
        return out
    return run


def _blocks(G: int, T: int, per_row: int, budget: int = _SEG_BUDGET):
    """``(g0, g1, t0, t1)`` blocks of the stream rows ``(g, t)`` of G GEMMs of T rows each, of at
    most about ``budget / per_row`` rows: whole GEMMs, or rows of one GEMM when a GEMM is
    larger (each block's rows are contiguous in a (G, T, ...) tensor)."""
    rows = max(1, budget // max(1, per_row))
    if rows >= T:
        step = rows // T
        for g0 in range(0, G, step):
            yield g0, min(G, g0 + step), 0, T
        return
    for g in range(G):
        for t0 in range(0, T, rows):
            yield g, g + 1, t0, min(T, t0 + rows)


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


def _os_fast(A: torch.Tensor, W: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks,
             bounds: tuple[int | None, int | None] = (None, None)) -> torch.Tensor:
    """G GEMMs on an output-stationary array, one after another: A (G, M, K), W (G, K, N),
    ``bounds`` on |A| and |W| where known. Returns (G, M, N) int32, or int64 in int32 range."""
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    dev = A.device
    G, M, K = A.shape
    N = W.shape[-1]
    amax, wmax = _operand_max(A, cm.act, bounds[0]), _operand_max(W, cm.weight, bounds[1])
    fdt = float_dtype_for(dev)
    a_unsigned = cm.act.sign == 0
    a_float, a_int8 = functools.cache(lambda: A.to(fdt)), functools.cache(lambda: int8.as_int8(A, a_unsigned))
    product = _plain_product(A, a_float, a_int8, W, W.to(fdt), amax, wmax, a_unsigned, False)
    # int32 sums are already the 32-bit register's wrap; the corrections below are written in range
    Y = product if pb == 32 and product.dtype == torch.int32 else wrap(product.to(torch.int64), pb)
    if cm.any_bypassed:
        for r, c in zip(*np.nonzero(cm.bypassed)):
            Y[(..., *mapping.pe_elements(r, c, R, C))] = 0
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
        rows, cols = mapping.pe_elements(r, c, R, C)  # PE (r, c) owns outputs Y[..., rows, cols]
        a = A[..., rows, :].to(torch.int64)
        w = W[..., cols].to(torch.int64)
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
            a = _apply(A[..., rows, :].to(torch.int64), *masks, 8, act.sign)
            ns = torch.cat([_strided(c, N, C, dev) for c in members])
            Y[..., rows, ns] = wrap(exact_matmul(a, W[..., ns], 255, wmax), pb).to(Y.dtype)
        else:
            cols = mapping.pe_elements(0, idx, R, C)[1]
            w = _apply(W[..., cols].to(torch.int64), *masks, 8, wt.sign)
            ms = torch.cat([_strided(r, M, R, dev) for r in members])
            Y[..., ms, cols] = wrap(exact_matmul(A[..., ms, :], w, amax, 128), pb).to(Y.dtype)
    for (r, c) in both - psum_pes:
        a, w = operands(r, c)
        Y[(..., *mapping.pe_elements(r, c, R, C))] = wrap(exact_matmul(a, w, 255, 128), pb).to(Y.dtype)
    if psum_pes:
        prods, keeps, oness, where = [], [], [], []
        for (r, c) in sorted(psum_pes):
            a, w = operands(r, c)
            if a.shape[-2] == 0 or w.shape[-1] == 0:
                continue
            p = (a.unsqueeze(-2) * w.transpose(-1, -2).unsqueeze(-3)).reshape(-1, K)  # (G * Mr * Nc, K)
            prods.append(p)
            keeps.append(torch.full((p.shape[0],), int(ps.keep[r, c]), dtype=torch.int64, device=dev))
            oness.append(torch.full((p.shape[0],), int(ps.ones[r, c]), dtype=torch.int64, device=dev))
            where.append((r, c, a.shape[-2], w.shape[-1]))
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
                Y[(..., *mapping.pe_elements(r, c, R, C))] = res[i:i + G * mr * nc].view(G, mr, nc).to(Y.dtype)
                i += G * mr * nc
    return Y


def fast_bmm(a: torch.Tensor, w: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None,
             act_signed: bool | None = None, *, masks: ChipMasks | None = None,
             bounds: tuple[int | None, int | None] = (None, None), raw: bool = False) -> torch.Tensor:
    """G GEMMs ``a[g] @ w[g]`` run one after another on the faulty array, exact, as batched
    tensor operations; a: (G, M, K) int8/uint8, w: (G, K, N) int8 tensors on one device.
    Returns (G, M, N) int32 on that device, each ``[g]`` bit for bit ``fast_gemm(a[g], w[g])``.

    ``a`` may also be a float tensor holding 8-bit codes (callers that keep activations in float
    to save conversions); then ``act_signed`` says whether they are int8 or uint8 codes.
    ``masks``: ``chip_masks(cfg, faults, act_signed)`` when the caller already has them (layers of
    one network on one chip share them). ``bounds``: bounds on ``|a|`` and ``|w|`` that hold
    (the 8-bit code ranges), sparing a pass over each; None where unknown. They decide which
    float sums are exact. ``raw``: the result may also be a float32 tensor holding the same
    values (a caller that post-processes them in one pass skips a conversion).
    """
    if act_signed is None:
        act_signed = a.dtype != torch.uint8
    cm = masks if masks is not None else chip_masks(cfg, faults, act_signed=act_signed)
    if cfg.dataflow is Dataflow.WS:
        return _stationary_fast(a, w, cfg, cm.act, cm.weight, cm, bounds, raw)
    if cfg.dataflow is Dataflow.IS:
        return _stationary_fast(w.transpose(-1, -2), a.transpose(-1, -2), cfg, cm.weight, cm.act, cm,
                                bounds[::-1], raw).transpose(-1, -2)
    return _os_fast(a, w, cfg, cm, bounds).to(torch.int32)


def clean_bmm(a: torch.Tensor, w: torch.Tensor, cfg: ArrayConfig, act_signed: bool, bounds: tuple[int, int],
              raw: bool = False) -> torch.Tensor | None:
    """:func:`fast_bmm` on an array without faults, where no sum can reach the psum register's
    range (``K * bounds[0] * bounds[1]``, the bounds on |a| and |w|): the plain product on the
    measured kernel, in any dataflow, without the faulty path's steps. (G, M, N) int32, or with
    ``raw`` possibly float32 holding the same values; None where it does not apply."""
    K = a.shape[-1]
    amax, wmax = int(bounds[0]), int(bounds[1])
    if not never_wraps(K, amax, wmax, cfg.psum_bits):
        return None
    fdt = float_dtype_for(a.device)
    s_unsigned = not act_signed
    Y = _plain_product(a, functools.cache(lambda: a.to(fdt)), functools.cache(lambda: int8.as_int8(a, s_unsigned)),
                       w, w.to(fdt), amax, wmax, s_unsigned, False)
    return Y if raw and Y.dtype == torch.float32 else _to_int32(Y, K * amax * wmax)


def fast_gemm(a: torch.Tensor, w: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None,
              act_signed: bool | None = None, *, masks: ChipMasks | None = None) -> torch.Tensor:
    """``a @ w`` on the faulty array, exact; a: (M, K) int8/uint8 (or float codes, see
    :func:`fast_bmm`), w: (K, N) int8 tensors on one device. Returns (M, N) int32 on that
    device: :func:`fast_bmm` of a batch of one."""
    return fast_bmm(a.unsqueeze(0), w.unsqueeze(0), cfg, faults, act_signed, masks=masks)[0]
