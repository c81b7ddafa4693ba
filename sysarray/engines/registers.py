"""What a stuck bit does to a register: the one definition every fast path calls.

A register of width ``w`` with stuck masks ``(stuck, ones)`` reads back a pattern ``x`` as

    force(x) = (((x & keep) | ones) ^ sign) - sign,   keep = ~stuck & (2**w - 1),

with ``sign = 2**(w-1)`` for a signed read-back (0 for an unsigned ``act`` register holding uint8
codes). For a healthy register this is the two's complement wrap to ``w`` bits, so the psum
register's wrap and its stuck bits are one operation (docs/design.md §2.3).

:func:`force` is written with operators only, so the same function serves Python and numpy
integers, torch tensors, numba scalars and arrays (:data:`force_jit`) and the SIMD vectors of
:mod:`sysarray.engines.simd`; :func:`force_i32` is its read in 32-bit lanes. The cycle engine
(``_cycle_kernels.py``) and the test oracle keep their own expressions on purpose: the equality
tests compare independent implementations.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from numba import njit

from sysarray import mapping
from sysarray.config import ArrayConfig
from sysarray.faults import FaultMap
from sysarray.tensor_memo import TensorMemo

OPERAND_BITS = 8


def force(x, keep, ones, sign):
    """Read ``x`` back through a register with masks ``keep``/``ones`` and sign bit ``sign``
    (int64 values or tensors; any mix of scalars and arrays that broadcast)."""
    return (((x & keep) | ones) ^ sign) - sign


force_jit = njit(cache=True, inline="always")(force)


@njit(cache=True, inline="always")
def force_i32(q, keep, ones, sign):
    """:func:`force` in 32-bit lanes: ``q``, ``keep``, ``ones``, ``sign`` int32 bit patterns
    (``sign`` of a 32-bit register is -2**31), the result the read-back mod 2**32. Every
    operation of the formula commutes with truncation to 32 bits, so this is ``force`` of the
    int64 values, truncated; int32 lanes vectorise twice as wide."""
    return np.int32(force_jit(q, keep, ones, sign))


def wrap(x, bits: int):
    """Two's complement wrap of int64 values (or tensors) to ``bits`` bits: a healthy register."""
    sign = 1 << (bits - 1)
    return force(x, (1 << bits) - 1, 0, sign)


def keep_of(stuck: int, width: int) -> int:
    """``keep`` (for :func:`force`) of a register of ``width`` bits whose bits ``stuck`` are stuck."""
    return ((1 << width) - 1) & ~stuck


def compose(first: tuple[int, int], then: tuple[int, int]) -> tuple[int, int]:
    """Stuck masks ``(stuck, ones)`` of forcing by ``first`` and then by ``then`` (an operand
    latched by two faulty registers in a row)."""
    s1, o1 = first
    s2, o2 = then
    return s1 | s2, (o1 & ~s2) | o2


@dataclass(frozen=True)
class RegisterMasks:
    """Forcing masks of one register over the whole array; each (R, C) int64."""

    keep: np.ndarray
    ones: np.ndarray
    sign: int
    width: int

    @cached_property
    def faulty(self) -> np.ndarray:
        """(R, C) bool: PEs where this register has a stuck bit (computed once: frozen masks)."""
        return (self.keep != (1 << self.width) - 1) | (self.ones != 0)

    @cached_property
    def any_faulty(self) -> bool:
        """Whether any PE's register has a stuck bit (asked on every GEMM: computed once)."""
        return bool(self.faulty.any())


@dataclass(frozen=True)
class ChipMasks:
    """Everything the kernels need to know about one chip for one GEMM."""

    weight: RegisterMasks
    act: RegisterMasks
    psum: RegisterMasks
    enable: np.ndarray  # (R, C) int64, 0 for a bypassed PE
    bypassed: np.ndarray  # (R, C) bool

    @cached_property
    def psum_columns(self) -> np.ndarray:
        """(k,) int64: the array columns with a stuck psum bit (computed once per chip)."""
        return np.flatnonzero(self.psum.faulty.any(axis=0)).astype(np.int64)

    @cached_property
    def any_bypassed(self) -> bool:
        """Whether any PE is bypassed (computed once per chip)."""
        return bool(self.bypassed.any())

    @cached_property
    def latches_sent_weights(self) -> bool:
        """No stuck weight bit and no bypassed PE: every PE holds the weight it is sent."""
        return not self.weight.any_faulty and not self.any_bypassed


