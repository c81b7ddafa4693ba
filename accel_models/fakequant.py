"""The fake-quant twin: the integer program evaluated in torch floats with straight-through
rounding, so it can be trained and stays within one LSB of the integer program.

Codes are carried as float tensors holding integers. Weights are trainable float parameters,
quantized per output channel on every forward (``round`` with a straight-through gradient);
activation quantization parameters stay those of the program. ``gemm_hook(op, a, w, acc)`` lets
fault-aware training replace a chip layer's exact accumulators with a faulty chip's (for a
:class:`~accel_models.matmul.MatMul`, ``w`` is the right operand's codes and ``acc`` the
zero-point-free sums): it returns ``acc`` itself (unchanged) or a tensor of other exact sums of
the same shape (any dtype), which become the forward value while the gradient stays ``acc``'s.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from accel_models.matmul import MatMul, fake_matmul
from accel_models.pool_kernels import max_pool_2x2, max_pool_2x2_backward
from accel_models.ppu import PPU_OPS, RunContext, floor_ste, ste
from accel_models.program import (ADD_SHIFT, Add, AvgPool, Clamp, Clip, Gemm, MaxPool, Program, QuantizeInput,
                                  gather_input, gather_weight_inputs)
from accel_models.quant import WEIGHT_QMAX, requantize_clamp, rescale_add, storage_format, storage_order
from accel_models.twin_kernels import add_grads, clamped_grad_planes, clamped_grad_rows, model_codes, model_codes_grad


GemmHook = Callable[[Gemm, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FakeQuantProgram(nn.Module):
    """Trainable float twin of a :class:`Program` (weights and biases are parameters)."""

    def __init__(self, program: Program):
        super().__init__()
        self.program = program
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for op in program.gemms:
            key = self.key(op)
            self.weights[key] = nn.Parameter(op.float_weight.detach().clone().float())
            self.biases[key] = nn.Parameter(op.float_bias.detach().clone().float())

    @staticmethod
    def key(op: Gemm) -> str:
        return op.name.replace(".", "_")

    def layer_codes(self) -> dict[int, tuple]:
        """Every Gemm op's ``(wq, bq, acc_scale, mult, m0, shift, l1)`` from the current parameters
        (:class:`_ModelCodes`; ``m0`` and ``shift`` as int64 numpy arrays, ``l1`` as a float),
        keyed by the op's ``id``."""
        gemms = self.program.gemms
        if not gemms:
            return {}
        keys = [self.key(op) for op in gemms]
        params = [*(self.weights[k] for k in keys), *(self.biases[k] for k in keys)]
        signature = tuple((p.shape, p.dtype) for p in params)
        program, layout = self.__dict__.get("_codes_layout", (None, None))
        if program is not self.program or layout.signature != signature:
            layers = [(op.in_qp.scale, op.in_qp.zero_point, None if op.out_qp is None else op.out_qp.scale)
                      for op in gemms]
            layout = _CodesLayout.of(layers, signature)
            self.__dict__["_codes_layout"] = (self.program, layout)  # made once per program and parameter shapes
        fixed: list = []
        out = _ModelCodes.apply(layout, fixed, *params)
        L = len(gemms)
        return {id(op): (out[i], out[L + i], *fixed[i]) for i, op in enumerate(gemms)}

    def _gemm(self, x: torch.Tensor, op: Gemm, hook: GemmHook | None, codes: tuple) -> torch.Tensor:
        """The layer's forward value equals the integer program's bit for bit (integer rounding
        decisions are made on exact values); gradients are straight-through. ``codes``: the
        layer's entry of :meth:`layer_codes`."""
        wq, bq, acc_scale, mult, m0, shift, l1 = codes
        wide = sums_exceed_f32(l1, op)
        bq = bq.to(torch.float64) if wide else bq
        acc = _integer_gemm(x, wq, op)
        if wide or acc.device.type != "cpu":
            # The forward value of an exact float64 GEMM: float32 could round these sums (wide:
            # carry on in float64; the codes that leave this layer are float32 again), and a GPU's
            # float32 convolutions may use TF32 or Winograd, which round (the gradient stays float32).
            acc = ste(acc.double() if wide else acc, _integer_gemm(x.detach().double(), wq.detach().double(), op))
        if hook is not None and op.in_order is not None:
            # the chip reads the inputs in array order (Gemm.in_order): the hook gets both operands in it
            x, wq = gather_input(x, op), gather_weight_inputs(wq, op, op.in_order)
            op = dataclasses.replace(op, in_order=None)
        value = None  # the hook's accumulators, when they are not acc itself
        if hook is not None:
            dim = 1 if op.kind == "conv" else -1
            order = None if op.out_order is None else op.out_order.to(acc.device)
            if order is not None:
                # the chip holds the rows in array order (Gemm.out_order); the twin stays in channel order
                perm = torch.argsort(order)
                wq, acc = wq[perm.to(wq.device)], acc.index_select(dim, perm)
            y = hook(op, x, wq, acc)
            if y is acc:
                acc = acc if order is None else acc.index_select(dim, order)
            else:
                value = y.detach() if order is None else y.detach().index_select(dim, order)
                acc = acc if order is None else acc.index_select(dim, order)
        shape = (1, -1) if op.kind == "linear" else (1, -1, 1, 1)
        if op.out_qp is None:  # logits, float64
            total = (acc + bq.reshape(shape)).double()
            if value is not None:
                total = ste(total, value.double() + bq.detach().double().reshape(shape))
            return total * acc_scale.reshape(shape)
        args = (acc, bq, m0, shift, mult, op.out_qp.zero_point, op.kind == "linear", value)
        if op.clip_codes is None:
            out = _Requantized.apply(*args, op.lo, op.hi)
        else:  # the zero policy compares the unclamped code with the threshold
            q = _Requantized.apply(*args)
            out = _clip_ste(q, _clamp_ste(q, op.lo, op.hi), op.clip_codes, op.clip_policy, op.out_qp.zero_point)
        return out.to(x.dtype)

    def forward(self, images: torch.Tensor, gemm_hook: GemmHook | None = None) -> torch.Tensor:
        """Float images (N, C, H, W) -> float logits (N, classes)."""
        env: dict[str, torch.Tensor] = {}
        rc = RunContext(batch=images.shape[0], device=images.device)
        codes = self.layer_codes()  # every layer's codes in one autograd step
        for op in self.program.ops:
            if isinstance(op, QuantizeInput):
                q = ste(images / op.qp.scale, torch.floor(images.detach().double() / op.qp.scale + 0.5))
                q = q + op.qp.zero_point
                env[op.output] = _clamp_ste(q, op.qp.qmin, op.qp.qmax)
            elif isinstance(op, Gemm):
                env[op.output] = self._gemm(env[op.input], op, gemm_hook, codes[id(op)])
            elif isinstance(op, MaxPool):
                env[op.output] = _max_pool(env[op.input], op)
            elif isinstance(op, MatMul):
                env[op.output] = fake_matmul(env[op.a], env[op.b], op, gemm_hook)
            elif isinstance(op, PPU_OPS):
                env[op.output] = op.fake([env[name] for name in op.inputs()], rc)
            elif isinstance(op, AvgPool):
                x = env[op.input]
                ph, pw = op.padding
                if ph or pw:
                    x = F.pad(x, (pw, pw, ph, ph), value=float(op.zero_point))
                s = F.avg_pool2d(x, op.kernel, op.stride, divisor_override=1)
                d = op.kernel[0] * op.kernel[1]
                env[op.output] = floor_ste((2 * s + d) / (2 * d))
            elif isinstance(op, Add):
                env[op.output] = fake_add(env[op.a], env[op.b], op)
            elif isinstance(op, Clamp):
                env[op.output] = _clamp_ste(env[op.input], op.lo, op.hi)
            elif isinstance(op, Clip):
                x = env[op.input]
                env[op.output] = _clip_ste(x, _clamp_ste(x, op.lo, op.hi), op.codes, op.policy, op.zero_point)
        out = env[self.program.output_name]
        qp = self.program.output_qp
        return out if qp is None else (out.double() - qp.zero_point) * qp.scale

    def to_program(self) -> Program:
        """A new integer program with this twin's (trained) weights and the same activation quantization."""
        from accel_models.lowering import gemm_op

        ops = []
        for op in self.program.ops:
            if isinstance(op, Gemm):
                geometry = dict(stride=op.stride, padding=op.padding, groups=op.groups) if op.kind == "conv" else {}
                new = gemm_op(op.name, op.kind, op.input, op.output, op.in_qp, op.out_qp,
                              self.weights[self.key(op)].detach().cpu(), self.biases[self.key(op)].detach().cpu(),
                              None, op.activation, **geometry)
                new.lo, new.hi = op.lo, op.hi  # same activation clamp as before
                new.clip_codes, new.clip_policy = op.clip_codes, op.clip_policy  # and the same thresholds
                if op.in_order is not None:  # and the same fault-aware mapping
                    new.weight, new.in_order = gather_weight_inputs(new.weight, op, op.in_order), op.in_order
                if op.out_order is not None:
                    new.weight, new.out_order = new.weight[torch.argsort(op.out_order)], op.out_order
                ops.append(new)
            else:
                ops.append(op)
        return dataclasses.replace(self.program, ops=ops, meta=dict(self.program.meta))


