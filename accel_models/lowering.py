"""torch.fx graph -> integer program (docs/design.md §5).

``lower(model, calibration=images)`` traces the model, folds every BatchNorm into the conv or
linear layer before it, runs the float model over the calibration images to record the range
of every activation (min/max, or a percentile), and turns each graph node into integer ops with
one registered handler per layer type (``@register_lowering``). Activations that directly follow
a conv/linear layer or a residual add are fused into that op's output clamp.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from accel_models.clipact import ClippedReLU, threshold_codes, threshold_range
from accel_models.program import ADD_SHIFT, Add, AvgPool, Clamp, Clip, Flatten, Gemm, MaxPool, Program, QuantizeInput
from accel_models.quant import QParams, choose_qparams, quantize_multiplier, quantize_weight
from sysarray.validation import check_instance


class UnsupportedModelError(ValueError):
    """The model uses a layer or construct the integer program cannot express."""


# --------------------------------------------------------------------------- registry
_LOWERINGS: dict[object, Callable] = {}


def register_lowering(*keys):
    """Register a handler ``fn(ctx, node)`` for module types, functions or method names."""
    def deco(fn):
        for k in keys:
            _LOWERINGS[k] = fn
        return fn
    return deco


def supported_layers() -> list[str]:
    names = set()
    for k in _LOWERINGS:
        if isinstance(k, type):
            names.add(f"nn.{k.__name__}")
        elif isinstance(k, str):
            names.add(f"Tensor.{k}()")
        else:
            names.add(getattr(k, "__module__", "").replace("torch.nn.functional", "F").replace("_operator", "operator") + "." + k.__name__)
    return sorted(names)


# Activation layers: (lo, hi) bounds in real units applied as a clamp; None = unbounded.
def _activation_bounds(ctx: "_Ctx", node: fx.Node) -> tuple[float, float | None] | None:
    if node.op == "call_module":
        m = ctx.module(node)
        if isinstance(m, nn.ReLU):
            return (0.0, None)
        if isinstance(m, nn.ReLU6):
            return (0.0, 6.0)
        if isinstance(m, nn.Hardtanh) and m.min_val == 0.0:
            return (0.0, float(m.max_val))
        bounds = getattr(m, "clip_bounds", None)  # clipped activations (mitigation) expose this
        if callable(bounds):
            return bounds()
        return None
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return (0.0, None)
    if node.op == "call_function" and node.target is F.relu6:
        return (0.0, 6.0)
    if node.op == "call_method" and node.target == "relu":
        return (0.0, None)
    return None


@dataclass
class _Ctx:
    gm: fx.GraphModule
    ranges: dict[str, tuple[float, float]]
    shapes: dict[str, tuple[int, ...]]
    ops: list = field(default_factory=list)
    qp: dict[str, QParams] = field(default_factory=dict)  # node name -> qparams of its codes
    alias: dict[str, str] = field(default_factory=dict)  # node name -> value name it is
    consumed: set = field(default_factory=set)  # activation nodes fused into their producer
    output_value: str | None = None

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def value(self, node) -> str:
        if not isinstance(node, fx.Node):
            raise UnsupportedModelError(f"Expected a tensor input, got the constant {node!r}.")
        name = node.name
        while name in self.alias:
            name = self.alias[name]
        if name not in self.qp:
            raise UnsupportedModelError(f"The value '{node.name}' is used before it is computed (or is not a tensor).")
        return name

    def qparams(self, node) -> QParams:
        return self.qp[self.value(node)]

    def calibrated(self, node: fx.Node) -> QParams:
        lo, hi = self.ranges[node.name]
        clip = _clipped(self, node)
        if clip is not None:  # a clipped activation's codes cover [0, max T], so every threshold code is exact
            lo, hi = threshold_range(clip)
        return choose_qparams(lo, hi)

    def fusable_activation(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        if len(users) == 1 and _activation_bounds(self, users[0]) is not None:
            return users[0]
        return None

    def feeds_output(self, node: fx.Node) -> bool:
        """True when ``node``'s value reaches the graph output through no compute."""
        for u in node.users:
            if u.op == "output":
                return True
            if _is_passthrough(self, u) and self.feeds_output(u):
                return True
        return False


