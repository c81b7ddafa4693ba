"""The 2x2, stride-2 max pool (LeNet-5's, VGG's) in one pass over its input.

The program's generic max pool takes the maximum of four strided window slices in torch: four
passes that each touch every cache line of the input. Written as one loop whose inner step reads
two adjacent values of two rows, LLVM vectorises it (interleaved loads) and the input is read once.
"""
from __future__ import annotations

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


__all__ = ["max_pool_2x2"]
