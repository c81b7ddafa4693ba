"""Test GEMMs: the fixed detection set of each dataflow and seeded random refinement tests
(docs/diagnosis.md §2).

Every test is one fold: it uses each PE exactly once, so the array's cost is one fold's cycles
(:func:`sysarray.timing.fold_cycles`). Operands are int8 (activations too: every bit of both
8-bit registers is then driven both ways, the sign bit included).

Fixed sets and what each guarantees for a single stuck bit (no other fault on its paths):

- WS/IS (stationary operand ``s`` in the PEs, stream ``x``): two GEMMs, ``s`` and its bitwise
  complement ``~s``, so every stationary-register bit is written 0 in one and 1 in the other; ``s``
  holds pairwise coprime magnitudes (FLARE's algebraic vectors: row 0 is 1, rows 1.. primes) with
  no 0 and no -1, so ``s`` and ``~s`` are never zero and every stream fault multiplies a nonzero
  operand. The stream rows are: all zeros (every partial sum 0: each psum bit stuck at 1 shows, and
  each stream bit stuck at 1), ``-e_0`` (with ``s[0, :] = 1`` every partial sum of every column is
  -1: each psum bit stuck at 0 shows), all -1 (each stream bit stuck at 0), then walking-bit
  patterns 0x55/0xAA/0x33/0xCC, a coprime row, and ``-e_r`` for every row ``r`` (one row at a
  time: the error of a stationary or stream fault of row ``r`` shows alone), which separate
  candidates. A stream element costs one cycle.
- OS (one output per PE): five GEMMs. Acts ``P`` and ``~P`` against positive weights (an act
  fault's error is ``2^b`` times a sum of positive weights with one sign: never zero), positive
  acts against weights ``Q`` and ``~Q`` (the same for weight faults), and the complement of the
  first GEMM (``[P | 1] . [-W; -1] = ~(P . W)``): every accumulator bit ends 0 in one and 1 in
  the other, and the last write forces it, so each stuck accumulator bit shows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sysarray.config import ArrayConfig, Dataflow

# Odd and prime magnitudes first: pairwise coprime stationary entries (FLARE), then the rest of 2..127.
_PRIMES = [p for p in range(2, 128) if all(p % d for d in range(2, int(p ** 0.5) + 1))]
_MAGNITUDES = _PRIMES + [v for v in range(2, 128) if v not in _PRIMES]
_WALKING = (85, -86, 51, -52, 15, -16)  # 0x55, 0xAA, 0x33, 0xCC, 0x0F, 0xF0 as int8


@dataclass(frozen=True)
class TestGemm:
    """One test GEMM ``a @ w`` (int8 values in int64 arrays) and its normalised view for the model.

    ``a`` (M, K), ``w`` (K, N) in GEMM orientation. Stationary dataflows also carry ``s`` (R, C)
    and ``x`` (T, R): WS ``s = w``, ``x = a``; IS ``s = a^T``, ``x = w^T``. ``kind`` names the
    pattern (``fixed:...`` or ``random``).
    """

    a: np.ndarray
    w: np.ndarray
    kind: str
    s: np.ndarray | None = None
    x: np.ndarray | None = None

    def normalise(self, y: np.ndarray, cfg: ArrayConfig) -> np.ndarray:
        """The chip's (M, N) output in the model's orientation: IS outputs transposed."""
        return y.T if cfg.dataflow is Dataflow.IS else y


def _stationary(cfg: ArrayConfig, s: np.ndarray, x: np.ndarray, kind: str) -> TestGemm:
    s, x = s.astype(np.int64), x.astype(np.int64)
    if cfg.dataflow is Dataflow.WS:
        return TestGemm(x, s, kind, s, x)
    return TestGemm(s.T.copy(), x.T.copy(), kind, s, x)


def coprime_stationary(rows: int, cols: int) -> np.ndarray:
    """(rows, cols) int8 values: row 0 all 1, row r >= 1 a prime magnitude (then other magnitudes
    once the 31 primes below 128 are used) rotated by column, sign alternating like a checkerboard;
    never 0 or -1."""
    s = np.ones((rows, cols), dtype=np.int64)
    n = len(_MAGNITUDES)
    for r in range(1, rows):
        for c in range(cols):
            mag = _MAGNITUDES[(r - 1 + c) % min(n, max(rows - 1, 1))]
            s[r, c] = mag if (r + c) % 2 == 0 else -mag
    return s


def stream_rows(rows: int) -> np.ndarray:
    """(T, rows) int8 stream patterns of the stationary tests (see the module docstring)."""
    zeros = np.zeros(rows, dtype=np.int64)
    minus_e0 = zeros.copy()
    minus_e0[0] = -1
    coprime = np.array([_PRIMES[r % len(_PRIMES)] * (1 if r % 2 else -1) for r in range(rows)], dtype=np.int64)
    patterns = [zeros, minus_e0, np.full(rows, -1, dtype=np.int64)]
    patterns += [np.full(rows, v, dtype=np.int64) for v in _WALKING[:4]]
    patterns.append(coprime)
    patterns += list(-np.eye(rows, dtype=np.int64))  # one row at a time: separates the rows of a column
    return np.stack(patterns)


def fixed_tests(cfg: ArrayConfig, seed: int, k_steps: int = 8) -> list[TestGemm]:
    """The detection set of ``cfg``'s dataflow (module docstring); OS draws its patterns from ``seed``."""
    R, C = cfg.rows, cfg.cols
    if cfg.dataflow is not Dataflow.OS:
        s = coprime_stationary(R, C)
        x = stream_rows(R)
        return [_stationary(cfg, s, x, "fixed:coprime"), _stationary(cfg, ~s, x, "fixed:complement")]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x05]))
    p = rng.integers(-128, 128, size=(R, k_steps))
    q = rng.integers(-128, 128, size=(k_steps, C))
    # positive operands whose K-sum stays below 2^9: a +-2^7 error times it never wraps a 17-bit psum
    pos_w = rng.integers(1, 64, size=(k_steps, C))
    pos_a = rng.integers(1, 64, size=(R, k_steps))
    comp_a = np.concatenate([p, np.ones((R, 1), dtype=np.int64)], axis=1)
    comp_w = np.concatenate([-pos_w, -np.ones((1, C), dtype=np.int64)], axis=0)
    return [TestGemm(p, pos_w, "fixed:acts"), TestGemm(~p, pos_w, "fixed:acts-complement"),
            TestGemm(pos_a, q, "fixed:weights"), TestGemm(pos_a, ~q, "fixed:weights-complement"),
            TestGemm(comp_a, comp_w, "fixed:output-complement")]


def random_test(cfg: ArrayConfig, seed: int, index: int, length: int = 8) -> TestGemm:
    """Refinement test ``index``: uniformly random int8 operands of one fold (``length`` stream
    elements or K steps), drawn from ``SeedSequence([seed, 1, index])``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, index]))
    R, C = cfg.rows, cfg.cols
    if cfg.dataflow is Dataflow.OS:
        return TestGemm(rng.integers(-128, 128, size=(R, length)), rng.integers(-128, 128, size=(length, C)), "random")
    return _stationary(cfg, rng.integers(-128, 128, size=(R, C)), rng.integers(-128, 128, size=(length, R)), "random")