@dataclasses.dataclass(frozen=True)
class _CodesLayout:
    """How :class:`_ModelCodes` lays a model's layers out in its flat arrays, fixed for a twin:
    ``rows``, ``cols`` (L,) int64 each layer's output channels and weights per channel, the
    layers' ``s_in``, ``z_in``, ``out_scale`` (L,) float64 (0: the logits), the offsets of each
    layer's weights ``w_at`` and channels ``n_at`` (L + 1 each), and the parameters' shapes and
    dtypes (``signature``: the weights', then the biases' (N,); ``shapes`` the shapes alone)."""

    rows: np.ndarray
    cols: np.ndarray
    s_in: np.ndarray
    z_in: np.ndarray
    out_scale: np.ndarray
    w_at: tuple[int, ...]
    n_at: tuple[int, ...]
    signature: tuple
    shapes: tuple

    @classmethod
    def of(cls, layers, signature) -> "_CodesLayout":
        weights = [shape for shape, _ in signature[:len(layers)]]
        rows = np.array([shape[0] for shape in weights], dtype=np.int64)
        cols = np.array([int(np.prod(shape[1:])) for shape in weights], dtype=np.int64)
        s_in, z_in, out_scale = (np.array([float(v or 0.0) for v in col]) for col in zip(*layers))
        w_at = (0, *np.cumsum(rows * cols).tolist())
        n_at = (0, *np.cumsum(rows).tolist())
        return cls(rows, cols, s_in, z_in, out_scale, w_at, n_at, signature, tuple(s for s, _ in signature))


