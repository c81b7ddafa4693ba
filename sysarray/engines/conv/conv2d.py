"""Convolutions on the faulty array without im2col: the fast engine's WS path in conv form.

A convolution runs on the array as the im2col GEMM ``Y[M, N] = A[M, K] @ W[K, N]`` with
``M = B*oh*ow``, ``K = Cin*kh*kw`` in PyTorch's ``(c, kh, kw)`` order and ``W = weight.reshape(N,
K).t()`` (:mod:`sysarray.mapping`). :func:`fast_conv2d` returns exactly ``fast_gemm(im2col(x), W)``
(same bits, shown by the property tests) but computes it with convolutions, without materialising
the ``M x K`` operand:

- the stationary weights as latched by each PE (stuck bits applied, bypassed PEs zeroed) are a
  modified conv weight (:mod:`.weights`), and the fault-free part of every output is one exact
  float convolution (:mod:`.exact`);
- a column with psum faults is cut at its faulty rows into segments (:mod:`sysarray.engines.psum`);
  the segment sums of fold ``fr`` only involve the ``R`` taps ``k = fr*R .. fr*R + R - 1``, a few
  input channels. On CPU one jitted kernel computes them straight from the input and replays the
  chains as it goes (:mod:`.replay_direct`, its result applied by :mod:`.fix`); on CUDA they come
  from one small convolution per fold with the chains in torch ops (:mod:`.replay_torch`).

A grouped (or depthwise) convolution is one GEMM per group on the array; the same path runs all
of them at once: one grouped float convolution, and every group's replayed outputs in the same
replay. Cases this form does not cover (stuck bits in the streamed ``act`` register, IS/OS
dataflows, psum registers narrow enough for a fold to wrap) go through ``im2col`` and
:func:`~sysarray.engines.fast.fast_bmm`, every group's GEMM in one batch, which handles everything.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from sysarray.config import ArrayConfig, Dataflow
from sysarray.engines.conv.exact import F32_LIMIT, exact_conv
from sysarray.engines.conv.fix import ChainFix, apply_fix, is_pixel_major
from sysarray.engines.conv.pointwise import pointwise_gemm
from sysarray.engines.conv.replay_conv import replay_by_segment_conv
from sysarray.engines.conv.replay_direct import replay_direct
from sysarray.engines.conv.replay_linear import replay_linear
from sysarray.engines.conv.replay_torch import replay_by_fold_convs
from sysarray.engines.conv.settings import DEFAULT, Kernel, Replay, ReplaySettings
from sysarray.engines.conv.weights import ConvWeights, latched_weights
from sysarray.engines import int8
from sysarray.engines.fast import fast_bmm
from sysarray.engines.registers import ChipMasks, chip_masks, wrap
from sysarray.engines.simd import VNNI
from sysarray.faults import FaultMap
from sysarray.mapping import conv_by_gemms
from sysarray.parallel import MeasuredChoice


def conv_native_ok(cfg: ArrayConfig, cm: ChipMasks) -> bool:
    """True when :func:`fast_conv2d` can skip im2col on this chip (the layer's weights and
    input may still send it there: a fold whose partial sums could wrap)."""
    return cfg.dataflow is Dataflow.WS and not cm.act.any_faulty


def fast_conv2d(x: torch.Tensor, weight: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None, *,
                stride=(1, 1), padding=(0, 0), pad_value: float = 0.0, groups: int = 1,
                act_signed: bool = False, masks: ChipMasks | None = None,
                settings: ReplaySettings = DEFAULT) -> torch.Tensor:
    """A convolution of 8-bit codes on the faulty array, exact.

    x: (B, Cin, H, W) float tensor of activation codes (uint8 or int8 values, ``act_signed``);
    weight: (N, Cin/groups, kh, kw) int8 codes; padding uses ``pad_value`` (the input zero point).
    Returns (B, N, oh, ow) int32: for each group, ``fast_gemm(im2col(x_g), weight_g.reshape(N_g,
    -1).t())`` laid out as a convolution output (all groups computed together). ``masks``:
    ``chip_masks(cfg, faults, act_signed)`` when the caller already has them. ``settings``: how
    psum chains are replayed on CPU (the result does not depend on it).
    """
    y = fast_conv2d_exact(x, weight, cfg, faults, stride=stride, padding=padding, pad_value=pad_value,
                          groups=groups, act_signed=act_signed, masks=masks, settings=settings)
    return y.to(torch.int32)


def fast_conv2d_exact(x: torch.Tensor, weight: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None, *,
                      stride=(1, 1), padding=(0, 0), pad_value: float = 0.0, groups: int = 1,
                      act_signed: bool = False, masks: ChipMasks | None = None,
                      x_bound: int | None = None, saturate: int | None = None,
                      clean: torch.Tensor | None = None, settings: ReplaySettings = DEFAULT) -> torch.Tensor:
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
    y, fix = fast_conv2d_deferred(x, weight, cfg, faults, stride=stride, padding=padding, pad_value=pad_value,
                                  groups=groups, act_signed=act_signed, masks=masks, x_bound=x_bound,
                                  saturate=saturate, clean=clean, settings=settings, defer=False)
    return y


def fast_conv2d_deferred(x: torch.Tensor, weight: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None, *,
                         stride=(1, 1), padding=(0, 0), pad_value: float = 0.0, groups: int = 1,
                         act_signed: bool = False, masks: ChipMasks | None = None, x_bound: int | None = None,
                         saturate: int | None = None, clean: torch.Tensor | None = None,
                         settings: ReplaySettings = DEFAULT, defer: bool = True) -> tuple[torch.Tensor, ChainFix | None]:
    """:func:`fast_conv2d_exact` as ``(y, fix)``: with ``defer``, a CPU replay's :class:`ChainFix`
    on a channels-last result is returned unapplied, ``y`` holding the plain sums at the replayed
    outputs (``y`` may be ``clean`` itself: not to be written); otherwise ``fix`` is None and
    ``y`` complete (see :mod:`sysarray.corrections`)."""
    y, fix = _conv2d_parts(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, masks, x_bound,
                           clean, settings)
    if fix is None or (defer and is_pixel_major(y)):
        return y, fix
    if saturate is not None and 0 < saturate <= F32_LIMIT and y.dtype == torch.float32:
        y = y.clone() if y is clean else y
    else:
        y = y.to(torch.int32, copy=y is clean)
        saturate = 1 << 31
    apply_fix(y, fix, saturate)
    return y, None


# Layers that fit one row fold, and linear layers: the direct kernel or another replay, by measurement.
_REPLAY_WAY = MeasuredChoice(name="conv.replay")


def _conv2d_parts(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, masks, x_bound, clean,
                  settings: ReplaySettings):
    """``(y, fix)``: the layer's output without the direct replay's :class:`ChainFix` (None when
    nothing is replayed on CPU; the im2col and CUDA paths return ``y`` complete). ``y`` may be
    ``clean`` itself (see :func:`fast_conv2d_exact`): not to be written."""
    cm = masks if masks is not None else chip_masks(cfg, faults, act_signed=act_signed)
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    if not conv_native_ok(cfg, cm):
        return by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, cm), None
    R, pb = cfg.rows, cfg.psum_bits
    N = int(weight.shape[0])
    K = int(weight[0].numel())  # rows of each group's GEMM
    lw = latched_weights(weight, cfg, cm, groups)
    cw = lw.conv
    if x_bound is None:
        lo, hi = torch.aminmax(x) if x.numel() else (torch.zeros(()), torch.zeros(()))
        x_bound = max(-int(lo), int(hi))
    amax = max(int(x_bound), abs(int(pad_value)) if any(padding) else 0)
    wmax = cw.wmax
    if R * amax * wmax >= 1 << (pb - 1):
        # A fold's partial sum could wrap inside the psum register: every column replays.
        return by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, cm), None
    # Zero padding is the convolution's own (no padded copy of the input).
    ph, pw = padding
    if pad_value == 0 or not (ph or pw):
        xp, conv_pad = x, (ph, pw)
    else:
        xp, conv_pad = F.pad(x, (pw, pw, ph, ph), value=float(pad_value)), (0, 0)
    chain_cols = cm.psum_columns
    fix = None
    direct = len(chain_cols) > 0 and xp.device.type == "cpu" and settings.replay is Replay.DIRECT
    if direct:
        # Before the convolution, while the input is still in cache from the layer that wrote it.
        # the GEMM form of the weights only where an option reads it (a linear layer's gemm replay does not)
        args = lambda: (xp, lw.gemm, cfg, cm, chain_cols, (kh, kw), stride, conv_pad, amax, N, pb == 32)  # noqa: E731
        direct_replay = lambda: replay_direct(*args(), settings=settings)  # noqa: E731
        options = {}
        if settings.segment_conv and K <= R:
            # single-fold layers may also replay by a segment convolution; which is faster depends on
            # the CPU, the groups and the image size (a grouped convolution with several filters per
            # group can be slow), so it is measured per layer shape
            options["segment_conv"] = lambda: replay_by_segment_conv(*args())
        if settings.kernel is Kernel.SIMD and VNNI and tuple(stride) == (1, 1) and 2 <= kw <= 4 and \
                xp.dtype == torch.float32:
            # int8 dot products of kernel rows: fewer instructions per replayed output, a pass to
            # lay the planes out as bytes; which pays depends on how many outputs replay
            vnni = dataclasses.replace(settings, kernel=Kernel.VNNI)
            options["vnni"] = lambda: replay_direct(*args(), settings=vnni)
        if (settings.linear_gemm and xp.shape[2] == xp.shape[3] == kh == kw == 1 and groups == 1
                and xp.dtype == torch.float32 and R * amax * wmax < F32_LIMIT):
            # a linear layer: its batch is short next to a convolution's pixels, and one GEMM's
            # chains vectorised over it can beat laying it out as planes
            options["gemm"] = lambda: replay_linear(xp, cw, cfg, cm, chain_cols, N, pb == 32)
        if options:
            key = (tuple(xp.shape), is_pixel_major(xp), tuple(weight.shape), groups, tuple(stride), len(chain_cols),
                   cfg.rows, cfg.cols, *options)
            fix = _REPLAY_WAY(key, {"kernel": direct_replay, **options})
        else:
            fix = direct_replay()
    if clean is not None and cm.latches_sent_weights:
        y = clean  # the same convolution of the same input and weights, done fault-free
    else:
        y = None
        if (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and not any(conv_pad) and groups == 1:
            y = pointwise_gemm(xp, cw, act_signed, amax, cw.l1_max * max(1, amax) < F32_LIMIT)
        if y is None:
            y = _conv_product(xp, cw, stride, conv_pad, amax, act_signed, groups)
        if K * amax * wmax >= 1 << 31:
            y = wrap(y.to(torch.int64), 32)
    if len(chain_cols) and not direct:
        y = y.to(torch.int32, copy=y is clean)
        replay_by_fold_convs(xp, lw.gemm, cfg, cm, chain_cols, (kh, kw), stride, conv_pad, amax, y, pb == 32)
    return y, fix


_CONV_PRODUCT = MeasuredChoice(name="conv.product")


def _conv_product(xp: torch.Tensor, cw: ConvWeights, stride, padding, amax: int, act_signed: bool,
                  groups: int) -> torch.Tensor:
    """The fault-free convolution of 8-bit codes ``xp`` exactly: a float one (:func:`exact_conv`:
    float32 on CPU, float64 on CUDA) or, for one group where the device has an int8 GEMM, the int8
    GEMM of im2col rows (:func:`sysarray.engines.int8.conv_int8`), whichever measured faster for
    the layer's shape (``int8.FORCE`` pins one)."""
    int8_ok = (groups == 1 and amax <= (128 if act_signed else 255) and int8.exact_in_int32(int(cw.w[0].numel()))
               and xp.numel() > 0 and cw.w.numel() > 0 and int8.usable(xp.device))
    key = (tuple(xp.shape), is_pixel_major(xp), tuple(cw.w.shape), tuple(stride), tuple(padding), act_signed,
           torch.get_num_threads())
    return int8.choose(_CONV_PRODUCT, key, lambda: exact_conv(xp, cw, stride, padding, amax),
                       lambda: int8.conv_int8(xp, cw, stride, padding, act_signed), int8_ok, xp.device)


def by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, masks=None) -> torch.Tensor:
    """The convolution as :func:`~sysarray.mapping.im2col` and one GEMM per group, all groups'
    GEMMs in one :func:`fast_bmm` (:func:`~sysarray.mapping.conv_by_gemms`): (B, N, oh, ow)
    int32, every case covered."""
    return conv_by_gemms(x, weight, stride, padding, pad_value, groups,
                         lambda a, w: fast_bmm(a, w, cfg, faults, act_signed=act_signed, masks=masks))
