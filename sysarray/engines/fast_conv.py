"""Convolutions on the faulty array without im2col: the fast engine's WS path in conv form.

A convolution runs on the array as the im2col GEMM ``Y[M, N] = A[M, K] @ W[K, N]`` with
``M = B*oh*ow``, ``K = Cin*kh*kw`` in PyTorch's ``(c, kh, kw)`` order and ``W = weight.reshape(N,
K).t()`` (chip.md section 1). ``fast_conv2d`` returns exactly ``fast_gemm(im2col(x), W)`` (same
bits, shown by the property tests) but computes it with convolutions, which is several times
faster than materialising the ``M x K`` operand:

- the stationary weights as latched by each PE (stuck bits applied, bypassed PEs zeroed) are a
  modified conv weight, and the fault-free part of every output is one exact float convolution
  (input channels split into chunks when a float32 sum could round);
- a column with psum faults is cut at its faulty rows into segments (as in ``fast.py``); the
  segment sums of fold ``fr`` only involve the ``R`` taps ``k = fr*R .. fr*R + R - 1``, i.e. a
  few input channels. On CPU one jitted kernel computes them straight from the input, laid out
  so that a tap over whole output planes is one contiguous run, and replays the chain
  ``p = force(p + segment)`` as it goes (blocks of 64 run values held in SIMD registers,
  :mod:`sysarray.engines._simd`); on CUDA they come from one small convolution per fold
  with masked weights and the chain runs in torch ops.

Cases this form does not cover (stuck bits in the streamed ``act`` register, IS/OS dataflows,
grouped convolutions, psum registers narrow enough for a fold to wrap) go through ``im2col`` and
``fast_gemm``, which handle everything.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from sysarray.config import ArrayConfig, Dataflow
from sysarray.engines._exact import force, wrap
from sysarray.engines._prep import ChipMasks, chip_masks
from sysarray.engines._simd import LANES, add, and_, f32_zeros, fma, i32_splat, i32_store, i32_zeros, load, or_, sub, \
    to_i32, transpose_block, xor
from sysarray.engines._threaded import ELEMENTWISE, threaded
from sysarray.engines.fast import fast_gemm
from sysarray.faults import FaultMap
from sysarray.tensor_memo import TensorMemo

_F32_LIMIT = 1 << 24
# Psum-chain replay: "direct" (CPU, :func:`_replay_direct`) or "torch" (per-fold convolutions with
# the chains in torch ops, the CUDA path); the tests run both on CPU and check they agree.
CPU_REPLAY = "direct"
# The direct replay's kernel: "simd" (:func:`_direct_chains_simd`, lanes in registers) where it
# applies, else "passes" (:func:`_direct_chains`); the tests run both.
CPU_KERNEL = "simd"
# The SIMD kernel runs the outputs of one array column (column folds of a wide layer: the same
# faulty rows, so the same taps) in pairs that share each tap's input loads.
PAIRS = True
# Run values per block of the SIMD kernel: four vectors of lanes (64 values with AVX-512, 32 with
# AVX2; the width comes from the target, see sysarray.engines._simd).
SIMD_BLOCK = 4 * LANES
# Values per contiguous run of the direct replay: images are laid side by side until one kernel
# tap over their output planes is about this long (long runs amortise loop overheads; short ones
# keep a task's buffers in L1).
RUN_TARGET = 1024
# ... and only as long as one group's phase planes stay within this many bytes: the planes are read
# once per tap and output, so they should stay in the core's cache (session 8: ResNet-20's
# 32-channel layers' replay -10% and 64-channel -15% with at most 64 KB of planes on the AVX2 VM,
# against groups up to ~330 KB before).
PLANES_BUDGET = 64 << 10


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           pad_value: float) -> torch.Tensor:
    """Images (B, C, H, W) -> GEMM operand (B*oh*ow, C*kh*kw), padding with ``pad_value``;
    K order (c, kh, kw), rows in (b, oh, ow) order.

    Built from strided windows and one copy (torch's F.unfold is orders of magnitude slower here).
    """
    kh, kw = kernel
    ph, pw = padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=pad_value)
    win = x.unfold(2, kh, stride[0]).unfold(3, kw, stride[1])  # (B, C, oh, ow, kh, kw)
    B, C, oh, ow = win.shape[:4]
    return win.permute(0, 2, 3, 1, 4, 5).reshape(B * oh * ow, C * kh * kw)


def _conv_dtype(device: torch.device) -> torch.dtype:
    # cuDNN may use TF32 (or other reduced-precision algorithms) for float32 convolutions.
    return torch.float32 if device.type == "cpu" else torch.float64


def _conv(x: torch.Tensor, w: torch.Tensor, stride, padding) -> torch.Tensor:
    """``F.conv2d`` (groups 1); a matrix product for 1x1 kernels on 1x1 images (linear layers),
    which torch's convolution runs about 3x slower."""
    if x.shape[2] == x.shape[3] == w.shape[2] == w.shape[3] == 1 and not any(padding):
        return (x.flatten(1) @ w.flatten(1).t()).view(x.shape[0], w.shape[0], 1, 1)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        # A channel slice of channels-last data (chunked or per-fold convolutions): torch 2.13's
        # CPU float32 convolution read such a slice wrongly (2 images, 1 of 2 channels, 9x4,
        # kernel 2x3, stride (1, 2)): off by 36255, so the convolution gets a plain copy
        x = x.contiguous()
    return F.conv2d(x, w, stride=stride, padding=padding)


@dataclass(frozen=True)
class ConvWeights:
    """Integer conv weights ``w`` (N, C, kh, kw) int64 and what :func:`_exact_conv` needs of
    them: ``wmax`` = max |w|, ``l1`` (N, C) the per-filter, per-channel L1 norms."""

    w: torch.Tensor
    wmax: int
    l1: torch.Tensor

    @classmethod
    def of(cls, w: torch.Tensor, wmax: int | None = None) -> "ConvWeights":
        if wmax is None:
            wmax = int(w.abs().max()) if w.numel() else 0
        return cls(w, int(wmax), w.abs().sum(dim=(2, 3)).to(torch.int64))

    @cached_property
    def l1_max(self) -> int:
        """The largest filter L1 norm (0 without weights)."""
        return int(self.l1.sum(dim=1).max()) if self.w.numel() else 0

    @cached_property
    def f32(self) -> torch.Tensor:
        """``w`` as float32 (contiguous): computed once per cached layer, not per call."""
        return self.w.to(torch.float32)


def _exact_conv(x: torch.Tensor, cw: ConvWeights, stride, padding, amax: int) -> torch.Tensor:
    """``conv2d(x, cw.w)`` exactly for integer-valued tensors (zero padding, groups 1).

    Every partial sum of output ``n`` is bounded by ``amax * sum|w[n]|`` whatever the summation
    order, so one float32 convolution is exact when that L1 bound stays below 2**24 for every
    filter (returns float). Otherwise input channels are cut greedily into chunks that keep the
    bound, each chunk convolved in float32 and summed in int64 (float64 if one channel's taps
    alone could round; always on CUDA, where cuDNN may use TF32).
    """
    w = cw.w
    dtype = _conv_dtype(x.device)
    a = max(1, amax)
    if dtype == torch.float64 or w.shape[2] * w.shape[3] * a * max(1, cw.wmax) >= _F32_LIMIT:
        return _conv(x.double(), w.double(), stride, padding).to(torch.int64)
    if w.numel() == 0 or cw.l1_max * a < _F32_LIMIT:
        return _conv(x, cw.f32 if x.dtype == torch.float32 else w.to(x.dtype), stride, padding)
    l1 = cw.l1
    out, lo, C = None, 0, w.shape[1]
    run = torch.cumsum(l1, dim=1)  # (N, C)
    while lo < C:
        base = run[:, lo - 1:lo] if lo else torch.zeros_like(run[:, :1])
        # the longest chunk lo..hi-1 with every filter's L1 * amax below 2**24 (at least one channel)
        hi = lo + max(1, int(((run[:, lo:] - base).max(dim=0).values * a < _F32_LIMIT).sum()))
        part = _conv(x[:, lo:hi], w[:, lo:hi].to(x.dtype), stride, padding).to(torch.int64)
        out = part if out is None else out + part
        lo = hi
    return out


def conv_native_ok(cfg: ArrayConfig, cm: ChipMasks, groups: int) -> bool:
    """True when :func:`fast_conv2d` can skip im2col for this chip and layer."""
    return cfg.dataflow is Dataflow.WS and groups == 1 and not cm.act.faulty.any()


def fast_conv2d(x: torch.Tensor, weight: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None, *,
                stride=(1, 1), padding=(0, 0), pad_value: float = 0.0, groups: int = 1,
                act_signed: bool = False, masks: ChipMasks | None = None) -> torch.Tensor:
    """A convolution of 8-bit codes on the faulty array, exact.

    x: (B, Cin, H, W) float tensor of activation codes (uint8 or int8 values, ``act_signed``);
    weight: (N, Cin/groups, kh, kw) int8 codes; padding uses ``pad_value`` (the input zero point).
    Returns (B, N, oh, ow) int32: for each group, ``fast_gemm(im2col(x_g), weight_g.reshape(N_g,
    -1).t())`` laid out as a convolution output. ``masks``: ``chip_masks(cfg, faults, act_signed)``
    when the caller already has them.
    """
    y = fast_conv2d_exact(x, weight, cfg, faults, stride=stride, padding=padding, pad_value=pad_value,
                          groups=groups, act_signed=act_signed, masks=masks)
    return y.to(torch.int32)


@dataclass(frozen=True)
class ChainFix:
    """The direct psum replay's result: outputs ``y[:, n_idx]`` become ``wrap32(y[:, n_idx] +
    tot)`` (``add``) or ``wrap32(tot)`` (:func:`apply_fix`). tot: (B, O, oh*ow) int32. The replay
    runs before the layer's convolution, while its input is still in cache. (Applying it inside
    the requantization pass instead was slower on channels-last data: 513 vs 493 ms per ResNet-20
    batch.)"""

    n_idx: np.ndarray
    tot: np.ndarray
    add: bool


def fast_conv2d_exact(x: torch.Tensor, weight: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None, *,
                      stride=(1, 1), padding=(0, 0), pad_value: float = 0.0, groups: int = 1,
                      act_signed: bool = False, masks: ChipMasks | None = None,
                      x_bound: int | None = None, saturate: int | None = None,
                      clean: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`fast_conv2d` without the final conversion: a float or integer tensor whose values
    are the int32 results exactly (callers that post-process in one fused pass skip a copy).
    ``x_bound``: a bound on ``|x|`` the caller knows (the 8-bit code range), sparing a pass over
    ``x``; it must hold (it decides which float sums are exact).

    ``saturate``: a bound ``L <= 2**24`` for a caller whose use of a value is the same for every
    value at or beyond ``L`` (and at or beyond ``-L``), as a requantization that saturates there:
    a value ``r`` with ``|r| >= L`` may then come back as ``sign(r) * L``. Fault-corrected
    outputs are then written into the float convolution result, exactly representable, instead
    of into an int32 copy of it.

    ``clean``: what this same call returns fault-free (same ``x``, weights and arguments), when
    the caller kept it (a campaign's fault-free run). Where every PE latches the weight it is
    sent, the fault-free part of the result is then ``clean`` instead of a new convolution; and
    when no output is replayed either, the call returns ``clean`` itself (not a copy: callers
    tell an unchanged layer by identity, ``y is clean``)."""
    y, fix = _conv2d_parts(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, masks, x_bound,
                           clean)
    if fix is not None:
        if saturate is not None and 0 < saturate <= _F32_LIMIT and y.dtype == torch.float32:
            y = y.clone() if y is clean else y
        else:
            y = y.to(torch.int32, copy=y is clean)
            saturate = 1 << 31
        apply_fix(y, fix, saturate)
    return y


def _conv2d_parts(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, masks, x_bound,
                  clean=None):
    """``(y, fix)``: the layer's output without the direct replay's :class:`ChainFix` (None when
    nothing is replayed on CPU; the im2col and CUDA paths return ``y`` complete). ``y`` may be
    ``clean`` itself (see :func:`fast_conv2d_exact`): not to be written."""
    cm = masks if masks is not None else chip_masks(cfg, faults, act_signed=act_signed)
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    if not conv_native_ok(cfg, cm, groups):
        return _conv_by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, cm), None
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    N = int(weight.shape[0])
    K = int(weight[0].numel())
    Fr, Fc = -(-K // R), -(-N // C)
    Wp, cw = _latched_weights(weight, cfg, cm, Fr, Fc)  # (Fr*R, Fc*C) int64; the conv's weights
    if x_bound is None:
        lo, hi = torch.aminmax(x) if x.numel() else (torch.zeros(()), torch.zeros(()))
        x_bound = max(-int(lo), int(hi))
    amax = max(int(x_bound), abs(int(pad_value)) if any(padding) else 0)
    wmax = cw.wmax
    if R * amax * wmax >= 1 << (pb - 1):
        # A fold's partial sum could wrap inside the psum register: every column replays.
        return _conv_by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, cm), None
    # Zero padding is the convolution's own (no padded copy of the input).
    ph, pw = padding
    if pad_value == 0 or not (ph or pw):
        xp, conv_pad = x, (ph, pw)
    else:
        xp, conv_pad = F.pad(x, (pw, pw, ph, ph), value=float(pad_value)), (0, 0)
    chain_cols = cm.psum_columns
    fix = None
    direct = len(chain_cols) > 0 and xp.device.type == "cpu" and CPU_REPLAY == "direct"
    if direct:
        # Before the convolution, while the input is still in cache from the layer that wrote it.
        fix = _replay_direct(xp, Wp, cfg, cm, chain_cols, (kh, kw), stride, conv_pad, amax, N,
                             linear_tail=pb == 32)
    if clean is not None and cm.latches_sent_weights:
        y = clean  # the same convolution of the same input and weights, done fault-free
    else:
        y = _exact_conv(xp, cw, stride, conv_pad, amax)
        if K * amax * wmax >= 1 << 31:
            y = wrap(y.to(torch.int64), 32)
    if len(chain_cols) and not direct:
        y = y.to(torch.int32, copy=y is clean)
        _replay_by_fold_convs(xp, Wp, cfg, cm, chain_cols, (kh, kw), stride, conv_pad, amax, y, linear_tail=pb == 32)
    return y, fix


def apply_fix(y: torch.Tensor, fix: ChainFix, saturate: int = 1 << 31) -> None:
    """Apply a :class:`ChainFix` to ``y`` (B, N, oh, ow) (any strides), in place: int32, or
    float32 with the corrected values clamped to ``[-saturate, saturate]`` (at most 2**24, so
    that they are exact; see :func:`fast_conv2d_exact`)."""
    lo, hi = max(-saturate, -(1 << 31)), min(saturate, (1 << 31) - 1)  # int32 bounds (a no-op for 2**31)
    _apply_fix(y.numpy(), fix.n_idx, fix.tot, fix.add, np.int32(lo), np.int32(hi), work=fix.tot.size)


@njit(cache=True, inline="always")
def _corrected(y, t, add, lo, hi):
    """One replayed output: ``wrap32(y + t)`` (``add``) or ``wrap32(t)``, clamped to ``[lo,
    hi]`` (int32). In 32-bit lanes: ``y`` is an int32 or an integer float32 below 2**24 in
    magnitude (exact both ways), and an int32 sum truncated to 32 bits is the sum mod 2**32
    (with int64 arithmetic, which AVX2 cannot convert from float or clamp in vectors, the fix
    took ~2x longer)."""
    val = np.int32(np.int32(t) + np.int32(y)) if add else np.int32(t)
    return min(max(val, lo), hi)


@threaded(ELEMENTWISE)
def _apply_fix(y, n_idx, tot, add, lo, hi):
    """y (B, N, oh, ow), any strides: plane by plane, or pixel by pixel for channels-last ``y``
    (all replayed outputs of a pixel share its cache lines: plane by plane was 4x slower) and
    for linear layers' 1x1 planes (16 ns a value plane by plane)."""
    B, N, oh, ow = y.shape
    O = n_idx.shape[0]
    if y.strides[1] < y.strides[3] or oh * ow == 1:
        for b in prange(B):
            for r in range(oh):
                for q in range(ow):
                    for o in range(O):
                        y[b, n_idx[o], r, q] = _corrected(y[b, n_idx[o], r, q], tot[b, o, r * ow + q], add, lo, hi)
        return
    for bo in prange(B * O):
        b = bo // O
        o = bo % O
        yp = y[b, n_idx[o]]
        for r in range(oh):
            for q in range(ow):
                yp[r, q] = _corrected(yp[r, q], tot[b, o, r * ow + q], add, lo, hi)


def _conv_by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, masks=None) -> torch.Tensor:
    B = x.shape[0]
    N, kh, kw = int(weight.shape[0]), int(weight.shape[2]), int(weight.shape[3])
    cols = im2col(x, (kh, kw), stride, padding, pad_value)
    oh = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    ng, kg = N // groups, cols.shape[1] // groups
    outs = []
    for g in range(groups):
        a = cols[:, g * kg:(g + 1) * kg] if groups > 1 else cols
        w = weight[g * ng:(g + 1) * ng].reshape(ng, -1).t().contiguous()
        outs.append(fast_gemm(a, w, cfg, faults, act_signed=act_signed, masks=masks))
    y = outs[0] if groups == 1 else torch.cat(outs, dim=1)
    return y.reshape(B, oh * ow, N).transpose(1, 2).reshape(B, N, oh, ow)


# Latched weights of healthy weight registers, per weight tensor and array shape (they cost
# LeNet-5 about a millisecond a run in small torch ops).
_CLEAN_WEIGHTS = TensorMemo()


def _latched_weights(weight: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, Fr: int,
                     Fc: int) -> tuple[torch.Tensor, ConvWeights]:
    """Conv weights (N, C, kh, kw) -> ``(Wp, cw)``: ``Wp`` (Fr*R, Fc*C) int64 as every PE of
    every fold latches them (zero-padded, forced through the PE's weight register, zero where the
    PE is bypassed) and ``cw`` the conv weights (N, C, kh, kw) they amount to. Read-only: the
    fault-free result is shared between calls."""
    compute = lambda: _conv_weights(_latch(weight, cfg, cm, Fr, Fc), weight.shape)  # noqa: E731
    if not cm.latches_sent_weights:
        return compute()
    # sized with the float32 copy ConvWeights makes on first use
    return _CLEAN_WEIGHTS.get((weight,), (cfg.rows, cfg.cols), compute,
                              nbytes=lambda v: v[0].nbytes + v[1].w.nbytes * 3 // 2 + v[1].l1.nbytes)


def _conv_weights(Wp: torch.Tensor, shape) -> tuple[torch.Tensor, ConvWeights]:
    N, _, kh, kw = shape
    K = int(np.prod(shape[1:]))
    return Wp, ConvWeights.of(Wp[:K, :N].t().reshape(N, -1, kh, kw).contiguous(),
                              int(Wp.abs().max()) if Wp.numel() else 0)


def _latch(weight: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, Fr: int, Fc: int) -> torch.Tensor:
    R, C = cfg.rows, cfg.cols
    N = int(weight.shape[0])
    Wst = weight.reshape(N, -1).t()  # (K, N)
    K = int(Wst.shape[0])
    dev = Wst.device
    Wp = torch.zeros((Fr * R, Fc * C), dtype=torch.int64, device=dev)
    Wp[:K, :N] = Wst.to(torch.int64)
    reg = cm.weight
    if reg.faulty.any():
        keep = torch.from_numpy(np.tile(reg.keep, (Fr, Fc))).to(dev)
        ones = torch.from_numpy(np.tile(reg.ones, (Fr, Fc))).to(dev)
        Wp = force(Wp, keep, ones, reg.sign)
    if cm.bypassed.any():
        Wp[torch.from_numpy(np.tile(cm.bypassed, (Fr, Fc))).to(dev)] = 0
    return Wp


@njit(cache=True)
def _chain_plan(faulty, pkeep, pones, chain_cols, col_folds, N, full, linear_tail):
    """The replayed outputs and their chains. Every output channel ``n`` whose array column
    ``c = n % C`` has psum faults is replayed (``n_idx``, in column-fold then ``chain_cols``
    order); segment ``s`` of its column is the rows after its faulty row ``s-1`` up to its faulty
    row ``s`` (inclusive), read back through that row's psum register (``keep``/``ones`` (O, S));
    segment ``J`` (kept only without ``linear_tail``) is the healthy tail. ``seg_of_row`` (O, R);
    ``n_seg`` (O,): the segments each output replays (with a linear tail its chain ends at its own
    last faulty row). Returns ``(n_idx, seg_of_row, keep, ones, n_seg, J)``."""
    R, C = faulty.shape
    O = 0
    J = 0
    for c in chain_cols:
        J = max(J, faulty[:, c].sum())
        for fc in range(col_folds):
            O += fc * C + c < N
    S = J if linear_tail else J + 1
    n_idx = np.empty(O, dtype=np.int64)
    seg_of_row = np.zeros((O, R), dtype=np.int64)
    keep = np.full((O, S), full, dtype=np.int64)
    ones = np.zeros((O, S), dtype=np.int64)
    n_seg = np.full(O, S, dtype=np.int64)
    o = 0
    for fc in range(col_folds):
        for c in chain_cols:
            if fc * C + c >= N:
                continue
            n_idx[o] = fc * C + c
            s = 0
            for r in range(R):
                seg_of_row[o, r] = s
                if faulty[r, c]:
                    keep[o, s] = pkeep[r, c]
                    ones[o, s] = pones[r, c]
                    s += 1
            if linear_tail:
                n_seg[o] = s
            o += 1
    return n_idx, seg_of_row, keep, ones, n_seg, J


@njit(cache=True)
def _direct_taps(Wp, n_idx, seg_of_row, n_seg, S, K, kh, kw, sh, sw, Hq, GWq, min_taps, all_rows):
    """The direct kernel's tap tables. For every replayed output, fold and segment, the nonzero
    latched weights of its rows (K order), padded with zero taps to at least ``min_taps``:
    segment ``(o, fold, s)`` is ``ptr[(o*Fr + fold)*S + s] .. ptr[... + 1]``, tap ``t`` reads the
    phase planes at offset ``toff[t]`` with weight ``tw[t]`` (float64). ``plane_of`` maps a stride
    phase ``(ti % sh)*sw + tj % sw`` to its plane (-1: no tap reads it, so it is not laid out);
    ``GWq``: values per plane row (images per group x plane width). Returns ``(ptr, toff, tw,
    plane_of, wmax)``. Rows are walked fold by fold, once, up to an output's last segment
    (segments only grow along a fold's rows); a division for every row of ``K`` had made this
    90 us a call, more than LeNet-5's replay of a linear layer. ``min_taps``: 4 for
    :func:`_direct_chains` (its passes take four taps), 0 for :func:`_direct_chains_simd`;
    ``all_rows``: every row of a segment is a tap, zero weights included (outputs of one array
    column then have the same taps, which the SIMD kernel's pairs share)."""
    R = seg_of_row.shape[1]
    Fr = Wp.shape[0] // R
    O = n_idx.shape[0]
    taps = kh * kw
    phase = np.empty(taps, dtype=np.int64)  # per kernel tap: its stride phase and plane shifts
    drow = np.empty(taps, dtype=np.int64)
    dcol = np.empty(taps, dtype=np.int64)
    for t in range(taps):
        ti, tj = t // kw, t % kw
        phase[t] = (ti % sh) * sw + tj % sw
        drow[t] = ti // sh
        dcol[t] = tj // sw
    # One walk records every nonzero tap in K order: its segment and its row.
    seg_id = np.empty(O * Fr * R, dtype=np.int64)
    row_k = np.empty(O * Fr * R, dtype=np.int64)
    m = 0
    count = np.zeros(O * Fr * S, dtype=np.int64)
    plane_of = np.full(sh * sw, -1, dtype=np.int64)
    wmax = 0
    for o in range(O):
        n = n_idx[o]
        for f in range(Fr):
            k = f * R
            for r in range(min(R, K - k)):
                s = seg_of_row[o, r]
                if s >= n_seg[o]:
                    break
                w = Wp[k + r, n]
                if w != 0 or all_rows:
                    seg_id[m] = (o * Fr + f) * S + s
                    row_k[m] = k + r
                    m += 1
                    count[(o * Fr + f) * S + s] += 1
                    plane_of[phase[(k + r) % taps]] = 0
                    wmax = max(wmax, abs(w))
    P = 0
    for i in range(sh * sw):
        if plane_of[i] == 0:
            plane_of[i] = P
            P += 1
    ptr = np.zeros(O * Fr * S + 1, dtype=np.int64)
    for i in range(O * Fr * S):
        ptr[i + 1] = ptr[i] + max(min_taps, count[i])
    toff = np.zeros(ptr[-1], dtype=np.int64)
    tw = np.zeros(ptr[-1], dtype=np.float64)
    at = ptr[:-1].copy()
    for j in range(m):
        i = seg_id[j]
        k = row_k[j]
        c = k // taps  # input channel of row k
        t = k - c * taps
        toff[at[i]] = ((c * P + plane_of[phase[t]]) * Hq + drow[t]) * GWq + dcol[t]
        tw[at[i]] = Wp[k, n_idx[i // (Fr * S)]]
        at[i] += 1
    return ptr, toff, tw, plane_of, wmax


def _chain_setup(Wp, cfg, cm, chain_cols, N, linear_tail):
    """:func:`_chain_plan` for a layer of ``N`` outputs (``None`` if no output is replayed)."""
    preg = cm.psum
    plan = _chain_plan(preg.faulty, preg.keep, preg.ones, chain_cols, Wp.shape[1] // cfg.cols, N,
                       (1 << cfg.psum_bits) - 1, linear_tail)
    return plan if len(plan[0]) else None


def _replay_direct(xp, Wp, cfg, cm, chain_cols, kernel, stride, padding, amax, N, linear_tail) -> ChainFix | None:
    """CPU: the segment sums come straight from the input in one jitted kernel that also replays
    the chains; only the nonzero latched weights of each segment are visited (a segment ends at
    its faulty row, so with ``linear_tail`` about half a fold).

    The input is laid out as phase planes of ``G`` images side by side (:func:`_fill_planes`),
    in which one kernel tap over the whole output planes of the ``G`` images is one contiguous
    run of about ``RUN_TARGET`` values, so a segment sum is a sum of vectorised axpys. A task is
    (group of images, chunk of replayed outputs): it lays out its group in a buffer that stays in
    cache across all its outputs' taps, so the input is read from memory once (a separate
    layout pass over the whole batch cost as much as the replay itself).

    Wp: (Fr*R, Fc*C) int64 latched weights; the replayed columns' outputs are returned as a
    :class:`ChainFix` (``None``: no output has a faulty column). The plan and tap tables come
    from one jitted call and the arrays are numpy's (this runs once per faulty layer and chip: a
    LeNet-5 chip's layers spent ~100 us each in small Python and torch calls around the kernel)."""
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    x = xp.numpy()  # (B, C, H, W) stored either way: channels-last input is laid out by the tasks
    B, Cin, H, W = x.shape
    oh, ow = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    Hq, Wq = -(-(H + 2 * ph) // sh), -(-(W + 2 * pw) // sw)
    per_image = Cin * Hq * Wq * sh * sw * x.itemsize  # its phase planes at most
    G = min(B, max(1, min(round(RUN_TARGET / (oh * Wq)), PLANES_BUDGET // per_image)))
    run = ((oh - 1) * G + G - 1) * Wq + ow  # values per run (see _direct_chains)
    # The SIMD kernel needs float32 input, runs of at least a block of lanes and float32 sums.
    simd = x.dtype == np.float32 and run >= SIMD_BLOCK and CPU_KERNEL == "simd"
    preg = cm.psum
    n_idx, keep, ones, n_seg, ptr, toff, tw, f32, plane_of, mates, simd = _direct_plan(
        preg.faulty, preg.keep, preg.ones, chain_cols, Wp.numpy(), N, cfg.cols, (1 << cfg.psum_bits) - 1,
        linear_tail, Cin * kh * kw, kh, kw, sh, sw, Hq, G * Wq, simd, amax, PAIRS)
    if not len(n_idx):
        return None
    if f32:
        tw = tw.astype(np.float32)
    NG = -(-B // G)
    in_place = True
    if H == W == Hq == Wq == 1:  # 1x1 images (linear layers): the planes are the transposed batch
        xg = _transposed_groups(x.reshape(B, Cin), NG, G)
    elif G == 1 and plane_of.max() == 0 and not (ph or pw or sh > 1 or sw > 1) and x.flags.c_contiguous:
        xg = x.reshape(B, -1)  # stride 1, no padding, one plain image per group: its own plane
    else:
        xg, in_place = np.empty((0, 0), dtype=x.dtype), False
    # Tasks are (group, chunk of outputs); a task fills its group's planes once for all its outputs.
    chunks = min(len(n_idx), -(-4 * numba.get_num_threads() // NG))
    geometry = np.array([Cin, H, W, ph, pw, sh, sw, Hq, G, Wq], dtype=np.int64)
    tot = np.empty((B, len(n_idx), oh * ow), dtype=np.int32)
    args = (xg, x, in_place, geometry, plane_of, toff, tw, ptr, n_seg, keep, ones, 1 << (cfg.psum_bits - 1),
            linear_tail, Wp.shape[0] // cfg.rows, chunks, oh, ow, tot)
    if simd:
        # Stride 1 from channels-last input of a multiple of LANES channels: the fill transposes
        # blocks in registers (a 16-channel 32x32 layer's fill had been ~40% of its replay)
        pixels = x.transpose(0, 2, 3, 1)
        cl = not in_place and sh == sw == 1 and Cin % LANES == 0 and W >= LANES and pixels.flags.c_contiguous
        xcl = pixels.reshape(-1) if cl else np.empty(0, dtype=np.float32)
        _direct_chains_simd(*args, xcl, mates, work=len(toff) * run * NG)
    else:
        _direct_chains(*args, work=len(toff) * run * NG)
    return ChainFix(n_idx, tot, linear_tail)


@njit(cache=True)
def _direct_plan(faulty, pkeep, pones, chain_cols, Wp, N, C, full, linear_tail, K, kh, kw, sh, sw, Hq, GWq, simd,
                 amax, pairs):
    """:func:`_chain_plan` and :func:`_direct_taps` for the direct replay, in one call: returns
    ``(n_idx, keep, ones, n_seg, ptr, toff, tw, f32, plane_of, mates, simd)``: ``f32`` when
    every partial sum of at most ``R`` products is exact in float32 (``R * amax * wmax <
    2**24``); ``simd`` is the caller's choice, off when the sums need float64 (the SIMD kernel
    is float32-only); ``mates`` (:func:`_pair_outputs`) all -1 without it or ``pairs``. No
    replayed output: ``n_idx`` is empty. The weights ``tw`` come back float64 either way
    (numba returns one type); the caller casts them."""
    R = faulty.shape[0]
    n_idx, seg_of_row, keep, ones, n_seg, _ = _chain_plan(faulty, pkeep, pones, chain_cols, Wp.shape[1] // C, N, full,
                                                          linear_tail)
    S = keep.shape[1]
    ptr, toff, tw, plane_of, wmax = _direct_taps(Wp, n_idx, seg_of_row, n_seg, S, K, kh, kw, sh, sw, Hq, GWq,
                                                 0 if simd else 4, simd and pairs)
    f32 = R * max(1, amax) * max(1, wmax) < _F32_LIMIT
    if simd and not f32:
        simd = False
        ptr, toff, tw, plane_of, wmax = _direct_taps(Wp, n_idx, seg_of_row, n_seg, S, K, kh, kw, sh, sw, Hq, GWq, 4,
                                                     False)
    mates = _pair_outputs(n_idx, C) if simd and pairs else np.full(n_idx.shape[0], -1, dtype=np.int64)
    return n_idx, keep, ones, n_seg, ptr, toff, tw, f32, plane_of, mates, simd


@njit(cache=True)
def _transposed_groups(x, NG, G):
    """Linear layers' phase planes: ``x`` (B, C) -> (NG, C*G), ``out[q, c*G + g] = x[q*G + g, c]``
    (zero for images past B)."""
    B, C = x.shape
    out = np.zeros((NG, C * G), dtype=x.dtype)
    for i in range(B):
        q, g = i // G, i % G
        for c in range(C):
            out[q, c * G + g] = x[i, c]
    return out


@njit(cache=True)
def _fill_planes(x, g0, geometry, plane_of, out):
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
    negative-index check to every computed index): 1.5x faster than scattering each pixel's
    channels from a walk in memory order (2x on stride 2), and on plain layouts too."""
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
def _fill_planes_cl(xcl, B, g0, geometry, out):
    """:func:`_fill_planes` for stride 1 from channels-last input with a multiple of ``LANES``
    channels and rows of at least ``LANES`` pixels: ``xcl`` (B*H*W*C,) the input's storage.
    Blocks of ``LANES`` pixels x ``LANES`` channels are transposed in registers
    (:func:`~sysarray.engines._simd.transpose_block`); a row's last ``W % LANES`` pixels are
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
def _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign, L, use_v, use_p):
    """The last four taps of a segment and the chain step in one pass: ``q = p + segment``
    (``p`` read if ``use_p``, the taps so far in ``v`` if ``use_v``), ``p = force(q)``, ``tot +=
    force(q) - q``. Called with constant flags, so each call site compiles to a branch-free loop."""
    for e in range(L):
        seg = w0 * x0[e] + w1 * x1[e] + w2 * x2[e] + w3 * x3[e]
        if use_v:
            seg += v[e]
        q = np.int32(seg)
        if use_p:
            q = np.int32(q + p[e])
        fq = _force32(q, k, on, sign)
        p[e] = fq
        tot[e] = np.int32(tot[e] + np.int32(fq - q))


@njit(cache=True, inline="always")
def _force32(q, k, on, sign):
    """A psum register's read-back of ``q`` (int32, the sum mod 2**32) with masks ``k``/``on``
    and sign bit ``sign`` as int32 bit patterns: every step wraps mod 2**32 (8 lanes per AVX2
    vector where int64 gave 4)."""
    return np.int32(np.int32(np.int32(np.int32(q & k) | on) ^ sign) - sign)


# Multiply-adds fused (FMA): every product and partial sum is an integer float32 (or float64)
# holds exactly (the caller checks the bound), so fusing cannot change a result: 4% faster.
@threaded(1 << 20, fastmath={"contract"})  # work: multiply-adds
def _direct_chains(xg, x, in_place, geometry, plane_of, toff, tw, ptr, n_seg, keep, ones, sign, linear_tail, Fr,
                   chunks, oh, ow, out):
    """Segment sums and psum chains of the replayed outputs, straight from the input.

    Each task takes a group of ``G`` images and a chunk of the replayed outputs, fills the
    group's phase planes from ``x`` (B, C, H, W) (:func:`_fill_planes`; with ``in_place``,
    ``xg[group]`` already is them) and runs its outputs over them. The output values of a group
    form one run ``e = (r*G + g)*Wq + q`` (row ``r``, image ``g``, column ``q``; columns ``q >=
    ow`` are padding, computed and dropped), read for tap ``t`` at ``planes[toff[t] + e]``. Taps
    of segment ``(o, fold, s)`` are ``ptr[(o*Fr + fold)*S + s] .. ptr[...+1]``, at least four
    (zero-weight taps pad them), with weights ``tw``, for ``s < n_seg[o]``;
    keep/ones: (O, S) int64. ``out`` (B, O, oh*ow) int32 gets, per replayed output, the sum over
    folds of the chain's final value or, with ``linear_tail``, of ``chain - sum of segments``
    (the sum of ``force(q) - q`` over the chain's steps ``q = p + segment``): the correction to
    the plain sums (a :class:`ChainFix`). The chain state is int32: a psum register value fits
    (psum_bits <= 32, and p + segment < 2**psum_bits by the caller's wrap guard) and the fold
    totals are only needed mod 2**32.
    """
    O, S = keep.shape
    G, Wq, NG, L, per = _tasks(x.shape[0], O, geometry, chunks, oh, ow)
    sign32 = np.int32(sign)  # 2**31 for 32-bit psums: -2**31 as an int32 bit pattern
    for task in prange(NG * chunks):
        g0 = task // chunks
        xs_all = _task_planes(xg, x, in_place, geometry, plane_of, g0)
        o_lo = (task % chunks) * per
        o_hi = min(O, o_lo + per)
        tots = np.zeros((max(0, o_hi - o_lo), L), dtype=np.int32)
        v = np.empty(L, dtype=tw.dtype)
        p = np.empty(L, dtype=np.int32)
        for o in range(o_lo, o_hi):
            tot = tots[o - o_lo]
            for f in range(Fr):
                for s in range(n_seg[o]):
                    base = (o * Fr + f) * S + s
                    t0, t1 = ptr[base], ptr[base + 1]
                    k = np.int32(keep[o, s])  # int32 bit patterns (see _force32)
                    on = np.int32(ones[o, s])
                    # Four taps per pass over v (one store per four multiply-adds: stores bound an
                    # axpy), the first pass taking the remainder; with a linear tail the last four
                    # taps and the chain step share a pass. Every loop has fixed arrays (slices keep
                    # the indices non-negative): choosing arrays at run time, or branching inside a
                    # loop, stops LLVM vectorizing it.
                    rem = (t1 - t0) % 4
                    if rem:
                        w0 = tw[t0]
                        x0 = xs_all[toff[t0]:toff[t0] + L]
                        if rem == 1:
                            for e in range(L):
                                v[e] = w0 * x0[e]
                        else:
                            w1 = tw[t0 + 1]
                            x1 = xs_all[toff[t0 + 1]:toff[t0 + 1] + L]
                            if rem == 2:
                                for e in range(L):
                                    v[e] = w0 * x0[e] + w1 * x1[e]
                            else:
                                w2 = tw[t0 + 2]
                                x2 = xs_all[toff[t0 + 2]:toff[t0 + 2] + L]
                                for e in range(L):
                                    v[e] = w0 * x0[e] + w1 * x1[e] + w2 * x2[e]
                    for t in range(t0 + rem, t1 - 4 if linear_tail else t1, 4):
                        w0, w1, w2, w3 = tw[t], tw[t + 1], tw[t + 2], tw[t + 3]
                        x0 = xs_all[toff[t]:toff[t] + L]
                        x1 = xs_all[toff[t + 1]:toff[t + 1] + L]
                        x2 = xs_all[toff[t + 2]:toff[t + 2] + L]
                        x3 = xs_all[toff[t + 3]:toff[t + 3] + L]
                        if t == t0:
                            for e in range(L):
                                v[e] = w0 * x0[e] + w1 * x1[e] + w2 * x2[e] + w3 * x3[e]
                        else:
                            for e in range(L):
                                v[e] += w0 * x0[e] + w1 * x1[e] + w2 * x2[e] + w3 * x3[e]
                    if linear_tail:
                        t = t1 - 4
                        w0, w1, w2, w3 = tw[t], tw[t + 1], tw[t + 2], tw[t + 3]
                        x0 = xs_all[toff[t]:toff[t] + L]
                        x1 = xs_all[toff[t + 1]:toff[t + 1] + L]
                        x2 = xs_all[toff[t + 2]:toff[t + 2] + L]
                        x3 = xs_all[toff[t + 3]:toff[t + 3] + L]
                        if t == t0 and s == 0:
                            _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign32, L, False, False)
                        elif t == t0:
                            _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign32, L, False, True)
                        elif s == 0:
                            _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign32, L, True, False)
                        else:
                            _last_taps_and_step(v, p, tot, x0, x1, x2, x3, w0, w1, w2, w3, k, on, sign32, L, True, True)
                    elif s == 0:
                        for e in range(L):
                            p[e] = _force32(np.int32(v[e]), k, on, sign32)
                    else:
                        for e in range(L):
                            p[e] = _force32(np.int32(np.int32(v[e]) + p[e]), k, on, sign32)
                if not linear_tail:
                    for e in range(L):
                        tot[e] += p[e]
        _scatter_runs(tots, out, g0, G, o_lo, oh, ow, Wq)


@njit(cache=True, inline="always")
def _tasks(B, O, geometry, chunks, oh, ow):
    """``(G, Wq, NG, L, per)``: images per group, plane width, groups, values per run, outputs per
    task of the direct kernels."""
    G, Wq = geometry[8], geometry[9]
    return G, Wq, (B + G - 1) // G, ((oh - 1) * G + G - 1) * Wq + ow, (O + chunks - 1) // chunks


@njit(cache=True, inline="always")
def _task_planes(xg, x, in_place, geometry, plane_of, g0):
    """A task's phase planes of image group ``g0``: ``xg[g0]`` (``in_place``) or filled from ``x``."""
    if in_place:
        return xg[g0]
    xs_all = _planes_buffer(geometry, plane_of, xg.dtype)
    _fill_planes(x, g0, geometry, plane_of, xs_all)
    return xs_all


@njit(cache=True, inline="always")
def _planes_buffer(geometry, plane_of, dtype):
    """An uninitialised buffer for one image group's phase planes (C*P*Hq*G*Wq,)."""
    C, Hq, G, Wq = geometry[0], geometry[7], geometry[8], geometry[9]
    return np.empty(C * max(1, plane_of.max() + 1) * Hq * G * Wq, dtype=dtype)


@njit(cache=True, inline="always")
def _scatter_runs(tots, out, g0, G, o_lo, oh, ow, Wq):
    """Runs ``tots`` (outputs of a task, values ``e = (r*G + g)*Wq + q``) -> ``out`` (B, O,
    oh*ow), element by element: a slice copy per row costs ~20 ns, and linear layers' rows are
    one value."""
    B = out.shape[0]
    for i in range(tots.shape[0]):
        for g in range(min(G, B - g0 * G)):
            dst = out[g0 * G + g, o_lo + i]
            for r in range(oh):
                src = tots[i, (r * G + g) * Wq:(r * G + g) * Wq + ow]
                for q in range(ow):
                    dst[r * ow + q] = src[q]


@njit(cache=True, inline="always")
def _chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3, k, on, sg, linear_tail):
    """The chain step of four vectors of segment sums ``a``: ``q = p + a`` (wrapping), ``p =
    force(q)``; with a linear tail the totals ``t`` gather ``force(q) - q``. Returns ``(p, t)``."""
    q0 = add(to_i32(a0), p0)
    q1 = add(to_i32(a1), p1)
    q2 = add(to_i32(a2), p2)
    q3 = add(to_i32(a3), p3)
    p0 = sub(xor(or_(and_(q0, k), on), sg), sg)
    p1 = sub(xor(or_(and_(q1, k), on), sg), sg)
    p2 = sub(xor(or_(and_(q2, k), on), sg), sg)
    p3 = sub(xor(or_(and_(q3, k), on), sg), sg)
    if linear_tail:
        t0 = add(t0, sub(p0, q0))
        t1 = add(t1, sub(p1, q1))
        t2 = add(t2, sub(p2, q2))
        t3 = add(t3, sub(p3, q3))
    return p0, p1, p2, p3, t0, t1, t2, t3


@njit(cache=True, inline="always")
def _store4(tots, at, t0, t1, t2, t3):
    """Four vectors of chain totals to ``tots[at:at + 4*LANES]``."""
    i32_store(tots, at, t0)
    i32_store(tots, at + LANES, t1)
    i32_store(tots, at + 2 * LANES, t2)
    i32_store(tots, at + 3 * LANES, t3)


@threaded(1 << 20)  # work: multiply-adds
def _direct_chains_simd(xg, x, in_place, geometry, plane_of, toff, tw, ptr, n_seg, keep, ones, sign, linear_tail, Fr,
                        chunks, oh, ow, out, xcl, mate):
    """:func:`_direct_chains` (same arguments and results) with the lanes of a block of
    ``SIMD_BLOCK`` run values in registers (:mod:`sysarray.engines._simd`): every segment sum is
    one fused multiply-add per tap and lane, and the chain step and its total stay in registers
    across all folds, with one store per block and output. Taps need no zero padding
    (``min_taps`` 0). float32 planes and weights (sums exact below 2**24); runs of at least a
    block: the last block of a run starts ``SIMD_BLOCK`` values before its end, recomputing
    values of the one before (the same values: stores, not sums). ``xcl``: the input's
    channels-last storage, flat, where :func:`_fill_planes_cl` applies (else empty)."""
    O, S = keep.shape
    G, Wq, NG, L, per = _tasks(x.shape[0], O, geometry, chunks, oh, ow)
    sg = i32_splat(sign)  # 2**31 for 32-bit psums: -2**31 as an int32 bit pattern
    for task in prange(NG * chunks):
        g0 = task // chunks
        if xcl.size:  # stride 1, channels-last: filled by blocks (a float32-only path)
            xs = _planes_buffer(geometry, plane_of, xg.dtype)
            _fill_planes_cl(xcl, x.shape[0], g0, geometry, xs)
        else:
            xs = _task_planes(xg, x, in_place, geometry, plane_of, g0)
        o_lo = (task % chunks) * per
        o_hi = min(O, o_lo + per)
        tots = np.empty(max(0, o_hi - o_lo) * L, dtype=np.int32)
        for block in range(0, L, SIMD_BLOCK):
            e = min(block, L - SIMD_BLOCK)
            for o in range(o_lo, o_hi):
                m = mate[o]
                if o_lo <= m < o_hi:
                    if m > o:
                        _pair_block(xs, toff, tw, ptr, n_seg, keep, ones, sg, linear_tail, Fr, S, o, m, e, tots,
                                    (o - o_lo) * L + e, (m - o_lo) * L + e)
                    continue
                dst = (o - o_lo) * L + e
                t0 = i32_zeros()
                t1 = i32_zeros()
                t2 = i32_zeros()
                t3 = i32_zeros()
                for f in range(Fr):
                    p0 = i32_zeros()
                    p1 = i32_zeros()
                    p2 = i32_zeros()
                    p3 = i32_zeros()
                    for s in range(n_seg[o]):
                        base = (o * Fr + f) * S + s
                        a0 = f32_zeros()
                        a1 = f32_zeros()
                        a2 = f32_zeros()
                        a3 = f32_zeros()
                        # unsigned indices: no negative-index code (slices here cost reference counts)
                        for t in range(np.uint64(ptr[base]), np.uint64(ptr[base + 1])):
                            w = tw[t]
                            at = toff[t] + e
                            a0 = fma(a0, w, load(xs, at))
                            a1 = fma(a1, w, load(xs, at + LANES))
                            a2 = fma(a2, w, load(xs, at + 2 * LANES))
                            a3 = fma(a3, w, load(xs, at + 3 * LANES))
                        k = i32_splat(keep[o, s])
                        on = i32_splat(ones[o, s])
                        p0, p1, p2, p3, t0, t1, t2, t3 = _chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3, k, on,
                                                                 sg, linear_tail)
                    if not linear_tail:  # the chain's end
                        t0, t1, t2, t3 = add(t0, p0), add(t1, p1), add(t2, p2), add(t3, p3)
                _store4(tots, dst, t0, t1, t2, t3)
        _scatter_runs(tots.reshape(-1, L), out, g0, G, o_lo, oh, ow, Wq)


@njit(cache=True, inline="always")
def _pair_block(xs, toff, tw, ptr, n_seg, keep, ones, sg, linear_tail, Fr, S, o, m, e, tots, dst_o, dst_m):
    """One block of :func:`_direct_chains_simd` for two outputs of one array column (``m`` has
    the same segments and taps as ``o``, its own weights): each tap's four input vectors serve
    both."""
    t0 = i32_zeros()
    t1 = i32_zeros()
    t2 = i32_zeros()
    t3 = i32_zeros()
    u0 = i32_zeros()
    u1 = i32_zeros()
    u2 = i32_zeros()
    u3 = i32_zeros()
    for f in range(Fr):
        p0 = i32_zeros()
        p1 = i32_zeros()
        p2 = i32_zeros()
        p3 = i32_zeros()
        r0 = i32_zeros()
        r1 = i32_zeros()
        r2 = i32_zeros()
        r3 = i32_zeros()
        for s in range(n_seg[o]):
            base = (o * Fr + f) * S + s
            shift = ptr[(m * Fr + f) * S + s] - ptr[base]
            a0 = f32_zeros()
            a1 = f32_zeros()
            a2 = f32_zeros()
            a3 = f32_zeros()
            b0 = f32_zeros()
            b1 = f32_zeros()
            b2 = f32_zeros()
            b3 = f32_zeros()
            for t in range(np.uint64(ptr[base]), np.uint64(ptr[base + 1])):
                w = tw[t]
                v = tw[np.uint64(t + shift)]
                at = toff[t] + e
                x0 = load(xs, at)
                x1 = load(xs, at + LANES)
                x2 = load(xs, at + 2 * LANES)
                x3 = load(xs, at + 3 * LANES)
                a0 = fma(a0, w, x0)
                a1 = fma(a1, w, x1)
                a2 = fma(a2, w, x2)
                a3 = fma(a3, w, x3)
                b0 = fma(b0, v, x0)
                b1 = fma(b1, v, x1)
                b2 = fma(b2, v, x2)
                b3 = fma(b3, v, x3)
            k = i32_splat(keep[o, s])
            on = i32_splat(ones[o, s])
            p0, p1, p2, p3, t0, t1, t2, t3 = _chain4(a0, a1, a2, a3, p0, p1, p2, p3, t0, t1, t2, t3, k, on, sg,
                                                     linear_tail)
            r0, r1, r2, r3, u0, u1, u2, u3 = _chain4(b0, b1, b2, b3, r0, r1, r2, r3, u0, u1, u2, u3, k, on, sg,
                                                     linear_tail)
        if not linear_tail:  # the chains' ends
            t0, t1, t2, t3 = add(t0, p0), add(t1, p1), add(t2, p2), add(t3, p3)
            u0, u1, u2, u3 = add(u0, r0), add(u1, r1), add(u2, r2), add(u3, r3)
    _store4(tots, dst_o, t0, t1, t2, t3)
    _store4(tots, dst_m, u0, u1, u2, u3)


@njit(cache=True)
def _pair_outputs(n_idx, C):
    """(O,) int64: for each replayed output, the one of the next column fold in the same array
    column (channel ``n + C``) when ``n`` is in an even column fold, and back; -1 for none (in
    numba: a Python dict cost LeNet-5 ~10 us a layer)."""
    O = n_idx.shape[0]
    mate = np.full(O, -1, dtype=np.int64)
    at = np.full(n_idx.max() + C + 1 if O else 1, -1, dtype=np.int64)
    for o in range(O):
        at[n_idx[o]] = o
    for o in range(O):
        q = at[n_idx[o] + C]
        if (n_idx[o] // C) % 2 == 0 and q >= 0:
            mate[o] = q
            mate[q] = o
    return mate


def _replay_by_fold_convs(xp, Wp, cfg, cm, chain_cols, kernel, stride, padding, amax, y, linear_tail) -> None:
    """Each fold's segment sums from one small convolution over the fold's input channels with
    masked "virtual filters" ``Wv[fr, o, s, r]``; the chains are replayed fold by fold in torch ops
    (the CUDA path; on CPU the direct kernel is several times faster). Overwrites (or, with
    ``linear_tail``, corrects) the replayed outputs of ``y`` (B, N, oh, ow) int32 in place."""
    plan = _chain_setup(Wp, cfg, cm, chain_cols, y.shape[1], linear_tail)
    if plan is None:
        return
    n_idx, seg_of_row, keep, ones, _, J = plan
    R, S, sign = cfg.rows, keep.shape[1], 1 << (cfg.psum_bits - 1)
    K = xp.shape[1] * kernel[0] * kernel[1]
    dev = xp.device
    kh, kw = kernel
    taps = kh * kw
    B, N = y.shape[0], y.shape[1]
    O = len(n_idx)
    Fr = Wp.shape[0] // R
    n_t = torch.from_numpy(n_idx).to(dev)
    seg_mask = F.one_hot(torch.from_numpy(seg_of_row).to(dev), J + 1)[..., :S]  # (O, R, S)
    Wsel = Wp.view(Fr, R, -1)[:, :, n_t]  # (Fr, R, O)
    Wv = (Wsel.permute(0, 2, 1).unsqueeze(2) * seg_mask.permute(0, 2, 1).unsqueeze(0))  # (Fr, O, S, R)
    wmax = int(Wv.abs().max()) if Wv.numel() else 0
    yv = y.flatten(2)  # a view in either layout
    tot = torch.zeros((B, O, yv.shape[2]), dtype=torch.int64, device=dev)
    keep_t = torch.from_numpy(keep).to(dev).view(1, O, S, 1)
    ones_t = torch.from_numpy(ones).to(dev).view(1, O, S, 1)
    for fr in range(Fr):
        k0, k1 = fr * R, min(K, fr * R + R)
        c_lo, c_hi = k0 // taps, (k1 - 1) // taps
        local = torch.zeros((O * S, (c_hi - c_lo + 1) * taps), dtype=torch.int64, device=dev)
        local[:, k0 - c_lo * taps:k1 - c_lo * taps] = Wv[fr, :, :, :k1 - k0].reshape(O * S, -1)
        w_fold = local.view(O * S, c_hi - c_lo + 1, kh, kw)
        seg = _exact_conv(xp[:, c_lo:c_hi + 1], ConvWeights.of(w_fold, wmax), stride, padding, amax)  # (B, O*S, oh, ow)
        seg = seg.to(torch.int64).reshape(B, O, S, -1)
        p = torch.zeros_like(tot)
        for s in range(S):
            p = force(p + seg[:, :, s], keep_t[:, :, s], ones_t[:, :, s], sign)
        tot += p - seg.sum(dim=2) if linear_tail else p
    if linear_tail:
        yv[:, n_t] = wrap(yv[:, n_t].to(torch.int64) + tot, 32).to(yv.dtype)
    else:
        yv[:, n_t] = wrap(tot, 32).to(yv.dtype)