_NUMPY_DTYPES = (torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def latched(stationary, reg: RegisterMasks, bypassed: np.ndarray, dtype):
    """The stationary operand as every PE of every fold latches it.

    stationary: (..., I, J) torch tensor of integer values, one matrix per GEMM of a batch (WS:
    the weights K x N; IS: the inputs K x M); reg: the register that holds it; bypassed: (R, C)
    bool. Returns (..., ceil(I/R)*R, ceil(J/C)*C) ``dtype``: zero-padded to whole folds, forced
    through each PE's register (:mod:`sysarray.mapping`: element (i, j) sits at PE (i % R,
    j % C)), zero where the PE is bypassed. ``dtype`` must hold the register's read-back (int8
    for a signed 8-bit register, int16 or a float type for any)."""
    R, C = reg.keep.shape
    *lead, I, J = stationary.shape
    shape = (-(-I // R) * R, -(-J // C) * C)
    dev = stationary.device
    out = torch.zeros((*lead, *shape), dtype=dtype, device=dev)
    numpy_ok = stationary.dtype in _NUMPY_DTYPES and dtype in _NUMPY_DTYPES and not stationary.requires_grad
    if dev.type == "cpu" and numpy_ok:
        out.numpy()[..., :I, :J] = stationary.numpy()  # numpy's casting copy: torch's costs more on small operands
    else:
        out[..., :I, :J] = stationary
    if reg.any_faulty:
        # int16 holds every 8-bit pattern and its read-back, so the masks apply exactly
        keep = torch.from_numpy(mapping.per_element(reg.keep, shape)).to(dev, torch.int16)
        ones = torch.from_numpy(mapping.per_element(reg.ones, shape)).to(dev, torch.int16)
        out = force(out.to(torch.int16), keep, ones, reg.sign).to(dtype)
    if bypassed.any():
        out.masked_fill_(torch.from_numpy(mapping.per_element(bypassed, shape)).to(dev), 0)
    return out


# The masks of the most recent chips, by value: every Chip of one (array, map) gets the same
# object, so the per-chip plans memoised by its identity serve them all.
_MASKS = TensorMemo(max_entries=64)


def chip_masks(cfg: ArrayConfig, faults: FaultMap | None, act_signed: bool) -> ChipMasks:
    """Masks of the ``weight``, ``act`` and ``psum`` registers of every PE (one shared object
    per ``(cfg, faults, act_signed)`` among the most recent: not to be written).

    In bypass mode every faulty PE gets identity masks and ``enable = 0``: it forwards its
    inputs unchanged and adds nothing (docs/design.md §2.7).
    """
    return _MASKS.get((), (cfg, faults, bool(act_signed)), lambda: _chip_masks(cfg, faults, act_signed))


def _chip_masks(cfg: ArrayConfig, faults: FaultMap | None, act_signed: bool) -> ChipMasks:
    R, C = cfg.rows, cfg.cols
    widths = (OPERAND_BITS, OPERAND_BITS, cfg.psum_bits)  # weight, act, psum: the map's register codes
    signs = (1 << (OPERAND_BITS - 1), (1 << (OPERAND_BITS - 1)) if act_signed else 0, 1 << (cfg.psum_bits - 1))
    full = np.array([(1 << w) - 1 for w in widths], dtype=np.int64).reshape(3, 1, 1)
    faulted = faults is not None and not faults.is_empty
    bypassed = faults.faulty_pes() if faulted and cfg.bypass else np.zeros((R, C), dtype=bool)
    if faulted and not cfg.bypass:
        stuck = faults.all_masks()  # (3, 2, R, C): every register's masks in one operation each
        keep, ones = ~stuck[:, 0] & full, stuck[:, 1] & full
    else:
        keep, ones = np.broadcast_to(full, (3, R, C)).copy(), np.zeros((3, R, C), dtype=np.int64)
    regs = [RegisterMasks(keep=keep[i], ones=ones[i], sign=signs[i], width=widths[i]) for i in range(3)]
    return ChipMasks(weight=regs[0], act=regs[1], psum=regs[2], enable=(~bypassed).astype(np.int64), bypassed=bypassed)
