"""Slow, obviously correct references for the sysarray engines.

Written from the chip semantics of ``docs/design.md`` (§2)
alone, without reading the engines, so that a disagreement points at a bug. Every value is a
Python int (no fixed-width overflow anywhere); each dataflow is its own plain loop nest that
follows the data PE by PE. Use small shapes only (up to about 10 x 40 x 20 on a 4 x 4 array).
"""
from __future__ import annotations

import numpy as np

from sysarray.config import ArrayConfig, Dataflow
from sysarray.faults import FaultMap, Register


def wrap(value: int, bits: int) -> int:
    """``value`` wrapped to a ``bits``-bit two's complement number (a Python int)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def force(x: int, stuck: int, ones: int, width: int, signed: bool = True) -> int:
    """Read back a ``width``-bit register written with ``x`` whose ``stuck`` bits read ``ones``.

    ``x`` is any int: its low ``width`` bits are the pattern. The forced pattern
    ``(x & ~stuck) | ones`` reads back signed (two's complement) or, with ``signed=False``,
    unsigned (the ``act`` register when activations are uint8).
    """
    pattern = x & ((1 << width) - 1)
    pattern = (pattern & ~stuck) | ones
    pattern &= (1 << width) - 1
    if signed and pattern >> (width - 1):
        return pattern - (1 << width)
    return pattern


def naive_plain_gemm(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The plain integer GEMM ``wrap32(A @ W)``: (M, K) x (K, N) -> (M, N) int32."""
    exact = np.asarray(a).astype(np.int64) @ np.asarray(w).astype(np.int64)
    return ((exact + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


class _Pes:
    """Per-PE forcing masks as Python ints: ``pes.stuck[reg][r][c]``, ``pes.ones[reg][r][c]``."""

    def __init__(self, cfg: ArrayConfig, faults: FaultMap | None) -> None:
        rows, cols = cfg.rows, cfg.cols
        self.stuck: dict[Register, list[list[int]]] = {}
        self.ones: dict[Register, list[list[int]]] = {}
        for reg in Register:
            if faults is None:
                stuck = ones = np.zeros((rows, cols), dtype=np.int64)
            else:
                stuck, ones = faults.masks(reg)
            self.stuck[reg] = [[int(stuck[r, c]) for c in range(cols)] for r in range(rows)]
            self.ones[reg] = [[int(ones[r, c]) for c in range(cols)] for r in range(rows)]
        faulty = np.zeros((rows, cols), dtype=bool) if faults is None else faults.faulty_pes()
        self.faulty = [[bool(faulty[r, c]) for c in range(cols)] for r in range(rows)]


def naive_gemm(a: np.ndarray, w: np.ndarray, cfg: ArrayConfig, faults: FaultMap | None = None) -> np.ndarray:
    """``Y = A @ W`` as the faulty systolic array computes it, PE by PE.

    a: (M, K) int8 or uint8; w: (K, N) int8; cfg: the array; faults: a map for
    ``cfg.rows x cfg.cols`` or None. Returns (M, N) int32.
    """
    a = np.asarray(a)
    w = np.asarray(w)
    if a.dtype not in (np.int8, np.uint8) or w.dtype != np.int8:
        raise TypeError(f"naive_gemm needs int8/uint8 activations and int8 weights. Got {a.dtype} and {w.dtype}.")
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0]:
        raise ValueError(f"naive_gemm needs A (M, K) and W (K, N). Got {a.shape} and {w.shape}.")
    if faults is not None:
        faults.check_fits(cfg.rows, cfg.cols, cfg.psum_bits)
    pes = _Pes(cfg, faults)
    act_signed = a.dtype == np.int8
    A = [[int(v) for v in row] for row in a]
    W = [[int(v) for v in row] for row in w]
    M, K = a.shape
    N = w.shape[1]
    if cfg.dataflow is Dataflow.WS:
        y = _ws(A, W, M, K, N, cfg, pes, act_signed)
    elif cfg.dataflow is Dataflow.OS:
        y = _os(A, W, M, K, N, cfg, pes, act_signed)
    else:
        y = _is(A, W, M, K, N, cfg, pes, act_signed)
    return np.array(y, dtype=np.int64).reshape(M, N).astype(np.int32)


def _ceil_div(x: int, y: int) -> int:
    return -(-x // y)


def _ws(A, W, M, K, N, cfg, pes, act_signed):
    """Weight-stationary: rows hold K, columns hold N, M streams (design.md "WS")."""
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    WT, AC, PS = Register.WEIGHT, Register.ACT, Register.PSUM
    Y = [[0] * N for _ in range(M)]
    for fr in range(_ceil_div(K, R)):
        for fc in range(_ceil_div(N, C)):
            # Stationary weights latched through each PE's own weight register (padding = 0).
            wreg = [[0] * C for _ in range(R)]
            for r in range(R):
                for c in range(C):
                    k, n = fr * R + r, fc * C + c
                    wv = W[k][n] if k < K and n < N else 0
                    wreg[r][c] = force(wv, pes.stuck[WT][r][c], pes.ones[WT][r][c], 8)
            for m in range(M):
                # Activations travel east along each row; every act register forces what it latches.
                act = [[0] * C for _ in range(R)]
                for r in range(R):
                    k = fr * R + r
                    x = A[m][k] if k < K else 0
                    for c in range(C):
                        if not (cfg.bypass and pes.faulty[r][c]):
                            x = force(x, pes.stuck[AC][r][c], pes.ones[AC][r][c], 8, act_signed)
                        act[r][c] = x
                # Partial sums travel south down each column.
                for c in range(C):
                    n = fc * C + c
                    p = 0
                    for r in range(R):
                        if cfg.bypass and pes.faulty[r][c]:
                            continue  # forwards the psum unchanged, adds nothing
                        p = wrap(p + act[r][c] * wreg[r][c], pb)
                        p = force(p, pes.stuck[PS][r][c], pes.ones[PS][r][c], pb)
                    if n < N:
                        Y[m][n] = wrap(Y[m][n] + p, 32)
    return Y


def _is(A, W, M, K, N, cfg, pes, act_signed):
    """Input-stationary: rows hold K, columns hold M, N streams (design.md "IS").

    The stationary register is ``act`` (holds ``A[m, k]``); the streamed register is
    ``weight`` (``W[k, n]`` moves east along row ``r``); partial sums move south.
    """
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    WT, AC, PS = Register.WEIGHT, Register.ACT, Register.PSUM
    Y = [[0] * N for _ in range(M)]
    for fr in range(_ceil_div(K, R)):
        for fc in range(_ceil_div(M, C)):
            # Stationary inputs latched through each PE's own act register (padding = 0).
            areg = [[0] * C for _ in range(R)]
            for r in range(R):
                for c in range(C):
                    k, m = fr * R + r, fc * C + c
                    av = A[m][k] if k < K and m < M else 0
                    areg[r][c] = force(av, pes.stuck[AC][r][c], pes.ones[AC][r][c], 8, act_signed)
            for n in range(N):
                # Weights travel east along each row; every weight register forces what it latches.
                wgt = [[0] * C for _ in range(R)]
                for r in range(R):
                    k = fr * R + r
                    x = W[k][n] if k < K else 0
                    for c in range(C):
                        if not (cfg.bypass and pes.faulty[r][c]):
                            x = force(x, pes.stuck[WT][r][c], pes.ones[WT][r][c], 8)
                        wgt[r][c] = x
                for c in range(C):
                    m = fc * C + c
                    p = 0
                    for r in range(R):
                        if cfg.bypass and pes.faulty[r][c]:
                            continue
                        p = wrap(p + areg[r][c] * wgt[r][c], pb)
                        p = force(p, pes.stuck[PS][r][c], pes.ones[PS][r][c], pb)
                    if m < M:
                        Y[m][n] = wrap(Y[m][n] + p, 32)
    return Y


def _os(A, W, M, K, N, cfg, pes, act_signed):
    """Output-stationary: PE ``(r, c)`` owns ``Y[fm*R + r, fn*C + c]``, K streams (design.md "OS")."""
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    WT, AC, PS = Register.WEIGHT, Register.ACT, Register.PSUM
    Y = [[0] * N for _ in range(M)]
    for fm in range(_ceil_div(M, R)):
        for fn in range(_ceil_div(N, C)):
            acc = [[0] * C for _ in range(R)]
            for r in range(R):
                for c in range(C):
                    if not (cfg.bypass and pes.faulty[r][c]):
                        # The clear writes 0, and the stuck bits stay stuck through it.
                        acc[r][c] = force(0, pes.stuck[PS][r][c], pes.ones[PS][r][c], pb)
            for k in range(K):
                # A[m, k] travels east along row r.
                act = [[0] * C for _ in range(R)]
                for r in range(R):
                    m = fm * R + r
                    x = A[m][k] if m < M else 0
                    for c in range(C):
                        if not (cfg.bypass and pes.faulty[r][c]):
                            x = force(x, pes.stuck[AC][r][c], pes.ones[AC][r][c], 8, act_signed)
                        act[r][c] = x
                # W[k, n] travels south along column c.
                wgt = [[0] * C for _ in range(R)]
                for c in range(C):
                    n = fn * C + c
                    x = W[k][n] if n < N else 0
                    for r in range(R):
                        if not (cfg.bypass and pes.faulty[r][c]):
                            x = force(x, pes.stuck[WT][r][c], pes.ones[WT][r][c], 8)
                        wgt[r][c] = x
                for r in range(R):
                    for c in range(C):
                        if cfg.bypass and pes.faulty[r][c]:
                            continue  # adds nothing: its output reads 0
                        s = wrap(acc[r][c] + act[r][c] * wgt[r][c], pb)
                        acc[r][c] = force(s, pes.stuck[PS][r][c], pes.ones[PS][r][c], pb)
            for r in range(R):
                for c in range(C):
                    m, n = fm * R + r, fn * C + c
                    if m < M and n < N:
                        Y[m][n] = acc[r][c]
    return Y
