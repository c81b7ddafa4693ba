"""Convolutions and linear layers: one :class:`~accel_models.program.Gemm` each, a BatchNorm that
directly follows folded in, and a ReLU-type activation after that fused into the output clamp."""
from __future__ import annotations

import torch
import torch.fx as fx

from accel_models.clipact import threshold_codes, threshold_range
from accel_models.lowering.context import Ctx, Unsupported, innermost_module, op_name, positional, register_lowering
from accel_models.program import Gemm
from accel_models.quant import QParams, choose_qparams, quantize_multiplier, quantize_weight

BATCHNORMS = ("batch_norm", "_native_batch_norm_legit_no_training")


def activation_bounds(ctx: Ctx, node: fx.Node | None) -> tuple[float, float | None] | None:
    """The (lo, hi) clamp in real units of a ReLU-type activation node (lo = 0), else None."""
    if node is None or node.op != "call_function":
        return None
    name = op_name(node.target)
    args = node.args
    if name == "relu":
        return (0.0, None)
    if name == "relu6":
        return (0.0, 6.0)
    if name == "clipped_relu":
        return (0.0, None)
    if name == "hardtanh":
        a = positional(node, ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0})
        return (0.0, float(a["max_val"])) if a["min_val"] == 0 else None
    if name in ("clamp", "clamp_min") and len(args) >= 2 and not isinstance(args[1], fx.Node) and args[1] == 0:
        hi = args[2] if name == "clamp" and len(args) > 2 else node.kwargs.get("max")
        if isinstance(hi, fx.Node):
            return None
        return (0.0, None if hi is None else float(hi))
    return None


def clipped_module(ctx: Ctx, node: fx.Node | None):
    """The :class:`ClippedReLU` behind a marker node, else None."""
    if node is not None and node.op == "call_function" and op_name(node.target) == "clipped_relu":
        return ctx.clipped[int(node.args[1])]
    return None


def activation_label(bounds) -> str:
    """What a fused clamp implements: none, relu, relu6 or clip (any other upper bound)."""
    if bounds is None:
        return "none"
    if bounds[1] is None:
        return "relu"
    return "relu6" if bounds[1] == 6.0 else "clip"


def clamp_codes(qp: QParams, bounds) -> tuple[int, int]:
    lo, hi = qp.qmin, qp.qmax
    if bounds is not None:
        lo = max(lo, qp.quantize_value(bounds[0]))
        if bounds[1] is not None:
            hi = min(hi, qp.quantize_value(bounds[1]))
    return lo, hi


def output_qparams(ctx: Ctx, node: fx.Node) -> QParams:
    """The quantization of an op's output ``node``: its calibrated range, or for a clipped
    activation ``[0, max T]`` so every threshold code is exact."""
    clip = clipped_module(ctx, node)
    if clip is not None:
        return choose_qparams(*threshold_range(clip))
    return ctx.calibrated(node)


def gemm_op(name: str, kind: str, in_value: str, out_value: str, in_qp: QParams, out_qp: QParams | None,
            weight: torch.Tensor, bias: torch.Tensor | None, bounds, activation: str, **geometry) -> Gemm:
    """Quantize one conv/linear layer (float, BN folded) into a Gemm op."""
    wq, sw = quantize_weight(weight)
    n = weight.shape[0]
    b = bias.detach().double() if bias is not None else torch.zeros(n, dtype=torch.float64)
    acc_scale = in_qp.scale * sw  # (N,) float64
    bq = torch.round(b / acc_scale).to(torch.int64)
    bq = bq - in_qp.zero_point * wq.reshape(n, -1).to(torch.int64).sum(dim=1)
    if out_qp is None:
        m0 = torch.zeros(n, dtype=torch.int64)
        shift = torch.ones(n, dtype=torch.int64)
        lo, hi = -(1 << 31), (1 << 31) - 1
    else:
        pairs = [quantize_multiplier(float(a) / out_qp.scale) if float(a) > 0 else (0, 1) for a in acc_scale]
        m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
        shift = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
        if int(shift.min()) < 1:
            raise Unsupported("its requantization multiplier is above 2**30 (a degenerate output range)")
        lo, hi = clamp_codes(out_qp, bounds)
    return Gemm(name=name, kind=kind, input=in_value, output=out_value, weight=wq, bias=bq, in_qp=in_qp,
                out_qp=out_qp, m0=m0, shift=shift, lo=lo, hi=hi, acc_scale=acc_scale,
                float_weight=weight.detach().clone().float(), float_bias=b.float(), activation=activation, **geometry)


