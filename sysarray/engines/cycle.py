"""The cycle-level reference engine: clocks every PE register every cycle (numba).

Inputs are validated by :func:`sysarray.simulate_gemm`; this module prepares contiguous arrays
and masks, calls the jitted clock loops and wraps the statistics they count from their own clock.
WS and IS run on ``_cycle_strips`` (vector lanes across PE columns) by default, or on the scalar
loop of ``_cycle_kernels``, its independent twin with the same bits; OS runs on ``_cycle_kernels``.
"""
from __future__ import annotations

import numba
import numpy as np

from sysarray.config import ArrayConfig, Dataflow
from sysarray.engines import _cycle_kernels as K
from sysarray.engines import _cycle_strips as KS
from sysarray.engines.registers import OPERAND_BITS, ChipMasks, RegisterMasks, chip_masks
from sysarray.engines.simd import LANES
from sysarray.faults import FaultMap
from sysarray.stats import GemmStats, summarize
from sysarray.tensor_memo import TensorMemo

# Largest partial-sum buffer (bytes) the stationary kernel may hold for one group of row folds.
_PART_BUDGET = 256 << 20
# Cycles a tile of the vector kernel runs before the next tile takes them.
SPAN = 32
# Spans per step when the vector kernel pipelines the strips of a fold over threads: steps end in
# a barrier, so a step must be long.
STEP_SPANS = 8
# The WS-style kernels, equal bit for bit: "strips" (vector lanes across PE columns), "scalar".
KERNELS = ("strips", "scalar")


def _m(reg: RegisterMasks) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense masks: (keep, ones, sign)."""
    return reg.keep, reg.ones, reg.sign


def _sparse(reg: RegisterMasks) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The faulty registers as per-row lists: (ptr (R+1,), col, keep, ones, sign)."""
    rows, cols = np.nonzero(reg.faulty)
    ptr = np.zeros(reg.keep.shape[0] + 1, dtype=np.int64)
    np.add.at(ptr, rows + 1, 1)
    return np.cumsum(ptr), cols.astype(np.int64), reg.keep[rows, cols], reg.ones[rows, cols], reg.sign


