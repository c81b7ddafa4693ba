"""Exact integer convolutions from floating-point ones (zero padding, any groups)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sysarray.engines.conv.weights import ConvWeights

F32_LIMIT = 1 << 24  # float32 holds every integer below this exactly


def conv_dtype(device: torch.device) -> torch.dtype:
    # cuDNN may use TF32 (or other reduced-precision algorithms) for float32 convolutions.
    return torch.float32 if device.type == "cpu" else torch.float64


def plain_conv(x: torch.Tensor, w: torch.Tensor, stride, padding, groups: int = 1) -> torch.Tensor:
    """``F.conv2d``; a matrix product for 1x1 kernels on 1x1 images without groups (linear
    layers), which torch's convolution runs several times slower."""
    if groups == 1 and x.shape[2] == x.shape[3] == w.shape[2] == w.shape[3] == 1 and not any(padding):
        return (x.flatten(1) @ w.flatten(1).t()).view(x.shape[0], w.shape[0], 1, 1)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        # torch's CPU float32 convolution can read a channel slice of channels-last data wrongly
        # (tests/sysarray/engines/test_conv.py has a case), so it gets a plain copy
        x = x.contiguous()
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def exact_conv(x: torch.Tensor, cw: ConvWeights, stride, padding, amax: int) -> torch.Tensor:
    """``conv2d(x, cw.w, groups=cw.groups)`` exactly for integer-valued tensors (zero padding).

    Every partial sum of output ``n`` is bounded by ``amax * sum|w[n]|`` whatever the summation
    order, so one float32 convolution is exact when that L1 bound stays below 2**24 for every
    filter (returns float). Otherwise each group's input channels are cut into chunks that keep
    the bound (:meth:`ConvWeights.channel_chunks`), each chunk convolved in float32 and summed in
    int64 (float64 if one channel's taps alone could round; always on CUDA, where cuDNN may use
    TF32).
    """
    w, groups = cw.w, cw.groups
    dtype = conv_dtype(x.device)
    a = max(1, amax)
    if dtype == torch.float64 or w.shape[2] * w.shape[3] * a * max(1, cw.wmax) >= F32_LIMIT:
        return plain_conv(x.double(), w.double(), stride, padding, groups).to(torch.int64)
    if w.numel() == 0 or cw.l1_max * a < F32_LIMIT:
        return plain_conv(x, w.to(x.dtype), stride, padding, groups)
    out = None
    per_group = x.unflatten(1, (groups, -1))  # (B, groups, C/groups, H, W): chunks cut every group alike
    for lo, hi in cw.channel_chunks(-(-F32_LIMIT // a)):
        xs = per_group[:, :, lo:hi].flatten(1, 2) if groups > 1 else x[:, lo:hi]
        part = plain_conv(xs, w[:, lo:hi].to(x.dtype), stride, padding, groups).to(torch.int64)
        out = part if out is None else out + part
    return out
