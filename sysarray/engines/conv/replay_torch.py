"""The psum replay by per-fold convolutions, chains in torch ops: the CUDA path (and a CPU check)."""
from __future__ import annotations

import numpy as np
import torch

from sysarray.config import ArrayConfig
from sysarray.engines import psum
from sysarray.engines.conv.exact import exact_conv
from sysarray.engines.conv.weights import ConvWeights
from sysarray.engines.registers import ChipMasks, wrap


def replay_by_fold_convs(xp: torch.Tensor, Wp: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, chain_cols: np.ndarray,
                         kernel, stride, padding, amax: int, y: torch.Tensor, linear_tail: bool) -> None:
    """Each fold's segment sums from one small convolution over the fold's input channels with
    masked "virtual filters" ``Wv[fr, o, s, r]`` (:func:`~sysarray.engines.psum.segment_weights`);
    the chains run fold by fold in torch ops (:func:`~sysarray.engines.psum.fold_chain_torch`).
    Overwrites (or, with ``linear_tail``, corrects) the replayed outputs of ``y`` (B, N, oh, ow)
    int32 in place."""
    R = cfg.rows
    p = psum.plan(cm, cfg, chain_cols, Wp.shape[1] // cfg.cols, y.shape[1], linear_tail)
    if p is None:
        return
    O, S = p.keep.shape
    sign = 1 << (cfg.psum_bits - 1)
    kh, kw = kernel
    taps = kh * kw
    K = xp.shape[1] * taps
    dev = xp.device
    B = y.shape[0]
    Fr = Wp.shape[0] // R
    n_t = torch.from_numpy(p.n_idx).to(dev)
    Wv = psum.segment_weights(Wp, p, R).permute(0, 3, 2, 1)  # (Fr, O, S, R)
    wmax = int(Wv.abs().max()) if Wv.numel() else 0
    yv = y.flatten(2)  # a view in either layout
    tot = torch.zeros((B, O, yv.shape[2]), dtype=torch.int64, device=dev)
    keep_t = torch.from_numpy(np.ascontiguousarray(p.keep.T)).to(dev).view(S, 1, O, 1)
    ones_t = torch.from_numpy(np.ascontiguousarray(p.ones.T)).to(dev).view(S, 1, O, 1)
    for fr in range(Fr):
        k0, k1 = fr * R, min(K, fr * R + R)
        c_lo, c_hi = k0 // taps, (k1 - 1) // taps
        local = torch.zeros((O * S, (c_hi - c_lo + 1) * taps), dtype=torch.int64, device=dev)
        local[:, k0 - c_lo * taps:k1 - c_lo * taps] = Wv[fr, :, :, :k1 - k0].reshape(O * S, -1)
        w_fold = local.view(O * S, c_hi - c_lo + 1, kh, kw)
        seg = exact_conv(xp[:, c_lo:c_hi + 1], ConvWeights.of(w_fold, wmax), stride, padding, amax)  # (B, O*S, oh, ow)
        seg = seg.to(torch.int64).reshape(B, O, S, -1).permute(2, 0, 1, 3)  # segments first
        tot += psum.fold_chain_torch(seg, keep_t, ones_t, sign, linear_tail)
    if linear_tail:
        yv[:, n_t] = wrap(yv[:, n_t].to(torch.int64) + tot, 32).to(yv.dtype)
    else:
        yv[:, n_t] = wrap(tot, 32).to(yv.dtype)