def batchnorm_affine(ctx: Ctx, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm node as ``(scale, shift)`` per channel (float64): y = x*scale + shift."""
    if op_name(node.target) == "batch_norm":
        a = positional(node, ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"),
                       {"weight": None, "bias": None, "training": False, "eps": 1e-5})
    else:
        a = positional(node, ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps"),
                       {"weight": None, "bias": None, "eps": 1e-5})
        a["training"] = False
    if a["training"] or a["running_mean"] is None:
        raise Unsupported("a BatchNorm in training mode (no running statistics) cannot be quantized")
    mean, var = ctx.constant(a["running_mean"]).double(), ctx.constant(a["running_var"]).double()
    gamma = ctx.constant(a["weight"]).double() if a["weight"] is not None else torch.ones_like(mean)
    beta = ctx.constant(a["bias"]).double() if a["bias"] is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + float(a["eps"]))
    return scale, beta - mean * scale


def _following_batchnorm(ctx: Ctx, node: fx.Node, channel_dim_ok: bool) -> fx.Node | None:
    user = ctx.sole_user(node)
    if channel_dim_ok and user is not None and user.op == "call_function" and op_name(user.target) in BATCHNORMS \
            and user.args[0] is node:
        return user
    return None


def _tuple_output(ctx: Ctx, node: fx.Node) -> fx.Node:
    """A native BatchNorm returns a tuple: its value is the getitem 0 that uses it."""
    if op_name(node.target) == "batch_norm":
        return node
    items = [u for u in node.users if op_name(u.target) == "getitem" and u.args[1] == 0]
    if len(items) != 1 or len(node.users) != 1:
        raise Unsupported("a BatchNorm whose statistics outputs are used")
    return items[0]


def lower_gemm(ctx: Ctx, node: fx.Node, kind: str, weight: torch.Tensor, bias: torch.Tensor | None,
               in_node: fx.Node, **geometry) -> None:
    """Emit the Gemm of ``node`` with BN folding and activation fusion."""
    in_value = ctx.value(in_node)
    in_qp = ctx.qparams(in_node)
    weight = weight.detach().double()
    bias = None if bias is None else bias.detach().double()
    out_rank = len(ctx.shape(node))
    bn = _following_batchnorm(ctx, node, kind == "conv" or out_rank == 2)
    last = node
    if bn is not None:
        scale, shift = batchnorm_affine(ctx, bn)
        weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        bias = shift if bias is None else bias * scale + shift
        last = _tuple_output(ctx, bn)
        ctx.consumed.update({bn.name, last.name})
    act = ctx.sole_user(last)
    bounds = activation_bounds(ctx, act) if act is not None and act.args[0] is last else None
    if bounds is None:
        act = None
    out_node = act if act is not None else last
    final = act is None and ctx.feeds_output(out_node)
    out_qp = None if final else output_qparams(ctx, out_node)
    name = (innermost_module(node) or ("",))[0] or node.name
    if any(isinstance(op, Gemm) and op.name == name for op in ctx.ops):
        name = f"{name}.{node.name}"  # a module called twice: one op per call
    op = gemm_op(name, kind, in_value, out_node.name, in_qp, out_qp, weight.float(), None if bias is None else bias.float(),
                 bounds, activation_label(bounds), **geometry)
    clip = clipped_module(ctx, act)
    if clip is not None:
        op.clip_codes, op.clip_policy = threshold_codes(clip, out_qp, op.lo, op.hi), clip.inference_policy
        op.activation = "clip"
    ctx.ops.append(op)
    ctx.define(out_node, out_qp if out_qp is not None else QParams(1.0, 0, True))
    if out_node is not node:
        ctx.consumed.add(out_node.name)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


@register_lowering("conv2d", "convolution", "_convolution")
def _conv(ctx: Ctx, node: fx.Node) -> None:
    if op_name(node.target) == "conv2d":
        a = positional(node, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                       {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    else:
        a = positional(node, ("input", "weight", "bias", "stride", "padding", "dilation", "transposed",
                              "output_padding", "groups"), {"bias": None})
        if a.get("transposed"):
            raise Unsupported("transposed convolutions do not run on the array")
    weight = ctx.constant(a["weight"])
    if weight is None:
        raise Unsupported("the convolution's weight is an activation, not a parameter")
    if weight.dim() != 4:
        raise Unsupported(f"only 2-D convolutions run on the array (weight of rank {weight.dim()})")
    if _pair(a["dilation"]) != (1, 1):
        raise Unsupported("dilated convolutions do not run on the array (dilation 1 only)")
    padding = a["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif all(s == 1 for s in _pair(a["stride"])) and all(k % 2 for k in weight.shape[2:]):
            padding = [weight.shape[2] // 2, weight.shape[3] // 2]
        else:
            raise Unsupported("padding='same' with an even kernel or a stride above 1")
    bias = ctx.constant(a["bias"]) if a["bias"] is not None else None
    lower_gemm(ctx, node, "conv", weight, bias, a["input"], stride=_pair(a["stride"]), padding=_pair(padding),
               groups=int(a["groups"]))


@register_lowering("linear")
def _linear(ctx: Ctx, node: fx.Node) -> None:
    a = positional(node, ("input", "weight", "bias"), {"bias": None})
    weight = ctx.constant(a["weight"])
    if weight is None:
        raise Unsupported("the linear layer's weight is an activation, not a parameter")
    bias = ctx.constant(a["bias"]) if a["bias"] is not None else None
    lower_gemm(ctx, node, "linear", weight, bias, a["input"])


def linear_from_matmul(ctx: Ctx, node: fx.Node) -> bool:
    """``x @ W`` with a parameter ``W`` (K, N): a linear layer with weight ``W^T``. False when
    the right operand is an activation."""
    w = ctx.constant(node.args[1])
    if w is None:
        return False
    if ctx.is_constant(node.args[0]):
        raise Unsupported("a product of two constants")
    if w.dim() != 2:
        raise Unsupported(f"a product with a constant of rank {w.dim()} (a (K, N) matrix is expected)")
    lower_gemm(ctx, node, "linear", w.t(), None, node.args[0])
    return True
