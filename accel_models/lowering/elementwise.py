"""Elementwise ops: ReLU-type clamps, lookup tables for every other function of one activation,
and the binary ops (add, subtract, multiply) of two activations."""
from __future__ import annotations

import numbers

import torch
import torch.fx as fx

from accel_models.clipact import threshold_codes
from accel_models.lowering.context import Ctx, Unsupported, op_name, register_lowering
from accel_models.lowering.gemms import (BATCHNORMS, activation_bounds, activation_label, batchnorm_affine,
                                         clamp_codes, clipped_module, output_qparams)
from accel_models.ppu import Div, Lut, Mul
from accel_models.program import ADD_SHIFT, Add, Clamp, Clip
from accel_models.quant import QParams, quantize_multiplier

ARITHMETIC = ("add", "sub", "rsub", "mul", "div")
IDENTITY = ("dropout", "clone", "alias", "contiguous", "detach", "lift_fresh_copy", "feature_dropout",
            "alpha_dropout", "_to_copy", "to", "type_as")


# Elementwise ATen ops that torch does not tag as pointwise.
UNTAGGED_ELEMENTWISE = ("hardswish", "add", "sub", "rsub", "mul", "div", "prelu", "_prelu_kernel", "square")


def is_pointwise(node: fx.Node) -> bool:
    tags = getattr(node.target, "tags", ())
    return torch.Tag.pointwise in tags or op_name(node.target) in UNTAGGED_ELEMENTWISE


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.args if isinstance(a, fx.Node)] + [a for a in node.kwargs.values() if isinstance(a, fx.Node)]


def channel_axis(ctx: Ctx, value_shape: tuple[int, ...], const: torch.Tensor) -> int | None:
    """The one axis of the value along which ``const`` varies when broadcast against it (-1: a
    scalar-like constant), or None when it varies along more than one axis or the batch."""
    rank = len(value_shape)
    if const.dim() > rank:
        return None
    shape = [1] * (rank - const.dim()) + list(const.shape)
    varying = [d for d, s in enumerate(shape) if s != 1]
    if not varying:
        return -1
    if len(varying) > 1 or varying[0] == 0 or shape[varying[0]] != value_shape[varying[0]]:
        return None
    return varying[0]


def lut_from(ctx: Ctx, fn, in_node: fx.Node, out_name: str, out_qp: QParams, axis: int = -1,
             function: str = "") -> Lut:
    """A :class:`Lut` for ``y = fn(x)`` on ``in_node``'s codes, channel ``axis`` (-1: one table).
    ``fn`` takes a float64 tensor of the input's rank holding the 256 real values along dim 0
    (and the channels along ``axis``) and returns the same shape."""
    qi = ctx.qparams(in_node)
    rank = max(1, len(ctx.shape(in_node)))
    channels = 1 if axis < 0 else ctx.shape(in_node)[axis]
    real = (torch.arange(qi.qmin, qi.qmax + 1, dtype=torch.float64) - qi.zero_point) * qi.scale
    shape = [256] + [1] * (rank - 1)
    if axis > 0:
        shape[axis] = channels
    probe = real.reshape([256] + [1] * (rank - 1)).expand(shape).clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(probe)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(shape):
            raise Unsupported("it is not elementwise in its activation input")
        grad = torch.autograd.grad(y.sum(), probe, allow_unused=True)[0] if y.requires_grad else None
    grad = torch.zeros_like(probe) if grad is None else grad
    y = y.detach()
    if axis > 0:
        y, grad = y.movedim(axis, 1).reshape(256, channels).t(), grad.movedim(axis, 1).reshape(256, channels).t()
    else:
        y, grad = y.reshape(1, 256), grad.reshape(1, 256)
    if not bool(torch.isfinite(y).all()):
        raise Unsupported("its function is not finite on every input code (e.g. log or division by zero)")
    table = torch.floor(y / out_qp.scale + 0.5).add(out_qp.zero_point).clamp(out_qp.qmin, out_qp.qmax).to(torch.int64)
    slope = torch.nan_to_num(grad * (qi.scale / out_qp.scale), nan=0.0, posinf=0.0, neginf=0.0).float()
    return Lut(ctx.value(in_node), out_name, table, slope, qi.qmin, axis if axis > 0 else 1, function)


