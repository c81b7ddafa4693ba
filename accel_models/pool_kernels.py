"""The 2x2, stride-2 max pool (LeNet-5's, VGG's) in one pass over its input, and its gradient.

The program's generic max pool takes the maximum of four strided window slices in torch: four
passes that each touch every cache line of the input. Written as one loop whose inner step reads
two adjacent values of two rows, LLVM vectorises it (interleaved loads) and the input is read once.
The fake-quant twin trains through the same forward pass; its gradient goes to the first maximum
of each block in row-major order, where ``F.max_pool2d``'s does (codes tie often).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import prange

from sysarray.parallel import ELEMENTWISE, threaded


@threaded(ELEMENTWISE)
def _max_pool_2x2_planes(x, out):
    """x (P, H, W) contiguous planes -> out (P, H // 2, W // 2): the maximum of each 2x2 block."""
    P, H, W = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for p in prange(P):
        for i in range(oh):
            s0 = x[p, 2 * i, :2 * ow]
            s1 = x[p, 2 * i + 1, :2 * ow]
            d = out[p, i]
            for j in range(ow):
                d[j] = max(max(s0[2 * j], s0[2 * j + 1]), max(s1[2 * j], s1[2 * j + 1]))


@threaded(ELEMENTWISE)
def _max_pool_2x2_pixels(x, out):
    """Channels-last: x (B, H, W, C) contiguous -> out (B, H // 2, W // 2, C)."""
    B, H, W, C = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for bi in prange(B * oh):
        b, i = bi // oh, bi % oh
        for j in range(ow):
            # the block's four pixels (all their channels): top left, top right, bottom left, bottom right
            tl, tr = x[b, 2 * i, 2 * j], x[b, 2 * i, 2 * j + 1]
            bl, br = x[b, 2 * i + 1, 2 * j], x[b, 2 * i + 1, 2 * j + 1]
            d = out[b, i, j]
            for k in range(C):
                d[k] = max(max(tl[k], tr[k]), max(bl[k], br[k]))


@threaded(ELEMENTWISE)
def _max_pool_2x2_grad_planes(x, grad, out):
    """The gradient of :func:`_max_pool_2x2_planes`: x, out (P, H, W), grad (P, H // 2, W // 2)
    float32; each block's gradient goes to its first maximum in row-major order, the rest of
    ``out`` (a cut last row or column too) is 0."""
    P, H, W = x.shape
    oh, ow = grad.shape[1], grad.shape[2]
    zero = np.float32(0.0)
    for p in prange(P):
        for i in range(oh):
            for j in range(ow):
                a, b = x[p, 2 * i, 2 * j], x[p, 2 * i, 2 * j + 1]
                c, e = x[p, 2 * i + 1, 2 * j], x[p, 2 * i + 1, 2 * j + 1]
                g = grad[p, i, j]
                # the top row wins a tie with the bottom one, the left value one with the right;
                # all four written by selects, which vectorise, where a scattered store does not
                top = max(a, b) >= max(c, e)
                left_top, left_bottom = a >= b, c >= e
                out[p, 2 * i, 2 * j] = g if top and left_top else zero
                out[p, 2 * i, 2 * j + 1] = g if top and not left_top else zero
                out[p, 2 * i + 1, 2 * j] = g if not top and left_bottom else zero
                out[p, 2 * i + 1, 2 * j + 1] = g if not (top or left_bottom) else zero
            for j in range(2 * ow, W):
                out[p, 2 * i, j] = zero
                out[p, 2 * i + 1, j] = zero
        for i in range(2 * oh, H):
            for j in range(W):
                out[p, i, j] = zero


def max_pool_2x2_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`max_pool_2x2` at a contiguous CPU float32 ``x`` (B, C, H, W) for
    ``grad`` (B, C, H // 2, W // 2): as ``F.max_pool2d``'s (the first maximum of a block gets it)."""
    B, C, H, W = x.shape
    out = torch.empty_like(x)
    g = grad.to(torch.float32).contiguous()
    if out.numel():
        _max_pool_2x2_grad_planes(x.numpy().reshape(B * C, H, W), g.numpy().reshape(B * C, H // 2, W // 2),
                                  out.numpy().reshape(B * C, H, W), work=x.numel())
    return out


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor | None:
    """``F.max_pool2d(x, 2, 2)`` of a CPU float32 (B, C, H, W) tensor, contiguous or channels-last
    (the result keeps the layout); None for anything else (the caller's generic path)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or x.numel() == 0 or x.requires_grad:
        return None
    B, C, H, W = x.shape
    oh, ow = H // 2, W // 2
    if x.is_contiguous():
        out = torch.empty(B, C, oh, ow, dtype=x.dtype)
        if out.numel():
            _max_pool_2x2_planes(x.numpy().reshape(B * C, H, W), out.numpy().reshape(B * C, oh, ow), work=x.numel())
        return out
    if x.is_contiguous(memory_format=torch.channels_last):
        out = torch.empty(B, C, oh, ow, dtype=x.dtype, memory_format=torch.channels_last)
        if out.numel():
            _max_pool_2x2_pixels(x.permute(0, 2, 3, 1).numpy(), out.permute(0, 2, 3, 1).numpy(), work=x.numel())
        return out
    return None


__all__ = ["max_pool_2x2", "max_pool_2x2_backward"]
