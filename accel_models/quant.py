"""Integer quantization primitives (Jacob et al. 2018, the TFLite/gemmlowp scheme).

- Weights: int8, symmetric, per output channel: ``w ~ s_w[n] * q``, ``q`` in [-127, 127].
- Activations: 8-bit affine ``x ~ s * (q - z)``: uint8 with ``z = 0`` when the calibrated range
  is non-negative (after ReLU), int8 with a zero point otherwise.
- Requantization: a real multiplier ``M = s_in * s_w / s_out`` becomes ``M0 * 2**-shift`` with
  ``M0`` a 31-bit integer in [2**30, 2**31); ``requantize(acc) = (acc * M0 + 2**(shift-1)) >> shift``
  in int64, i.e. round half up (towards +inf). No floating point at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from sysarray.corrections import TILE, Correction, pixel_arrays, replayed, task_pixels, tile_tasks
from sysarray.parallel import ELEMENTWISE, MeasuredChoice, threaded
from sysarray.tensor_memo import TensorMemo
from sysarray.validation import check_float

WEIGHT_QMAX = 127


@dataclass(frozen=True)
class QParams:
    """8-bit affine quantization of one activation tensor: ``x ~ scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    signed: bool  # int8 when True, uint8 when False

    @property
    def qmin(self) -> int:
        return -128 if self.signed else 0

    @property
    def qmax(self) -> int:
        return 127 if self.signed else 255

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.int8 if self.signed else torch.uint8

    def quantize_value(self, x: float) -> int:
        """The code of real value ``x`` (rounded, saturated)."""
        return int(min(self.qmax, max(self.qmin, round(x / self.scale) + self.zero_point)))

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "signed": self.signed}


def choose_qparams(lo: float, hi: float) -> QParams:
    """Affine 8-bit parameters covering ``[lo, hi]`` (the range always includes 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    if lo >= 0.0:
        return QParams(scale=hi / 255.0, zero_point=0, signed=False)
    scale = (hi - lo) / 255.0
    zp = int(round(-128 - lo / scale))
    return QParams(scale=scale, zero_point=min(127, max(-128, zp)), signed=True)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: returns ``(q int8 same shape, scale (N,) float64)``."""
    flat = w.detach().reshape(w.shape[0], -1).double()
    amax = flat.abs().amax(dim=1).clamp_min(1e-12)
    scale = amax / WEIGHT_QMAX
    q = torch.round(flat / scale[:, None]).clamp(-WEIGHT_QMAX, WEIGHT_QMAX)
    return q.to(torch.int8).reshape(w.shape), scale


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``m > 0`` as ``(M0, shift)`` with ``M0`` in [2**30, 2**31) and ``m ~ M0 * 2**-shift``."""
    m = check_float(m, "m", "quantize_multiplier", lo=0.0, lo_open=True)
    mant, exp = math.frexp(m)  # m = mant * 2**exp, mant in [0.5, 1)
    m0 = int(round(mant * (1 << 31)))
    if m0 == 1 << 31:
        m0 //= 2
        exp += 1
    return m0, 31 - exp


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``round_half_up(acc * M0 / 2**shift)`` on int64 tensors; ``m0``/``shift`` broadcast.

    Needs ``shift >= 1`` (true for every multiplier below 2**30, i.e. all real layers).
    """
    acc = acc.to(torch.int64)
    half = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)
    return torch.bitwise_right_shift(acc * m0 + half, shift)


def rounding_divide(x: torch.Tensor, d: int) -> torch.Tensor:
    """``round_half_up(x / d)`` for int64 ``x`` and a positive int ``d`` (floor division based)."""
    return torch.div(2 * x + d, 2 * d, rounding_mode="floor")


def multiplier_value(m0: int, shift: int) -> float:
    """The real number ``M0 * 2**-shift`` exactly as a float64."""
    return float(np.ldexp(float(m0), -int(shift)))