def _flat(tensors, dtype) -> np.ndarray:
    """The tensors' values one after another in a new 1-d numpy array of ``dtype``."""
    if all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors):
        return np.concatenate([t.detach().numpy().reshape(-1) for t in tensors], dtype=dtype)
    as_torch = torch.float32 if dtype == np.float32 else torch.float64
    return torch.cat([t.detach().reshape(-1) for t in tensors]).to("cpu", as_torch).contiguous().numpy()


def _pieces(flat: np.ndarray, at: tuple[int, ...], shapes, dev: torch.device) -> list[torch.Tensor]:
    """Consecutive pieces ``flat[at[i]:at[i + 1]]`` of a numpy array as tensors of ``shapes`` on
    ``dev`` (CPU: views of ``flat``)."""
    if dev.type == "cpu":
        return [torch.from_numpy(flat[a:b].reshape(shape)) for a, b, shape in zip(at, at[1:], shapes)]
    whole = torch.from_numpy(flat).to(dev)
    return [whole[a:b].view(shape) for a, b, shape in zip(at, at[1:], shapes)]


class _ModelCodes(torch.autograd.Function):
    """Every chip layer's integer weight and bias codes and requantization from its float
    parameters, with straight-through gradients, in one autograd step and one kernel call each
    way (:func:`accel_models.twin_kernels.model_codes`; on the small parameter tensors each torch
    call costs more than its work).

    ``layout``: the layers' :class:`_CodesLayout`; ``fixed``: a list that receives, per layer,
    the values without gradients (below); ``params``: the layers' weights (N, ...) float, then
    their biases (N,) float. Returns, for the L layers, L tensors of each kind in turn:

    - ``wq`` (weight's shape, float32 codes, rounded per output channel exactly as
      :func:`accel_models.quant.quantize_weight` does);
    - ``bq`` (N,) float32: the bias codes ``round(bias / acc_scale)`` minus ``z_in`` times each
      channel's weight-code sum (the input zero point folded in).

    ``fixed[i]`` is layer ``i``'s ``(acc_scale, mult, m0, shift, l1)``: ``acc_scale`` (N,)
    float64 = ``s_in * weight scale``, ``mult`` = ``acc_scale / out_scale`` (``acc_scale`` for
    the logits), tensors on the parameters' device; its fixed point ``m0`` and ``shift`` (N,)
    int64 numpy arrays (as :func:`accel_models.quant.quantize_multiplier`); ``l1`` the largest
    channel L1 norm of ``wq`` (a float). They are not outputs: autograd's cost per output is
    what the small tensors cost.

    Gradients: ``d wq / d weight = 1 / scale`` and ``d bq / d bias = 1 / acc_scale`` (rounding
    passed straight through), ``d bq / d wq = -z_in``; computed on the CPU wherever the
    parameters are."""

    @staticmethod
    def forward(ctx, layout, fixed, *params):
        L = len(layout.rows)
        weights, biases = params[:L], params[L:]
        dev = weights[0].device
        w, b = _flat(weights, np.float32), _flat(biases, np.float64)
        n = layout.n_at[-1]
        codes, bq = np.empty(w.shape, dtype=np.float32), np.empty(n, np.float32)
        (acc_scale, mult, scale), (m0, shift) = np.empty((3, n)), np.empty((2, n), np.int64)
        l1 = np.empty(L)
        model_codes(w, b, layout.rows, layout.cols, layout.s_in, layout.z_in, layout.out_scale, float(WEIGHT_QMAX),
                    codes, bq, acc_scale, mult, m0, shift, scale, l1)
        shapes = layout.shapes
        per_channel = [_pieces(a, layout.n_at, shapes[L:], dev) for a in (acc_scale, mult)]
        at = layout.n_at
        fixed[:] = [(per_channel[0][i], per_channel[1][i], m0[at[i]:at[i + 1]], shift[at[i]:at[i + 1]], top)
                    for i, top in enumerate(l1.tolist())]
        ctx.layout, ctx.scales = layout, np.stack([scale, acc_scale]).astype(np.float32)
        return (*_pieces(codes, layout.w_at, shapes[:L], dev), *_pieces(bq, layout.n_at, shapes[L:], dev))

    @staticmethod
    def backward(ctx, *grads):
        layout = ctx.layout
        L = len(layout.rows)
        dev = grads[0].device
        g_codes, g_bq = _flat(grads[:L], np.float32), _flat(grads[L:], np.float32)
        g_w, g_b = np.empty_like(g_codes), np.empty_like(g_bq)
        scale, acc_scale = ctx.scales
        model_codes_grad(g_codes, g_bq, layout.rows, layout.cols, layout.z_in, scale, acc_scale, g_w, g_b)
        shapes = layout.shapes
        parts = [*_pieces(g_w, layout.w_at, shapes[:L], dev), *_pieces(g_b, layout.n_at, shapes[L:], dev)]
        return (None, None, *(t if t.dtype == dtype else t.to(dtype) for t, (_, dtype) in zip(parts, layout.signature)))