def _node_function(ctx: Ctx, node: fx.Node, act: fx.Node):
    """``node``'s function of its activation input ``act`` (every other tensor argument a constant)."""
    def resolve(a):
        if a is act:
            return None
        if isinstance(a, fx.Node):
            c = ctx.constant(a)
            if c is None:
                raise Unsupported("it combines two activations in a way the post-processing unit cannot")
            return c.double()
        return a

    args = [resolve(a) for a in node.args]
    kwargs = {k: resolve(v) for k, v in node.kwargs.items()}
    pos = [i for i, a in enumerate(node.args) if a is act]

    def fn(x):
        call_args = list(args)
        for i in pos:
            call_args[i] = x
        return node.target(*call_args, **{k: (x if v is act else kwargs[k]) for k, v in node.kwargs.items()})

    return fn


def _lut_axis(ctx: Ctx, node: fx.Node, act: fx.Node) -> int:
    if op_name(node.target) in ("prelu", "_prelu_kernel"):
        return 1 if ctx.constant(node.args[1]).numel() > 1 else -1  # PReLU's weight runs along dim 1
    axis = -1
    for a in tensor_inputs(node):
        if a is act:
            continue
        found = channel_axis(ctx, ctx.shape(act), ctx.constant(a))
        if found is None:
            return -2
        axis = max(axis, found)
    return axis


def lut_chain(ctx: Ctx, node: fx.Node, fn, act: fx.Node, axis: int, label: str) -> None:
    """Emit one :class:`Lut` for ``fn`` composed with the elementwise single-activation ops that
    follow it alone (e.g. BatchNorm then ReLU), quantized once at the end of the chain."""
    last, functions = node, [fn]
    while True:
        nxt = ctx.sole_user(last)
        if nxt is None or nxt.op != "call_function" or ctx.feeds_output(last) or not lut_able(ctx, nxt, last):
            break
        nxt_axis = _lut_axis(ctx, nxt, last) if op_name(nxt.target) not in BATCHNORMS else 1
        if nxt_axis == -2 or (nxt_axis >= 0 and axis >= 0 and nxt_axis != axis) or clipped_module(ctx, nxt) is not None:
            break
        axis = max(axis, nxt_axis)
        functions.append(_single_function(ctx, nxt, last))
        ctx.consumed.add(nxt.name)
        last = nxt

    def composed(x):
        for f in functions:
            x = f(x)
        return x

    out_qp = output_qparams(ctx, last)
    ctx.ops.append(lut_from(ctx, composed, act, last.name, out_qp, axis, label))
    ctx.define(last, out_qp)


def _single_function(ctx: Ctx, node: fx.Node, act: fx.Node):
    if op_name(node.target) in BATCHNORMS:
        scale, shift = batchnorm_affine(ctx, node)
        rank = len(ctx.shape(act))
        view = [1, -1] + [1] * (rank - 2)
        return lambda x: x * scale.view(view) + shift.view(view)
    return _node_function(ctx, node, act)


def lut_able(ctx: Ctx, node: fx.Node, act: fx.Node) -> bool:
    """True when ``node`` is an elementwise function of the single activation ``act`` that a
    lookup table can implement (its other tensor inputs constants varying along one axis)."""
    name = op_name(node.target)
    if name in BATCHNORMS:
        return op_name(node.target) == "batch_norm" and node.args[0] is act
    if not is_pointwise(node) or name in ("clipped_relu",):
        return False
    inputs = tensor_inputs(node)
    if act not in inputs or any(a is not act and not ctx.is_constant(a) for a in inputs):
        return False
    return _lut_axis(ctx, node, act) != -2