def requantize_clamp(acc: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor,
                     zero_point: int, lo: int, hi: int, *, memo: bool = True,
                     correction: Correction | None = None) -> torch.Tensor:
    """Output codes of a layer: ``clamp(requantize(acc + bias) + zero_point, lo, hi)``, float32.

    acc: (M, N) or (B, N, ...) int32 accumulators (or floats holding them exactly), channels on
    dim 1; bias, m0, shift: (N,) int64 (for a CPU ``acc`` and ``memo=False``, int64 numpy
    arrays too). Same integer arithmetic as :func:`requantize` (int64,
    wrapping), fused into one pass on CPU. ``memo``: keep the parameters' conversion for the
    next call with the same tensors (a program's layers); False for parameters used once (a
    training step's). ``correction``: a faulty chip's replayed outputs to apply to a
    channels-last CPU ``acc`` (B, N, H, W) first (:meth:`sysarray.Chip.conv2d_deferred`), in the
    same pass.
    """
    if acc.device.type != "cpu":
        shape = (1, -1) + (1,) * (acc.dim() - 2)
        q = requantize(acc.to(torch.int64) + bias.to(acc.device).view(shape), m0.to(acc.device).view(shape),
                       shift.to(acc.device).view(shape))
        return (q + zero_point).clamp(lo, hi).to(torch.float32)
    params = _params(bias, m0, shift) if memo else _Params(bias, m0, shift)
    if correction is not None:
        return _requantize_corrected(acc, zero_point, lo, hi, correction, params)
    exact_f64 = _float64_requantize_ok(acc, bias, m0, shift, params)
    bias, m0, shift = params.arrays
    B, N = acc.shape[:2]
    if channels_last(acc) or acc.dim() == 2:
        # (B, N, H, W) stored as (B, H, W, N), or a linear layer's (B, N): one pass in memory order,
        # channels innermost (a linear layer's planes hold one value each, too short to vectorize).
        acc = acc.contiguous(memory_format=torch.channels_last) if acc.dim() == 4 else acc.contiguous()
        out = torch.empty_like(acc, dtype=torch.float32)
        last = (lambda t: t.permute(0, 2, 3, 1).reshape(B, -1, N)) if acc.dim() == 4 else (lambda t: t.view(B, 1, N))
        args = (last(acc).numpy(), bias, m0, shift, int(zero_point), int(lo), int(hi), last(out).numpy())
        _requantize_on(exact_f64, _requantize_clamp_f64_nlast_kernel, _requantize_clamp_short_nlast_kernel,
                       _requantize_clamp_nlast_kernel, args, params)
        return out
    x = acc.contiguous()
    x3 = x.view(B, N, -1)
    out = torch.empty(x3.shape, dtype=torch.float32)
    args = (x3.numpy(), bias, m0, shift, int(zero_point), int(lo), int(hi), out.numpy())
    _requantize_on(exact_f64, _requantize_clamp_f64_kernel, _requantize_clamp_short_kernel, _requantize_clamp_kernel,
                   args, params)
    out = out.view(acc.shape)
    return out.contiguous(memory_format=torch.channels_last) if channels_last(acc) else out


# Whether the float64 or the int64 kernel requantizes faster depends on the CPU: int64 multiplies
# and per-lane shifts vectorize with AVX-512 and not with AVX2.
_REQUANTIZE = MeasuredChoice(name="quant.requantize")


def _requantize_on(exact_f64: bool, f64_kernel, short_kernel, int64_kernel, args: tuple, params: "_Params") -> None:
    """Run ``int64_kernel(*args)`` (args: acc, bias, m0, shift, zp, lo, hi, out, ...) or, where the
    float64 one is exact (``exact_f64``), whichever of the two measured faster for this size class
    (both fill the same output). The float64 kernel is ``short_kernel`` (one product:
    :func:`_requantize_short`, its constants from ``params`` in place of bias, m0 and shift) where
    the layer's constants allow it, else ``f64_kernel`` (fewer operations the first way, the same
    codes)."""
    work = args[0].size
    if not exact_f64:
        int64_kernel(*args, work=work)
        return
    c = params.short(*args[4:7])
    f64_kernel, f64_args = (f64_kernel, args) if c is None else (short_kernel, (args[0], c, *args[4:]))
    key = (work.bit_length(), len(params.arrays[0]).bit_length(), f64_kernel.__name__, torch.get_num_threads())
    _REQUANTIZE(key, {"float64": lambda: f64_kernel(*f64_args, work=work),
                      "int64": lambda: int64_kernel(*args, work=work)})


