"""Data movement, concatenation, pooling and means: ops that keep (or average) codes."""
from __future__ import annotations

import torch.fx as fx

from accel_models.lowering.context import Ctx, Unsupported, op_name, overload_name, positional, register_lowering
from accel_models.lowering.elementwise import lut_from, standalone_batchnorm
from accel_models.ppu import LAYOUT_OPS, AdaptiveAvgPool, Cat, Layout, Mean
from accel_models.program import AvgPool, MaxPool

MULTI_OUTPUT = ("unbind", "split", "split_with_sizes", "chunk", "unsafe_split", "max_pool2d_with_indices",
                "native_layer_norm")


def is_data_movement(node: fx.Node) -> bool:
    """True for ops that only move codes (reshape, permute, select, ...)."""
    if node.op != "call_function":
        return False
    name = op_name(node.target)
    return name in LAYOUT_OPS or name in ("getitem", "clone", "contiguous", "alias", "dropout", "detach")


def _layout_name(node: fx.Node) -> str:
    name = op_name(node.target)
    if LAYOUT_OPS[name] == "reshape":
        return "reshape.default"
    if LAYOUT_OPS[name] != name:
        return f"{LAYOUT_OPS[name]}.default"
    return overload_name(node.target)


@register_lowering(*LAYOUT_OPS)
def _layout(ctx: Ctx, node: fx.Node) -> None:
    src = node.args[0]
    qp = ctx.qparams(src)
    ctx.ops.append(Layout(ctx.value(src), node.name, _layout_name(node), tuple(ctx.sym(list(node.args[1:])))))
    ctx.define(node, qp)


@register_lowering(*MULTI_OUTPUT)
def _multi(ctx: Ctx, node: fx.Node) -> None:
    """Ops returning several tensors: each ``getitem`` that reads one becomes its own op."""
    if op_name(node.target) == "native_layer_norm":
        raise Unsupported("LayerNorm with statistics outputs")


def _split_bounds(node: fx.Node, size: int) -> list[tuple[int, int]]:
    name = op_name(node.target)
    if name in ("split", "unsafe_split"):
        step = int(node.args[1])
        return [(i, min(i + step, size)) for i in range(0, size, step)]
    if name == "split_with_sizes":
        out, start = [], 0
        for s in node.args[1]:
            out.append((start, start + int(s)))
            start += int(s)
        return out
    chunks = int(node.args[1])
    step = -(-size // chunks)
    return [(i, min(i + step, size)) for i in range(0, size, step)]


@register_lowering("getitem")
def _getitem(ctx: Ctx, node: fx.Node) -> None:
    src, index = node.args
    if not isinstance(src, fx.Node) or src.op != "call_function":
        raise Unsupported("indexing into something that is not a tensor op's output")
    name = op_name(src.target)
    base = src.args[0]
    if name == "_native_batch_norm_legit_no_training":
        if index != 0:
            raise Unsupported("BatchNorm statistics are not computed on the chip")
        standalone_batchnorm(ctx, src, node)
        return
    if name == "max_pool2d_with_indices":
        if index != 0:
            raise Unsupported("max-pool indices are not computed on the chip")
        _maxpool(ctx, src, out_name=node.name)
        return
    if name not in MULTI_OUTPUT:
        raise Unsupported(f"indexing into the output of {name}")
    rank = len(ctx.shape(base))
    if name == "unbind":
        dim = int(positional(src, ("input", "dim"), {"dim": 0})["dim"]) % rank
        op = Layout(ctx.value(base), node.name, "select.int", (dim, int(index)))
    else:
        dim = int(positional(src, ("input", "size", "dim"), {"dim": 0})["dim"]) % rank
        size = ctx.shape(base)[dim]
        if dim == 0:
            raise Unsupported("splitting along the batch dimension")
        start, end = _split_bounds(src, size)[index]
        op = Layout(ctx.value(base), node.name, "slice.Tensor", (dim, start, end))
    ctx.ops.append(op)
    ctx.define(node, ctx.qparams(base))


@register_lowering("cat", "concat", "concatenate")
def _cat(ctx: Ctx, node: fx.Node) -> None:
    parts = list(node.args[0])
    dim = int(positional(node, ("tensors", "dim"), {"dim": 0})["dim"]) % len(ctx.shape(node))
    out_qp = ctx.calibrated(node)
    names = []
    for i, p in enumerate(parts):
        qp = ctx.qparams(p)
        if qp == out_qp:
            names.append(ctx.value(p))
            continue
        # A part in another quantization is requantized to the output's by a table.
        name = f"{node.name}.part{i}"
        ctx.ops.append(lut_from(ctx, lambda x: x, p, name, out_qp, function="requantize"))
        names.append(name)
    ctx.ops.append(Cat(tuple(names), node.name, dim))
    ctx.define(node, out_qp)


def _pair(v, default=None) -> tuple[int, int]:
    if v is None or (isinstance(v, (list, tuple)) and not len(v)):
        return default
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


@register_lowering("max_pool2d")
def _maxpool(ctx: Ctx, node: fx.Node, out_name: str | None = None) -> None:
    a = positional(node, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
                   {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False})
    k = _pair(a["kernel_size"])
    src = a["input"]
    ctx.ops.append(MaxPool(ctx.value(src), out_name or node.name, k, _pair(a["stride"], k), _pair(a["padding"]),
                           _pair(a["dilation"]), bool(a["ceil_mode"])))
    ctx.define(out_name or node.name, ctx.qparams(src))


@register_lowering("avg_pool2d")
def _avgpool(ctx: Ctx, node: fx.Node) -> None:
    a = positional(node, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                          "divisor_override"),
                   {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None})
    if a["ceil_mode"] or not a["count_include_pad"] or a["divisor_override"]:
        raise Unsupported("average pooling needs ceil_mode=False, count_include_pad=True and no divisor_override")
    k = _pair(a["kernel_size"])
    src = a["input"]
    qp = ctx.qparams(src)
    ctx.ops.append(AvgPool(ctx.value(src), node.name, k, _pair(a["stride"], k), _pair(a["padding"]), qp.zero_point))
    ctx.define(node, qp)


