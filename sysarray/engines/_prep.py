"""Per-PE register masks shared by both engines (validated inputs only).

A register of width ``w`` with stuck masks ``(stuck, ones)`` reads
``force(x) = (((x & keep) | ones) ^ sign) - sign`` with ``keep = ~stuck & (2**w - 1)`` and
``sign = 2**(w-1)`` (0 for an unsigned read-back). For a healthy register this is the wrap to
``w`` bits, so the psum register's wrap and its stuck bits are one operation.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sysarray.config import ArrayConfig
from sysarray.faults import FaultMap, Register

OPERAND_BITS = 8


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
    def latches_sent_weights(self) -> bool:
        """No stuck weight bit and no bypassed PE: every PE holds the weight it is sent."""
        return not self.weight.faulty.any() and not self.bypassed.any()


def _register(stuck: np.ndarray, ones: np.ndarray, width: int, signed: bool) -> RegisterMasks:
    full = (1 << width) - 1
    return RegisterMasks(
        keep=(~stuck) & full,
        ones=ones & full,
        sign=(1 << (width - 1)) if signed else 0,
        width=width,
    )


def chip_masks(cfg: ArrayConfig, faults: FaultMap | None, act_signed: bool) -> ChipMasks:
    """Masks of the ``weight``, ``act`` and ``psum`` registers of every PE.

    In bypass mode every faulty PE gets identity masks and ``enable = 0``: it forwards its
    inputs unchanged and adds nothing (chip.md section 3).
    """
    R, C = cfg.rows, cfg.cols
    zeros = np.zeros((R, C), dtype=np.int64)
    stuck = {reg: (zeros, zeros) for reg in Register}
    bypassed = np.zeros((R, C), dtype=bool)
    if faults is not None and not faults.is_empty:
        if cfg.bypass:
            bypassed = faults.faulty_pes()
        else:
            stuck = {reg: faults.masks(reg) for reg in Register}
    return ChipMasks(
        weight=_register(*stuck[Register.WEIGHT], OPERAND_BITS, True),
        act=_register(*stuck[Register.ACT], OPERAND_BITS, act_signed),
        psum=_register(*stuck[Register.PSUM], cfg.psum_bits, True),
        enable=(~bypassed).astype(np.int64),
        bypassed=bypassed,
    )


def compose(first: tuple[int, int], then: tuple[int, int]) -> tuple[int, int]:
    """Stuck masks ``(stuck, ones)`` of forcing by ``first`` and then by ``then``."""
    s1, o1 = first
    s2, o2 = then
    return s1 | s2, (o1 & ~s2) | o2


def force_np(x: np.ndarray, keep, ones, sign) -> np.ndarray:
    """Read back ``x`` (int64) through a register with the given masks."""
    return (((x & keep) | ones) ^ sign) - sign


def wrap_np(x: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement wrap of int64 values to ``bits`` bits."""
    sign = 1 << (bits - 1)
    return ((x & ((1 << bits) - 1)) ^ sign) - sign
