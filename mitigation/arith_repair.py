"""Exact integer-arithmetic repairs of stuck bits (docs/remap.md; integer counterparts of S3A's
"invertible scaling and shifting" and "elementary tile operations", Ait Alama et al., arXiv
2412.16208, §4, which make stuck bits harmless without hardware changes).

Two repairs, each applied only where its condition proves it exact (docs/design.md §2.3-2.6):

- **Weight register: fixed-point re-rounding.** A weight ``v`` whose stuck bits already hold the
  stuck values is read back unchanged (``force(v) == v``). Each weight that passes a faulty weight
  register is re-rounded to the nearest such int8 code (ties towards zero), the zero-point term of
  the bias follows, and the fault changes nothing at run time; the only error left is the
  re-rounding, which is never larger than the fault's own ``|force(w) - w|`` (``force(w)`` is a
  fixed point too). The weights that pass the register: WS the stationary ``W[k, n]`` with
  ``k % R == r`` in array column ``c``; OS every ``W[k, n]`` of the channel in column ``c`` (it
  streams south through the whole column); IS every ``W[k, n]`` with ``k % R == r`` (it streams
  east along row ``r``). Several faulty registers on one path need a code fixed by each of them; a
  bit stuck at 0 in one and at 1 in another has none, and those faults are left. In WS a register
  whose row holds a padding zero in the last row fold, forced to a nonzero code, is left when an act
  fault west of it in that row can make the streamed zero nonzero; in IS likewise, when an act fault
  at or east of it makes a stationary padding zero nonzero.
- **psum register, constant effect (WS).** Interval and residue bounds on the partial sum that
  reaches the faulty PE (the column's latched weights, the activation codes the act registers can
  deliver at that PE, earlier corrections) that prove a stuck bit always reads the same value and
  no sum wraps in the ``psum_bits`` register or the int32 output: the fault then adds the same
  ``+-2^b`` (``-+2^(psum_bits-1)`` for the sign bit) to every output of the channel in every row
  fold, and the bias absorbs it. Proof: with ``x`` the partial sum and bit ``b`` of ``x`` known to
  be ``u``, ``force(x) = x + (v - u) 2^b`` (signed weight of bit ``b``) without carry; healthy rows
  below only add and, by the range check, never wrap; the int32 output register adds the row
  folds modulo 2^32, so with the sum of the corrections reduced to int32 and the corrected output
  within int32, the faulty output is the fault-free one plus that sum. A bit that
  already holds the stuck value is harmless (correction 0). Where any psum fault of a channel's
  chain is not proven, the channel keeps its bias and the fault is reported as left. In OS and IS a
  psum fault touches only some pixels (``m % R`` or ``m % C``) of a channel, which no per-channel
  bias can correct: left.

Not repaired (reported as left): act-register faults (the codes are data), faults the conditions
refuse. A bypass chip ignores stuck bits: nothing to repair.

Exactness (tested): the repaired program on the faulty chip equals, bit for bit, the program with
the re-rounded weights alone (no psum corrections) on the fault-free chip, and the original program
on the fault-free chip where nothing needed re-rounding and every psum fault was proven.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from accel_models.program import Gemm, Program
from sysarray import ArrayConfig, Dataflow, FaultMap, Register
from sysarray.validation import check_choice, check_instance

W_LO, W_HI = -127, 127  # the program's weight codes (symmetric int8)
WEIGHT_POLICIES = ("auto", "always")


@dataclass
class LayerRepair:
    """What :func:`repair_program` did to one Gemm layer.

    Faults are counted per (PE, register) with at least one stuck bit, among the PEs the layer's
    GEMMs use; ``neutralised`` ones change no output any more, ``left`` ones still may.
    ``reround_abs_sum``/``reround_max``: re-rounding error in weight codes; ``reround_rel``:
    ``||W' - W||_2 / ||W||_2``; ``bias_corrected``: channels whose bias absorbed a psum effect.
    A psum PE counts as neutralised when the chains of every channel through it are proven;
    ``proven_channels`` lists the channels whose whole chain is (their outputs are exact even
    where another channel through the same PE is not)."""

    name: str
    weights_rerounded: int = 0
    reround_abs_sum: int = 0
    reround_max: int = 0
    reround_rel: float = 0.0
    weight_neutralised: int = 0
    weight_left: int = 0
    psum_neutralised: int = 0
    psum_left: int = 0
    act_left: int = 0
    bias_corrected: int = 0
    neutralised: list[tuple[int, int, str]] = field(default_factory=list)  # (row, col, register), sorted
    proven_channels: list[int] = field(default_factory=list)  # psum chains proven and corrected (WS)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class GemmRepair:
    """One GEMM's repair (:func:`repair_gemm`): ``w`` (K, N) int64 re-rounded weights in array
    order, ``correction`` (N,) int64 to add to each column's bias, ``proven`` (N,) bool: every psum
    fault on the column's chain is proven (its correction exact), and the fault sets of the layer."""

    w: np.ndarray
    correction: np.ndarray
    proven: np.ndarray
    weight_ok: set = field(default_factory=set)
    weight_bad: set = field(default_factory=set)
    psum_ok: set = field(default_factory=set)
    psum_bad: set = field(default_factory=set)
    act: set = field(default_factory=set)