@register_lowering("adaptive_avg_pool2d", "_adaptive_avg_pool2d")
def _adaptive(ctx: Ctx, node: fx.Node) -> None:
    src = node.args[0]
    h, w = ctx.shape(src)[-2:]
    oh, ow = _pair(node.args[1])
    oh, ow = oh or h, ow or w
    qp = ctx.qparams(src)
    if h % oh == 0 and w % ow == 0:
        k = (h // oh, w // ow)
        ctx.ops.append(AvgPool(ctx.value(src), node.name, k, k, (0, 0), qp.zero_point))
    else:
        ctx.ops.append(AdaptiveAvgPool(ctx.value(src), node.name, (oh, ow)))
    ctx.define(node, qp)


@register_lowering("mean")
def _mean(ctx: Ctx, node: fx.Node) -> None:
    a = positional(node, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
    src = a["input"]
    rank = len(ctx.shape(src))
    if a["dim"] is None or (isinstance(a["dim"], (list, tuple)) and not len(a["dim"])):
        raise Unsupported("a mean over every dimension, the batch included")
    dims = tuple(sorted({int(d) % rank for d in (a["dim"] if isinstance(a["dim"], (list, tuple)) else [a["dim"]])}))
    if 0 in dims:
        raise Unsupported("a mean over the batch dimension")
    if a.get("dtype") is not None:
        raise Unsupported("a mean with a dtype")
    ctx.ops.append(Mean(ctx.value(src), node.name, dims, bool(a["keepdim"])))
    ctx.define(node, ctx.qparams(src))


@register_lowering("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "reflection_pad1d",
                   "replication_pad1d")
def _pad(ctx: Ctx, node: fx.Node) -> None:
    """Padding moves codes, except a constant pad, which writes the code of its value."""
    name = op_name(node.target)
    src = node.args[0]
    qp = ctx.qparams(src)
    if name in ("pad", "constant_pad_nd"):
        mode = positional(node, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
        if name == "constant_pad_nd":
            mode = {"pad": node.args[1], "mode": "constant", "value": node.args[2] if len(node.args) > 2 else 0.0}
        if mode["mode"] == "constant":
            code = qp.quantize_value(float(mode["value"] or 0.0))
            op = Layout(ctx.value(src), node.name, "constant_pad_nd.default", (list(mode["pad"]), float(code)))
        else:
            op = Layout(ctx.value(src), node.name, "pad.default", (list(mode["pad"]), mode["mode"]))
    else:
        op = Layout(ctx.value(src), node.name, overload_name(node.target), tuple(ctx.sym(list(node.args[1:]))))
    ctx.ops.append(op)
    ctx.define(node, qp)
