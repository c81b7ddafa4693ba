"""The psum replay of a linear layer (1x1 images) as one GEMM's chains, straight from its operands."""
from __future__ import annotations

import numpy as np
import torch

from sysarray.config import ArrayConfig
from sysarray.engines import chains_simd, psum
from sysarray.engines.conv.fix import ChainFix
from sysarray.engines.conv.weights import ConvWeights
from sysarray.engines.registers import ChipMasks
from sysarray.engines.transpose import transposed


def replay_linear(x: torch.Tensor, cw: ConvWeights, cfg: ArrayConfig, cm: ChipMasks, chain_cols: np.ndarray,
                  N: int, linear_tail: bool) -> ChainFix | None:
    """The replayed outputs of a linear layer held as a convolution of 1x1 images: ``x`` (B, K,
    1, 1) float32 codes, ``cw`` its latched weights (N, K, 1, 1). The batch is transposed once
    (each input channel's values over the batch contiguous) and
    :func:`~sysarray.engines.chains_simd.gemm_chains` sums each segment as axpys of those rows,
    vectorised over the batch, with the chain fused; every segment sum must be exact in float32
    (``R * max|x| * max|w| < 2**24``). Returns the totals as a :class:`ChainFix` in pixel order
    (None: no output has a faulty column)."""
    B, K = int(x.shape[0]), int(x.shape[1])
    p = psum.plan(cm, cfg, chain_cols, -(-N // cfg.cols), N, linear_tail)
    if p is None:
        return None
    st = transposed(x.reshape(B, K), scratch=True)  # (K, B), read by the kernel below only
    w = cw.w.view(N, K).t().unsqueeze(0)  # (1, K, N), a view
    tot = np.empty((B, 1, len(p.n_idx)), dtype=np.int32)
    chains_simd.gemm_chains(st.numpy(), w.numpy(), p.n_idx, p.seg_of_row, p.keep, p.ones, p.n_seg, cfg.rows,
                            1 << (cfg.psum_bits - 1), linear_tail, tot.reshape(B, -1))
    return ChainFix(p.n_idx, tot, linear_tail, pixel_major=True)

