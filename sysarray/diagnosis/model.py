"""The candidate model: predicted test outputs of one hypothesised fault map, and of many
single-fault extensions of it at once (docs/diagnosis.md §3).

Localization scores thousands of candidate faults per region; running the engine on each would
be slow, so this module evaluates them vectorised in int64 numpy from the semantics of
docs/design.md §2.3-2.6 on single-fold test GEMMs. It is a search heuristic only: every map the
diagnosis reports is confirmed by the project's own engine (:mod:`sysarray.diagnosis.locate`).

Two views of a single-fold test:

- *stationary* (WS and IS): an ``R x C`` stationary operand ``s`` and a ``(T, R)`` stream ``x``;
  column ``c`` of the normalised output ``(T, C)`` is the psum chain of array column ``c``. In WS
  ``s`` is the weight and ``x`` the activations; in IS (WS on the transposed problem) ``s`` holds
  the activations and ``x`` the weights.
- *os*: acts ``(R, K)`` stream east, weights ``(K, C)`` stream south, output ``(R, C)`` is each
  PE's accumulator.

All arrays are int64 holding int8 operands (tests use int8 activations, read back signed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sysarray.config import ArrayConfig, Dataflow
from sysarray.faults import REGISTER_ORDER, FaultMap, Register

OPERAND_BITS = 8


def force(x: np.ndarray, stuck, ones, width: int) -> np.ndarray:
    """A signed ``width``-bit register written ``x`` (int64) and read back (docs/design.md §2.3)."""
    keep = ~np.asarray(stuck, dtype=np.int64) & ((1 << width) - 1)
    sign = 1 << (width - 1)
    return (((x & keep) | ones) ^ sign) - sign


def hamming32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits of the low 32 bits of ``a`` and ``b`` (int64 arrays, elementwise)."""
    x = (a ^ b) & 0xFFFFFFFF
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


SCORE_SCALE = 1 << 40  # above any bit count: differing outputs first, then differing bits