class _Requantized(torch.autograd.Function):
    """A layer's output codes ``clamp(requantize(acc + bias) + zero_point, lo, hi)`` (float32;
    without ``lo``/``hi``, the unclamped codes: exact integers below 2**24, larger ones only
    beyond any clamp), with the gradient of ``clamp((acc + bias) * multiplier, ...)``.

    acc: conv (B, N, oh, ow) or linear (..., N) exact integer sums (float32 or float64); bias:
    (N,) exact integers (float); m0, shift: (N,) int64 numpy fixed-point multipliers; mult: (N,)
    float64, the real multipliers they approximate; linear: channels on the last dim, else on dim
    1; value: other sums to requantize in place of ``acc``'s (a faulty chip's; the gradient is
    still ``acc``'s), or None. One fused integer pass forward and one pass backward
    (:mod:`accel_models.twin_kernels`), where autograd makes about ten over the accumulators."""

    @staticmethod
    def forward(ctx, acc, bias, m0, shift, mult, zero_point, linear, value, lo=None, hi=None):
        flat = acc.detach() if value is None else value
        flat = flat.reshape(-1, len(m0)) if linear else flat
        if acc.device.type == "cpu":  # numpy parameters: torch's conversions cost more than a small layer's pass
            bias_codes = np.rint(bias.detach().numpy()).astype(np.int64)
        else:
            bias_codes = bias.detach().double().round().to(torch.int64)
            m0, shift = torch.from_numpy(m0), torch.from_numpy(shift)
        # one code past each end keeps what the gradient's mask needs, and a clamp this narrow lets
        # the requantization take its one-product kernel
        bounds = (-(1 << 31), (1 << 31) - 1) if lo is None else (lo - 1, hi + 1)
        raw = requantize_clamp(flat, bias_codes, m0, shift, zero_point, *bounds, memo=False).reshape(acc.shape)
        ctx.save_for_backward(mult, raw if lo is not None else None)
        ctx.meta = (acc.dtype, bias.dtype, acc.dim() - 1 if linear else 1, lo, hi)
        return raw if lo is None else raw.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        mult, raw = ctx.saved_tensors
        acc_dtype, bias_dtype, channel, lo, hi = ctx.meta
        done = _clamped_grad(grad, raw, mult, lo, hi, channel) if raw is not None and acc_dtype == grad.dtype \
            == torch.float32 and grad.device.type == "cpu" else None
        if done is None:
            shape = [1] * grad.dim()
            shape[channel] = len(mult)
            g = grad.to(acc_dtype) * mult.to(acc_dtype).view(shape)
            if raw is not None:
                g = torch.where((raw >= lo) & (raw <= hi), g, torch.zeros((), dtype=g.dtype, device=g.device))
            done = g, g.sum(dim=[d for d in range(grad.dim()) if d != channel])
        g, g_bias = done
        return g, g_bias.to(bias_dtype), None, None, None, None, None, None, None, None