def _is_passthrough(ctx: _Ctx, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(ctx.module(node), (nn.Dropout, nn.Identity, nn.Flatten))
    if node.op == "call_function":
        return node.target in (torch.flatten, F.dropout)
    if node.op == "call_method":
        return node.target in ("flatten", "view", "reshape", "contiguous")
    return False


def _clipped(ctx: _Ctx, node: fx.Node | None) -> ClippedReLU | None:
    """The clipped activation module of ``node``, if it is one."""
    if node is not None and node.op == "call_module" and isinstance(ctx.module(node), ClippedReLU):
        return ctx.module(node)
    return None


def _activation_label(bounds) -> str:
    """What a fused clamp implements: none, relu, relu6 or clip (any other upper bound)."""
    if bounds is None:
        return "none"
    if bounds[1] is None:
        return "relu"
    return "relu6" if bounds[1] == 6.0 else "clip"


def _clamp_codes(qp: QParams, bounds) -> tuple[int, int]:
    lo, hi = qp.qmin, qp.qmax
    if bounds is not None:
        lo = max(lo, qp.quantize_value(bounds[0]))
        if bounds[1] is not None:
            hi = min(hi, qp.quantize_value(bounds[1]))
    return lo, hi


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


# --------------------------------------------------------------------------- handlers
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
        pairs = [quantize_multiplier(float(a) / out_qp.scale) for a in acc_scale]
        m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
        shift = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
        if int(shift.min()) < 1:
            raise UnsupportedModelError(f"Layer '{name}' needs a requantization multiplier above 2**30; its output range is degenerate.")
        lo, hi = _clamp_codes(out_qp, bounds)
    return Gemm(name=name, kind=kind, input=in_value, output=out_value, weight=wq, bias=bq, in_qp=in_qp,
                out_qp=out_qp, m0=m0, shift=shift, lo=lo, hi=hi, acc_scale=acc_scale,
                float_weight=weight.detach().clone(), float_bias=b.float(), activation=activation, **geometry)


@register_lowering(nn.Conv2d, nn.Linear)
def _lower_gemm(ctx: _Ctx, node: fx.Node) -> None:
    m = ctx.module(node)
    in_value = ctx.value(node.args[0])
    in_qp = ctx.qp[in_value]
    act = ctx.fusable_activation(node)
    out_node = act if act is not None else node
    bounds = _activation_bounds(ctx, act) if act is not None else None
    final = ctx.feeds_output(out_node) and act is None
    out_qp = None if final else ctx.calibrated(out_node)
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str) or _pair(m.dilation) != (1, 1):
            raise UnsupportedModelError(f"Conv2d '{node.target}' uses padding mode/dilation the chip does not support "
                                        "(zero padding given as numbers, dilation 1).")
        geometry = dict(stride=_pair(m.stride), padding=_pair(m.padding), groups=m.groups)
        kind = "conv"
    else:
        if len(ctx.shapes[node.args[0].name]) != 2:
            raise UnsupportedModelError(f"Linear '{node.target}' needs a flattened (N, features) input.")
        geometry = {}
        kind = "linear"
    activation = _activation_label(bounds)
    op = gemm_op(str(node.target), kind, in_value, out_node.name, in_qp, out_qp, m.weight, m.bias, bounds,
                 activation, **geometry)
    clip = _clipped(ctx, act)
    if clip is not None:
        op.clip_codes, op.clip_policy = threshold_codes(clip, out_qp, op.lo, op.hi), clip.inference_policy
        op.activation = "clip"
    ctx.ops.append(op)
    ctx.qp[out_node.name] = out_qp if out_qp is not None else QParams(1.0, 0, True)
    if act is not None:
        ctx.consumed.add(act.name)