def _scalar(ctx: Ctx, a) -> float | None:
    if isinstance(a, numbers.Number) and not isinstance(a, bool):
        return float(a)
    c = ctx.constant(a) if isinstance(a, fx.Node) else None
    if c is not None and c.numel() == 1:
        return float(c)
    return None


@register_lowering("relu", "relu6", "hardtanh", "clamp", "clamp_min", "clipped_relu")
def _activation(ctx: Ctx, node: fx.Node) -> None:
    bounds = activation_bounds(ctx, node)
    if bounds is None:
        return _elementwise(ctx, node)
    src = node.args[0]
    qp = ctx.qparams(src)
    lo, hi = clamp_codes(qp, bounds)
    clip = clipped_module(ctx, node)
    if clip is not None:  # not fused (e.g. a pool in between): thresholds in the input's quantization
        ctx.ops.append(Clip(ctx.value(src), node.name, lo, hi, threshold_codes(clip, qp, lo, hi), clip.inference_policy,
                            qp.zero_point))
    else:
        ctx.ops.append(Clamp(ctx.value(src), node.name, lo, hi))
    ctx.define(node, qp)


@register_lowering(*ARITHMETIC)
def _arithmetic(ctx: Ctx, node: fx.Node) -> None:
    name = op_name(node.target)
    acts = [a for a in node.args[:2] if isinstance(a, fx.Node) and not ctx.is_constant(a)]
    if len(acts) == 2:
        return _binary(ctx, node, name)
    if not acts:
        raise Unsupported("an operation on constants only")
    act = acts[0]
    other = node.args[1] if node.args[0] is act else node.args[0]
    c = _scalar(ctx, other)
    if name in ("mul", "div") and c is not None and c > 0 and node.args[0] is act and "alpha" not in node.kwargs \
            and "rounding_mode" not in node.kwargs:
        # A positive scale changes only what the codes mean: the same codes, a new scale.
        qp = ctx.qparams(act)
        factor = c if name == "mul" else 1.0 / c
        ctx.alias[node.name] = ctx.value(act)
        ctx.define(node, QParams(qp.scale * factor, qp.zero_point, qp.signed))
        return
    return _elementwise(ctx, node)


def _binary(ctx: Ctx, node: fx.Node, name: str) -> None:
    a, b = node.args[0], node.args[1]
    if name == "div":
        if node.kwargs.get("rounding_mode") is not None:
            raise Unsupported("division with a rounding mode")
        return _divide(ctx, node, a, b)
    if name == "rsub":
        a, b = b, a
        name = "sub"
    if node.kwargs.get("alpha", 1) != 1 or (len(node.args) > 2 and node.args[2] != 1):
        raise Unsupported("add/sub with alpha other than 1")
    qa, qb = ctx.qparams(a), ctx.qparams(b)
    if name == "mul":
        out_qp = ctx.calibrated(node)
        m = qa.scale * qb.scale / out_qp.scale
        m0, shift = quantize_multiplier(m)
        ctx.ops.append(Mul(ctx.value(a), ctx.value(b), node.name, qa.zero_point, qb.zero_point, m0, shift,
                           out_qp.zero_point, out_qp.qmin, out_qp.qmax, m))
        ctx.define(node, out_qp)
        return
    act = ctx.sole_user(node)
    bounds = activation_bounds(ctx, act) if act is not None and act.args[0] is node else None
    clip = clipped_module(ctx, act) if bounds is not None else None
    out_node = act if bounds is not None else node
    out_qp = output_qparams(ctx, out_node)
    ma = int(round(qa.scale / out_qp.scale * (1 << ADD_SHIFT)))
    mb = int(round(qb.scale / out_qp.scale * (1 << ADD_SHIFT))) * (-1 if name == "sub" else 1)
    lo, hi = clamp_codes(out_qp, bounds)
    va, vb = ctx.value(a), ctx.value(b)
    if clip is not None:
        # The add writes unsaturated codes (hi = int32 max) so the clip that follows sees them (zero policy).
        ctx.ops.append(Add(va, vb, node.name, qa.zero_point, qb.zero_point, ma, mb, out_qp.zero_point, lo, (1 << 31) - 1,
                           activation="relu"))
        ctx.ops.append(Clip(node.name, out_node.name, lo, hi, threshold_codes(clip, out_qp, lo, hi),
                            clip.inference_policy, out_qp.zero_point))
        ctx.define(node, out_qp)
    else:
        ctx.ops.append(Add(va, vb, out_node.name, qa.zero_point, qb.zero_point, ma, mb, out_qp.zero_point, lo, hi,
                           activation=activation_label(bounds)))
    ctx.define(out_node, out_qp)
    if out_node is not node:
        ctx.consumed.add(out_node.name)