def _clamped_grad(grad: torch.Tensor, raw: torch.Tensor, mult: torch.Tensor, lo: int, hi: int, channel: int):
    """:class:`_Requantized`'s clamped gradient and its bias gradient by one CPU kernel pass, for
    float32 contiguous planes (B, N, ...) or rows (..., N); None for other layouts."""
    if not (grad.is_contiguous() and raw.is_contiguous()):
        return None
    n = len(mult)
    m, lo, hi = mult.to(torch.float32).contiguous().numpy(), np.float32(lo), np.float32(hi)
    out = torch.empty_like(grad)
    if channel == 1 and grad.dim() > 2:
        shape = (grad.shape[0], n, -1)
        sums = np.empty((grad.shape[0], n), dtype=np.float32)
        clamped_grad_planes(grad.view(shape).numpy(), raw.view(shape).numpy(), m, lo, hi, out.view(shape).numpy(),
                            sums, work=grad.numel())
        return out, torch.from_numpy(sums.sum(axis=0))
    if channel != grad.dim() - 1:
        return None
    clamped_grad_rows(grad.view(-1, n).numpy(), raw.view(-1, n).numpy(), m, lo, hi, out.view(-1, n).numpy(),
                      work=grad.numel())
    return out, out.view(-1, n).sum(dim=0)


def fake_add(a: torch.Tensor, b: torch.Tensor, op: Add) -> torch.Tensor:
    """A residual add of codes: the integer program's value (rounding decided on exact int64
    values; float32 loses bits above 2**24) with the gradient of the clamped
    ``((a - za) * ma + (b - zb) * mb) / 2**ADD_SHIFT``. Float32 CPU codes of one shape take one
    kernel pass each way (:class:`_RescaledAdd`); other inputs (a broadcast position embedding,
    a GPU) the same formula in torch ops."""
    if a.shape == b.shape and a.dtype == b.dtype == torch.float32 and a.device.type == b.device.type == "cpu":
        return _RescaledAdd.apply(a, b, op)
    return _add_formula(a, b, op)


def _add_formula(a: torch.Tensor, b: torch.Tensor, op: Add) -> torch.Tensor:
    """:func:`fake_add` in torch ops, for any inputs."""
    t = (a - op.za) * op.ma + (b - op.zb) * op.mb
    t_int = (a.detach().round().long() - op.za) * op.ma + (b.detach().round().long() - op.zb) * op.mb
    q_int = torch.bitwise_right_shift(t_int + (1 << (ADD_SHIFT - 1)), ADD_SHIFT)
    q = ste(t / (1 << ADD_SHIFT), q_int) + op.zero_point
    return _clamp_ste(q, op.lo, op.hi)