@register_lowering(nn.ReLU, nn.ReLU6, nn.Hardtanh, F.relu, torch.relu, F.relu6, "relu", ClippedReLU)
def _lower_activation(ctx: _Ctx, node: fx.Node) -> None:
    bounds = _activation_bounds(ctx, node)
    if bounds is None:
        raise UnsupportedModelError(f"Activation '{node.name}' is not a ReLU-type activation with a lower bound of 0.")
    src = ctx.value(node.args[0])
    qp = ctx.qp[src]
    lo, hi = _clamp_codes(qp, bounds)
    clip = _clipped(ctx, node)
    if clip is not None:  # not fused (e.g. a pool in between): thresholds in the input's quantization
        ctx.ops.append(Clip(src, node.name, lo, hi, threshold_codes(clip, qp, lo, hi), clip.inference_policy, qp.zero_point))
    else:
        ctx.ops.append(Clamp(src, node.name, lo, hi))
    ctx.qp[node.name] = qp


@register_lowering(nn.MaxPool2d, F.max_pool2d)
def _lower_maxpool(ctx: _Ctx, node: fx.Node) -> None:
    if node.op == "call_module":
        m = ctx.module(node)
        k, s, p, d, ceil = m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode
    else:
        kw = dict(zip(["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"], node.args))
        kw.update(node.kwargs)
        k = kw["kernel_size"]
        s, p, d, ceil = kw.get("stride") or k, kw.get("padding", 0), kw.get("dilation", 1), kw.get("ceil_mode", False)
    if _pair(d) != (1, 1) or ceil:
        raise UnsupportedModelError(f"MaxPool '{node.name}' with dilation or ceil_mode is not supported.")
    src = ctx.value(node.args[0])
    ctx.ops.append(MaxPool(src, node.name, _pair(k), _pair(s), _pair(p)))
    ctx.qp[node.name] = ctx.qp[src]