def _divide(ctx: Ctx, node: fx.Node, a: fx.Node, b: fx.Node) -> None:
    qa, qb = ctx.qparams(a), ctx.qparams(b)
    out_qp = ctx.calibrated(node)
    m = qa.scale / (qb.scale * out_qp.scale)
    m0, shift = quantize_multiplier(m)
    if not 0 <= shift <= 54:
        raise Unsupported("a quotient whose scales are too far apart for the integer divider")
    ctx.ops.append(Div(ctx.value(a), ctx.value(b), node.name, qa.zero_point, qb.zero_point, m0, shift,
                       out_qp.zero_point, out_qp.qmin, out_qp.qmax, m))
    ctx.define(node, out_qp)


def _elementwise(ctx: Ctx, node: fx.Node) -> None:
    acts = [a for a in tensor_inputs(node) if not ctx.is_constant(a)]
    if len(acts) != 1:
        raise Unsupported("an elementwise function of several activations (add, sub, mul and div have units)")
    act = acts[0]
    if not lut_able(ctx, node, act):
        if is_pointwise(node):
            return _with_constant(ctx, node, act)
        raise Unsupported("it is not an elementwise function")
    lut_chain(ctx, node, _single_function(ctx, node, act), act, _lut_axis(ctx, node, act), f"aten.{op_name(node.target)}")


def _with_constant(ctx: Ctx, node: fx.Node, act: fx.Node) -> None:
    """A binary op with a constant varying along several axes (a position embedding): the
    constant becomes codes and the op one of two activations."""
    name = op_name(node.target)
    if name not in ("add", "sub", "rsub", "mul"):
        raise Unsupported("an elementwise function with a constant tensor that varies along several axes")
    _binary(ctx, node, name)


@register_lowering("batch_norm", "_native_batch_norm_legit_no_training")
def _batchnorm(ctx: Ctx, node: fx.Node) -> None:
    """A BatchNorm not folded into a conv/linear before it: a per-channel lookup table (the
    tuple-returning form is lowered at the ``getitem`` that reads its output)."""
    if op_name(node.target) == "batch_norm":
        standalone_batchnorm(ctx, node, node)


def standalone_batchnorm(ctx: Ctx, bn: fx.Node, value: fx.Node) -> None:
    """``bn`` as a per-channel table; ``value`` is the node holding its output."""
    act = bn.args[0]
    if len(ctx.shape(act)) < 2:
        raise Unsupported("a BatchNorm on a value without a channel dimension")
    lut_chain(ctx, value, _single_function(ctx, bn, act), act, 1, "batch_norm")


@register_lowering(*IDENTITY)
def _identity(ctx: Ctx, node: fx.Node) -> None:
    if op_name(node.target) in ("_to_copy", "to") and node.kwargs.get("dtype") not in (None, torch.float32):
        raise Unsupported(f"a conversion to {node.kwargs.get('dtype')} (the program computes on 8-bit codes)")
    ctx.alias[node.name] = ctx.value(node.args[0])