def _requantize_corrected(acc: torch.Tensor, zero_point: int, lo: int, hi: int, correction: Correction,
                          params: _Params) -> torch.Tensor:
    """:func:`requantize_clamp` of a channels-last ``acc`` with ``correction`` applied on the way."""
    B, N, H, W = acc.shape
    out = torch.empty_like(acc, dtype=torch.float32, memory_format=torch.channels_last)
    pixels = lambda t: t.permute(0, 2, 3, 1).reshape(B, H * W, N)  # noqa: E731  views of channels-last data
    # the corrected sums are int32 values, whatever acc's type, so the int32 bound decides
    exact_f64 = params.float64_ok(1 << 31)
    args = (pixels(acc).numpy(), *params.arrays, int(zero_point), int(lo), int(hi), pixels(out).numpy(),
            correction.n_idx, *pixel_arrays(correction, B))
    _requantize_on(exact_f64, _requantize_corrected_f64_kernel, _requantize_corrected_short_kernel,
                   _requantize_corrected_kernel, args, params)
    return out


@njit(cache=True, inline="always")
def _corrected_tile(ab, tt, n_idx, add, forced, keep, ones, v):
    """``v[:m]`` (TILE, N) int32 := the sums ``ab`` (m, N) of a tile's pixels with the replayed
    outputs applied (:func:`sysarray.corrections.replayed`; ``tt`` the tile's rows of the totals).
    A replayed channel is one value of each pixel's line: updated here in a buffer in L1, so that
    the requantization after it reads and writes whole lines in order, vectorised."""
    m, N = ab.shape
    for i in range(m):
        a = ab[i]
        r = v[i]
        for n in range(N):
            r[n] = np.int32(a[n])
    for o in range(n_idx.shape[0]):
        n = n_idx[o]
        if forced:  # a constant flag per loop, which the inlined branch folds away
            for i in range(m):
                v[i, n] = replayed(v[i, n], tt, i, o, add, True, keep, ones)
        else:
            for i in range(m):
                v[i, n] = replayed(v[i, n], tt, i, o, add, False, keep, ones)


@njit(cache=True, inline="always")
def _requantize_task(acc, out, t, n_idx, tot, add, forced, keep, ones, bias, m0, shift, half, c, zp, lo, hi, mode):
    """Task ``t`` (:func:`sysarray.corrections.task_pixels`) of the corrected requantization, tile
    by tile: the tile's sums corrected (:func:`_corrected_tile`), then requantized by
    :func:`_requantize_short` (``mode`` 2, constants ``c`` (5, N)), :func:`_requantize_f64`
    (``mode`` 1, constants ``c`` (7, N)) or :func:`_requantize_i64` (``mode`` 0, ``half`` (N,)
    the rounding terms)."""
    B, L, N = acc.shape
    b, p0, p1 = task_pixels(t, L)
    v = np.empty((TILE, N), dtype=np.int32)
    for q0 in range(p0, p1, TILE):
        q1 = min(p1, q0 + TILE)
        _corrected_tile(acc[b, q0:q1], tot[b, q0:q1], n_idx, add, forced, keep, ones, v)
        ot = out[b, q0:q1]
        for i in range(q1 - q0):
            r = v[i]
            q = ot[i]
            for n in range(N):
                if mode == 2:  # a constant per kernel, folded away
                    q[n] = _requantize_short(r[n], c[0, n], c[2, n], c[3, n], c[4, n], zp, lo, hi)
                elif mode == 1:
                    q[n] = _requantize_f64(r[n], c[0, n], c[1, n], c[2, n], c[3, n], c[4, n], c[5, n], c[6, n], zp,
                                           lo, hi)
                else:
                    q[n] = _requantize_i64(r[n], bias[n], m0[n], half[n], shift[n], zp, lo, hi)