@register_lowering(nn.AvgPool2d, nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d, F.avg_pool2d)
def _lower_avgpool(ctx: _Ctx, node: fx.Node) -> None:
    src = ctx.value(node.args[0])
    qp = ctx.qp[src]
    in_shape = ctx.shapes[node.args[0].name]
    adaptive = (node.op == "call_module" and isinstance(ctx.module(node), nn.AdaptiveAvgPool2d)) or \
        node.target is F.adaptive_avg_pool2d
    if adaptive:
        out = ctx.module(node).output_size if node.op == "call_module" else node.args[1]
        oh, ow = _pair(out) if out is not None else in_shape[-2:]
        H, W = in_shape[-2:]
        if H % oh or W % ow:
            raise UnsupportedModelError(f"AdaptiveAvgPool2d '{node.name}' to {oh}x{ow} from {H}x{W} is not a whole-window pool.")
        k = (H // oh, W // ow)
        s, p = k, (0, 0)
    else:
        m = ctx.module(node) if node.op == "call_module" else None
        if m is None:
            raise UnsupportedModelError("F.avg_pool2d: use nn.AvgPool2d.")
        if m.ceil_mode or not m.count_include_pad or m.divisor_override:
            raise UnsupportedModelError(f"AvgPool2d '{node.target}' needs ceil_mode=False, count_include_pad=True, no divisor_override.")
        k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
    ctx.ops.append(AvgPool(src, node.name, k, s, p, qp.zero_point))
    ctx.qp[node.name] = qp


@register_lowering(operator.add, torch.add, "add")
def _lower_add(ctx: _Ctx, node: fx.Node) -> None:
    if len(node.args) != 2 or node.kwargs:
        raise UnsupportedModelError(f"Add '{node.name}' must add exactly two tensors.")
    a, b = ctx.value(node.args[0]), ctx.value(node.args[1])
    act = ctx.fusable_activation(node)
    out_node = act if act is not None else node
    out_qp = ctx.calibrated(out_node)
    qa, qb = ctx.qp[a], ctx.qp[b]
    ma = int(round(qa.scale / out_qp.scale * (1 << ADD_SHIFT)))
    mb = int(round(qb.scale / out_qp.scale * (1 << ADD_SHIFT)))
    bounds = _activation_bounds(ctx, act) if act is not None else None
    lo, hi = _clamp_codes(out_qp, bounds)
    clip = _clipped(ctx, act)
    if clip is not None:
        # The add writes unsaturated codes (hi = int32 max) so the clip that follows sees them (zero policy).
        ctx.ops.append(Add(a, b, node.name, qa.zero_point, qb.zero_point, ma, mb, out_qp.zero_point, lo, (1 << 31) - 1,
                           activation="relu"))
        ctx.ops.append(Clip(node.name, out_node.name, lo, hi, threshold_codes(clip, out_qp, lo, hi),
                            clip.inference_policy, out_qp.zero_point))
        ctx.qp[node.name] = out_qp
    else:
        ctx.ops.append(Add(a, b, out_node.name, qa.zero_point, qb.zero_point, ma, mb, out_qp.zero_point, lo, hi,
                           activation=_activation_label(bounds)))
    ctx.qp[out_node.name] = out_qp
    if act is not None:
        ctx.consumed.add(act.name)


@register_lowering(nn.Flatten, torch.flatten, "flatten", "view", "reshape")
def _lower_flatten(ctx: _Ctx, node: fx.Node) -> None:
    src_node = node.args[0]
    in_shape = ctx.shapes[src_node.name]
    out_shape = ctx.shapes[node.name]
    if len(out_shape) != 2 or out_shape[0] != in_shape[0] or out_shape[1] != int(np.prod(in_shape[1:])):
        raise UnsupportedModelError(
            f"'{node.name}' reshapes {tuple(in_shape)} to {tuple(out_shape)}; only flattening to (N, features) is supported."
        )
    src = ctx.value(src_node)
    ctx.ops.append(Flatten(src, node.name))
    ctx.qp[node.name] = ctx.qp[src]


@register_lowering(nn.Dropout, nn.Identity, F.dropout, "contiguous")
def _lower_identity(ctx: _Ctx, node: fx.Node) -> None:
    ctx.alias[node.name] = ctx.value(node.args[0])


# --------------------------------------------------------------------------- passes
def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every BatchNorm that directly follows a conv/linear (sole user) into it (eval stats)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        src = node.args[0]
        ok = isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1 and \
            isinstance(gm.get_submodule(src.target), (nn.Conv2d, nn.Linear))
        if not ok:
            raise UnsupportedModelError(f"BatchNorm '{node.target}' must directly follow a Conv2d or Linear layer to be folded.")
        bn = gm.get_submodule(node.target)
        layer = gm.get_submodule(src.target)
        with torch.no_grad():
            std = torch.sqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.affine else torch.ones_like(std)
            beta = bn.bias if bn.affine else torch.zeros_like(std)
            scale = gamma / std
            layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
            b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (b - bn.running_mean) * scale + beta
            layer.bias = nn.Parameter(new_bias)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


class _RangeRecorder(fx.Interpreter):
    """Runs the float graph and records every node's output range and shape."""

    def __init__(self, gm, percentile: float | None):
        super().__init__(gm)
        self.ranges: dict[str, tuple[float, float]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.samples: dict[str, list[np.ndarray]] = {}
        self.percentile = percentile

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            lo, hi = float(out.min()), float(out.max())
            old = self.ranges.get(n.name)
            self.ranges[n.name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
            self.shapes[n.name] = tuple(out.shape)
            if self.percentile is not None:
                flat = out.detach().flatten()
                step = max(1, flat.numel() // 100_000)
                self.samples.setdefault(n.name, []).append(flat[::step].numpy())
        return out

    def finish(self):
        if self.percentile is not None:
            for name, parts in self.samples.items():
                v = np.concatenate(parts)
                self.ranges[name] = (float(np.percentile(v, 100 - self.percentile)), float(np.percentile(v, self.percentile)))


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with clipped activations kept as leaf modules (lowered by their handler)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ClippedReLU) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception as exc:  # torch.fx raises many kinds of errors on untraceable code
        raise UnsupportedModelError(f"torch.fx cannot trace {type(model).__name__}: {str(exc).splitlines()[0]}") from None


def _handler_for(ctx: _Ctx, node: fx.Node):
    if node.op == "call_module":
        key = type(ctx.module(node))
        what = f"module '{node.target}' ({key.__name__})"
    elif node.op == "call_function":
        key = node.target
        what = f"function {getattr(key, '__name__', key)}"
    elif node.op == "call_method":
        key = node.target
        what = f"method .{key}()"
    else:
        key, what = None, f"'{node.op}' node '{node.name}'"
    handler = _LOWERINGS.get(key)
    if handler is None:
        raise UnsupportedModelError(
            f"Cannot lower {what} to the integer program. Supported: {', '.join(supported_layers())}."
        )
    return handler


def lower(model: nn.Module, calibration: torch.Tensor, *, percentile: float | None = None,
          batch_size: int = 512) -> Program:
    """Lower a float torch model to an integer-only int8 :class:`Program`.

    calibration: float images (N, C, H, W) whose activation ranges set the quantization.
    percentile: e.g. 99.99 to clip ranges at that percentile instead of min/max.
    """
    check_instance(model, nn.Module, "model", "lower", what="a torch.nn.Module")
    if not isinstance(calibration, torch.Tensor) or calibration.dim() < 2 or not calibration.is_floating_point():
        got = f"{calibration.dtype} {tuple(calibration.shape)}" if isinstance(calibration, torch.Tensor) else \
            type(calibration).__name__
        raise ValueError(f"The 'calibration' argument of lower must be a float tensor of images (N, C, H, W). "
                         f"Got {got} instead.")
    model = copy.deepcopy(model).eval().cpu()
    gm = _trace(model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(f"The model's forward must take exactly one tensor. Got {len(placeholders)}.")
    gm = fold_batchnorm(gm)
    rec = _RangeRecorder(gm, percentile)
    with torch.no_grad():
        for i in range(0, calibration.shape[0], batch_size):
            rec.run(calibration[i:i + batch_size].float())
    rec.finish()
    ctx = _Ctx(gm=gm, ranges=rec.ranges, shapes=rec.shapes)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            qp = ctx.calibrated(node)
            ctx.ops.append(QuantizeInput(node.name, qp))
            ctx.qp[node.name] = qp
        elif node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node):
                raise UnsupportedModelError("The model must return a single tensor of logits.")
            ctx.output_value = ctx.value(arg)
        elif node.name in ctx.consumed:
            continue
        elif node.op == "call_method" and node.target == "size":
            continue  # x.size(0) feeding a view(): a shape, not a value
        elif node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
            continue
        elif node.op == "call_function" and node.target is operator.getitem and \
                isinstance(node.args[0], fx.Node) and node.args[0].name not in ctx.shapes:
            continue  # indexing into a shape
        else:
            _handler_for(ctx, node)(ctx, node)
    gemms = [op for op in ctx.ops if isinstance(op, Gemm)]
    if not gemms:
        raise UnsupportedModelError("The model has no Conv2d or Linear layer to run on the chip.")
    last = gemms[-1]
    out_node = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    out_shape = rec.shapes[out_node.name]
    # The logits are the last layer's accumulators, possibly flattened (a conv classifier head).
    value = ctx.output_value
    tail = ctx.ops[ctx.ops.index(last) + 1:]
    for op in reversed(tail):
        if isinstance(op, Flatten) and op.output == value:
            value = op.input
    if last.out_qp is not None or value != last.output or any(not isinstance(op, Flatten) for op in tail):
        raise UnsupportedModelError("The model must end with a Linear or Conv2d layer whose output is the logits "
                                    "(no activation, pooling or add after it).")
    if len(out_shape) != 2:
        raise UnsupportedModelError(f"The model must return (N, classes) logits; it returns shape {tuple(out_shape)}. "
                                    "Flatten the last layer's output.")
    return Program(ops=ctx.ops, input_name=placeholders[0].name, output_name=ctx.output_value,
                   input_shape=tuple(calibration.shape[1:]), num_classes=int(out_shape[-1]),
                   logit_repeat=int(out_shape[1]) // last.out_channels,
                   meta={"percentile": percentile, "calibration_images": int(calibration.shape[0])})
