"""Phase planes: the direct replay's layout of a group of input images.

A convolution tap over a strided output is a strided read; split into its stride phases
(``(ti % sh, tj % sw)``), each tap reads one phase plane at unit stride, and with ``G`` images
laid side by side one tap over the whole output planes of the group is one contiguous run of
values, which the replay kernels sum with vector instructions. ``geometry`` is the int64 array
``(C, H, W, ph, pw, sh, sw, Hq, G, Wq)``: input channels and size, padding, stride, plane height,
images per group and plane width.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from sysarray.engines.simd import LANES, transpose_block
from sysarray.engines.transpose import transpose_into


def transposed_groups(x: np.ndarray, NG: int, G: int) -> np.ndarray:
    """Linear layers' phase planes: ``x`` (B, C), any strides -> (NG, C*G), ``out[q, c*G + g] =
    x[q*G + g, c]`` (zero for images past B). The whole groups by the blocked transpose of
    :mod:`sysarray.engines.transpose`, a last partial one value by value."""
    B, C = x.shape
    out = np.empty((NG, C * G), dtype=x.dtype)
    full = min(NG, B // G)
    if full:
        transpose_into(x[:full * G].reshape(full, G, C), out[:full].reshape(full, C, G))
    if full < NG:
        _partial_group(x, full, G, out)
    return out


@njit(cache=True)
def _partial_group(x, q, G, out):
    """Group ``q`` of :func:`transposed_groups`, the images from ``q*G`` on (fewer than ``G``)."""
    B, C = x.shape
    n = B - q * G
    for c in range(C):
        for g in range(n):
            out[q, c * G + g] = x[q * G + g, c]
        for g in range(n, G):
            out[q, c * G + g] = 0


@njit(cache=True)
def fill_planes(x, g0, geometry, plane_of, out):
    """The phase planes of image group ``g0``: ``out[c, p, i, g, j] = xpad[g0*G + g, c, sh*i + a,
    sw*j + b]`` for phase ``a*sw + b`` kept as plane ``p = plane_of[a*sw + b]`` (-1: not kept),
    where ``xpad`` is the input zero padded by (ph, pw) (zero past the edges and for images past
    B). A kernel tap ``(ti, tj)`` then reads plane ``(ti % sh, tj % sw)`` shifted by ``(ti // sh,
    tj // sw)`` at unit stride, and over the ``G`` images side by side one tap of a whole output
    plane is one contiguous run.

    x: (B, C, H, W) the input images, any strides; geometry: (C, H, W, ph, pw, sh, sw, Hq, G,
    Wq); out: (C*P*Hq*G*Wq,). Zeroes ``out``, then copies the input row by row: for each row and
    column phase, one contiguous run per channel. Rows outer keep a channels-last row (all its
    channels) in L1 while it is copied, and writes by slices use non-negative indices (numba adds a
    negative-index check to every computed index)."""
    C, H, W, ph, pw, sh, sw, Hq, G, Wq = geometry
    P = max(1, plane_of.max() + 1)
    cs = P * Hq * G * Wq  # one channel's planes
    out[:] = 0
    for g in range(min(G, x.shape[0] - g0 * G)):
        for ii in range(H):
            a = (ii + ph) % sh
            i = (ii + ph) // sh
            src = x[g0 * G + g, :, ii, :]  # (C, W)
            for bb in range(sw):
                p = plane_of[a * sw + bb]
                if p < 0:
                    continue
                jj0 = (bb - pw) % sw  # the first input column of this column phase
                n = (W - jj0 + sw - 1) // sw
                d0 = ((p * Hq + i) * G + g) * Wq + (jj0 + pw) // sw
                for c in range(C):
                    dst = out[c * cs + d0:c * cs + d0 + n]
                    row = src[c, jj0:]
                    for k in range(n):
                        dst[k] = row[k * sw]


@njit(cache=True)
def fill_planes_cl(xcl, B, g0, geometry, out):
    """:func:`fill_planes` for stride 1 from channels-last input with a multiple of ``LANES``
    channels and rows of at least ``LANES`` pixels: ``xcl`` (B*H*W*C,) the input's storage.
    Blocks of ``LANES`` pixels x ``LANES`` channels are transposed in registers
    (:func:`~sysarray.engines.simd.transpose_block`); a row's last ``W % LANES`` pixels are
    copied one by one."""
    C, H, W, ph, pw, sh, sw, Hq, G, Wq = geometry
    cs = Hq * G * Wq  # one channel's plane
    images = min(G, B - g0 * G)
    out[:] = 0
    for g in range(images):
        for ii in range(H):
            src = ((g0 * G + g) * H + ii) * W * C
            dst = ((ii + ph) * G + g) * Wq + pw
            full = W - W % LANES
            for jb in range(0, full, LANES):
                for cb in range(0, C, LANES):
                    transpose_block(xcl, src + jb * C + cb, C, out, cb * cs + dst + jb, cs)
            for jj in range(full, W):
                for c in range(C):
                    out[c * cs + dst + jj] = xcl[src + jj * C + c]


@njit(cache=True, inline="always")
def planes_buffer(geometry, plane_of, dtype):
    """An uninitialised buffer for one image group's phase planes (C*P*Hq*G*Wq,)."""
    C, Hq, G, Wq = geometry[0], geometry[7], geometry[8], geometry[9]
    return np.empty(C * max(1, plane_of.max() + 1) * Hq * G * Wq, dtype=dtype)


@njit(cache=True, inline="always")
def task_planes(xg, x, in_place, geometry, plane_of, g0):
    """A task's phase planes of image group ``g0``: ``xg[g0]`` (``in_place``) or filled from ``x``."""
    if in_place:
        return xg[g0]
    xs_all = planes_buffer(geometry, plane_of, xg.dtype)
    fill_planes(x, g0, geometry, plane_of, xs_all)
    return xs_all


@njit(cache=True, inline="always")
def filled_planes(xg, x, in_place, geometry, plane_of, g0, xcl):
    """:func:`task_planes`, or from channels-last storage ``xcl`` by :func:`fill_planes_cl` where
    it is given (not empty: stride 1, float32)."""
    if xcl.size:
        xs = planes_buffer(geometry, plane_of, xg.dtype)
        fill_planes_cl(xcl, x.shape[0], g0, geometry, xs)
        return xs
    return task_planes(xg, x, in_place, geometry, plane_of, g0)


@njit(cache=True, inline="always")
def scatter_runs(tots, out, g0, G, o_lo, oh, ow, Wq):
    """Runs ``tots`` (outputs of a task, values ``e = (r*G + g)*Wq + q``) -> ``out`` (B, O,
    >= oh*ow), element by element (a slice copy per row costs more than a linear layer's
    one-value rows)."""
    B = out.shape[0]
    for i in range(tots.shape[0]):
        for g in range(min(G, B - g0 * G)):
            dst = out[g0 * G + g, o_lo + i]
            for r in range(oh):
                src = tots[i, (r * G + g) * Wq:(r * G + g) * Wq + ow]
                for q in range(ow):
                    dst[r * ow + q] = src[q]
