"""The CPU psum replay's result (direct kernels, segment convolution) and how it lands in a layer's output."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from sysarray.engines.registers import force_i32
from sysarray.parallel import ELEMENTWISE, threaded

_SIGN32 = np.int32(-(1 << 31))  # a 32-bit register's sign bit as an int32 bit pattern


@dataclass(frozen=True)
class ChainFix:
    """The psum replay's result on CPU: outputs ``y[:, n_idx]`` become ``wrap32(y[:, n_idx] +
    tot)`` (``add``) or ``wrap32(tot)`` (:func:`apply_fix`). tot: (B, O, >= oh*ow) int32, each
    output plane a row (rows may be padded past ``oh*ow``), or (B, oh*ow, O) when
    ``pixel_major`` (a channels-last output's order). The replay runs before the layer's
    convolution, while its input is still in cache, and is applied to the convolution's result
    afterwards.

    ``tot`` None: every replayed output's chain is one step, through a 32-bit register whose
    segment holds all of the output's taps, so the output is its plain sum read back,
    ``force(y)``, through ``keep``, ``ones`` (O,) int32 bit patterns: nothing to compute before
    the convolution."""

    n_idx: np.ndarray
    tot: np.ndarray | None
    add: bool
    pixel_major: bool = False
    keep: np.ndarray | None = None
    ones: np.ndarray | None = None


def is_pixel_major(t: torch.Tensor) -> bool:
    """Whether (B, C, H, W) ``t`` is stored channels-last (and not also plain: 1x1 images are both)."""
    return t.shape[2] * t.shape[3] > 1 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def apply_fix(y: torch.Tensor, fix: ChainFix, saturate: int = 1 << 31) -> None:
    """Apply a :class:`ChainFix` to ``y`` (B, N, oh, ow) (any strides), in place: int32, or
    float32 with the corrected values clamped to ``[-saturate, saturate]`` (at most 2**24, so
    that they are exact; see :func:`~sysarray.engines.conv.conv2d.fast_conv2d_exact`). ``y`` is
    read in its storage order, plane by plane or (channels-last) pixel by pixel: numba indexes a
    C-ordered array fastest."""
    lo, hi = max(-saturate, -(1 << 31)), min(saturate, (1 << 31) - 1)  # int32 bounds (a no-op for 2**31)
    B, N, oh, ow = y.shape
    if oh * ow == 1 and fix.tot is not None and y.is_contiguous():
        # 1x1 outputs (linear layers): each image's outputs are one row, its totals one column
        rows = fix.tot.reshape(B, -1) if fix.pixel_major else fix.tot[:, :, 0]
        _apply_fix_rows(y.numpy().reshape(B, N), fix.n_idx, rows, fix.add, np.int32(lo), np.int32(hi),
                        work=B * len(fix.n_idx))
        return
    cl = is_pixel_major(y)
    target = y if y.is_contiguous() or cl else y.contiguous()
    tot = fix.tot
    if fix.pixel_major and not cl and tot is not None:
        tot = np.ascontiguousarray(tot.transpose(0, 2, 1))  # into the planes' order
    bounds, work = (np.int32(lo), np.int32(hi)), B * N * oh * ow
    if cl:
        pixels = target.permute(0, 2, 3, 1).numpy().reshape(B, oh * ow, N)
        _apply_fix_pixels(pixels, fix.n_idx, *pixel_arrays(fix, B), *bounds, work=work)
    elif tot is None:
        _force_planes(target.numpy().reshape(B, N, oh * ow), fix.n_idx, fix.keep, fix.ones, *bounds, work=work)
    else:
        _apply_fix(target.numpy().reshape(B, N, oh * ow), fix.n_idx, tot, fix.add, *bounds, work=work)
    if target is not y:
        y.copy_(target)


@njit(cache=True, inline="always")
def corrected(y, t, add):
    """One replayed output, int32: ``wrap32(y + t)`` (``add``) or ``wrap32(t)``. In 32-bit lanes:
    ``y`` is an integer (int32, or int64 holding a wrapped int32 value) or an integer float32
    below 2**24 in magnitude (exact both ways), and an int32 sum truncated to 32 bits is the sum
    mod 2**32 (int64 lanes would halve the vector width, and AVX2 cannot convert them from float)."""
    return np.int32(np.int32(t) + np.int32(y)) if add else np.int32(t)


@njit(cache=True, inline="always")
def read_back(y, keep, ones):
    """One replayed output without totals (``ChainFix.tot`` None), int32: the sum ``y`` read back
    through its column's 32-bit register, ``keep`` and ``ones`` its int32 bit patterns."""
    return force_i32(np.int32(y), keep, ones, _SIGN32)


@njit(cache=True, inline="always")
def _corrected(y, t, add, lo, hi):
    """:func:`corrected` clamped to ``[lo, hi]`` (int32)."""
    return min(max(corrected(y, t, add), lo), hi)


@njit(cache=True, inline="always")
def replayed(y, tb, p, o, add, forced, keep, ones):
    """Replayed output ``o`` at pixel ``p`` (int32) from its fault-free sum ``y``: read back through
    its register (:func:`read_back`) when ``forced``, else :func:`corrected` with its total
    ``tb[p, o]``; the arrays as :func:`pixel_arrays` gives them."""
    return read_back(y, keep[o], ones[o]) if forced else corrected(y, tb[p, o], add)


TILE = 64  # pixels a channels-last correction walks at a time: their cache lines stay in L1 across its outputs
TASK_TILES = 8  # tiles per parallel task: one scratch buffer per task serves them all
_NO_MASKS = np.zeros(0, dtype=np.int32)


@njit(cache=True, inline="always")
def tile_tasks(batch, pixels):
    """How many parallel tasks a channels-last correction of ``batch`` images of ``pixels`` pixels
    each makes (:func:`task_pixels`)."""
    per = TILE * TASK_TILES
    return batch * ((pixels + per - 1) // per)


@njit(cache=True, inline="always")
def task_pixels(t, pixels):
    """Task ``t`` of :func:`tile_tasks` as ``(b, p0, p1)``: image ``b``, its pixels ``p0 .. p1 - 1``
    (at most ``TASK_TILES`` tiles of ``TILE``; the kernels walk them from index 0, as slices:
    numba then knows every index non-negative and drops the wraparound check that stops a loop
    from vectorising)."""
    per = TILE * TASK_TILES
    tasks = (pixels + per - 1) // per
    p0 = (t % tasks) * per
    return t // tasks, p0, min(pixels, p0 + per)


def pixel_arrays(fix: ChainFix, batch: int) -> tuple[np.ndarray, bool, bool, np.ndarray, np.ndarray]:
    """``(tot, add, forced, keep, ones)`` of ``fix`` for kernels that walk a channels-last result
    pixel by pixel (:func:`replayed`): ``tot`` (B, >= H*W, O) by pixel (a transposed view of
    plane-ordered totals; (B, 0, 0) when ``forced``, without totals), ``keep``/``ones`` (O,) int32
    (empty unless ``forced``)."""
    forced = fix.tot is None
    tot = np.zeros((batch, 0, 0), dtype=np.int32) if forced else fix.tot if fix.pixel_major else \
        fix.tot.transpose(0, 2, 1)
    keep = _NO_MASKS if fix.keep is None else fix.keep
    return tot, bool(fix.add), forced, keep, _NO_MASKS if fix.ones is None else fix.ones


@threaded(ELEMENTWISE)
def _apply_fix(y, n_idx, tot, add, lo, hi):
    """y (B, N, L) output planes, tot (B, O, >= L): plane by plane."""
    B, _, L = y.shape
    O = n_idx.shape[0]
    for bo in prange(B * O):
        b = bo // O
        o = bo % O
        yp = y[b, n_idx[o]]
        tp = tot[b, o]
        for p in range(L):
            yp[p] = _corrected(yp[p], tp[p], add, lo, hi)


@threaded(ELEMENTWISE)
def _apply_fix_rows(y, n_idx, tot, add, lo, hi):
    """y (B, N) the outputs of 1x1 images, tot (B, O): row by row."""
    B = y.shape[0]
    O = n_idx.shape[0]
    for b in prange(B):
        for o in range(O):
            y[b, n_idx[o]] = _corrected(y[b, n_idx[o]], tot[b, o], add, lo, hi)


@threaded(ELEMENTWISE)
def _apply_fix_pixels(y, n_idx, tot, add, forced, keep, ones, lo, hi):
    """y (B, L, N) the pixels of a channels-last output; tot, add, forced, keep, ones as
    :func:`pixel_arrays` gives them: by tiles of ``TILE`` pixels, one replayed output at a time
    over the tile (a replayed channel is one value of a pixel's cache line; the tile's lines are
    loaded once for all its outputs)."""
    B, L = y.shape[:2]
    for t in prange(tile_tasks(B, L)):
        b, p0, p1 = task_pixels(t, L)
        for q0 in range(p0, p1, TILE):
            q1 = min(p1, q0 + TILE)
            yt = y[b, q0:q1]
            tt = tot[b, q0:q1]
            for o in range(n_idx.shape[0]):
                n = n_idx[o]
                for p in range(q1 - q0):
                    yt[p, n] = min(max(replayed(yt[p, n], tt, p, o, add, forced, keep, ones), lo), hi)


@threaded(ELEMENTWISE)
def _force_planes(y, n_idx, keep, ones, lo, hi):
    """``tot`` None (see :class:`ChainFix`), y (B, N, L) output planes: plane by plane."""
    B, _, L = y.shape
    O = n_idx.shape[0]
    for bo in prange(B * O):
        yp = y[bo // O, n_idx[bo % O]]
        k = keep[bo % O]
        on = ones[bo % O]
        for p in range(L):
            yp[p] = min(max(read_back(yp[p], k, on), lo), hi)
