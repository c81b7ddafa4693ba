"""The weight-memory fault site (docs/design.md §6.3), in two weight formats.

- ``int8`` (the spec's, the default everywhere): bit errors in the stored int8 weights and in the
  stored threshold codes of a lowered :class:`~accel_models.program.Program`
  (:func:`corrupt_program`).
- ``float32`` (the clipping papers' setting: FT-ClipAct, Ranger and their re-runs inject into
  float32 weights): bit errors in the IEEE-754 float32 words of a float torch model's Conv/Linear
  weights and of its :class:`~accel_models.clipact.ClippedReLU` thresholds
  (:func:`corrupt_model`). An exponent-bit flip can make a weight ~1e38 (bit 30 of a weight below
  2 in magnitude), which is what activation clipping is good at removing.

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

The float32 site follows the same rules with 32-bit words: per tensor ``Binomial(32 n, ber)``
faulty bits (over the allowed ``bits``, 0..31; bit 31 is the sign, 30..23 the exponent, 22..0 the
mantissa), distinct uniform sites, the same modes. Tensors are visited in ``named_modules`` order
(each ``nn.Conv*``/``nn.Linear`` weight; each ``ClippedReLU`` threshold where it comes), one
spawned generator each. What is corrupted (a choice, the same as int8): Conv/Linear weights and the
thresholds only. Biases and BatchNorm parameters and statistics stay healthy: on the accelerator
they are post-processing registers (the int8 lowering folds BatchNorm into the requantization and
the bias into the int32 bias register), not weight memory. The faulty model can compute NaN and
inf (``0 * inf``, ``inf - inf``): the zero clipping policy maps both to 0 (``x`` if ``0 <= x <= T``
else 0; NaN fails the comparison); unclipped, they reach the logits. :func:`float_accuracy`
counts a logit row holding any NaN as a misprediction (``argmax`` of such a row would name
whichever class holds the NaN, which is no prediction); a row with infinities but no NaN is
judged by ``argmax`` as usual (the first of equal maxima).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from accel_models.clipact import ClippedReLU
from accel_models.program import Clip, Gemm, Program
from sysarray.faultgen import Seed
from sysarray.validation import as_rng, check_choice, check_fraction, check_instance

MODES = ("flip", "stuck0", "stuck1", "stuck")
WORD_BITS = 8
FLOAT_WORD_BITS = 32
WEIGHT_FORMATS = ("int8", "float32")


@dataclasses.dataclass(frozen=True)
class MemoryFaultReport:
    """How many bits a call corrupted: per tensor name, and in total."""

    bits: dict
    total_bits: int

    @property
    def faulty_bits(self) -> int:
        return int(sum(self.bits.values()))


def _check(ber: float, mode: str, bits: Sequence[int] | None, width: int = WORD_BITS,
           where: str = "corrupt_program") -> tuple[float, np.ndarray]:
    ber = check_fraction(ber, "ber", where)
    check_choice(mode, "mode", where, MODES)
    allowed = np.arange(width) if bits is None else np.unique(np.asarray(list(bits), dtype=np.int64))
    if allowed.size == 0 or allowed.min() < 0 or allowed.max() >= width:
        raise ValueError(f"The 'bits' argument of {where} must be bit positions in 0..{width - 1}. Got {bits!r} instead.")
    return ber, allowed


def _root_seed(seed: Seed, where: str) -> np.random.SeedSequence:
    """The SeedSequence whose children seed the tensors (a Generator gives one draw of it)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(0, 2**63)))
    as_rng(seed, where)  # validates
    return np.random.SeedSequence(int(seed))


