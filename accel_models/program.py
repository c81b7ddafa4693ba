"""The integer program: a list of integer-only ops, and its runner on a (faulty) chip.

Values are 8-bit codes of affine-quantized tensors (see :mod:`accel_models.quant`), carried as
float32 torch tensors holding exact integers between ops (so im2col and the fast engine's float
GEMMs need no conversions); every arithmetic step that rounds is done in int64. Conv and Linear run on the chip as GEMMs (im2col, K order
``(c, kh, kw)`` = ``weight.reshape(N, -1)``); everything else is the fault-free post-processing
unit: bias add, requantization, activation clamps, pooling, residual add. The only floating-point
step is the final dequantization of the last layer's int32 accumulators into logits.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from accel_models.matmul import MatMul, matmul_accumulators, run_matmul
from accel_models.pool_kernels import max_pool_2x2
from accel_models.ppu import (PPU_OPS, AdaptiveAvgPool, Cat, Constant, Div, Layout, LayerNorm, Lut, Mean, Mul,
                               RunContext, Softmax)
from accel_models.quant import (QParams, quantize_codes, requantize_clamp, requantize_saturates, rescale_add,
                                rounding_divide)
from sysarray import ArrayConfig, Chip, ConvHints, Engine, FaultMap, GemmStats
from sysarray.parallel import MeasuredChoice
from sysarray.runtime import threads
from sysarray.tensor_memo import TensorMemo
from sysarray.validation import check_instance, check_int, check_positive_int

ADD_SHIFT = 20  # fixed-point bits of the residual-add rescaling multipliers


PpuOp = Lut | Mul | Div | Cat | Layout | Constant | Mean | AdaptiveAvgPool | LayerNorm | Softmax


@dataclass
class QuantizeInput:
    """Float images -> 8-bit codes: ``q = clamp(round_half_up(x / scale) + zp)``."""

    output: str
    qp: QParams

    def inputs(self) -> tuple[str, ...]:
        return ()


@dataclass
class Gemm:
    """A Conv2d or Linear layer on the chip, with its post-processing.

    weight: int8 (N, C/groups, kh, kw) or (N, K); bias: int64 (N,) at scale ``s_in * s_w``
    with the input zero point folded in (``- z_in * sum_k w``); m0/shift: (N,) int64 fixed-point
    requantization multipliers; lo/hi: the output clamp in codes (ReLU, ReLU6, clipping and the
    8-bit range in one). ``out_qp`` is None for the last layer, whose int32 accumulators are
    dequantized with ``acc_scale`` (N,) into logits.

    ``out_order``: None, or an int64 (N,) permutation that a fault-aware mapping
    (``mitigation.remap``) set: the weight rows are then in array order, row ``i`` filling GEMM
    column ``i`` (array column ``i % C`` in WS and OS), and output channel ``j`` is accumulator
    ``out_order[j]``. :func:`postprocess` gathers the accumulators first, so bias, m0, shift,
    clip codes, ``acc_scale`` and the float sources stay in channel order and the next op sees
    the original channels (the post-processing unit writes each column to its channel's address:
    no run-time cost). A grouped conv permutes within each group only.

    ``in_order``: None, or an int64 permutation of the input channels (conv: ``C``, each a block of
    ``kh*kw`` consecutive K rows; linear: the ``K`` features, the last dim over tokens) that a
    fault-aware mapping set: the weight's input channels are then in array order, and the layer
    reads input channel ``in_order[i]`` at position ``i`` (:func:`gather_input`, the input buffer's
    address generator: no run-time cost; the producer's output order is unchanged). A grouped conv
    keeps each channel within its group.
    """

    name: str
    kind: str  # "conv" or "linear"
    input: str
    output: str
    weight: torch.Tensor
    bias: torch.Tensor
    in_qp: QParams
    out_qp: QParams | None
    m0: torch.Tensor
    shift: torch.Tensor
    lo: int
    hi: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    acc_scale: torch.Tensor | None = None
    # Float sources (BN folded) for the fake-quant twin and retraining.
    float_weight: torch.Tensor | None = field(default=None, repr=False)
    float_bias: torch.Tensor | None = field(default=None, repr=False)
    activation: str = "none"  # what the clamp implements: none, relu, relu6, clip
    # Clipped activation (accel_models.clipact): int64 threshold codes broadcast against one
    # sample's output, shape () layer-wise, (N, 1, 1) / (N,) per channel, (N, oh, ow) / (N,) per
    # neuron; policy "clamp" (min(q, t)) or "zero" (q if the unsaturated code <= t else zero point).
    clip_codes: torch.Tensor | None = None
    clip_policy: str = "zero"
    out_order: torch.Tensor | None = None
    in_order: torch.Tensor | None = None

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class MaxPool:
    """Max pool on codes (padding never wins), as ``F.max_pool2d`` with the same geometry."""

    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def plain_2x2(self) -> bool:
        """A 2x2 pool at stride 2 without padding, dilation or ceil mode (one-pass kernels)."""
        return (tuple(self.kernel), tuple(self.stride), tuple(self.padding), tuple(self.dilation), self.ceil_mode) \
            == ((2, 2), (2, 2), (0, 0), (1, 1), False)


@dataclass
class AvgPool:
    """Average pool on codes: zero-point padding, integer sum, round-half-up division by the area."""

    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    zero_point: int

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass
class Add:
    """Residual add: ``q = clamp(round_half_up(((a-za)*Ma + (b-zb)*Mb) / 2**ADD_SHIFT) + z)``."""

    a: str
    b: str
    output: str
    za: int
    zb: int
    ma: int
    mb: int
    zero_point: int
    lo: int
    hi: int
    activation: str = "none"

    def inputs(self) -> tuple[str, ...]:
        return (self.a, self.b)


@dataclass
class Clamp:
    """A stand-alone ReLU/ReLU6/clip on codes (same quantization in and out)."""

    input: str
    output: str
    lo: int
    hi: int

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass
class Clip:
    """A stand-alone clipped activation on codes (same quantization in and out, see
    :func:`apply_clip`): ``clamp(x, lo, hi)``, then the threshold codes ``codes`` (int64, broadcast
    against one sample as :attr:`Gemm.clip_codes`) with ``policy`` "clamp" or "zero"; the zero
    policy compares the unsaturated input ``x`` with the threshold and writes ``zero_point``."""

    input: str
    output: str
    lo: int
    hi: int
    codes: torch.Tensor
    policy: str
    zero_point: int

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


Op = QuantizeInput | Gemm | MatMul | MaxPool | AvgPool | Add | Clamp | Clip | PpuOp
CHIP_OPS = (Gemm, MatMul)  # ops that run on the array


@dataclass
class LayerStats:
    """One chip layer of a run: GEMM shape, timing (summed over batches) and fault effects."""

    name: str
    kind: str
    m: int
    k: int
    n: int
    macs: int
    cycles: int
    overall_util: float
    mapping_efficiency: float
    compute_util: float
    changed: int | None  # GEMM outputs the faults changed (None: not counted)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RunResult:
    """logits: (N, classes) float64; predictions: (N,) int64; layers: per chip layer."""

    logits: torch.Tensor
    predictions: torch.Tensor
    layers: list[LayerStats]

    @property
    def cycles(self) -> int:
        return sum(l.cycles for l in self.layers)

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    def overall_util(self, n_pes: int) -> float:
        """Utilization of the whole run in percent: MACs / (cycles x PEs)."""
        return 100.0 * self.macs / max(1, self.cycles * n_pes)

    def accuracy(self, labels: torch.Tensor) -> float:
        """The share of images whose prediction equals ``labels`` (N,) integer class indices."""
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(labels)
        if not isinstance(labels, torch.Tensor) or labels.dtype == torch.bool or labels.is_floating_point() \
                or labels.is_complex():
            got = f"{labels.dtype} tensor" if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise TypeError(f"The 'labels' argument of RunResult.accuracy must be an integer tensor of class indices. "
                            f"Got {got} instead.")
        n = self.predictions.shape[0]
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(f"The 'labels' argument of RunResult.accuracy must have one label per image: shape ({n},) "
                             f"for the {n} images run. Got shape {tuple(labels.shape)} ({labels.numel()} labels) "
                             f"instead.")
        return float((self.predictions == labels.to(self.predictions.device)).double().mean())


@dataclass
class LayerTrace:
    """One chip layer of a fault-free run: ``acc`` its accumulators as the engine returned them
    (conv layout, (B, N, oh, ow)), ``out`` its output codes (None: not kept)."""

    acc: torch.Tensor
    out: torch.Tensor | None


@dataclass
class BatchTrace:
    """One batch of a fault-free run: ``outputs`` value per op output name, ``layers`` per chip
    layer name, for a prefix of the program's ops."""

    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, LayerTrace] = field(default_factory=dict)
    nbytes: int = 0


