"""Exact integer convolutions from floating-point ones (zero padding, groups 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sysarray.engines.conv.weights import ConvWeights

F32_LIMIT = 1 << 24  # float32 holds every integer below this exactly


def conv_dtype(device: torch.device) -> torch.dtype:
    # cuDNN may use TF32 (or other reduced-precision algorithms) for float32 convolutions.
    return torch.float32 if device.type == "cpu" else torch.float64


def plain_conv(x: torch.Tensor, w: torch.Tensor, stride, padding) -> torch.Tensor:
    """``F.conv2d`` (groups 1); a matrix product for 1x1 kernels on 1x1 images (linear layers),
    which torch's convolution runs several times slower."""
    if x.shape[2] == x.shape[3] == w.shape[2] == w.shape[3] == 1 and not any(padding):
        return (x.flatten(1) @ w.flatten(1).t()).view(x.shape[0], w.shape[0], 1, 1)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        # torch's CPU float32 convolution can read a channel slice of channels-last data wrongly
        # (tests/sysarray/engines/test_conv.py has a case), so it gets a plain copy
        x = x.contiguous()
    return F.conv2d(x, w, stride=stride, padding=padding)


def exact_conv(x: torch.Tensor, cw: ConvWeights, stride, padding, amax: int) -> torch.Tensor:
    """``conv2d(x, cw.w)`` exactly for integer-valued tensors (zero padding, groups 1).

    Every partial sum of output ``n`` is bounded by ``amax * sum|w[n]|`` whatever the summation
    order, so one float32 convolution is exact when that L1 bound stays below 2**24 for every
    filter (returns float). Otherwise input channels are cut greedily into chunks that keep the
    bound, each chunk convolved in float32 and summed in int64 (float64 if one channel's taps
    alone could round; always on CUDA, where cuDNN may use TF32).
    """
    w = cw.w
    dtype = conv_dtype(x.device)
    a = max(1, amax)
    if dtype == torch.float64 or w.shape[2] * w.shape[3] * a * max(1, cw.wmax) >= F32_LIMIT:
        return plain_conv(x.double(), w.double(), stride, padding).to(torch.int64)
    if w.numel() == 0 or cw.l1_max * a < F32_LIMIT:
        return plain_conv(x, cw.f32 if x.dtype == torch.float32 else w.to(x.dtype), stride, padding)
    l1 = cw.l1
    out, lo, C = None, 0, w.shape[1]
    run = torch.cumsum(l1, dim=1)  # (N, C)
    while lo < C:
        base = run[:, lo - 1:lo] if lo else torch.zeros_like(run[:, :1])
        # the longest chunk lo..hi-1 with every filter's L1 * amax below 2**24 (at least one channel)
        hi = lo + max(1, int(((run[:, lo:] - base).max(dim=0).values * a < F32_LIMIT).sum()))
        part = plain_conv(x[:, lo:hi], w[:, lo:hi].to(x.dtype), stride, padding).to(torch.int64)
        out = part if out is None else out + part
        lo = hi
    return out