# ----------------------------------------------------------------------------------- bit helpers
def _force8(x: np.ndarray, stuck: int, ones: int, signed: bool) -> np.ndarray:
    """docs/design.md §2.3 ``force`` on 8-bit registers (int64 arithmetic)."""
    sign = 128 if signed else 0
    return ((((x & 0xFF) & ~stuck & 0xFF) | ones) ^ sign) - sign


def _compose(s1: int, o1: int, s2: int, o2: int) -> tuple[int, int]:
    """Masks ``(s1, o1)`` then ``(s2, o2)`` as one (docs/design.md §2.3)."""
    return s1 | s2, (o1 & ~s2) | o2


def _merge_fixed(masks: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The bits a code must hold to be fixed by every mask at once; None when two disagree."""
    stuck, ones = 0, 0
    for s, o in masks:
        if (stuck & s) & (ones ^ o):
            return None
        stuck, ones = stuck | s, ones | (o & s)
    return stuck, ones


_NEAREST: dict[tuple[int, int], np.ndarray] = {}


def nearest_fixed_table(stuck: int, ones: int) -> np.ndarray:
    """(256,) int64: for each code ``w`` in -128..127 (index ``w + 128``) the nearest code in
    -127..127 whose bits ``stuck`` equal ``ones`` (ties towards zero; -128 only if nothing else is)."""
    key = (int(stuck), int(ones))
    if key not in _NEAREST:
        codes = np.arange(-128, 128, dtype=np.int64)
        ok = (codes & 0xFF & stuck) == ones
        cand = codes[ok & (codes >= W_LO)]
        cand = codes[ok] if cand.size == 0 else cand
        d = np.abs(codes[:, None] - cand[None, :]) * 2 + (np.abs(cand) > np.abs(codes[:, None]))  # ties -> |v| smaller
        _NEAREST[key] = cand[d.argmin(axis=1)]
    return _NEAREST[key]


def _reround(values: np.ndarray, mask: tuple[int, int]) -> np.ndarray:
    return nearest_fixed_table(*mask)[values.astype(np.int64) + 128]


# ----------------------------------------------------------------------------------- one GEMM
def _act_sets(faults: FaultMap, signed: bool, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """WS: ``(lo, hi, lo0, hi0)`` (R, C) int64: the least and greatest activation a PE can see from
    codes in ``qmin..qmax`` (``lo0``/``hi0``: from the padding zero of an unused row), through the
    act registers west of it and its own (§2.4)."""
    R, C = faults.shape
    stuck, ones = faults.masks("act")
    codes = np.arange(qmin, qmax + 1, dtype=np.int64)
    zero = np.zeros(1, dtype=np.int64)
    lo, hi, lo0, hi0 = (np.zeros((R, C), dtype=np.int64) for _ in range(4))
    for r in range(R):
        s, o = 0, 0
        for c in range(C):
            s, o = _compose(s, o, int(stuck[r, c]), int(ones[r, c]))
            a, z = _force8(codes, s, o, signed), _force8(zero, s, o, signed)
            lo[r, c], hi[r, c], lo0[r, c], hi0[r, c] = a.min(), a.max(), z.min(), z.max()
    return lo, hi, lo0, hi0


def _tz(w: int) -> int:
    """Trailing zero bits of ``w`` (64 for 0: the product is always 0)."""
    return 64 if w == 0 else (w & -w).bit_length() - 1


def _prove_column(wcol: np.ndarray, c: int, cfg: ArrayConfig, faults: FaultMap, acts, wlatch0: np.ndarray) -> tuple[int, list, list]:
    """WS column chain of one GEMM column (weights ``wcol`` (K,), latched) in array column ``c``:
    ``(correction, proven psum PEs, unproven psum PEs)``; the correction is None when some psum
    fault of the chain is not proven (or a sum could wrap)."""
    R, w_bits = cfg.rows, cfg.psum_bits
    lo_a, hi_a, lo0, hi0 = acts
    ps, po = faults.masks("psum")
    top, bottom = -(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1
    K = wcol.shape[0]
    folds = -(-K // R)
    total, total0_lo, total0_hi = 0, 0, 0
    ok_pes, bad_pes = [], []
    failed = False
    for fr in range(folds):
        L = U = L0 = U0 = 0
        j, rho = 64, 0  # x = rho (mod 2^j)
        for r in range(R):
            k = fr * R + r
            if k < K:
                w, al, ah = int(wcol[k]), int(lo_a[r, c]), int(hi_a[r, c])
            else:
                w, al, ah = int(wlatch0[r, c]), int(lo0[r, c]), int(hi0[r, c])
            pl, ph = min(al * w, ah * w), max(al * w, ah * w)
            L, U, L0, U0 = L + pl, U + ph, L0 + pl, U0 + ph
            j = min(j, _tz(w))
            rho %= 1 << j
            if not (top <= L <= U <= bottom and top <= L0 <= U0 <= bottom):
                failed = True  # a sum could wrap in the register: nothing is proven below
            stuck = int(ps[r, c])
            if not stuck:
                continue
            if failed:
                bad_pes.append((r, c))
                continue
            delta = 0
            for b in range(w_bits):
                if not stuck >> b & 1:
                    continue
                if b < j:
                    u = rho >> b & 1
                elif L >> b == U >> b:  # floor division: one block of 2^b, bit b constant
                    u = (L >> b) & 1
                else:
                    failed = True
                    break
                v = int(po[r, c]) >> b & 1
                weight = (1 << b) if b < w_bits - 1 else -(1 << b)
                delta += (v - u) * weight
            if failed:
                bad_pes.append((r, c))
                continue
            ok_pes.append((r, c))
            L, U, rho = L + delta, U + delta, (rho + delta) % (1 << j) if j < 64 else rho + delta
            total += delta
        total0_lo, total0_hi = total0_lo + L0, total0_hi + U0
    i32_lo, i32_hi = -(1 << 31), (1 << 31) - 1
    total = (total - i32_lo) % (1 << 32) + i32_lo  # the output register adds modulo 2^32
    if failed or not (i32_lo <= total0_lo and total0_hi <= i32_hi
                      and i32_lo <= total0_lo + total and total0_hi + total <= i32_hi):
        return None, ok_pes, bad_pes
    return total, ok_pes, bad_pes


def _padding_hazard(r: int, cols: list[int], ws: np.ndarray, wo: np.ndarray, K: int, R: int, act: set,
                    west: bool) -> bool:
    """True when row ``r`` holds padding zeros in the last row fold (``K`` not a multiple of ``R``),
    a weight register of the row at one of ``cols`` forces such a zero to a nonzero code, and an act
    fault meets it: west of or at that column in WS (it corrupts the streamed zero activation), at
    or east of it in IS (the stationary zero input that the forced streamed weight reaches).
    Re-rounding the real weights cannot make such a fault harmless."""
    if (-(-K // R) - 1) * R + r < K:
        return False
    zero = np.zeros(1, dtype=np.int64)
    return any(int(_force8(zero, int(ws[r, c]), int(wo[r, c]), True)[0]) != 0
               and any(rr == r and (cc <= c if west else cc >= c) for rr, cc in act) for c in cols)


def repair_gemm(w: np.ndarray, cfg: ArrayConfig, faults: FaultMap, *, act_signed: bool, act_range: tuple[int, int],
                psum: bool = True, weights: str = "auto") -> GemmRepair:
    """Repair one GEMM ``Y = A . W``: ``w`` (K, N) integer weights, column ``j`` in array column
    ``j % C``; ``act_range``: the activation codes' range. ``weights``: "auto" re-rounds streamed
    weights (OS, IS) only where a faulty register reaches every output (top row in OS, west column
    in IS: re-rounding then never adds error), "always" wherever they pass one. See the module
    docstring."""
    R, C = cfg.rows, cfg.cols
    K, N = w.shape
    w = np.asarray(w, dtype=np.int64).copy()
    out = GemmRepair(w=w, correction=np.zeros(N, dtype=np.int64), proven=np.ones(N, dtype=bool))
    ws, wo = faults.masks("weight")
    cols_used = np.arange(min(N, C))
    rows_used = np.arange(min(K, R))
    out.act = {(int(r), int(c)) for r, c in np.argwhere(faults.faulty_pes("act"))}
    # weight register: re-round what passes each faulty register to its fixed points
    if cfg.dataflow is Dataflow.WS:
        for r, c in np.argwhere(ws != 0):
            if r in rows_used and c in cols_used:
                w[r::R, c::C] = _reround(w[r::R, c::C], (int(ws[r, c]), int(wo[r, c])))
                pads = _padding_hazard(int(r), [int(c)], ws, wo, K, R, out.act, west=True)
                (out.weight_bad if pads else out.weight_ok).add((int(r), int(c)))
    elif cfg.dataflow is Dataflow.OS:
        for c in cols_used:
            rows = np.flatnonzero(ws[:, c])
            merged = _merge_fixed([(int(ws[r, c]), int(wo[r, c])) for r in rows])
            if rows.size and merged is None:
                out.weight_bad |= {(int(r), int(c)) for r in rows}
            elif rows.size and (weights == "always" or rows.min() == 0):
                w[:, c::C] = _reround(w[:, c::C], merged)
                out.weight_ok |= {(int(r), int(c)) for r in rows}
            elif rows.size:
                out.weight_bad |= {(int(r), int(c)) for r in rows}
    else:
        for r in rows_used:
            cs = np.flatnonzero(ws[r])
            merged = _merge_fixed([(int(ws[r, c]), int(wo[r, c])) for c in cs])
            if cs.size and merged is None:
                out.weight_bad |= {(int(r), int(c)) for c in cs}
            elif cs.size and (weights == "always" or cs.min() == 0):
                w[r::R, :] = _reround(w[r::R, :], merged)
                pads = _padding_hazard(int(r), [int(c) for c in cs], ws, wo, K, R, out.act, west=False)
                (out.weight_bad if pads else out.weight_ok).update((int(r), int(c)) for c in cs)
            elif cs.size:
                out.weight_bad |= {(int(r), int(c)) for c in cs}
    has_psum = faults.faulty_pes("psum")
    # IS columns hold pixels (any may be used); WS and OS columns hold the GEMM's N columns
    psum_pes = {(int(r), int(c)) for r, c in np.argwhere(has_psum) if cfg.dataflow is Dataflow.IS or c < N}
    if not psum_pes:
        return out
    if cfg.dataflow is not Dataflow.WS or not psum:
        out.psum_bad = psum_pes
        out.proven[:] = ~has_psum.any(axis=0)[np.arange(N) % C] if cfg.dataflow is not Dataflow.IS else False
        return out
    acts = _act_sets(faults, act_signed, *act_range)
    wlatch0 = _force8(np.zeros((R, C), dtype=np.int64), ws, wo, True)
    bad, good = set(), set()
    for j in range(N):
        c = j % C
        if not has_psum[:, c].any():
            continue
        wl = w[:, j].copy()
        for r in np.flatnonzero(ws[:, c]):  # the latched weights (fixed points after re-rounding)
            wl[r::R] = _force8(wl[r::R], int(ws[r, c]), int(wo[r, c]), True)
        corr, ok_pes, bad_pes = _prove_column(wl, c, cfg, faults, acts, wlatch0)
        if corr is None:
            out.proven[j] = False
            bad |= set(bad_pes) | set(ok_pes)
        else:
            out.correction[j] = -corr
            good |= set(ok_pes)
    out.psum_ok, out.psum_bad = good - bad, bad
    return out


# ----------------------------------------------------------------------------------- programs
def without(faults: FaultMap, neutralised) -> FaultMap:
    """``faults`` less the stuck bits of the (row, col, register) entries in ``neutralised``."""
    drop = {tuple(x) for x in neutralised}
    out = FaultMap(*faults.shape)
    for f in faults:
        if (int(f.row), int(f.col), Register(f.register).value) not in drop:
            out = out.add(f.row, f.col, f.register, f.bit, f.value)
    return out


def check_chip(cfg: ArrayConfig, faults: FaultMap, where: str) -> None:
    check_instance(cfg, ArrayConfig, "cfg", where)
    check_instance(faults, FaultMap, "faults", where)
    if cfg.spare_rows or cfg.spare_cols:
        raise ValueError(f"{where} works on the logical array: give an ArrayConfig without spare rows or columns "
                         f"and the logical fault map. Got spare_rows={cfg.spare_rows}, spare_cols={cfg.spare_cols}.")
    faults.check_fits(cfg.rows, cfg.cols, cfg.psum_bits)


def gemm_groups(op: Gemm) -> list[tuple[slice, np.ndarray]]:
    """``(rows of op.weight, W (K, Ng) int64)`` per group of a Gemm op, in array order."""
    n = op.out_channels
    groups = op.groups if op.kind == "conv" else 1
    ng = n // groups
    flat = op.weight.reshape(n, -1).to(torch.int64).numpy()
    return [(slice(g * ng, (g + 1) * ng), flat[g * ng:(g + 1) * ng].T.copy()) for g in range(groups)]


def channel_of_row(op: Gemm) -> np.ndarray:
    """(N,) int64: the output channel each weight row (array order) computes."""
    n = op.out_channels
    return np.arange(n) if op.out_order is None else torch.argsort(op.out_order).numpy()


def repair_op(op: Gemm, cfg: ArrayConfig, faults: FaultMap, *, psum: bool = True, weights: str = "auto") -> tuple[Gemm, Gemm, LayerRepair]:
    """``(repaired op, re-rounded op without psum corrections, report)`` of one Gemm op."""
    rep = LayerRepair(op.name)
    new_w = op.weight.reshape(op.out_channels, -1).to(torch.int64).clone()
    correction = np.zeros(op.out_channels, dtype=np.int64)
    chan = channel_of_row(op)
    qp = op.in_qp
    weight_ok, weight_bad, psum_ok, psum_bad, act = set(), set(), set(), set(), set()
    for rows, w in gemm_groups(op):
        res = repair_gemm(w, cfg, faults, act_signed=qp.signed, act_range=(qp.qmin, qp.qmax), psum=psum,
                          weights=weights)
        new_w[rows] = torch.from_numpy(res.w.T.copy())
        correction[chan[rows]] += res.correction
        rep.bias_corrected += int((res.correction != 0).sum())
        if cfg.dataflow is Dataflow.WS:
            hit = faults.faulty_pes("psum").any(axis=0)[np.arange(w.shape[1]) % cfg.cols]
            rep.proven_channels += chan[rows][res.proven & hit].tolist()
        weight_ok |= res.weight_ok
        weight_bad |= res.weight_bad
        psum_ok |= res.psum_ok
        psum_bad |= res.psum_bad
        act |= res.act
    old = op.weight.reshape(op.out_channels, -1).to(torch.int64)
    diff = new_w - old
    rep.weights_rerounded = int((diff != 0).sum())
    rep.reround_abs_sum = int(diff.abs().sum())
    rep.reround_max = int(diff.abs().max()) if diff.numel() else 0
    rep.reround_rel = float(diff.double().norm() / old.double().norm().clamp_min(1e-12))
    rep.weight_neutralised, rep.weight_left = len(weight_ok - weight_bad), len(weight_bad)
    rep.psum_neutralised, rep.psum_left = len(psum_ok - psum_bad), len(psum_bad)
    rep.act_left = len(act)
    rep.proven_channels = sorted(rep.proven_channels)
    rep.neutralised = sorted([(r, c, "weight") for r, c in weight_ok - weight_bad]
                             + [(r, c, "psum") for r, c in psum_ok - psum_bad])
    # the zero-point term of the bias follows the re-rounded weights (channel order)
    dsum = torch.zeros(op.out_channels, dtype=torch.int64)
    dsum[torch.from_numpy(chan)] = diff.sum(dim=1)
    rerounded = copy.copy(op)
    rerounded.weight = new_w.reshape(op.weight.shape).to(op.weight.dtype)
    rerounded.bias = op.bias.to(torch.int64) - int(qp.zero_point) * dsum
    repaired = copy.copy(rerounded)
    repaired.bias = rerounded.bias + torch.from_numpy(correction)
    return repaired, rerounded, rep


def repair_program(program: Program, cfg: ArrayConfig, faults: FaultMap, *, psum: bool = True,
                   weights: str = "auto", return_reference: bool = False):
    """The exact arithmetic repairs of every Gemm layer of ``program`` for the chip ``cfg`` +
    ``faults`` (module docstring). Returns ``(repaired program, [LayerRepair per Gemm])``, and with
    ``return_reference`` also the program with the re-rounded weights alone (what the repaired
    program computes on the faulty chip, run on a fault-free one)."""
    check_instance(program, Program, "program", "repair_program")
    check_chip(cfg, faults, "repair_program")
    check_choice(weights, "weights", "repair_program", WEIGHT_POLICIES)
    ops, ref_ops, reports = [], [], []
    for op in program.ops:
        if isinstance(op, Gemm) and not cfg.bypass and faults:
            op, ref, rep = repair_op(op, cfg, faults, psum=psum, weights=weights)
            reports.append(rep)
            ref_ops.append(ref)
        else:
            if isinstance(op, Gemm):
                reports.append(LayerRepair(op.name, notes=["bypass chip: stuck bits have no effect"] if cfg.bypass
                                           else ["fault-free chip"]))
            ref_ops.append(op)
        ops.append(op)
    repaired = replace(program, ops=ops, meta=dict(program.meta))
    if return_reference:
        return repaired, reports, replace(program, ops=ref_ops, meta=dict(program.meta))
    return repaired, reports


__all__ = ["WEIGHT_POLICIES", "GemmRepair", "LayerRepair", "nearest_fixed_table", "repair_gemm", "repair_op", "repair_program", "without"]
