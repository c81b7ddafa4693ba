"""The weight-memory fault site (mitigation.md section 2): bit errors in the stored int8 weights
and in the stored threshold codes of a lowered :class:`~accel_models.program.Program`.

Each stored tensor is an array of 8-bit words. For a bit error rate ``ber`` the number of faulty
bits of a tensor of ``n`` words is drawn from ``Binomial(8 n, ber)`` (no truncation, so a small
tensor is hit now and then, as it would be), the bits are distinct and uniform over the tensor.
A faulty bit is flipped (``mode="flip"``) or stuck at 0 / 1 (``"stuck0"``, ``"stuck1"``, or
``"stuck"``: each stuck bit draws its value uniformly). Weights are int8 two's complement (a flip
of bit 7 moves a weight by 128, and may give -128); threshold codes use the activation's code type
(uint8 after a ReLU). Biases (int32) and requantization multipliers are registers of the
post-processing unit, not weight memory, and are left healthy (a choice; spec section 2 names only
weights and thresholds).

Tensors are visited in program order (each Gemm's weights, then its thresholds; then stand-alone
Clip ops), each with its own generator spawned from ``seed``, so the same seed and program give
the same corrupted program, and turning ``thresholds`` off leaves the weight faults unchanged.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from accel_models.program import Clip, Gemm, Program
from sysarray.faultgen import Seed, as_rng

MODES = ("flip", "stuck0", "stuck1", "stuck")
WORD_BITS = 8


@dataclasses.dataclass(frozen=True)
class MemoryFaultReport:
    """How many bits a call corrupted: per tensor name, and in total."""

    bits: dict
    total_bits: int

    @property
    def faulty_bits(self) -> int:
        return int(sum(self.bits.values()))


def _check(ber: float, mode: str, bits: Sequence[int] | None) -> tuple[float, np.ndarray]:
    if isinstance(ber, bool) or not isinstance(ber, (int, float, np.floating)) or not 0.0 <= float(ber) <= 1.0:
        raise ValueError(f"The 'ber' argument of corrupt_program must be a bit error rate in [0, 1]. Got {ber!r} instead.")
    if mode not in MODES:
        raise ValueError(f"The 'mode' argument of corrupt_program must be one of {', '.join(MODES)}. Got {mode!r} instead.")
    allowed = np.arange(WORD_BITS) if bits is None else np.unique(np.asarray(list(bits), dtype=np.int64))
    if allowed.size == 0 or allowed.min() < 0 or allowed.max() >= WORD_BITS:
        raise ValueError(f"The 'bits' argument of corrupt_program must be bit positions in 0..7. Got {bits!r} instead.")
    return float(ber), allowed


def corrupt_words(words: np.ndarray, ber: float, rng: np.random.Generator, mode: str = "flip",
                  bits: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Bit errors in a flat array of 8-bit words (uint8, the raw stored patterns); returns a new
    array and the number of faulty bits. ``bits``: the bit positions that can fail (default all 8);
    the count is ``Binomial(len(words) * len(bits), ber)``."""
    allowed = np.arange(WORD_BITS) if bits is None else bits
    n_sites = words.size * allowed.size
    count = int(rng.binomial(n_sites, ber)) if n_sites else 0
    out = words.copy()
    if count == 0:
        return out, 0
    site = rng.choice(n_sites, size=count, replace=False)
    word, bit = site // allowed.size, allowed[site % allowed.size]
    mask = (np.uint8(1) << bit.astype(np.uint8)).astype(np.uint8)
    if mode == "flip":
        np.bitwise_xor.at(out, word, mask)
    else:
        value = np.full(count, 1 if mode == "stuck1" else 0, dtype=np.uint8)
        if mode == "stuck":
            value = rng.integers(0, 2, size=count).astype(np.uint8)
        ones = mask[value == 1]
        zeros = mask[value == 0]
        np.bitwise_or.at(out, word[value == 1], ones)
        np.bitwise_and.at(out, word[value == 0], ~zeros)
    return out, count


def _corrupt_tensor(t: torch.Tensor, signed: bool, ber: float, rng, mode: str, bits) -> tuple[torch.Tensor, int]:
    """An integer tensor of 8-bit codes (int8 or uint8 semantics) with bit errors; same dtype and shape."""
    codes = t.detach().cpu().to(torch.int64).numpy()
    words = (codes & 0xFF).astype(np.uint8).ravel()  # the stored 8-bit patterns
    bad, count = corrupt_words(words, ber, rng, mode, bits)
    back = bad.astype(np.int8).astype(np.int64) if signed else bad.astype(np.int64)
    return torch.from_numpy(back.reshape(codes.shape)).to(t.dtype), count


def corrupt_program(program: Program, ber: float, *, seed: Seed, mode: str = "flip", weights: bool = True,
                    thresholds: bool = True, bits: Sequence[int] | None = None,
                    report: bool = False) -> Program | tuple[Program, MemoryFaultReport]:
    """A copy of ``program`` whose stored weights (int8) and threshold codes have bit errors at
    ``ber``; ``program`` itself is not changed. ``mode``: flip, stuck0, stuck1 or stuck (random
    value). ``bits``: the bit positions that can fail (default 0..7). With ``report=True`` also
    returns a :class:`MemoryFaultReport`.
    """
    if not isinstance(program, Program):
        raise TypeError(f"The 'program' argument of corrupt_program must be an accel_models Program. Got {type(program).__name__} instead.")
    ber, allowed = _check(ber, mode, bits)
    tensors = []  # (op index, field) in program order
    for i, op in enumerate(program.ops):
        if isinstance(op, Gemm):
            tensors.append((i, "weight"))
            if op.clip_codes is not None:
                tensors.append((i, "clip_codes"))
        elif isinstance(op, Clip):
            tensors.append((i, "codes"))
    if isinstance(seed, np.random.SeedSequence):
        root = seed
    elif isinstance(seed, np.random.Generator):
        root = np.random.SeedSequence(int(seed.integers(0, 2**63)))
    else:
        as_rng(seed, "corrupt_program")  # validates
        root = np.random.SeedSequence(int(seed))
    children = root.spawn(len(tensors))
    ops = list(program.ops)
    counts, total = {}, 0
    for (i, field), child in zip(tensors, children):
        is_weight = field == "weight"
        if (is_weight and not weights) or (not is_weight and not thresholds):
            continue
        op = ops[i]
        value = getattr(op, field)
        # int8 weights; thresholds in the activation's code type (a Clip's 8-bit clamp tops at 127 when signed)
        signed = True if is_weight else (op.out_qp.signed if isinstance(op, Gemm) else op.hi < 128)
        new, count = _corrupt_tensor(value, signed, ber, np.random.default_rng(child), mode, allowed)
        total += value.numel() * allowed.size
        counts[f"{getattr(op, 'name', op.output)}.{field}"] = count
        ops[i] = dataclasses.replace(op, **{field: new})
    out = dataclasses.replace(program, ops=ops, meta=dict(program.meta))
    return (out, MemoryFaultReport(bits=counts, total_bits=total)) if report else out


__all__ = ["MODES", "MemoryFaultReport", "corrupt_program", "corrupt_words"]
