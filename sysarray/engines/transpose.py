"""Transposed copies of small CPU matrices for the replay kernels, which read an operand's
values over the stream contiguously.

torch's strided copy moves one value at a time; here a block of ``_BLOCK`` rows is read at once
and each of its columns written as one contiguous run (a vector of lanes gathered from the block).
A caller that reads the copy at once may take it in a scratch buffer of its thread: a new tensor
each call lands on memory the rest of the run has pushed out of the caches (and its pages out of
the TLB), which costs about as much as the copy.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import torch
from numba import njit

_BLOCK = 16  # rows read per block: one AVX-512 register of float32 lanes per column written


@njit(cache=True)
def transpose_into(x, out):
    """x (G, T, K), any strides -> out (G, K, T) C-contiguous, ``out[g, k, t] = x[g, t, k]``."""
    G, T, K = x.shape
    whole = T - T % _BLOCK
    for g in range(G):
        xg = x[g]
        og = out[g]
        for t0 in range(0, whole, _BLOCK):
            block = xg[t0:t0 + _BLOCK]
            for k in range(K):
                run = og[k, t0:t0 + _BLOCK]
                for j in range(_BLOCK):
                    run[j] = block[j, k]
        for t in range(whole, T):
            for k in range(K):
                og[k, t] = xg[t, k]


_SCRATCH = threading.local()  # per thread: dtype -> its scratch buffer (1-D, grown as needed)


def _scratch(shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    size = math.prod(shape)
    buf = buffers.get(dtype)
    if buf is None or buf.size < size:
        buf = buffers[dtype] = torch.empty(size, dtype=dtype).numpy()
    return buf[:size].reshape(shape)  # numpy views: torch's cost more than a small copy


def transposed(x: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """``x.transpose(-1, -2).contiguous()`` of a CPU tensor (T, K) or (G, T, K) (any strides):
    a C-contiguous (K, T) or (G, K, T) tensor of the same dtype. ``scratch``: in this thread's
    scratch buffer, valid until the thread's next scratch copy (for a caller that reads it at
    once and keeps nothing of it), else a new tensor."""
    if x.device.type != "cpu" or x.dim() not in (2, 3) or x.dtype not in (torch.float32, torch.float64):
        return x.transpose(-1, -2).contiguous()
    x3 = x.unsqueeze(0) if x.dim() == 2 else x
    shape = (x3.shape[0], x3.shape[2], x3.shape[1])
    out = torch.from_numpy(_scratch(shape, x.dtype)) if scratch else torch.empty(shape, dtype=x.dtype)
    if out.numel():
        transpose_into(x3.numpy(), out.numpy())
    return out[0] if x.dim() == 2 else out