@dataclass
class CleanTrace:
    """A fault-free run of ``images`` on the array ``cfg`` (fast engine, CPU), kept so that runs of
    the same images on faulty chips of that array reuse it (:meth:`Program.trace`, ``reference=``
    of :meth:`Program.run`; a campaign's evaluator keeps one).

    A faulty run takes an op's kept output wherever the op's inputs are still the fault-free
    ones and the op is post-processing, or a chip layer whose accumulators the chip does not
    change (no replayed output, healthy weight registers: the engine says so by returning the
    kept accumulators themselves); at the first layer the chip changes, the fault-free
    convolution is reused and only the replayed outputs are corrected. Only a prefix of the ops
    is kept, within ``max_bytes``; results are exactly those of a run without it.
    """

    images: torch.Tensor
    cfg: object
    batch_size: int
    result: RunResult
    batches: list[BatchTrace]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.batches)


# --------------------------------------------------------------------------- integer kernels
def quantize_input(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Float -> codes (round half up). The one place the program touches floats on the way in."""
    return quantize_codes(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)


def postprocess(acc: torch.Tensor, op: Gemm) -> torch.Tensor:
    """int32 accumulators (M, N) or (B, N, oh, ow), channels on dim 1 -> float32 output codes of
    the same shape (int64 biased accumulators for the last layer)."""
    if op.out_order is not None:
        acc = acc.index_select(1, op.out_order.to(acc.device))  # array order -> channel order
    if op.out_qp is None:
        shape = (1, -1) + (1,) * (acc.dim() - 2)
        return acc.to(torch.int64) + op.bias.to(acc.device).view(shape)
    if op.clip_codes is not None:
        # Clipped activation: the zero policy compares the unsaturated code with the threshold, so
        # requantize without the 8-bit clamp first (float32 is exact up to 2**24, far above any threshold).
        raw = requantize_clamp(acc, op.bias, op.m0, op.shift, op.out_qp.zero_point, -(1 << 31), (1 << 31) - 1)
        return apply_clip(raw, raw.clamp(op.lo, op.hi), op.clip_codes, op.clip_policy, op.out_qp.zero_point)
    return requantize_clamp(acc, op.bias, op.m0, op.shift, op.out_qp.zero_point, op.lo, op.hi)


# Per program, batch shape and chip kind: whether the run is faster on torch's threads or on one.
_THREADS = MeasuredChoice()


def _measured_threads(run: Callable[[], torch.Tensor], key: tuple, chip: Chip) -> torch.Tensor:
    """``run()`` on torch's and numba's threads or on one thread, whichever measured faster for
    ``key`` on this machine (the same values either way). Small layers run many short torch ops
    between numba kernels, and waking torch's thread pool for each can cost more than it saves;
    large ones gain from the threads. CPU fast engine with several threads, in the main thread
    only (torch's thread count is the process's: other threads running programs keep it)."""
    if chip.engine is not Engine.FAST or (chip.device is not None and chip.device.type != "cpu") \
            or torch.get_num_threads() == 1 or threading.current_thread() is not threading.main_thread():
        return run()

    def one_thread() -> torch.Tensor:
        with threads(1):
            return run()
    return _THREADS(key, (run, one_thread))


SATURATION = 1 << 24  # the largest bound float32 holds exactly (see saturation)
_SATURATES = TensorMemo()


def saturation(op: Gemm) -> int | None:
    """``2**24`` when every output code of ``op`` is the same for all accumulators at or beyond
    ``2**24`` (and at or beyond ``-2**24``): the requantization, monotone in the accumulator, has
    reached the clamp there, in every channel (or the channel's multiplier is zero). The fast
    engine may then return faulty accumulators beyond it clamped (:class:`sysarray.ConvHints`'
    ``saturate``). None for the last layer (its accumulators are the logits) and for clipped
    activations (their zero policy reads the unsaturated code)."""
    if op.out_qp is None or op.clip_codes is not None or not op.out_channels:
        return None
    check = lambda: SATURATION if requantize_saturates(  # noqa: E731
        op.bias, op.m0, op.shift, op.out_qp.zero_point, op.lo, op.hi, SATURATION) else None
    return _SATURATES.get((op.bias, op.m0, op.shift), (op.out_qp.zero_point, op.lo, op.hi), check)


def apply_clip(raw: torch.Tensor, q: torch.Tensor, codes: torch.Tensor, policy: str, zero_point: int) -> torch.Tensor:
    """Threshold codes on a batch of codes ``q`` (N, C, H, W) or (N, F), channels on dim 1;
    ``codes`` (int64) broadcast against one sample. "clamp": ``min(q, t)``; "zero": ``q`` where the
    unsaturated code ``raw <= t``, else ``zero_point`` (a value a fault pushed past the 8-bit maximum
    is still recognised as above the threshold)."""
    t = codes.to(device=q.device, dtype=q.dtype).unsqueeze(0)
    if policy == "clamp":
        return torch.minimum(q, t)
    return torch.where(raw <= t, q, torch.full_like(q, float(zero_point)))


def gather_input(x: torch.Tensor, op: Gemm) -> torch.Tensor:
    """The layer's input codes in array order (:attr:`Gemm.in_order`): conv (B, C, H, W) gathered
    on dim 1, linear on its K features ((B, K) from a flattened input, (..., K) over tokens)."""
    if op.in_order is None:
        return x
    order = op.in_order.to(x.device)
    if op.kind == "conv":
        return x.index_select(1, order)
    if x.dim() > 2 and x.shape[-1] == op.weight[0].numel():
        return x.index_select(-1, order)  # a linear layer over tokens
    return x.reshape(x.shape[0], -1).index_select(1, order)


def gather_weight_inputs(w: torch.Tensor, op: Gemm, order: torch.Tensor) -> torch.Tensor:
    """``w`` (``op``'s weight shape, rows in any group-preserving order) with input position ``i``
    holding input channel ``order[i]`` (within its group for a grouped conv): channel-order
    inputs -> array order with ``order = op.in_order``, back with its inverse permutation."""
    order = order.to(w.device)
    if op.kind == "linear":
        return w.reshape(w.shape[0], -1).index_select(1, order).reshape(w.shape)
    cg, ng = w.shape[1], w.shape[0] // op.groups
    local = (order.reshape(op.groups, cg) % cg).repeat_interleave(ng, dim=0)  # (N, C/groups)
    return torch.gather(w, 1, local.reshape(*local.shape, 1, 1).expand(w.shape))


def layer_accumulators(x: torch.Tensor, op: Gemm, chip: Chip, *, saturate: bool = True,
                       clean: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None) -> tuple[torch.Tensor, list[GemmStats]]:
    """One Gemm op's accumulators on ``chip``: conv (B, N, oh, ow) or linear (B, N), exact int32
    values (int32 or float32 tensor), and the timing of each GEMM (one per group).

    ``saturate``: the chip may clamp accumulators beyond the op's :func:`saturation` bound (its
    output codes are the same); ``clean``: the op's fault-free accumulators for this same ``x``,
    which the chip returns itself when it changes none of them (see :class:`sysarray.ConvHints`);
    ``weight``: integer weight codes of ``op.weight``'s shape and order to run in its place (a
    training step's).
    """
    x = gather_input(x, op)
    hints = _layer_hints(op, saturate, clean)
    signed = op.in_qp.signed
    weight = op.weight if weight is None else weight
    if op.kind == "linear":
        w = weight.reshape(weight.shape[0], -1)
        acc, stats = chip.linear(x.reshape(-1, w.shape[1]), w, act_signed=signed, hints=hints)
        return acc, [stats]
    return chip.conv2d(x, weight, **_conv_arguments(op), hints=hints)


def _conv_arguments(op: Gemm) -> dict:
    """A conv op's geometry and input coding as :meth:`sysarray.Chip.conv2d` takes them."""
    return dict(stride=op.stride, padding=op.padding, pad_value=op.in_qp.zero_point, groups=op.groups,
                act_signed=op.in_qp.signed)


def _layer_hints(op: Gemm, saturate: bool, clean: torch.Tensor | None) -> ConvHints:
    """What the program knows of one Gemm op's call on the chip (:class:`sysarray.ConvHints`)."""
    return ConvHints(x_bound=max(-op.in_qp.qmin, op.in_qp.qmax),  # the codes are clamped to their range
                     saturate=saturation(op) if saturate else None, clean=clean)


def run_gemm_layer(x: torch.Tensor, op: Gemm, chip: Chip, clean: LayerTrace | None = None, *,
                   saturate: bool = True, keep_acc: bool = True) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                          list[GemmStats]]:
    """Run one Gemm op on codes ``x`` on ``chip``: returns ``(out, acc, stats)`` with ``out`` the
    output codes, ``acc`` the accumulators (:func:`layer_accumulators`) and one GemmStats per
    GEMM. ``clean``: the layer's fault-free trace, for an ``x`` equal to the fault-free run's
    (see :class:`CleanTrace`); when the chip leaves the accumulators unchanged, ``out`` is the
    traced output. ``keep_acc=False``: the caller does not read ``acc``, which may then be None
    where a faulty chip's replayed outputs are applied within the requantization's pass
    (:meth:`sysarray.Chip.conv2d_deferred`)."""
    if clean is None:
        done = _clean_linear_layer(x, op, chip)
        if done is not None:
            return done
    if not keep_acc and op.kind == "conv" and op.out_qp is not None and op.clip_codes is None and op.out_order is None:
        y, correction, stats = chip.conv2d_deferred(gather_input(x, op), op.weight, **_conv_arguments(op),
                                                    hints=_layer_hints(op, saturate, None if clean is None else clean.acc))
        if correction is not None:
            return requantize_clamp(y, op.bias, op.m0, op.shift, op.out_qp.zero_point, op.lo, op.hi,
                                    correction=correction), None, stats
        acc = y
    else:
        acc, stats = layer_accumulators(x, op, chip, saturate=saturate, clean=None if clean is None else clean.acc)
    if clean is not None and acc is clean.acc and clean.out is not None:
        return clean.out, acc, stats
    out = postprocess(acc, op)
    if op.kind == "linear" and x.dim() > 2 and x.shape[-1] == op.weight[0].numel():
        out = out.reshape(*x.shape[:-1], op.out_channels)  # a linear layer over tokens (..., K) -> (..., N)
    return out, acc, stats


def _clean_linear_layer(x: torch.Tensor, op: Gemm, chip: Chip):
    """:func:`run_gemm_layer` of a plain linear layer (no channel orders, no clipping, not the
    logits) on float32 CPU codes, where the chip has its prepared fault-free product
    (:meth:`sysarray.Chip.clean_linear`): the same ``(out, acc, stats)`` without the general
    path's steps, which cost more than a small layer's GEMM. None elsewhere."""
    if (op.kind != "linear" or op.in_order is not None or op.out_order is not None or op.out_qp is None
            or op.clip_codes is not None or x.dtype != torch.float32 or x.device.type != "cpu"):
        return None
    N = op.out_channels
    w = op.weight.reshape(N, -1)
    K = w.shape[1]
    product = chip.clean_linear(w, act_signed=op.in_qp.signed, x_bound=max(-op.in_qp.qmin, op.in_qp.qmax))
    if product is None:
        return None
    rows = x.reshape(-1, K)  # tokens (..., K), or a flattened input (B, K)
    acc = product(rows)
    if acc is None:
        return None
    out = requantize_clamp(acc, op.bias, op.m0, op.shift, op.out_qp.zero_point, op.lo, op.hi)
    if x.dim() > 2 and x.shape[-1] == K:
        out = out.reshape(*x.shape[:-1], N)
    return out, acc, [chip.timing(rows.shape[0], K, N)]


def max_pool(x: torch.Tensor, op: MaxPool) -> torch.Tensor:
    """``F.max_pool2d`` (no dilation, floor mode) as the maximum of its ``kh*kw`` strided window
    slices: the same values, without torch's CPU kernel's slow path for NCHW codes."""
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    if tuple(op.dilation) != (1, 1) or op.ceil_mode:
        return F.max_pool2d(x, op.kernel, op.stride, op.padding, op.dilation, op.ceil_mode)
    if op.plain_2x2:
        out = max_pool_2x2(x)  # one pass (None: a layout or device it does not take)
        if out is not None:
            return out
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=-float("inf"))
    oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = None
    for a in range(kh):
        for b in range(kw):
            win = x[:, :, a:a + sh * (oh - 1) + 1:sh, b:b + sw * (ow - 1) + 1:sw]
            out = win.clone() if out is None else torch.maximum(out, win, out=out)  # clone: a new tensor, same layout
    return out