def mismatch_score(pred: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(n,) int64 ``differing outputs * SCORE_SCALE + differing bits`` of predictions (n, outputs)
    against ``observed`` (outputs,): a candidate that reproduces whole outputs beats one that
    comes near many (a wrong mix of two faults' traits comes near, the right fault is exact)."""
    return (pred != observed[None]).sum(axis=1) * SCORE_SCALE + hamming32(pred, observed[None]).sum(axis=1)


@dataclass(frozen=True)
class Candidates:
    """Single stuck bits at one region: parallel int64 arrays ``row, col, reg`` (register code),
    ``bit, value``."""

    row: np.ndarray
    col: np.ndarray
    reg: np.ndarray
    bit: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def record(self, i: int) -> tuple[int, int, int, int, int]:
        return (int(self.row[i]), int(self.col[i]), int(self.reg[i]), int(self.bit[i]), int(self.value[i]))


def enumerate_candidates(cfg: ArrayConfig, hyp: FaultMap, pes: list[tuple[int, int]]) -> Candidates:
    """Every stuck bit (register, bit, value) at the PEs ``pes`` whose bit ``hyp`` leaves free."""
    widths = {Register.WEIGHT: OPERAND_BITS, Register.ACT: OPERAND_BITS, Register.PSUM: cfg.psum_bits}
    stuck = {reg: hyp.masks(reg)[0] for reg in REGISTER_ORDER}
    out = []
    for r, c in pes:
        for reg in REGISTER_ORDER:
            taken = int(stuck[reg][r, c])
            for b in range(widths[reg]):
                if not taken >> b & 1:
                    out.append((r, c, reg.code, b, 0))
                    out.append((r, c, reg.code, b, 1))
    arr = np.array(out, dtype=np.int64).reshape(-1, 5)
    return Candidates(*(arr[:, i] for i in range(5)))


def _with_candidates(stuck: np.ndarray, ones: np.ndarray, cand: Candidates, code: int, index: np.ndarray):
    """Per-candidate copies of one register's masks (``stuck``/``ones`` of shape S, indexed by
    ``index``: one int array per axis of S, each (n,)) with each candidate's bit added where its
    register is ``code``; returns (n, *S) arrays."""
    n = len(cand)
    st = np.broadcast_to(stuck, (n,) + stuck.shape).copy()
    on = np.broadcast_to(ones, (n,) + ones.shape).copy()
    sel = np.flatnonzero(cand.reg == code)
    bit = np.left_shift(np.int64(1), cand.bit[sel])
    idx = (sel,) + tuple(i[sel] for i in index)
    st[idx] |= bit
    on[idx] = (on[idx] & ~bit) | (bit * cand.value[sel])
    return st, on


class StationaryModel:
    """WS and IS single-fold tests (see the module docstring); register roles by dataflow."""

    def __init__(self, cfg: ArrayConfig) -> None:
        self.cfg = cfg
        ws = cfg.dataflow is Dataflow.WS
        self.stat_reg = Register.WEIGHT if ws else Register.ACT  # the register the stationary operand sits in
        self.stream_reg = Register.ACT if ws else Register.WEIGHT

    def _masks(self, hyp: FaultMap):
        return ([np.asarray(m) for m in hyp.masks(self.stat_reg)], [np.asarray(m) for m in hyp.masks(self.stream_reg)],
                [np.asarray(m) for m in hyp.masks(Register.PSUM)])

    def predict(self, hyp: FaultMap, tests: list) -> list[np.ndarray]:
        """Normalised outputs ``(T, C)`` int64 of every test on a chip with map ``hyp``."""
        (ss, so), (xs, xo), (ps, po) = self._masks(hyp)
        pb = self.cfg.psum_bits
        out = []
        for t in tests:
            a = t.x
            a_eff = np.empty(t.x.shape + (self.cfg.cols,), dtype=np.int64)  # (T, R, C)
            for c in range(self.cfg.cols):
                a = force(a, xs[:, c], xo[:, c], OPERAND_BITS)
                a_eff[:, :, c] = a
            s_eff = force(t.s, ss, so, OPERAND_BITS)
            p = np.zeros((t.x.shape[0], self.cfg.cols), dtype=np.int64)
            for r in range(self.cfg.rows):
                p = force(p + a_eff[:, r, :] * s_eff[r], ps[r], po[r], pb)
            out.append(p)
        return out

    def region_pes(self, region: int) -> list[tuple[int, int]]:
        return [(r, region) for r in range(self.cfg.rows)]

    def regions(self) -> list[int]:
        """Columns, west to east: a column's outputs depend only on PEs of it and act/weight
        registers west of it in the same row (which show in their own column first)."""
        return list(range(self.cfg.cols))

    def region_outputs(self, region: int, outputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([y[:, region] for y in outputs])

    def score(self, region: int, hyp: FaultMap, cand: Candidates, tests: list, observed: np.ndarray) -> np.ndarray:
        """(n,) int64: differing output bits in column ``region`` over all tests, for ``hyp`` plus
        each candidate (all at PEs of that column)."""
        (ss, so), (xs, xo), (ps, po) = self._masks(hyp)
        c, R, pb = region, self.cfg.rows, self.cfg.psum_bits
        r0 = cand.row
        # each candidate changes one register of one row: only that row's operand is recomputed
        st_s, on_s = _with_candidates(ss[:, c], so[:, c], cand, self.stat_reg.code, (r0,))
        st_x, on_x = _with_candidates(xs[:, c], xo[:, c], cand, self.stream_reg.code, (r0,))
        st_p, on_p = _with_candidates(ps[:, c], po[:, c], cand, Register.PSUM.code, (r0,))
        pick = np.arange(len(cand))
        st_s0, on_s0, st_x0, on_x0 = st_s[pick, r0], on_s[pick, r0], st_x[pick, r0], on_x[pick, r0]
        preds = []
        for t in tests:
            a = t.x
            for cc in range(c):
                a = force(a, xs[:, cc], xo[:, cc], OPERAND_BITS)
            base_a = force(a, xs[:, c], xo[:, c], OPERAND_BITS)  # (T, R) under hyp alone
            base_s = force(t.s[:, c], ss[:, c], so[:, c], OPERAND_BITS)  # (R,)
            own_a = force(a[:, r0].T, st_x0[:, None], on_x0[:, None], OPERAND_BITS)  # (n, T) candidate's row
            own_s = force(t.s[r0, c], st_s0, on_s0, OPERAND_BITS)  # (n,)
            p = np.zeros((len(cand), a.shape[0]), dtype=np.int64)
            for r in range(R):
                mine = (r0 == r)[:, None]
                term = np.where(mine, own_a * own_s[:, None], base_a[None, :, r] * base_s[r])
                p = force(p + term, st_p[:, r, None], on_p[:, r, None], pb)
            preds.append(p)
        return mismatch_score(np.concatenate(preds, axis=1), observed)


class OSModel:
    """OS single-fold tests: PE ``(r, c)`` owns output ``(r, c)``."""

    def __init__(self, cfg: ArrayConfig) -> None:
        self.cfg = cfg

    def predict(self, hyp: FaultMap, tests: list) -> list[np.ndarray]:
        """Outputs ``(R, C)`` int64 of every test on a chip with map ``hyp``."""
        R, C, pb = self.cfg.rows, self.cfg.cols, self.cfg.psum_bits
        as_, ao = hyp.masks(Register.ACT)
        ws, wo = hyp.masks(Register.WEIGHT)
        ps, po = hyp.masks(Register.PSUM)
        out = []
        for t in tests:
            K = t.a.shape[1]
            a_eff = np.empty((R, C, K), dtype=np.int64)
            a = t.a
            for c in range(C):
                a = force(a, as_[:, c, None], ao[:, c, None], OPERAND_BITS)
                a_eff[:, c] = a
            w_eff = np.empty((R, C, K), dtype=np.int64)
            w = t.w.T
            for r in range(R):
                w = force(w, ws[r, :, None], wo[r, :, None], OPERAND_BITS)
                w_eff[r] = w
            acc = force(np.zeros((R, C), dtype=np.int64), ps, po, pb)
            for k in range(K):
                acc = force(acc + a_eff[:, :, k] * w_eff[:, :, k], ps, po, pb)
            out.append(acc)
        return out

    def regions(self) -> list[tuple[int, int]]:
        """PEs in row-major order: output (r, c) depends on act registers (r, <=c), weight
        registers (<=r, c) and its own accumulator, and those show in earlier outputs first."""
        return [(r, c) for r in range(self.cfg.rows) for c in range(self.cfg.cols)]

    def region_pes(self, region: tuple[int, int]) -> list[tuple[int, int]]:
        return [region]

    def region_outputs(self, region: tuple[int, int], outputs: list[np.ndarray]) -> np.ndarray:
        return np.array([y[region] for y in outputs], dtype=np.int64)

    def score(self, region: tuple[int, int], hyp: FaultMap, cand: Candidates, tests: list,
              observed: np.ndarray) -> np.ndarray:
        """:func:`mismatch_score` of output ``region`` over all tests, for ``hyp`` plus each
        candidate (all at that PE)."""
        r, c = region
        pb = self.cfg.psum_bits
        as_, ao = hyp.masks(Register.ACT)
        ws, wo = hyp.masks(Register.WEIGHT)
        ps, po = hyp.masks(Register.PSUM)
        st_a, on_a = _with_candidates(np.int64(as_[r, c]), np.int64(ao[r, c]), cand, Register.ACT.code, ())
        st_w, on_w = _with_candidates(np.int64(ws[r, c]), np.int64(wo[r, c]), cand, Register.WEIGHT.code, ())
        st_p, on_p = _with_candidates(np.int64(ps[r, c]), np.int64(po[r, c]), cand, Register.PSUM.code, ())
        preds = []
        for t in tests:
            a = t.a[r]
            for cc in range(c):
                a = force(a, as_[r, cc], ao[r, cc], OPERAND_BITS)
            w = t.w[:, c]
            for rr in range(r):
                w = force(w, ws[rr, c], wo[rr, c], OPERAND_BITS)
            a_e = force(a[None], st_a[:, None], on_a[:, None], OPERAND_BITS)  # (n, K)
            w_e = force(w[None], st_w[:, None], on_w[:, None], OPERAND_BITS)
            acc = force(np.zeros(len(cand), dtype=np.int64), st_p, on_p, pb)
            for k in range(a_e.shape[1]):
                acc = force(acc + a_e[:, k] * w_e[:, k], st_p, on_p, pb)
            preds.append(acc)
        return mismatch_score(np.stack(preds, axis=1), observed)


def model_for(cfg: ArrayConfig):
    """The candidate model of ``cfg``'s dataflow."""
    return OSModel(cfg) if cfg.dataflow is Dataflow.OS else StationaryModel(cfg)
