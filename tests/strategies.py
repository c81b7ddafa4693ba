"""Hypothesis strategies for GEMMs on faulty arrays (shared by the engine tests)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from sysarray import ArrayConfig, FaultMap


@dataclass
class Case:
    a: np.ndarray
    w: np.ndarray
    cfg: ArrayConfig
    faults: FaultMap

    def __repr__(self) -> str:
        return (f"Case(cfg={self.cfg}, a={self.a.dtype}{self.a.shape}, w{self.w.shape}, "
                f"faults={list(self.faults)})")


def _matrix(rng: np.random.Generator, shape, dtype, style: str) -> np.ndarray:
    """Random values; ``extreme`` draws only the ends of the range (where overflow and sign live)."""
    info = np.iinfo(dtype)
    if style == "extreme":
        return rng.choice(np.array([info.min, info.max, 0, -1 if info.min < 0 else 1], dtype=dtype), size=shape)
    if style == "small":
        lo = max(info.min, -3)
        return rng.integers(lo, 4, size=shape).astype(dtype)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)


@st.composite
def fault_maps(draw, cfg: ArrayConfig, max_faults: int = 8, registers=("weight", "act", "psum")) -> FaultMap:
    """Up to ``max_faults`` stuck bits on ``cfg``'s array: bits 0, the top bit and the sign bit
    often, and often all in one column (psum chains with several faulty rows)."""
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    fm = FaultMap(R, C)
    n = draw(st.integers(0, max_faults))
    same_col = draw(st.booleans())
    col = draw(st.integers(0, C - 1))
    for _ in range(n):
        reg = draw(st.sampled_from(registers))
        width = pb if reg == "psum" else 8
        bit = draw(st.one_of(st.sampled_from([0, width - 1, width - 2]), st.integers(0, width - 1)))
        r = draw(st.integers(0, R - 1))
        c = col if same_col else draw(st.integers(0, C - 1))
        value = draw(st.integers(0, 1))
        try:
            fm = fm.add(r, c, reg, bit, value)
        except ValueError:
            pass  # the same bit already stuck at the other value
    return fm


@st.composite
def cases(draw, max_rc: int = 6, max_m: int = 12, max_folds: int = 4, max_faults: int = 8,
          registers=("weight", "act", "psum"), bypass=None, dataflows=("ws", "os", "is"),
          psum_bits=(20, 32), faulty: bool = True) -> Case:
    """A GEMM and a chip: shapes that are rarely multiples of the array (M may be 1, K spans
    several folds), faults as :func:`fault_maps` draws them."""
    R = draw(st.integers(1, max_rc))
    C = draw(st.integers(1, max_rc))
    dataflow = draw(st.sampled_from(dataflows))
    pb = draw(st.sampled_from(psum_bits))
    byp = draw(st.booleans()) if bypass is None else bypass
    cfg = ArrayConfig(R, C, dataflow, psum_bits=pb, bypass=byp)
    M = draw(st.one_of(st.just(1), st.integers(1, max_m)))
    K = draw(st.integers(1, max_folds * R + R - 1))
    N = draw(st.integers(1, max_folds * C + C - 1))
    a_dtype = draw(st.sampled_from([np.int8, np.uint8]))
    style = draw(st.sampled_from(["uniform", "extreme", "small"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = _matrix(rng, (M, K), a_dtype, style)
    w = _matrix(rng, (K, N), np.int8, style)
    fm = draw(fault_maps(cfg, max_faults, registers)) if faulty else FaultMap(R, C)
    return Case(a, w, cfg, fm)