def avg_pool(x: torch.Tensor, op: AvgPool) -> torch.Tensor:
    ph, pw = op.padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=float(op.zero_point))
    sums = F.avg_pool2d(x, op.kernel, op.stride, divisor_override=1).to(torch.int64)  # exact integers
    return rounding_divide(sums, op.kernel[0] * op.kernel[1]).to(torch.float32)


def add(a: torch.Tensor, b: torch.Tensor, op: Add) -> torch.Tensor:
    """``op`` on codes ``a`` and ``b``, broadcast as torch does (a position embedding)."""
    if a.shape != b.shape:
        shape = torch.broadcast_shapes(a.shape, b.shape)
        a, b = a.expand(shape), b.expand(shape)
    return rescale_add(a, b, int(op.za), int(op.ma), int(op.zb), int(op.mb), ADD_SHIFT, int(op.zero_point),
                       int(op.lo), int(op.hi))


# --------------------------------------------------------------------------- the program
@dataclass
class Program:
    """An integer-only program lowered from a torch model (see :func:`accel_models.lower`)."""

    ops: list
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    meta: dict = field(default_factory=dict)
    # The logits are either the accumulators of the layer without output quantization, of
    # per-sample shape ``head_shape`` before the data movement that follows it (None: they are
    # the output as they are), or (when the model ends in another op) output codes dequantized
    # with ``output_qp``.
    head_shape: tuple[int, ...] | None = None
    output_qp: QParams | None = None

    @property
    def gemms(self) -> list[Gemm]:
        """The weight layers (conv, linear) on the chip, in program order."""
        return [op for op in self.ops if isinstance(op, Gemm)]

    @property
    def chip_layers(self) -> list[Gemm | MatMul]:
        """Every op that runs on the array: weight layers and activation-by-activation products."""
        return [op for op in self.ops if isinstance(op, CHIP_OPS)]

    @property
    def logits_layer(self) -> Gemm | None:
        """The layer whose accumulators are the logits (None when the output is codes)."""
        if self.output_qp is not None:
            return None
        return next((op for op in self.gemms if op.out_qp is None), self.gemms[-1])

    def logit_scales(self) -> torch.Tensor:
        """float64 (classes,): the scale of each logit's accumulator, moved as the program moves
        the logits layer's output channels."""
        last = self.logits_layer
        if self.head_shape is None:
            return last.acc_scale.double()
        view = [1] * (len(self.head_shape) + 1)
        axis = 1 if last.kind == "conv" else len(view) - 1
        view[axis] = -1
        value = last.acc_scale.double().view(view).expand(1, *self.head_shape)
        start = self.ops.index(last)
        names = {last.output}
        rc = RunContext(batch=1, device=value.device)
        for op in self.ops[start + 1:]:
            if isinstance(op, Layout) and op.input in names:
                value = op.run([value], rc)
                names.add(op.output)
        return value.reshape(-1)

    def execute(self, images: torch.Tensor, chip: Chip, on_layer: Callable | None = None,
                reference: BatchTrace | None = None, record: BatchTrace | None = None, record_bytes: int = 0,
                saturate: bool = True, acc_values: bool = True) -> torch.Tensor:
        """Run every op on ``images`` (one batch), the chip layers on ``chip``. Returns the final
        int64 accumulators (N, classes); ``on_layer(op, x, acc, stats)`` sees every chip layer's
        input codes, accumulators and GEMM timings; ``acc_values=False``: it reads only their
        shape, and a faulty layer whose replayed outputs are applied within its requantization
        (:func:`run_gemm_layer`) passes its output codes in their place. ``saturate``: hidden layers may take
        accumulators clamped where their requantization saturates (:func:`saturation`; the
        outputs are the same, the accumulators ``on_layer`` sees are not exact then).

        ``reference``: this batch's fault-free trace (:class:`CleanTrace`): ops whose inputs
        still equal the fault-free ones reuse it. ``record``: filled with the values of the
        ops in order, up to the first that would take it past ``record_bytes``."""
        env: dict[str, torch.Tensor] = {}
        same: set[str] = set()  # values equal to the reference run's
        recording = record is not None
        rc = RunContext(batch=images.shape[0], device=images.device)
        for op in self.ops:
            unchanged = reference is not None and all(name in same for name in op.inputs())
            if unchanged and not isinstance(op, CHIP_OPS) and op.output in reference.outputs:
                env[op.output] = reference.outputs[op.output]
                same.add(op.output)
                continue
            layer = None
            if isinstance(op, QuantizeInput):
                q = quantize_input(images, op.qp)
                # Channels-last on CPU: oneDNN convolves NHWC without reordering; every op keeps
                # whichever layout it is given (values are the same).
                env[op.output] = q.contiguous(memory_format=torch.channels_last) if q.dim() == 4 and not q.is_cuda else q
            elif isinstance(op, Gemm):
                clean = reference.layers.get(op.name) if unchanged else None
                out, acc, stats = run_gemm_layer(env[op.input], op, chip, clean, saturate=saturate,
                                                 keep_acc=(on_layer is not None and acc_values) or recording)
                if on_layer is not None:
                    on_layer(op, env[op.input], out if acc is None else acc, stats)  # None: the same shape
                env[op.output] = out
                unchanged = clean is not None and acc is clean.acc
                layer = LayerTrace(acc, out)
            elif isinstance(op, MatMul):
                a, b = env[op.a], env[op.b]
                env[op.output], acc, stats = run_matmul(a, b, op, chip)
                if on_layer is not None:
                    on_layer(op, (a, b), acc, stats)
                unchanged = False
            elif isinstance(op, PPU_OPS):
                env[op.output] = op.run([env[name] for name in op.inputs()], rc)
            elif isinstance(op, MaxPool):
                env[op.output] = max_pool(env[op.input], op)
            elif isinstance(op, AvgPool):
                env[op.output] = avg_pool(env[op.input], op)
            elif isinstance(op, Add):
                env[op.output] = add(env[op.a], env[op.b], op)
            elif isinstance(op, Clamp):
                env[op.output] = env[op.input].clamp(op.lo, op.hi)
            elif isinstance(op, Clip):
                x = env[op.input]
                env[op.output] = apply_clip(x, x.clamp(op.lo, op.hi), op.codes.to(x.device), op.policy, op.zero_point)
            else:
                raise TypeError(f"Unknown op {type(op).__name__}")
            if unchanged:
                same.add(op.output)
            if recording:
                size = record.nbytes + env[op.output].nbytes + (layer.acc.nbytes if layer is not None else 0)
                recording = size <= record_bytes
                if recording:
                    record.outputs[op.output] = env[op.output]
                    if layer is not None:
                        record.layers[op.name] = layer
                    record.nbytes = size
        return env[self.output_name]

    def logits_from(self, acc: torch.Tensor) -> torch.Tensor:
        """Dequantize the program's output (N, classes) into float64 logits: the logits layer's
        accumulators times ``s_in * s_w``, or output codes with ``output_qp``."""
        if self.output_qp is not None:
            return (acc.reshape(acc.shape[0], -1).double() - self.output_qp.zero_point) * self.output_qp.scale
        return acc.reshape(acc.shape[0], -1).double() * self.logit_scales().to(acc.device)

    def auto_batch_size(self, budget: int = 1 << 25) -> int:
        """Images per batch so that the largest tensor of one batch holds about ``budget`` values
        (128 MiB of float32): few large batches keep per-call overheads small. The largest tensor
        per image is ``meta["peak_values"]`` where the lowering recorded it (a value or a
        convolution's im2col rows), else bounded by the widest conv's channels times the input's
        pixels."""
        peak = self.meta.get("peak_values")
        if not peak:
            pixels = int(np.prod(self.input_shape[1:])) if len(self.input_shape) > 1 else 1
            peak = max([op.out_channels for op in self.gemms if op.kind == "conv"] or [1]) * pixels
        return max(1, budget // int(peak))

    def check_images(self, images) -> torch.Tensor:
        check_instance(images, torch.Tensor, "images", "Program.run", what="a float torch tensor of images")
        if images.dim() == len(self.input_shape):
            images = images.unsqueeze(0)
        if tuple(images.shape[1:]) != tuple(self.input_shape) or not images.is_floating_point():
            raise ValueError(
                f"The 'images' argument of Program.run must be float images of shape "
                f"(N, {', '.join(map(str, self.input_shape))}). Got {images.dtype} {tuple(images.shape)} instead."
            )
        # min and max propagate NaN and show infinities: two values to test instead of a mask of every pixel
        # (numpy's on CPU: torch's reduction would wake its thread pool for a few microseconds of work)
        if images.numel() and not (np.isfinite(images.numpy().min()) and np.isfinite(images.numpy().max())
                                   if images.device.type == "cpu" and images.dtype in (torch.float32, torch.float64)
                                   and not images.requires_grad
                                   else bool(torch.isfinite(torch.stack(torch.aminmax(images))).all())):
            raise ValueError("The 'images' argument of Program.run must be finite images. "
                             "Got NaN or infinite values instead.")
        return images

    def trace(self, images: torch.Tensor, cfg: ArrayConfig, *, batch_size: int | None = None,
              max_bytes: int = 64 << 20) -> CleanTrace:
        """A fault-free run of ``images`` on ``cfg`` (fast engine, CPU) that keeps the values of
        the program's first ops, at most ``max_bytes`` of them, for faulty runs of the same
        ``images`` tensor to reuse (``run(..., reference=trace)``; see :class:`CleanTrace`).
        ``trace.result`` is the fault-free :class:`RunResult`."""
        if isinstance(images, torch.Tensor) and images.device.type != "cpu":
            raise ValueError(f"Program.trace runs on CPU tensors (the fast engine's CPU path). Got images on "
                             f"{images.device} instead.")
        check_int(max_bytes, "max_bytes", "Program.trace", lo=0)
        batch_size = self._batch_size(batch_size, "Program.trace")
        batches: list[BatchTrace] = []
        chip = Chip(check_instance(cfg, ArrayConfig, "cfg", "Program.trace"))
        result = self._run(images, chip, batch_size, False, None, (batches, max_bytes))
        return CleanTrace(images, cfg, batch_size, result, batches)

    def _batch_size(self, batch_size, where: str = "Program.run") -> int:
        return self.auto_batch_size() if batch_size is None else check_positive_int(batch_size, "batch_size", where)

    def run(self, images: torch.Tensor, cfg: ArrayConfig | Chip, faults: FaultMap | None = None,
            engine: Engine | str = "fast", *, batch_size: int | None = None, count_changes: bool = True,
            device=None, reference: CleanTrace | None = None) -> RunResult:
        """Run ``images`` (N, C, H, W float) through the program on the chip ``cfg`` + ``faults``
        (or on a :class:`sysarray.Chip` given as ``cfg``, which then carries the faults, engine and
        device).

        Each batch of ``batch_size`` images (default :meth:`auto_batch_size`) is one GEMM per
        layer (M = batch x output pixels); layer statistics add up over batches. Outputs do not
        depend on the batch size. ``count_changes`` also runs each layer's GEMM fault-free on the
        same inputs to count the outputs the faults changed. ``reference``: a
        :meth:`trace` of this same ``images`` tensor on ``cfg`` (fast engine, CPU, same batch
        size) whose fault-free values the run reuses where the chip leaves them unchanged (the
        results are the same without it).
        """
        if isinstance(cfg, Chip):
            if faults is not None or engine != "fast" or device is not None:
                raise ValueError("Program.run takes either a Chip or an ArrayConfig with 'faults', 'engine' and "
                                 "'device'; a Chip carries its own.")
            chip = cfg
        else:
            check_instance(cfg, ArrayConfig, "cfg", "Program.run", what="an ArrayConfig or a Chip")
            chip = Chip(cfg, faults, engine, device)
        batch_size = self._batch_size(batch_size)
        if reference is not None:
            check_instance(reference, CleanTrace, "reference", "Program.run", what="a CleanTrace (Program.trace)")
            if (reference.images is not images or reference.cfg != chip.config or reference.batch_size != batch_size
                    or chip.engine is not Engine.FAST or (chip.device is not None and chip.device.type != "cpu")):
                raise ValueError("The 'reference' trace of Program.run must come from Program.trace of the same images "
                                 "tensor on the same array and batch size, and serves the fast engine on CPU only.")
        return self._run(images, chip, batch_size, count_changes, reference, None)

    def _run(self, images, chip: Chip, batch_size: int, count_changes: bool, reference: CleanTrace | None,
             record: tuple[list[BatchTrace], int] | None) -> RunResult:
        """:meth:`run` on checked arguments; ``record = (batches, max_bytes)`` fills one
        :class:`BatchTrace` per batch, each within an equal share of ``max_bytes``."""
        images = self.check_images(images)
        if chip.device is not None:
            images = images.to(chip.device)
        faulty = chip.faulty
        count = faulty and count_changes
        counter = Chip(chip.config, None, Engine.FAST, chip.device) if count else None
        totals: dict[str, dict] = {}
        changed: dict[str, int] = {}

        def on_layer(op, x, acc, stats):
            matmul = isinstance(op, MatMul)
            t = totals.get(op.name)
            if t is None:
                k = int(x[0].shape[-1]) if matmul else int(op.weight[0].numel())
                n = int(acc.shape[-1]) if matmul else op.out_channels
                t = totals[op.name] = dict(m=0, k=k, n=n, macs=0, cycles=0, gemms=0, mapping=0.0, compute=0.0,
                                           first=stats[0])
            # rows streamed: the groups of a grouped conv share them, a batch of products does not
            t["m"] += acc.numel() // acc.shape[-1] if matmul or op.kind == "linear" else acc.numel() // acc.shape[1]
            i = 0
            while i < len(stats):  # a batch of products repeats one GemmStats: each run of them at once
                st, j = stats[i], i + 1
                while j < len(stats) and stats[j] is st:
                    j += 1
                t["macs"] += (j - i) * st.macs
                t["cycles"] += (j - i) * st.cycles
                t["gemms"] += j - i
                t["mapping"] += (j - i) * st.cycles * st.mapping_efficiency  # cycle-weighted sums
                t["compute"] += (j - i) * st.cycles * st.compute_util
                i = j
            if count:
                ref = matmul_accumulators(*x, op, counter)[0] if matmul else \
                    layer_accumulators(x, op, counter, saturate=False)[0]
                changed[op.name] = changed.get(op.name, 0) + int((ref.to(acc.device, torch.int64) != acc.to(torch.int64)).sum())

        accs = []
        n_batches = -(-images.shape[0] // batch_size)
        for b, i in enumerate(range(0, images.shape[0], batch_size)):
            keep = None
            if record is not None:
                keep = BatchTrace()
                record[0].append(keep)
            batch = images[i:i + batch_size]
            run = partial(self.execute, batch, chip, on_layer, None if reference is None else reference.batches[b], keep,
                          0 if record is None else record[1] // max(1, n_batches), saturate=not count, acc_values=count)
            accs.append(_measured_threads(run, (id(self), tuple(batch.shape), chip.config, faulty, count), chip))
        logits = self.logits_from(torch.cat(accs))
        layers = []
        n_pes = chip.config.n_pes
        for op in self.chip_layers:
            t = totals[op.name]
            cycles = t["cycles"]
            layers.append(LayerStats(
                name=op.name, kind="matmul" if isinstance(op, MatMul) else op.kind, m=t["m"], k=t["k"], n=t["n"],
                macs=t["macs"],
                cycles=t["cycles"],
                # SCALE-Sim's definition per GEMM (its total is cycles - 1), over all of them.
                overall_util=100.0 * t["macs"] / max(1, (t["cycles"] - t["gemms"]) * n_pes),
                # cycle-weighted means over the layer's GEMMs
                mapping_efficiency=float(t["mapping"] / cycles if cycles else t["first"].mapping_efficiency),
                compute_util=float(t["compute"] / cycles if cycles else t["first"].compute_util),
                changed=(changed.get(op.name, 0) if count_changes else None) if faulty else 0,
            ))
        return RunResult(logits=logits, predictions=logits.argmax(dim=1), layers=layers)
