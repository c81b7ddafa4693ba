"""The psum replay by per-fold convolutions, chains in torch ops: the CUDA path (and a CPU check)."""
from __future__ import annotations

import numpy as np
import torch

from sysarray.config import ArrayConfig
from sysarray.engines import psum
from sysarray.engines.conv.exact import exact_conv
from sysarray.engines.conv.weights import ConvWeights
from sysarray.engines.exact import abs_max
from sysarray.engines.registers import ChipMasks, wrap


def replay_by_fold_convs(xp: torch.Tensor, Wp: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, chain_cols: np.ndarray,
                         kernel, stride, padding, amax: int, y: torch.Tensor, linear_tail: bool) -> None:
    """Each fold's segment sums from one small convolution over the fold's input channels with
    masked "virtual filters" ``Wv[g, fr, o, s, r]`` (:func:`~sysarray.engines.psum.segment_weights`),
    every group's at once (a grouped convolution); the chains run fold by fold in torch ops
    (:func:`~sysarray.engines.psum.fold_chain_torch`). Wp: (groups, Fr*R, Fc*C) each group's
    latched GEMM weights. Overwrites (or, with ``linear_tail``, corrects) the replayed outputs
    of ``y`` (B, N, oh, ow) int32 in place."""
    R = cfg.rows
    groups = Wp.shape[0]
    Ng = y.shape[1] // groups
    p = psum.plan(cm, cfg, chain_cols, Wp.shape[2] // cfg.cols, Ng, linear_tail)
    if p is None:
        return
    O, S = p.keep.shape
    sign = 1 << (cfg.psum_bits - 1)
    kh, kw = kernel
    taps = kh * kw
    cg = xp.shape[1] // groups  # input channels per group
    K = cg * taps
    dev = xp.device
    B = y.shape[0]
    Fr = Wp.shape[1] // R
    n_loc = torch.from_numpy(p.n_idx).to(dev)
    n_t = (torch.arange(groups, device=dev).unsqueeze(1) * Ng + n_loc).flatten()  # the layer's channels
    Wv = psum.segment_weights(Wp[..., n_loc], p, R).permute(0, 1, 4, 3, 2)  # (groups, Fr, O, S, R)
    wmax = abs_max(Wv)
    yv = y.flatten(2)  # a view in either layout
    tot = torch.zeros((B, groups, O, yv.shape[2]), dtype=torch.int64, device=dev)
    keep_t = torch.from_numpy(np.ascontiguousarray(p.keep.T)).to(dev).view(S, 1, 1, O, 1)
    ones_t = torch.from_numpy(np.ascontiguousarray(p.ones.T)).to(dev).view(S, 1, 1, O, 1)
    per_group = xp.unflatten(1, (groups, cg))
    for fr in range(Fr):
        k0, k1 = fr * R, min(K, fr * R + R)
        c_lo, c_hi = k0 // taps, (k1 - 1) // taps
        local = torch.zeros((groups, O * S, (c_hi - c_lo + 1) * taps), dtype=Wv.dtype, device=dev)
        local[..., k0 - c_lo * taps:k1 - c_lo * taps] = Wv[:, fr, ..., :k1 - k0].reshape(groups, O * S, -1)
        w_fold = local.view(groups * O * S, c_hi - c_lo + 1, kh, kw)
        x_fold = per_group[:, :, c_lo:c_hi + 1].flatten(1, 2)
        seg = exact_conv(x_fold, ConvWeights.of(w_fold, wmax, groups), stride, padding, amax)  # (B, groups*O*S, oh, ow)
        seg = seg.to(torch.int64).reshape(B, groups, O, S, -1).permute(3, 0, 1, 2, 4)  # segments first
        tot += psum.fold_chain_torch(seg, keep_t, ones_t, sign, linear_tail)
    tot = tot.flatten(1, 2)
    if linear_tail:
        yv[:, n_t] = wrap(yv[:, n_t].to(torch.int64) + tot, 32).to(yv.dtype)
    else:
        yv[:, n_t] = wrap(tot, 32).to(yv.dtype)
