"""Exact integer matrix products from floating-point GEMMs.

A float GEMM of integer-valued operands is exact when every partial sum it can form is an
integer below the float's mantissa limit (2**24 for float32, 2**53 for float64): then every
intermediate is representable, whatever order the BLAS adds in. ``exact_matmul`` splits the
inner dimension into chunks that respect that bound and adds the chunks in int64.
"""
from __future__ import annotations

import torch

_F32_LIMIT = 1 << 24
_F64_LIMIT = 1 << 53


def _float_dtype(device: torch.device) -> torch.dtype:
    # TF32 or reduced-precision fp32 GEMMs would lose bits: use float64 there.
    if device.type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    ):
        return torch.float64
    return torch.float32


def float_dtype_for(device: torch.device) -> torch.dtype:
    """The float dtype whose GEMMs ``exact_matmul`` uses on ``device``."""
    return _float_dtype(device)


def abs_max(x: torch.Tensor) -> int:
    """max |x| of an integer-valued tensor as a Python int (0 when empty)."""
    if not x.numel():
        return 0
    lo, hi = torch.aminmax(x)
    return max(-int(lo), int(hi))  # not x.abs(): abs(-128) overflows in int8


def never_wraps(k: int, max_abs_a: int, max_abs_b: int, psum_bits: int) -> bool:
    """True when no sum of at most ``k`` products of such integers reaches the range of a
    ``psum_bits`` register (nor int32's): every partial and whole sum of a fault-free GEMM is
    then the plain one, in every dataflow."""
    return k * max(1, int(max_abs_a)) * max(1, int(max_abs_b)) < 1 << (min(psum_bits, 32) - 1)


def float_gemm_is_exact(k: int, max_abs_a: int, max_abs_b: int, dtype: torch.dtype) -> bool:
    """True when a ``dtype`` GEMM with inner size ``k`` of such integers is exact."""
    limit = _F32_LIMIT if dtype == torch.float32 else _F64_LIMIT
    return k * max(1, int(max_abs_a)) * max(1, int(max_abs_b)) < limit


def exact_matmul(a: torch.Tensor, b: torch.Tensor, max_abs_a: int, max_abs_b: int,
                 keep_float: bool = False) -> torch.Tensor:
    """``a @ b`` exactly for integer-valued tensors (any leading batch dims).

    a: (..., M, K), b: (..., K, N), any dtype holding integers with |a| <= max_abs_a and
    |b| <= max_abs_b. Returns (..., M, N) int64, or with ``keep_float`` the float product
    itself when one exact float GEMM suffices (its values are exact integers).
    """
    k = a.shape[-1]
    term = max(1, int(max_abs_a) * int(max_abs_b))
    dtype = _float_dtype(a.device)
    limit = _F32_LIMIT if dtype == torch.float32 else _F64_LIMIT
    chunk = max(1, (limit - 1) // term)
    if term >= limit:
        raise OverflowError("exact_matmul: operands too large for an exact float product")
    af = a.to(dtype)
    bf = b.to(dtype)
    if k <= chunk:
        out = torch.matmul(af, bf)
        return out if keep_float else out.to(torch.int64)
    out = None
    for lo in range(0, k, chunk):
        part = torch.matmul(af[..., lo:lo + chunk], bf[..., lo:lo + chunk, :]).to(torch.int64)
        out = part if out is None else out + part
    return out