def _i32(x: np.ndarray) -> np.ndarray:
    """int64 masks as int32 bit patterns (their low 32 bits)."""
    return (np.asarray(x, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


# Strip-layout masks of the most recent registers, by identity: chip_masks hands every GEMM on one
# chip the same objects.
_STRIP_MASKS = TensorMemo(max_entries=64)


def _strips(reg: RegisterMasks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_strip_masks` of ``reg``, kept for the most recent registers (not to be written)."""
    return _STRIP_MASKS.get_for(reg, (), "strips", lambda: _strip_masks(reg))


def _strip_masks(reg: RegisterMasks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks in the strip kernel's layout: (keep, ones) (n_strips * R * LANES,) int32 with PE
    (r, j*LANES + l) at (j*R + r)*LANES + l (identity in the lanes past the last column), and
    (n_strips * R,) bool flags of the strip rows that hold a stuck bit. A signed 8-bit register's
    masks are sign-extended from bit 7: ``(x & keep) | ones`` of a sign-extended 8-bit ``x`` then
    is the signed read-back (bit 7 kept, or stuck, carries into the bits above it)."""
    R, C = reg.keep.shape
    n = -(-C // LANES) * LANES
    full = (1 << reg.width) - 1
    keep = np.full((R, n), full, dtype=np.int64)
    ones = np.zeros((R, n), dtype=np.int64)
    faulty = np.zeros((R, n), dtype=bool)
    keep[:, :C], ones[:, :C], faulty[:, :C] = reg.keep, reg.ones, reg.faulty
    if reg.sign and reg.width == OPERAND_BITS:
        keep, ones = (((x ^ reg.sign) - reg.sign) for x in (keep, ones))

    def layout(x):
        return np.ascontiguousarray(x.reshape(R, n // LANES, LANES).transpose(1, 0, 2)).reshape(-1)
    rows = faulty.reshape(R, n // LANES, LANES).any(axis=2).T
    return _i32(layout(keep)), _i32(layout(ones)), np.ascontiguousarray(rows).reshape(-1)


def _parts(n_folds: int, n_strips: int, n_steps: int) -> int:
    """Pipeline stages per fold for the strip kernel: the fewest that keep numba's threads
    busiest, counting the idle threads of a step with fewer tasks than threads and the
    ``parts - 1`` steps that fill the pipeline."""
    threads = numba.get_num_threads()

    def busy(p: int) -> float:
        tasks = n_folds * p
        return tasks / (-(-tasks // threads) * threads) * n_steps / (n_steps + p - 1)
    return max(range(1, min(n_strips, threads) + 1), key=lambda p: (busy(p), -p))


def _stationary(stream: np.ndarray, stat: np.ndarray, cfg: ArrayConfig, str_reg: RegisterMasks,
                stat_reg: RegisterMasks, cm: ChipMasks, kernel: str, parts: int | None):
    """WS-style clocking: ``stream`` (T, Kd) flows east, ``stat`` (Kd, Nd) sits in the PEs (integer
    arrays or views of them)."""
    R, C = cfg.rows, cfg.cols
    T, Kd = stream.shape
    Nd = stat.shape[1]
    n_fr = -(-Kd // R)
    n_fc = -(-Nd // C)
    out = np.zeros((T, Nd), dtype=np.int32)
    fold_stats = np.zeros((n_fr * n_fc, 3), dtype=np.int64)
    per_fr = max(1, T * n_fc * C * 4)
    group = max(1, min(n_fr, _PART_BUDGET // per_fr))
    if kernel == "strips":
        # the operands' bytes (one kernel for int8 and uint8): a transposed copy of bytes, not of int32
        stream_t = np.ascontiguousarray(stream.T).view(np.uint8)
        stat_u8 = np.ascontiguousarray(stat).view(np.uint8)
        ka, oa, fa = _strips(str_reg)
        kp, op, fp = _strips(cm.psum)
        faulty = (fa | fp).astype(np.uint8)
        n_strips = -(-C // LANES)
        n_steps = -(-(T + R + C - 2) // (SPAN * STEP_SPANS))
        for lo in range(0, n_fr, group):
            hi = min(n_fr, lo + group)
            KS.stationary_gemm(
                stream_t, stream.dtype == np.int8, stat_u8, stat.dtype == np.int8, R, C, SPAN,
                parts or _parts((hi - lo) * n_fc, n_strips, n_steps), STEP_SPANS,
                ka, oa, kp, op, faulty, 32 - cfg.psum_bits, *_m(stat_reg),
                cm.enable, lo, hi, out, fold_stats,
            )
        return out, fold_stats
    stream = np.ascontiguousarray(stream, dtype=np.int32)
    stat = np.ascontiguousarray(stat, dtype=np.int32)
    for lo in range(0, n_fr, group):
        K.stationary_gemm(
            stream, stat, R, C, *_sparse(str_reg), *_m(stat_reg),
            *_sparse(cm.psum)[:4], (1 << cfg.psum_bits) - 1, cm.psum.sign,
            cm.enable, lo, min(n_fr, lo + group), out, fold_stats,
        )
    return out, fold_stats


def cycle_gemm(a: np.ndarray, w: np.ndarray, cfg: ArrayConfig, faults: FaultMap | None,
               kernel: str = "strips", parts: int | None = None) -> tuple[np.ndarray, GemmStats]:
    """Run ``a @ w`` on the array clock by clock.

    a: (M, K) int8 or uint8; w: (K, N) int8; kernel: one of :data:`KERNELS` for WS and IS (the
    same bits; OS has one kernel); parts: pipeline stages per fold of the "strips" kernel (None:
    chosen for numba's thread count; the bits never depend on it). Returns y (M, N) int32 and the
    statistics counted from the clock loops (cycles per fold, mapped PEs, MACs on real data).
    """
    if kernel not in KERNELS:
        raise ValueError(f"The 'kernel' argument of cycle_gemm must be one of {KERNELS}. Got {kernel!r} instead.")
    if parts is not None and (isinstance(parts, bool) or not isinstance(parts, int) or parts < 1):
        raise ValueError(f"The 'parts' argument of cycle_gemm must be a positive int or None. Got {parts!r} instead.")
    cm = chip_masks(cfg, faults, act_signed=a.dtype != np.uint8)
    M, Kdim = a.shape
    N = w.shape[1]
    if cfg.dataflow is Dataflow.WS:
        y, fs = _stationary(a, w, cfg, cm.act, cm.weight, cm, kernel, parts)
    elif cfg.dataflow is Dataflow.IS:
        # Same PEs, operands swapped: A^T is stationary in the act register, W^T streams
        # through the weight register, and the south edge yields Y^T.
        yt, fs = _stationary(w.T, a.T, cfg, cm.weight, cm.act, cm, kernel, parts)
        y = np.ascontiguousarray(yt.T)
    else:
        a32 = np.ascontiguousarray(a, dtype=np.int32)
        w32 = np.ascontiguousarray(w, dtype=np.int32)
        y = np.zeros((M, N), dtype=np.int32)
        fs = np.zeros((-(-M // cfg.rows) * -(-N // cfg.cols), 3), dtype=np.int64)
        K.os_gemm(a32, w32, cfg.rows, cfg.cols, *_m(cm.act), *_m(cm.weight), *_m(cm.psum), cm.enable, y, fs)
    stats = summarize(cfg.rows, cfg.cols, M * Kdim * N, fs[:, 0], fs[:, 1], fs[:, 2], dataflow=cfg.dataflow)
    return y, stats
