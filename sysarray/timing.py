"""Closed-form, stall-free timing of a GEMM on the array, exactly as SCALE-Sim v2 computes it.

This is the fast path for timing-only questions (docs/design.md §2.11); the cycle engine counts the
same numbers from its own clock and both go through :func:`sysarray.stats.summarize`.

Mapping (:mod:`sysarray.mapping`, SCALE-Sim's ``systolic_compute_{ws,os,is}``): a GEMM
``Y[M x N] = A[M x K] . W[K x N]`` puts a spatial dimension ``Sr`` on the array rows, ``Sc`` on the
array columns and streams ``T`` in time:

====  =====  =====  ====  ============================
flow  Sr     Sc     T     cycles of one fold
====  =====  =====  ====  ============================
ws    K      N      M     ``2R + C + T - 2``
os    M      N      K     ``R + C + T - 2``
is    K      M      N     ``2R + C + T - 2``
====  =====  =====  ====  ============================

Fold order. The array runs ``ceil(Sr/R) x ceil(Sc/C)`` folds, the *column fold outer and the row
fold inner*: fold ``i`` is row fold ``fr = i % row_folds`` and column fold
``fc = i // row_folds``. This is SCALE-Sim v2's loop order (``for fc ...: for fr ...:`` in all
three compute modules); it matters because SCALE-Sim averages the per-fold utilizations with a
floating-point sum in that order. In WS it also means that all K folds of one block of output
columns run back to back, so the int32 accumulator outside the array holds one block at a time.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from sysarray.config import ArrayConfig, Dataflow
from sysarray.mapping import check_gemm, fold_layout
from sysarray.stats import GemmStats, summarize
from sysarray.validation import check_positive_int

__all__ = ["cached_gemm_timing", "conv_gemm_dims", "fold_cycles", "gemm_timing"]


def fold_cycles(T: int, cfg: ArrayConfig) -> int:
    """Clock cycles of one stall-free fold that streams ``T`` elements (docs/design.md §2.11).

    WS/IS: ``2R + C + T - 2`` (R cycles to load the stationary operand, then the skewed stream
    and the drain); OS: ``R + C + T - 2``. A partly used fold costs as much as a full one.
    """
    R, C = cfg.rows, cfg.cols
    if cfg.dataflow is Dataflow.OS:
        return R + C + T - 2
    return 2 * R + C + T - 2


def gemm_timing(M: int, K: int, N: int, cfg: ArrayConfig) -> GemmStats:
    """Cycles and utilization of ``Y[M x N] = A[M x K] . W[K x N]`` on ``cfg``, as SCALE-Sim v2.

    Returns :class:`GemmStats` with ``cycles`` = folds x per-fold cycles (SCALE-Sim's "Total
    Cycles" is ``cycles - 1``), ``macs`` = M*K*N, and SCALE-Sim's three utilization
    percentages (see :func:`sysarray.stats.summarize` for the float details).
    """
    M, K, N = check_gemm(M, K, N, cfg, "gemm_timing")
    folds = fold_layout(M, K, N, cfg)
    per_fold = fold_cycles(folds[0].T, cfg)
    cycles = np.full(len(folds), per_fold, dtype=np.int64)
    mapped = np.array([f.rows_used * f.cols_used for f in folds], dtype=np.int64)
    useful = np.array([f.rows_used * f.cols_used * f.T for f in folds], dtype=np.int64)
    return summarize(cfg.rows, cfg.cols, M * K * N, cycles, mapped, useful, dataflow=cfg.dataflow)


@lru_cache(maxsize=4096)
def cached_gemm_timing(M: int, K: int, N: int, cfg: ArrayConfig) -> GemmStats:
    """:func:`gemm_timing`, remembered: a campaign times the same layers on thousands of chips of one
    array. The result is shared; do not modify its ``fold_cycles``."""
    return gemm_timing(M, K, N, cfg)


def conv_gemm_dims(
    ifmap_h: int,
    ifmap_w: int,
    filt_h: int,
    filt_w: int,
    channels: int,
    num_filters: int,
    stride: int,
    batch: int = 1,
) -> tuple[int, int, int]:
    """The im2col GEMM ``(M, K, N)`` of a convolution, with SCALE-Sim's conventions.

    No padding; the output is ``ceil((H - F + S) / S)`` by ``ceil((W - F + S) / S)`` (SCALE-Sim's
    formula, which equals ``floor((H - F) / S) + 1``), the same stride in both directions.
    ``M`` = batch x output pixels, ``K`` = filt_h x filt_w x channels, ``N`` = num_filters.
    """
    func = "conv_gemm_dims"
    names = ("ifmap_h", "ifmap_w", "filt_h", "filt_w", "channels", "num_filters", "stride", "batch")
    vals = [
        check_positive_int(v, n, func)
        for v, n in zip((ifmap_h, ifmap_w, filt_h, filt_w, channels, num_filters, stride, batch), names)
    ]
    h, w, fh, fw, ch, nf, s, b = vals
    if fh > h:
        raise ValueError(f"The 'filt_h' argument of {func} must be at most ifmap_h={h}. Got {fh} instead.")
    if fw > w:
        raise ValueError(f"The 'filt_w' argument of {func} must be at most ifmap_w={w}. Got {fw} instead.")
    out_h = -(-(h - fh + s) // s)  # integer ceil: exact where SCALE-Sim's float ceil is
    out_w = -(-(w - fw + s) // s)
    return b * out_h * out_w, fh * fw * ch, nf