class _RescaledAdd(torch.autograd.Function):
    """:func:`fake_add` of float32 CPU codes ``a``, ``b`` (one shape, any layout): forward the
    program's fused integer add (:func:`accel_models.quant.rescale_add`) unclamped, then clamped;
    backward one pass (:func:`accel_models.twin_kernels.add_grads`) where autograd makes about
    twenty over the activations."""

    @staticmethod
    def forward(ctx, a, b, op):
        raw = rescale_add(a.detach(), b.detach(), int(op.za), int(op.ma), int(op.zb), int(op.mb), ADD_SHIFT,
                          int(op.zero_point), -(1 << 31), (1 << 31) - 1)
        ctx.save_for_backward(raw)
        ctx.op = op
        return raw.clamp(op.lo, op.hi)

    @staticmethod
    def backward(ctx, grad):
        (raw,) = ctx.saved_tensors
        op = ctx.op
        g = grad.to(torch.float32).contiguous(memory_format=storage_format(raw))
        ga, gb = torch.empty_like(raw), torch.empty_like(raw)
        # (g / 2**ADD_SHIFT) * ma as torch computes it: the power-of-two division is exact
        unit = 2.0 ** -ADD_SHIFT
        add_grads(storage_order(g).numpy(), storage_order(raw).numpy(), np.float32(op.lo), np.float32(op.hi),
                  np.float32(np.float32(op.ma) * unit), np.float32(np.float32(op.mb) * unit),
                  storage_order(ga).numpy(), storage_order(gb).numpy(), work=raw.numel())
        return ga, gb, None


def _max_pool(x: torch.Tensor, op: MaxPool) -> torch.Tensor:
    """``F.max_pool2d`` with ``op``'s geometry and gradient; a 2x2, stride-2 pool of contiguous
    CPU float32 codes by one kernel pass each way (:class:`_MaxPool2x2`)."""
    if (op.plain_2x2 and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and min(x.shape[2:]) >= 2 and x.is_contiguous()):
        return _MaxPool2x2.apply(x)
    return F.max_pool2d(x, op.kernel, op.stride, op.padding, op.dilation, op.ceil_mode)


class _MaxPool2x2(torch.autograd.Function):
    """``F.max_pool2d(x, 2, 2)`` of contiguous CPU float32 (B, C, H, W) codes and its gradient
    (each block's to its first maximum, as torch's), by :mod:`accel_models.pool_kernels`: torch's
    CPU pool of NCHW planes is several times slower on one thread."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return max_pool_2x2(x.detach())

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return max_pool_2x2_backward(x.detach(), grad)


def sums_exceed_f32(l1: float, op: Gemm) -> bool:
    """True when a float32 GEMM of ``op``'s codes could round an integer sum: every partial sum,
    in any order, is at most ``l1`` (the largest channel L1 norm of the weight codes) times the
    largest input code magnitude (the codes are clamped to their range and the padding is the zero
    point, inside it)."""
    return l1 * max(-op.in_qp.qmin, op.in_qp.qmax) >= 1 << 24


def _integer_gemm(x: torch.Tensor, wq: torch.Tensor, op: Gemm) -> torch.Tensor:
    """The layer's GEMM on codes (float tensors holding integers), zero-point padded."""
    if op.kind == "linear":
        k = wq[0].numel()
        return (x if x.dim() > 2 and x.shape[-1] == k else x.reshape(x.shape[0], -1)) @ wq.reshape(wq.shape[0], -1).t()
    ph, pw = op.padding
    if not op.in_qp.zero_point:  # zero padding is the convolution's own
        return F.conv2d(x, wq, stride=op.stride, padding=(ph, pw), groups=op.groups)
    xp = F.pad(x, (pw, pw, ph, ph), value=float(op.in_qp.zero_point)) if (ph or pw) else x
    return F.conv2d(xp, wq, stride=op.stride, groups=op.groups)


def _clip_ste(raw: torch.Tensor, q: torch.Tensor, codes: torch.Tensor, policy: str, zero_point: int) -> torch.Tensor:
    """The integer threshold step (``accel_models.program.apply_clip``) on (N, C, H, W) or (N, F)
    codes: "clamp" ``min(q, t)`` (gradient of a min), "zero" ``q`` where the unsaturated ``raw <= t``
    else the zero point (zero gradient there); ``codes`` broadcast against one sample."""
    t = codes.to(device=q.device, dtype=q.dtype).unsqueeze(0)
    if policy == "clamp":
        return torch.minimum(q, t)
    return torch.where(raw.detach() <= t, q, torch.full_like(q, float(zero_point)))


def _clamp_ste(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Clamp with the gradient of a clamp (zero outside), like ReLU."""
    return torch.clamp(x, float(lo), float(hi))
