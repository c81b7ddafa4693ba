"""The cycle-level reference engine: clocks every PE register every cycle (numba).

Inputs are validated by :func:`sysarray.simulate_gemm`; this module prepares contiguous arrays
and masks, calls the jitted clock loops in ``_cycle_kernels`` and wraps the statistics they
count from their own clock.
"""
from __future__ import annotations

import numpy as np

from sysarray.config import ArrayConfig, Dataflow
from sysarray.engines import _cycle_kernels as K
from sysarray.engines.registers import ChipMasks, RegisterMasks, chip_masks
from sysarray.faults import FaultMap
from sysarray.stats import GemmStats, summarize

# Largest partial-sum buffer (bytes) the stationary kernel may hold for one group of row folds.
_PART_BUDGET = 256 << 20


def _m(reg: RegisterMasks) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense masks: (keep, ones, sign)."""
    return reg.keep, reg.ones, reg.sign


def _sparse(reg: RegisterMasks) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The faulty registers as per-row lists: (ptr (R+1,), col, keep, ones, sign)."""
    rows, cols = np.nonzero(reg.faulty)
    ptr = np.zeros(reg.keep.shape[0] + 1, dtype=np.int64)
    np.add.at(ptr, rows + 1, 1)
    return np.cumsum(ptr), cols.astype(np.int64), reg.keep[rows, cols], reg.ones[rows, cols], reg.sign


def _stationary(stream: np.ndarray, stat: np.ndarray, cfg: ArrayConfig,
                str_reg: RegisterMasks, stat_reg: RegisterMasks, cm: ChipMasks):
    """WS-style clocking: ``stream`` (T, Kd) flows east, ``stat`` (Kd, Nd) sits in the PEs."""
    R, C = cfg.rows, cfg.cols
    T, Kd = stream.shape
    Nd = stat.shape[1]
    n_fr = -(-Kd // R)
    n_fc = -(-Nd // C)
    out = np.zeros((T, Nd), dtype=np.int32)
    fold_stats = np.zeros((n_fr * n_fc, 3), dtype=np.int64)
    per_fr = max(1, T * n_fc * C * 4)
    group = max(1, min(n_fr, _PART_BUDGET // per_fr))
    for lo in range(0, n_fr, group):
        K.stationary_gemm(
            stream, stat, R, C, *_sparse(str_reg), *_m(stat_reg),
            *_sparse(cm.psum)[:4], (1 << cfg.psum_bits) - 1, cm.psum.sign,
            cm.enable, lo, min(n_fr, lo + group), out, fold_stats,
        )
    return out, fold_stats


def cycle_gemm(a: np.ndarray, w: np.ndarray, cfg: ArrayConfig, faults: FaultMap | None) -> tuple[np.ndarray, GemmStats]:
    """Run ``a @ w`` on the array clock by clock.

    a: (M, K) int8 or uint8; w: (K, N) int8. Returns y (M, N) int32 and the statistics
    counted from the clock loops (cycles per fold, mapped PEs, MACs on real data).
    """
    cm = chip_masks(cfg, faults, act_signed=a.dtype != np.uint8)
    a32 = np.ascontiguousarray(a, dtype=np.int32)
    w32 = np.ascontiguousarray(w, dtype=np.int32)
    M, Kdim = a.shape
    N = w.shape[1]
    if cfg.dataflow is Dataflow.WS:
        y, fs = _stationary(a32, w32, cfg, cm.act, cm.weight, cm)
    elif cfg.dataflow is Dataflow.IS:
        # Same PEs, operands swapped: A^T is stationary in the act register, W^T streams
        # through the weight register, and the south edge yields Y^T.
        yt, fs = _stationary(np.ascontiguousarray(w32.T), np.ascontiguousarray(a32.T), cfg, cm.weight, cm.act, cm)
        y = np.ascontiguousarray(yt.T)
    else:
        y = np.zeros((M, N), dtype=np.int32)
        fs = np.zeros((-(-M // cfg.rows) * -(-N // cfg.cols), 3), dtype=np.int64)
        K.os_gemm(a32, w32, cfg.rows, cfg.cols, *_m(cm.act), *_m(cm.weight), *_m(cm.psum), cm.enable, y, fs)
    stats = summarize(cfg.rows, cfg.cols, M * Kdim * N, fs[:, 0], fs[:, 1], fs[:, 2], dataflow=cfg.dataflow)
    return y, stats