@threaded(ELEMENTWISE)
def _requantize_corrected_kernel(acc, bias, m0, shift, zp, lo, hi, out, n_idx, tot, add, forced, keep, ones):
    """acc, out (B, L, N) channels-last; tot, add, forced, keep, ones as
    :func:`sysarray.corrections.pixel_arrays` gives them. By tiles of pixels: the tile's sums
    corrected, then requantized (:func:`_requantize_task`)."""
    half = np.left_shift(np.int64(1), shift - 1)
    c = np.empty((7, 0), dtype=np.float64)
    for t in prange(tile_tasks(acc.shape[0], acc.shape[1])):
        _requantize_task(acc, out, t, n_idx, tot, add, forced, keep, ones, bias, m0, shift, half, c, zp, lo, hi, 0)


@threaded(ELEMENTWISE)
def _requantize_corrected_f64_kernel(acc, bias, m0, shift, zp, lo, hi, out, n_idx, tot, add, forced, keep, ones):
    """:func:`_requantize_corrected_kernel` in float64 (:func:`_requantize_f64`), exact where
    :func:`_float64_requantize_ok` holds for int32 sums."""
    c = np.ascontiguousarray(_requantize_constants(bias, m0, shift).T)  # (7, N): channels contiguous
    for t in prange(tile_tasks(acc.shape[0], acc.shape[1])):
        _requantize_task(acc, out, t, n_idx, tot, add, forced, keep, ones, bias, m0, shift, shift, c, zp, lo, hi, 1)


@threaded(ELEMENTWISE)
def _requantize_corrected_short_kernel(acc, c, zp, lo, hi, out, n_idx, tot, add, forced, keep, ones):
    """:func:`_requantize_corrected_kernel` by :func:`_requantize_short`, constants ``c`` (5, N)
    from :func:`_short_constants`."""
    for t in prange(tile_tasks(acc.shape[0], acc.shape[1])):
        # mode 2 reads only c: n_idx stands in for the int64 kernel's bias, m0, shift and rounding terms
        _requantize_task(acc, out, t, n_idx, tot, add, forced, keep, ones, n_idx, n_idx, n_idx, n_idx, c, zp, lo, hi,
                         2)


def requantize_saturates(bias: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor, zero_point: int, lo: int,
                         hi: int, bound: int) -> bool:
    """True when :func:`requantize_clamp` gives every accumulator ``>= bound`` the same code as
    ``bound`` and every accumulator ``<= -bound`` the same code as ``-bound``, in every channel:
    it runs the float64 kernel (the exact floor of ``(acc + bias) * M0 / 2**shift``, monotone in
    ``acc`` for ``M0 >= 0``) and its result at ``bound`` is already ``hi`` and at ``-bound``
    already ``lo`` (or the channel's ``M0`` is zero: one code for all). ``bound <= 2**24``
    (float32 holds it)."""
    edge = torch.tensor([[bound], [-bound]], dtype=torch.float32).expand(2, len(m0)).contiguous()
    if not len(m0) or not _float64_requantize_ok(edge, bias, m0, shift):
        return False
    q = requantize_clamp(edge, bias, m0, shift, zero_point, lo, hi)
    flat = m0.to(torch.int64) == 0
    return bool(((q[0] == hi) | flat).all() and ((q[1] == lo) | flat).all())


