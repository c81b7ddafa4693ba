"""Exact integer products on an int8 GEMM (``torch._int_mm``): oneDNN's VNNI / AMX paths on CPU,
cuBLASLt's int8 tensor cores on CUDA.

An int8 x int8 GEMM with int32 sums is exact while ``K * 128 * 128 < 2**31``; 8-bit codes held as
uint8 (``0..255``) go in shifted by -128, and the product adds ``128 * sum_k`` of the other
operand back (``x @ w = (x - 128) @ w + 128 * 1 @ w``), exact while ``K * 255 * 128 < 2**31``.
These are candidates beside the float products exact by bound (float32 on CPU, float64 on CUDA);
which is faster depends on the machine (int8 dot-product instructions or none, a GPU's tensor
cores) and the shape, so callers choose by measurement (:class:`sysarray.parallel.MeasuredChoice`).
On CUDA the GEMM takes more than 16 rows and inner and output sizes that are multiples of 8
(:func:`int_mm` pads with zeros, which add nothing) and a GPU with int8 tensor cores (compute
capability 7.5 or later, :func:`usable`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Hashable, TypeVar

import torch

if TYPE_CHECKING:
    from sysarray.engines.conv.weights import ConvWeights
    from sysarray.parallel import MeasuredChoice

T = TypeVar("T")

AVAILABLE = hasattr(torch, "_int_mm")
INT32_LIMIT = 1 << 31
# "int8": the int8 kernels wherever they are exact; "float32": never; None: measured (tests and
# reproducible benchmarks pin a path)
FORCE: str | None = None
_CUDA_CHOICES: dict[str, "MeasuredChoice"] = {}  # by name: the choices made on a GPU (cuda_decisions)


def usable(device: torch.device) -> bool:
    """Whether this torch has an int8 GEMM on ``device``: any CPU; a CUDA GPU with int8 tensor cores."""
    if not AVAILABLE:
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 5)


def choose(choice: "MeasuredChoice", key: Hashable, float_call: Callable[[], T], int8_call: Callable[[], T],
           int8_ok: bool, device: torch.device | None = None) -> T:
    """One exact product on the float kernel or the int8 one: ``float_call()`` where the int8
    kernel does not apply (``int8_ok`` False, no int8 GEMM in this torch) or ``FORCE`` is
    "float32", ``int8_call()`` where ``FORCE`` is "int8", else whichever ``choice`` measured
    faster for ``key``. ``device``: the operands' (a CUDA choice is timed to the end of the GPU's
    work and keyed by the GPU's name, apart from the CPU's)."""
    if not (int8_ok and AVAILABLE) or FORCE == "float32":
        return float_call()
    if FORCE == "int8":
        return int8_call()
    if device is not None and device.type == "cuda":
        _CUDA_CHOICES[str(choice.name)] = choice
        return choice((*key, "cuda", torch.cuda.get_device_name(device)), {"float": float_call, "int8": int8_call},
                      sync=torch.cuda.synchronize)
    return choice(key, {"float": float_call, "int8": int8_call})


def cuda_decisions() -> dict[str, dict[tuple, str]]:
    """Per choice name, the kernel ("float" or "int8") each shape key took on a GPU in this process
    (for reports: which products the GPU's int8 tensor cores won)."""
    return {name: {key: option for key, option in choice.choices().items() if "cuda" in key}
            for name, choice in _CUDA_CHOICES.items()}


def int_mm(a8: torch.Tensor, w8: torch.Tensor) -> torch.Tensor:
    """``a8 @ w8`` of int8 matrices (M, K) x (K, N) as a new (M, N) int32 tensor on their device,
    exact (``torch._int_mm``). On CUDA the operands go in as :func:`imma_operands` lays them out
    and the product is cut back to (M, N)."""
    if a8.device.type != "cuda":
        return torch._int_mm(a8, w8)
    M, N = a8.shape[0], w8.shape[1]
    y = torch._int_mm(*imma_operands(a8, w8))
    return y if y.shape == (M, N) else y[:M, :N].contiguous()


def imma_operands(a8: torch.Tensor, w8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``a8`` (M, K) and ``w8`` (K, N) zero-padded to :func:`imma_shape` (zeros add nothing to
    the product: its first M rows and N columns are ``a8 @ w8``), ``a8`` row-major and ``w8``
    column-major, the layout CUDA's int8 GEMM takes (any device)."""
    (M, K), N = a8.shape, w8.shape[1]
    Mp, Kp, Np = imma_shape(M, K, N)
    if (Mp, Kp) != (M, K) or not a8.is_contiguous():
        a = torch.zeros((Mp, Kp), dtype=torch.int8, device=a8.device)
        a[:M, :K] = a8
        a8 = a
    wt = torch.zeros((Np, Kp), dtype=torch.int8, device=w8.device)
    wt[:N, :K] = w8.t()
    return a8, wt.t()


def imma_shape(M: int, K: int, N: int) -> tuple[int, int, int]:
    """The smallest ``(M, K, N)`` at least these that CUDA's int8 GEMM takes: more than 16 rows,
    ``K`` and ``N`` positive multiples of 8."""
    return max(M, 17), max(8, -(-K // 8) * 8), max(8, -(-N // 8) * 8)


def exact_in_int32(k: int) -> bool:
    """True when an int8 GEMM of inner size ``k`` of shifted 8-bit codes has exact int32 sums."""
    return k * 255 * 128 < INT32_LIMIT


def as_int8(x: torch.Tensor, unsigned: bool) -> torch.Tensor:
    """8-bit codes ``x`` (any dtype holding them) as a new contiguous int8 tensor, shifted by -128
    when ``unsigned`` (values 0..255)."""
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    if x.dtype == torch.uint8 and unsigned:
        return torch.bitwise_xor(x.view(torch.int8), -128, out=out)  # x - 128 is x with its top bit flipped
    return out.copy_(torch.sub(x, 128) if unsigned else x)


def canonical(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it with the canonical strides when a size-1 dimension has another
    stride: oneDNN reads such a stride as a leading dimension and returns wrong sums."""
    if any(size == 1 and stride != want for size, stride, want in zip(t.shape, t.stride(), _row_major(t.shape))):
        return torch.empty(t.shape, dtype=t.dtype).copy_(t)
    return t


def _row_major(shape) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return strides[::-1]


def bmm_int8(S: torch.Tensor, W: torch.Tensor, s_unsigned: bool, w_unsigned: bool,
             s8: torch.Tensor | None = None) -> torch.Tensor:
    """``S @ W`` exactly: S (G, T, K), W (G, K, N) 8-bit codes (int8, or uint8 where ``*_unsigned``,
    in any dtype holding them; not both unsigned), one int8 GEMM per batch index. Returns (G, T, N)
    int32. ``s8``: ``as_int8(S, s_unsigned)`` when the caller has it."""
    G, T, K = S.shape
    N = W.shape[-1]
    s8, w8 = as_int8(S, s_unsigned) if s8 is None else s8, as_int8(W, w_unsigned)
    if S.device.type == "cuda":
        out = torch.stack([int_mm(s8[g], w8[g]) for g in range(G)]) if G else \
            torch.empty((0, T, N), dtype=torch.int32, device=S.device)
    else:
        out = torch.empty((G, T, N), dtype=torch.int32)
        for g in range(G):
            torch._int_mm(s8[g], w8[g], out=out[g])
    if s_unsigned:
        out += 128 * w8.sum(dim=1, keepdim=True, dtype=torch.int32) + (128 * 128 * K if w_unsigned else 0)
    if w_unsigned:
        out += 128 * s8.sum(dim=2, keepdim=True, dtype=torch.int32)
    return out


def conv_int8(x: torch.Tensor, cw: ConvWeights, stride, padding, act_signed: bool) -> torch.Tensor:
    """``conv2d(x, cw.w)`` exactly (one group, zero padding): x (B, C, H, W) 8-bit codes in any
    dtype and layout, int8 codes when ``act_signed`` else uint8. The im2col rows are built in int8
    from a channels-last copy (one shifted copy per kernel tap) and multiplied by the int8 weights
    in one GEMM. Returns (B, N, oh, ow) int32 stored channels-last."""
    B, C, H, W = x.shape
    N, _, kh, kw = cw.w.shape
    sh, sw = stride
    ph, pw = padding
    oh, ow = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    w8, colsum = cw.int8_im2col
    dev = x.device
    xp = torch.empty((B, H + 2 * ph, W + 2 * pw, C), dtype=torch.int8, device=dev)
    if ph or pw:
        xp.fill_(0 if act_signed else -128)  # the zero code, shifted as the codes are
    inner = xp[:, ph:ph + H, pw:pw + W]
    if x.dtype == torch.uint8 and not act_signed:
        inner.copy_(x.permute(0, 2, 3, 1).view(torch.int8)).bitwise_xor_(-128)
    else:
        inner.copy_(x.permute(0, 2, 3, 1) if act_signed else torch.sub(x, 128).permute(0, 2, 3, 1))
    cols = torch.empty((B, oh, ow, kh * kw, C), dtype=torch.int8, device=dev)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i * kw + j] = xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    y = int_mm(cols.view(B * oh * ow, kh * kw * C), w8)
    if not act_signed:
        y += colsum
    return y.view(B, oh, ow, N).permute(0, 3, 1, 2)
