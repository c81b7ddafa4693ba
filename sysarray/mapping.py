"""How a GEMM folds onto the array: which operand element each PE holds in each fold, and back.

A layer is the GEMM ``Y[M x N] = A[M x K] . W[K x N]`` (a convolution through :func:`im2col`,
K in PyTorch's ``(c, kh, kw)`` order). The dataflow puts one GEMM dimension on the array rows
(``Sr``), one on the columns (``Sc``) and streams the third (``T``) in time (docs/design.md §2.1,
SCALE-Sim v2's convention):

====  =====  =====  ====  =====================================  ========================
flow  rows   cols   T     stationary in the PEs                  streamed operands
====  =====  =====  ====  =====================================  ========================
ws    K      N      M     weight ``W[k, n]`` (weight register)   A east along row k mod R
os    M      N      K     output ``Y[m, n]`` (psum accumulator)  A east, W south
is    K      M      N     input ``A[m, k]`` (act register)       W east along row k mod R
====  =====  =====  ====  =====================================  ========================

The one rule every engine, mask and mitigation method uses: element ``(i, j)`` of the
``Sr x Sc`` spatial matrix (the stationary operand in WS and IS, the output in OS) sits in fold
``(i // R, j // C)`` at PE ``(i % R, j % C)``. So a PE's fault touches every element ``i % R ==
r, j % C == c``: in WS every weight ``W[k, n]`` with ``k % R == r`` and ``n % C == c``.

Folds run column fold outer, row fold inner (SCALE-Sim v2's order): fold ``f`` is row fold
``f % row_folds`` of column fold ``f // row_folds``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from typing import TYPE_CHECKING

import numpy as np

from sysarray.config import ArrayConfig, Dataflow
from sysarray.faults import Register
from sysarray.validation import check_enum, check_instance, check_positive_int

if TYPE_CHECKING:
    import torch

__all__ = [
    "Fold",
    "Layout",
    "LAYOUTS",
    "check_gemm",
    "element_of",
    "fold_grid",
    "fold_layout",
    "conv_by_gemms",
    "conv_output_size",
    "im2col",
    "pe_elements",
    "pe_of",
    "per_element",
    "per_pe_sum",
    "spatial_dims",
    "weight_pe_totals",
]


@dataclass(frozen=True)
class Layout:
    """One dataflow's mapping: the GEMM dimension (``"M"``, ``"K"`` or ``"N"``) on the array rows,
    on the columns and streamed in time, and the register that holds the stationary value."""

    rows: str
    cols: str
    streamed: str
    stationary: Register


LAYOUTS: dict[Dataflow, Layout] = {
    Dataflow.WS: Layout("K", "N", "M", Register.WEIGHT),
    Dataflow.OS: Layout("M", "N", "K", Register.PSUM),
    Dataflow.IS: Layout("K", "M", "N", Register.ACT),
}


class Fold(NamedTuple):
    """One fold: how many array rows and columns hold real data, and how long it streams.

    ``rows_used`` <= R and ``cols_used`` <= C (PEs); ``T`` is the streamed length (cycles of data).
    """

    rows_used: int
    cols_used: int
    T: int


def spatial_dims(M: int, K: int, N: int, dataflow: Dataflow | str) -> tuple[int, int, int]:
    """``(Sr, Sc, T)``: the GEMM dimension on the array rows, on the columns, and streamed in time."""
    flow = dataflow.lower() if isinstance(dataflow, str) and not isinstance(dataflow, Dataflow) else dataflow
    layout = LAYOUTS[check_enum(flow, Dataflow, "dataflow", "spatial_dims")]
    dims = {"M": M, "K": K, "N": N}
    return dims[layout.rows], dims[layout.cols], dims[layout.streamed]


def check_gemm(M: object, K: object, N: object, cfg: object, where: str) -> tuple[int, int, int]:
    """``(M, K, N)`` as positive ints, ``cfg`` an ArrayConfig, or the error naming ``where``."""
    check_instance(cfg, ArrayConfig, "cfg", where)
    return (check_positive_int(M, "M", where), check_positive_int(K, "K", where),
            check_positive_int(N, "N", where))


def fold_grid(M: int, K: int, N: int, cfg: ArrayConfig) -> tuple[int, int]:
    """``(row_folds, col_folds)`` = ``(ceil(Sr / R), ceil(Sc / C))``."""
    M, K, N = check_gemm(M, K, N, cfg, "fold_grid")
    sr, sc, _ = spatial_dims(M, K, N, cfg.dataflow)
    return -(-sr // cfg.rows), -(-sc // cfg.cols)


def fold_layout(M: int, K: int, N: int, cfg: ArrayConfig) -> list[Fold]:
    """Every fold of ``Y[M x N] = A[M x K] . W[K x N]`` on ``cfg``, in execution order.

    ``folds[fc * row_folds + fr]`` is row fold ``fr`` of column fold ``fc``; only the last row
    fold and the last column fold can be partly used.
    """
    M, K, N = check_gemm(M, K, N, cfg, "fold_layout")
    sr, sc, t = spatial_dims(M, K, N, cfg.dataflow)
    R, C = cfg.rows, cfg.cols
    return [Fold(min(R, sr - fr * R), min(C, sc - fc * C), t)
            for fc in range(-(-sc // C)) for fr in range(-(-sr // R))]


def pe_of(i, j, R: int, C: int):
    """The PE ``(i % R, j % C)`` that holds element ``(i, j)`` of the spatial matrix (ints or arrays)."""
    return i % R, j % C


def element_of(fold_r, fold_c, r, c, R: int, C: int):
    """The element ``(fold_r*R + r, fold_c*C + c)`` that PE ``(r, c)`` holds in fold ``(fold_r, fold_c)``."""
    return fold_r * R + r, fold_c * C + c


def pe_elements(r: int, c: int, R: int, C: int) -> tuple[slice, slice]:
    """Slices of a spatial matrix (rows dim x cols dim) selecting every element PE ``(r, c)``
    holds, over all folds: ``x[pe_elements(r, c, R, C)]``."""
    return slice(r, None, R), slice(c, None, C)


def per_element(per_pe, shape: tuple[int, int]):
    """The value of the PE holding each element of an ``I x J`` spatial matrix.

    per_pe: (R, C) numpy array or torch tensor (masks, faulty-PE flags); returns (I, J) of the same
    kind: ``out[i, j] = per_pe[i % R, j % C]``. With ``I, J`` multiples of ``R, C`` this is the
    array tiled over the folds."""
    R, C = per_pe.shape
    I, J = shape
    reps = (-(-I // R), -(-J // C))
    tiled = np.tile(per_pe, reps) if isinstance(per_pe, np.ndarray) else per_pe.repeat(*reps)  # torch: Tensor.repeat
    return tiled[:I, :J]


def per_pe_sum(values: np.ndarray, R: int, C: int) -> np.ndarray:
    """The inverse direction: (I, J) per-element values -> (R, C) sums over the elements each PE
    holds (float64)."""
    I, J = values.shape
    padded = np.zeros((-(-I // R) * R, -(-J // C) * C))
    padded[:I, :J] = values
    return padded.reshape(-1, R, padded.shape[1] // C, C).sum(axis=(0, 2))


def weight_pe_totals(scores_kn: np.ndarray, cfg: ArrayConfig) -> np.ndarray:
    """(K, N) per-weight scores of one GEMM -> (R, C) per-PE totals: each weight's score over the
    PEs whose registers it passes. WS: the PE ``(k % R, n % C)`` that holds ``W[k, n]``. IS: W
    streams east along row ``k % R``, every PE of it; OS: W streams south down column ``n % C``.
    A streamed weight's score is split evenly over its row (column)."""
    R, C = cfg.rows, cfg.cols
    per_pe = per_pe_sum(scores_kn, R, C)
    if cfg.dataflow is Dataflow.IS:
        return np.repeat(per_pe.sum(axis=1, keepdims=True) / C, C, axis=1)
    if cfg.dataflow is Dataflow.OS:
        return np.repeat(per_pe.sum(axis=0, keepdims=True) / R, R, axis=0)
    return per_pe