def channels_last(t: torch.Tensor) -> bool:
    """True for a 4-d tensor stored channels-last (and not also plain contiguous, as when C == 1)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def storage_format(t: torch.Tensor) -> torch.memory_format:
    """The memory format ``t`` is stored in: channels-last or plain contiguous."""
    return torch.channels_last if channels_last(t) else torch.contiguous_format


def storage_order(t: torch.Tensor) -> torch.Tensor:
    """A 1-d view of ``t`` (contiguous in :func:`storage_format` terms) in its storage order."""
    return t.permute(0, 2, 3, 1).reshape(-1) if channels_last(t) else t.view(-1)


class _Params:
    """A layer's requantization parameters as int64 numpy arrays, and which accumulator bounds
    pass :func:`_float64_requantize_ok`'s check on them (found once per bound)."""

    def __init__(self, bias: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> None:
        self.arrays = tuple(np.ascontiguousarray(t, dtype=np.int64) if isinstance(t, np.ndarray)
                            else t.to(torch.int64).contiguous().numpy() for t in (bias, m0, shift))
        self.f64_ok: dict[int, bool] = {}
        self._short: dict[tuple[int, int, int], np.ndarray | None] = {}

    def short(self, zero_point: int, lo: int, hi: int) -> np.ndarray | None:
        """:func:`_short_constants` for this output clamp (found once per clamp), None where some
        channel has none."""
        key = (int(zero_point), int(lo), int(hi))
        if key not in self._short:
            c = _short_constants(*self.arrays, *key)
            self._short[key] = c if c.shape[1] == len(self.arrays[0]) and c.shape[1] else None
        return self._short[key]

    def float64_ok(self, bound: int) -> bool:
        if bound not in self.f64_ok:
            bias, m0, shift = self.arrays
            verdict = _float64_verdict(bias, m0, shift, float(bound))
            if verdict == 2:  # a product within float64 rounding of 2**63: Python's exact integers settle it
                verdict = all((bound + abs(b)) * m + (1 << (sh - 1)) < 1 << 63
                              for b, m, sh in zip(bias.tolist(), m0.tolist(), shift.tolist()))
            self.f64_ok[bound] = bool(verdict)
        return self.f64_ok[bound]


@njit(cache=True)
def _float64_verdict(bias, m0, shift, bound):
    """:meth:`_Params.float64_ok`'s test on int64 arrays (N,) in one pass: 1 where it holds, 0
    where it fails, 2 where only exact integers can tell (a product bound between 2**62 and
    2**64 in float64)."""
    if bias.shape[0] == 0:
        return 0
    verdict = 1
    for n in range(bias.shape[0]):
        b, m, sh = abs(bias[n]), m0[n], shift[n]
        if b >= np.int64(1) << 32 or m < 0 or m >= np.int64(1) << 31 or sh < 16 or sh > 52:
            return 0
        top = (bound + np.float64(b)) * np.float64(m) + np.float64(np.int64(1) << (sh - 1))
        if top >= 2.0**64:
            return 0
        if top >= 2.0**62:
            verdict = 2
    return verdict


# A layer's requantization parameters, converted and checked once, not on every run.
_PARAMS = TensorMemo()


def _params(bias: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> _Params:
    return _PARAMS.get((bias, m0, shift), (), lambda: _Params(bias, m0, shift))


def _float64_requantize_ok(acc: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor,
                           params: _Params | None = None) -> bool:
    """True when :func:`_requantize_clamp_f64_kernel` gives exactly the int64 formula of
    :func:`requantize`: int32-range accumulators (any float32 or int32 tensor, or an int64 one
    below 2**32), |bias| < 2**32, 0 <= M0 < 2**31, 16 <= shift <= 52, and in every channel
    ``(max|acc| + |bias|) * M0 + 2**(shift - 1) < 2**63`` (the int64 product does not wrap; the
    float64 kernel computes the unwrapped value). ``params``: ``_params(bias, m0, shift)`` when
    the caller has it."""
    if not len(m0):
        return False
    bound = 1 << 31
    if acc.dtype == torch.int64 and acc.numel():
        lo, hi = torch.aminmax(acc)
        if max(-int(lo), int(hi)) >= 1 << 32:
            return False
        bound = 1 << 32
    elif acc.dtype not in (torch.float32, torch.int32, torch.int16, torch.int8, torch.uint8):
        return False
    return (_params(bias, m0, shift) if params is None else params).float64_ok(bound)


@njit(cache=True, inline="always")
def _requantize_i64(acc, bi, m, half, sh, zp, lo, hi):
    """One output code of the int64 formula of :func:`requantize` (wrapping), clamped."""
    q = (((np.int64(acc) + bi) * m + half) >> sh) + zp
    return min(max(q, lo), hi)


@threaded(ELEMENTWISE)
def _requantize_clamp_kernel(acc, bias, m0, shift, zp, lo, hi, out):
    """acc (B, N, L) exact integers; bias/m0/shift (N,) int64; out (B, N, L) float32."""
    B, N, L = acc.shape
    for bn in prange(B * N):
        b = bn // N
        n = bn % N
        bi = bias[n]
        m = m0[n]
        sh = shift[n]
        half = np.int64(1) << (sh - 1)
        for i in range(L):
            out[b, n, i] = _requantize_i64(acc[b, n, i], bi, m, half, sh, zp, lo, hi)



@njit(cache=True)
def _requantize_constants(bias, m0, shift):
    """(N, 7) float64 per-channel constants of :func:`_requantize_f64`: bias, ``mh``, ``ml``,
    ``2**(sh-1)``, ``2**(sh-16)``, ``2**(16-sh)``, ``2**-sh`` (computed once: a linear layer has
    one value per channel, so no per-element divisions)."""
    N = bias.shape[0]
    c = np.empty((N, 7), dtype=np.float64)
    for n in range(N):
        sh = shift[n]
        c[n, 0] = np.float64(bias[n])
        c[n, 1] = np.float64(m0[n] >> 16)
        c[n, 2] = np.float64(m0[n] & 0xFFFF)
        c[n, 3] = np.float64(np.int64(1) << (sh - 1))
        c[n, 4] = np.float64(np.int64(1) << (sh - 16))
        c[n, 5] = 1.0 / c[n, 4]
        c[n, 6] = 1.0 / np.float64(np.int64(1) << sh)
    return c


@njit(cache=True, inline="always")
def _requantize_f64(acc, bi, mh, ml, half, p2, ip2, ish, zp, lo, hi):
    """One output code of :func:`_requantize_clamp_kernel` in float64, exact under
    :func:`_float64_requantize_ok`: with ``v = acc + bias`` (|v| < 2**33) and ``M0 = mh * 2**16 +
    ml``, ``v * mh`` and ``v * ml + 2**(sh-1)`` are exact, and so is the floor of their
    recombination ``qa + floor((ra * 2**16 + v * ml + half) / 2**sh)`` with ``qa, ra`` = quotient
    and remainder of ``v * mh`` by ``2**(sh-16)`` (every intermediate stays below 2**53)."""
    v = np.float64(acc) + bi
    a = v * mh
    qa = np.floor(a * ip2)
    ra = a - qa * p2
    q = qa + np.floor((ra * 65536.0 + (v * ml + half)) * ish) + zp
    return min(max(q, lo), hi)


@threaded(ELEMENTWISE)
def _requantize_clamp_f64_kernel(acc, bias, m0, shift, zp, lo, hi, out):
    """:func:`_requantize_clamp_kernel` in float64 (:func:`_requantize_f64`), which vectorizes
    where int64 shifts do not. acc, out: (B, N, L), channels on dim 1."""
    B, N, L = acc.shape
    c = _requantize_constants(bias, m0, shift)
    for b in prange(B):
        for n in range(N):
            bi, mh, ml, half, p2, ip2, ish = c[n, 0], c[n, 1], c[n, 2], c[n, 3], c[n, 4], c[n, 5], c[n, 6]
            for i in range(L):
                out[b, n, i] = _requantize_f64(acc[b, n, i], bi, mh, ml, half, p2, ip2, ish, zp, lo, hi)


@threaded(ELEMENTWISE)
def _requantize_clamp_f64_nlast_kernel(acc, bias, m0, shift, zp, lo, hi, out):
    """:func:`_requantize_clamp_f64_kernel` for channels-last data: acc, out (B, L, N)."""
    B, L, N = acc.shape
    c = np.ascontiguousarray(_requantize_constants(bias, m0, shift).T)  # (7, N): channels contiguous
    for b in prange(B):
        for i in range(L):
            for n in range(N):
                out[b, i, n] = _requantize_f64(acc[b, i, n], c[0, n], c[1, n], c[2, n], c[3, n], c[4, n], c[5, n],
                                               c[6, n], zp, lo, hi)


@threaded(ELEMENTWISE)
def _requantize_clamp_nlast_kernel(acc, bias, m0, shift, zp, lo, hi, out):
    """:func:`_requantize_clamp_kernel` for channels-last data: acc, out (B, L, N)."""
    B, L, N = acc.shape
    for b in prange(B):
        for i in range(L):
            for n in range(N):
                out[b, i, n] = _requantize_i64(acc[b, i, n], bias[n], m0[n], np.int64(1) << (shift[n] - 1), shift[n],
                                               zp, lo, hi)


@njit(cache=True)
def _short_constants(bias, m0, shift, zp, lo, hi):
    """(5, N) float64 per-channel constants of :func:`_requantize_short` for output codes
    clamped to ``[lo, hi]`` with zero point ``zp``: bias, ``Bn``, M0, ``2**(sh-1)``, ``2**-sh``;
    (5, 0) where some channel cannot have them. ``Bn`` is the least ``v >= 0`` whose code
    ``floor((v * M0 + 2**(sh-1)) / 2**sh) + zp`` is at least ``hi`` and whose ``-v`` gets a
    code at most ``lo`` (the code is monotone in the sum: M0 >= 0 and the int64 product not
    wrapping, as :func:`_float64_requantize_ok` requires); the constants exist where ``Bn * M0 +
    2**(sh-1) < 2**53``, so that the short product is exact up to ``Bn``. Found in int64, every
    product below 2**63."""
    N = bias.shape[0]
    none = np.empty((5, 0), dtype=np.float64)
    c = np.empty((5, N), dtype=np.float64)
    for n in range(N):
        m, sh = m0[n], shift[n]
        if m < 0 or sh < 1 or sh > 52:
            return none
        half = np.int64(1) << (sh - 1)
        bn = np.int64(0)  # M0 = 0: one code for every sum
        if m > 0:
            if abs(hi - zp) >= np.int64(1) << (62 - sh) or abs(lo - zp) + 1 >= np.int64(1) << (62 - sh):
                return none  # products past int64 (and, for any zero point within the clamp, Bn * M0 past 2**53)
            top = (hi - zp) * (np.int64(1) << sh) - half  # code >= hi from v * M0 >= top on
            b_hi = -((-top) // m) if top > 0 else np.int64(0)
            low = half - (lo - zp + 1) * (np.int64(1) << sh)  # code <= lo for -v once v * M0 > low
            bn = max(b_hi, low // m + 1, np.int64(0))
            if bn * m + half >= np.int64(1) << 53:
                return none
        c[0, n] = np.float64(bias[n])
        c[1, n] = np.float64(bn)
        c[2, n] = np.float64(m)
        c[3, n] = np.float64(half)
        c[4, n] = 1.0 / np.float64(np.int64(1) << sh)
    return c


@njit(cache=True, inline="always")
def _requantize_short(acc, bi, m, half, ish, zp, lo, hi):
    """One output code of :func:`_requantize_clamp_kernel` with constants from
    :func:`_short_constants`: one product and one floor in float64, where
    :func:`_requantize_f64` splits the product in two. Exact for sums ``v = acc + bias`` with
    ``|v| <= Bn`` (every step below 2**53), and the clamped code of any other sum is the code at
    ``+-Bn``: each step is monotone in ``v`` (float64 rounding, the floor), so past ``Bn`` the
    code is at least the exact code at ``Bn``, which is already ``hi``, and before ``-Bn`` at
    most ``lo``."""
    q = np.floor(((np.float64(acc) + bi) * m + half) * ish) + zp
    return min(max(q, lo), hi)


@threaded(ELEMENTWISE)
def _requantize_clamp_short_kernel(acc, c, zp, lo, hi, out):
    """:func:`_requantize_clamp_kernel` by :func:`_requantize_short`: acc, out (B, N, L),
    constants ``c`` (5, N)."""
    B, N, L = acc.shape
    for b in prange(B):
        for n in range(N):
            bi, m, half, ish = c[0, n], c[2, n], c[3, n], c[4, n]
            ab = acc[b, n]
            ob = out[b, n]
            for i in range(L):
                ob[i] = _requantize_short(ab[i], bi, m, half, ish, zp, lo, hi)


@threaded(ELEMENTWISE)
def _requantize_clamp_short_nlast_kernel(acc, c, zp, lo, hi, out):
    """:func:`_requantize_clamp_short_kernel` for channels-last data: acc, out (B, L, N)."""
    B, L, N = acc.shape
    for b in prange(B):
        for i in range(L):
            a = acc[b, i]
            o = out[b, i]
            for n in range(N):
                o[n] = _requantize_short(a[n], c[0, n], c[2, n], c[3, n], c[4, n], zp, lo, hi)


def rescale_add(a: torch.Tensor, b: torch.Tensor, za: int, ma: int, zb: int, mb: int, shift: int,
                zero_point: int, lo: int, hi: int) -> torch.Tensor:
    """Residual add of two code tensors (float32 holding integers, same shape):
    ``clamp(((a - za) * ma + (b - zb) * mb + 2**(shift-1)) >> shift) + zero_point, lo, hi)`` in
    int64, as float32 codes; fused into one pass on CPU."""
    if a.device.type != "cpu":
        t = (a.to(torch.int64) - za) * ma + (b.to(torch.int64) - zb) * mb
        q = torch.bitwise_right_shift(t + (1 << (shift - 1)), shift) + zero_point
        return q.clamp(lo, hi).to(torch.float32)
    fmt = storage_format(a)
    a, b = a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt)
    out = torch.empty_like(a, dtype=torch.float32, memory_format=fmt)
    # Elementwise: any common layout works, walked in memory order.
    args = (storage_order(a).numpy(), storage_order(b).numpy(), za, ma, zb, mb, shift, zero_point, lo, hi,
            storage_order(out).numpy())
    # Codes are 8-bit and zero points too (|a - za| < 2**9): with |ma| + |mb| < 2**42 and
    # shift <= 52 every float64 intermediate is an exact integer below 2**53.
    if a.dtype == b.dtype == torch.float32 and abs(ma) + abs(mb) < 1 << 42 and 1 <= shift <= 52 \
            and max(abs(za), abs(zb)) < 1 << 8:
        _rescale_add_f64_kernel(*args, work=a.numel())
    else:
        _rescale_add_kernel(*args, work=a.numel())
    return out


@threaded(ELEMENTWISE)
def _rescale_add_kernel(a, b, za, ma, zb, mb, shift, zp, lo, hi, out):
    half = np.int64(1) << (shift - 1)
    n = a.shape[0]
    block = 1 << 14
    for j in prange((n + block - 1) // block):
        sa, sb = a[j * block:min(n, (j + 1) * block)], b[j * block:min(n, (j + 1) * block)]
        dst = out[j * block:min(n, (j + 1) * block)]  # slices indexed from zero: the loop vectorises
        for i in range(sa.shape[0]):
            t = (np.int64(sa[i]) - za) * ma + (np.int64(sb[i]) - zb) * mb
            q = ((t + half) >> shift) + zp
            dst[i] = min(max(q, lo), hi)


@threaded(ELEMENTWISE)
def _rescale_add_f64_kernel(a, b, za, ma, zb, mb, shift, zp, lo, hi, out):
    """:func:`_rescale_add_kernel` in float64 (vectorizes, unlike the int64 shifts), exact for 8-bit
    codes (see :func:`rescale_add`)."""
    half = np.float64(np.int64(1) << (shift - 1))
    inv = 1.0 / np.float64(np.int64(1) << shift)
    fza, fzb, fma, fmb = np.float64(za), np.float64(zb), np.float64(ma), np.float64(mb)
    n = a.shape[0]
    for i in prange(n):
        t = (np.float64(a[i]) - fza) * fma + (np.float64(b[i]) - fzb) * fmb
        out[i] = min(max(np.floor((t + half) * inv) + zp, lo), hi)


def quantize_codes(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """Float values -> 8-bit codes as float32: ``clamp(floor(x / scale + 0.5) + zero_point)``
    computed in float64 (round half up); one fused pass on CPU."""
    if x.device.type != "cpu":
        q = torch.floor(x.double() / scale + 0.5) + zero_point
        return q.clamp(qmin, qmax).to(torch.float32)
    src = x.contiguous()
    out = torch.empty(src.shape, dtype=torch.float32)
    _quantize_kernel(src.view(-1).numpy(), float(scale), int(zero_point), int(qmin), int(qmax), out.view(-1).numpy(),
                     work=src.numel())
    return out


@threaded(ELEMENTWISE)
def _quantize_kernel(x, scale, zp, qmin, qmax, out):
    n = x.shape[0]
    block = 1 << 14
    for j in prange((n + block - 1) // block):
        src = x[j * block:min(n, (j + 1) * block)]  # slices indexed from zero: the loop vectorises
        dst = out[j * block:min(n, (j + 1) * block)]
        for i in range(src.shape[0]):
            q = np.floor(np.float64(src[i]) / scale + 0.5) + zp
            dst[i] = min(max(q, qmin), qmax)