def corrupt_words(words: np.ndarray, ber: float, rng: np.random.Generator, mode: str = "flip",
                  bits: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Bit errors in a flat array of stored words, uint8 (int8 weights, threshold codes) or uint32
    (float32 words); returns a new array of the same dtype and the number of faulty bits.
    ``bits``: the bit positions that can fail (default all 8 or 32); the count is
    ``Binomial(len(words) * len(bits), ber)``. Private kernel: the arguments are not checked."""
    width = words.dtype.itemsize * 8
    allowed = np.arange(width) if bits is None else bits
    n_sites = words.size * allowed.size
    count = int(rng.binomial(n_sites, ber)) if n_sites else 0
    out = words.copy()
    if count == 0:
        return out, 0
    site = rng.choice(n_sites, size=count, replace=False)
    word, bit = site // allowed.size, allowed[site % allowed.size]
    mask = (words.dtype.type(1) << bit.astype(words.dtype)).astype(words.dtype)
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
    check_instance(program, Program, "program", "corrupt_program", what="an accel_models Program")
    ber, allowed = _check(ber, mode, bits)
    tensors = []  # (op index, field) in program order
    for i, op in enumerate(program.ops):
        if isinstance(op, Gemm):
            tensors.append((i, "weight"))
            if op.clip_codes is not None:
                tensors.append((i, "clip_codes"))
        elif isinstance(op, Clip):
            tensors.append((i, "codes"))
    children = _root_seed(seed, "corrupt_program").spawn(len(tensors))
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


# --------------------------------------------------------------------------- float32 weights
_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def float_tensors(model: nn.Module) -> list[tuple[str, str, nn.Parameter]]:
    """The float32 site's stored tensors of ``model`` in the fixed order the seeds follow:
    ``(name, kind, parameter)`` with kind ``"weight"`` (each Conv/Linear weight) or
    ``"threshold"`` (each ClippedReLU threshold), in ``named_modules`` order."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, _WEIGHT_LAYERS):
            out.append((f"{name}.weight", "weight", m.weight))
        elif isinstance(m, ClippedReLU):
            out.append((f"{name}.threshold", "threshold", m.threshold))
    return out


def _corrupt_float(t: torch.Tensor, ber: float, rng, mode: str, bits) -> tuple[torch.Tensor, int]:
    """A float32 tensor with bit errors in its IEEE-754 words; same shape."""
    words = t.detach().cpu().contiguous().view(torch.int32).numpy().view(np.uint32).ravel()
    bad, count = corrupt_words(words, ber, rng, mode, bits)
    return torch.from_numpy(bad.view(np.int32).reshape(t.shape)).view(torch.float32), count


def corrupt_model(model: nn.Module, ber: float, *, seed: Seed, mode: str = "flip", weights: bool = True,
                  thresholds: bool = True, bits: Sequence[int] | None = None,
                  report: bool = False) -> nn.Module | tuple[nn.Module, MemoryFaultReport]:
    """A copy of the float ``model`` (in eval mode) whose float32 Conv/Linear weights and
    ClippedReLU thresholds have bit errors at ``ber``; ``model`` itself is not changed. Biases and
    BatchNorm stay healthy (module docstring). ``mode``: flip, stuck0, stuck1 or stuck (random
    value). ``bits``: the bit positions that can fail (default 0..31, 31 the sign). With
    ``report=True`` also returns a :class:`MemoryFaultReport` (bits per ``"<module>.weight"`` /
    ``"<module>.threshold"``).
    """
    check_instance(model, nn.Module, "model", "corrupt_model", what="a torch.nn.Module")
    ber, allowed = _check(ber, mode, bits, FLOAT_WORD_BITS, "corrupt_model")
    tensors = float_tensors(model)
    bad_dtype = [f"{n} ({p.dtype})" for n, _, p in tensors if p.dtype != torch.float32]
    if bad_dtype:
        raise TypeError(f"The 'model' argument of corrupt_model must have float32 weights and thresholds (the float32 "
                        f"weight-memory site). Got {', '.join(bad_dtype)} instead; convert the model with model.float().")
    children = _root_seed(seed, "corrupt_model").spawn(len(tensors))
    out = copy.deepcopy(model).eval()
    params = dict(out.named_parameters(remove_duplicate=False))
    counts, total = {}, 0
    for (name, kind, p), child in zip(tensors, children):
        if (kind == "weight" and not weights) or (kind == "threshold" and not thresholds):
            continue
        new, count = _corrupt_float(p, ber, np.random.default_rng(child), mode, allowed)
        with torch.no_grad():
            params[name].copy_(new)
        total += p.numel() * allowed.size
        counts[name] = count
    return (out, MemoryFaultReport(bits=counts, total_bits=total)) if report else out


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """``(N, classes)`` logits -> ``(N,)`` int64 predicted classes; ``-1`` (never a label) for a row
    holding any NaN, which counts as a misprediction; otherwise ``argmax`` (infinities included)."""
    pred = logits.argmax(1)
    return torch.where(torch.isnan(logits).any(1), torch.full_like(pred, -1), pred)


@torch.no_grad()
def float_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Accuracy (fraction) of a float model on ``images`` (``(N, C, H, W)`` float) against
    ``labels`` (``(N,)`` int64), a NaN logit row counting as wrong (:func:`predictions`)."""
    pred = torch.cat([predictions(model(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])
    return float((pred == labels).double().mean())


__all__ = ["FLOAT_WORD_BITS", "MODES", "MemoryFaultReport", "WEIGHT_FORMATS", "corrupt_model", "corrupt_program",
           "corrupt_words", "float_accuracy", "float_tensors", "predictions"]