def conv_output_size(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int]) -> tuple[int, int]:
    """``(oh, ow)`` of a convolution (no dilation, floor mode)."""
    return (h + 2 * padding[0] - kernel[0]) // stride[0] + 1, (w + 2 * padding[1] - kernel[1]) // stride[1] + 1


def conv_by_gemms(x: "torch.Tensor", weight: "torch.Tensor", stride: tuple[int, int], padding: tuple[int, int],
                  pad_value: float, groups: int, bmm) -> "torch.Tensor":
    """A convolution as the array runs it: :func:`im2col`, then one GEMM per group, all of them
    as one ``bmm(a, w)`` call with ``a`` (groups, M, K/groups) each group's columns and ``w``
    (groups, K/groups, N/groups) its weights (``bmm`` returns the (groups, M, N/groups)
    products, an engine's), laid out as (B, N, oh, ow)."""
    B, N = x.shape[0], int(weight.shape[0])
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    oh, ow = conv_output_size(x.shape[2], x.shape[3], kernel, stride, padding)
    cols = im2col(x, kernel, stride, padding, pad_value)
    M = cols.shape[0]
    a = cols.view(M, groups, -1).transpose(0, 1)  # (groups, M, K/groups), a view
    y = bmm(a, weight.reshape(groups, N // groups, -1).transpose(1, 2))  # (groups, M, N/groups)
    return y.permute(1, 0, 2).reshape(B, oh * ow, N).transpose(1, 2).reshape(B, N, oh, ow)


def im2col(x: "torch.Tensor", kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           pad_value: float) -> "torch.Tensor":
    """A convolution's GEMM operand: images (B, C, H, W) -> A (B*oh*ow, C*kh*kw), padded with
    ``pad_value``; K in PyTorch's (c, kh, kw) order (the weight is ``weight.reshape(N, K).t()``),
    rows in (b, oh, ow) order.

    Built from strided windows and one copy (torch's F.unfold is far slower on CPU).
    """
    import torch.nn.functional as F  # here: the rest of this module, and timing, need no torch

    kh, kw = kernel
    ph, pw = padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=pad_value)
    win = x.unfold(2, kh, stride[0]).unfold(3, kw, stride[1])  # (B, C, oh, ow, kh, kw)
    B, C, oh, ow = win.shape[:4]
    return win.permute(0, 2, 3, 1, 4, 5).reshape(B * oh * ow, C * kh * kw)
