"""Transformer ops: activation-by-activation products on the array, softmax and LayerNorm units,
and ``scaled_dot_product_attention`` as product, softmax, product."""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from accel_models.lowering.context import Ctx, Unsupported, innermost_module, positional, register_lowering
from accel_models.lowering.gemms import linear_from_matmul
from accel_models.matmul import MatMul
from accel_models.ppu import LN_FRACTION_BITS, LN_GAIN_BITS, SOFTMAX_LEVELS, Layout, LayerNorm, Softmax, softmax_table
from accel_models.quant import QParams, quantize_multiplier

SOFTMAX_QP = QParams(1.0 / SOFTMAX_LEVELS, 0, False)


def emit_matmul(ctx: Ctx, name: str, a: str, b: str, qa: QParams, qb: QParams, out: str, out_qp: QParams,
                alpha: float = 1.0) -> None:
    m = qa.scale * qb.scale * alpha / out_qp.scale
    m0, shift = quantize_multiplier(m)
    if shift < 1:
        raise Unsupported("its requantization multiplier is above 2**30 (a degenerate output range)")
    ctx.ops.append(MatMul(name, a, b, out, qa, qb, m0, shift, out_qp.zero_point, out_qp.qmin, out_qp.qmax, m))
    ctx.define(out, out_qp)


def _matmul_name(ctx: Ctx, node: fx.Node) -> str:
    path = (innermost_module(node) or ("",))[0]
    return f"{path}.{node.name}" if path else node.name


@register_lowering("matmul", "bmm", "mm")
def _matmul(ctx: Ctx, node: fx.Node) -> None:
    if linear_from_matmul(ctx, node):
        return
    a, b = node.args[0], node.args[1]
    if len(ctx.shape(a)) < 2 or len(ctx.shape(b)) < 2:
        raise Unsupported("a matrix-vector product (both operands need two dimensions)")
    emit_matmul(ctx, _matmul_name(ctx, node), ctx.value(a), ctx.value(b), ctx.qparams(a), ctx.qparams(b), node.name,
                ctx.calibrated(node))


@register_lowering("softmax", "_softmax")
def _softmax(ctx: Ctx, node: fx.Node) -> None:
    src = node.args[0]
    qp = ctx.qparams(src)
    dim = int(node.args[1]) % len(ctx.shape(src))
    if dim == 0:
        raise Unsupported("a softmax over the batch dimension")
    ctx.ops.append(Softmax(ctx.value(src), node.name, dim, softmax_table(qp.scale), qp.scale, qp.zero_point))
    ctx.define(node, SOFTMAX_QP)


@register_lowering("layer_norm")
def _layer_norm(ctx: Ctx, node: fx.Node) -> None:
    a = positional(node, ("input", "normalized_shape", "weight", "bias", "eps"), {"weight": None, "bias": None, "eps": 1e-5})
    shape = list(a["normalized_shape"])
    if len(shape) != 1:
        raise Unsupported("LayerNorm over more than the last dimension (normalize the last dimension only)")
    src = a["input"]
    qi, qo = ctx.qparams(src), ctx.calibrated(node)
    d = int(shape[0])
    gamma = ctx.constant(a["weight"]).double() if a["weight"] is not None else torch.ones(d, dtype=torch.float64)
    beta = ctx.constant(a["bias"]).double() if a["bias"] is not None else torch.zeros(d, dtype=torch.float64)
    eps = float(a["eps"])
    eps_codes = int(math.floor(eps * d * d / (qi.scale * qi.scale) + 0.5))
    gain = torch.floor(gamma / qo.scale * (1 << LN_GAIN_BITS) + 0.5).to(torch.int64)
    offset = torch.floor(beta / qo.scale * (1 << (LN_FRACTION_BITS + LN_GAIN_BITS)) + 0.5).to(torch.int64)
    ctx.ops.append(LayerNorm(ctx.value(src), node.name, eps_codes, gain, offset, qo.zero_point, qo.qmin, qo.qmax,
                             qi.scale, qi.zero_point, qo.scale, eps, gamma.float(), beta.float()))
    ctx.define(node, qo)


SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def sdpa_scale(node: fx.Node, q_shape) -> float:
    a = positional(node, SDPA_ARGS, {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None})
    return float(a["scale"]) if a["scale"] is not None else 1.0 / math.sqrt(q_shape[-1])


def record_sdpa_scores(node: fx.Node, args, kwargs) -> dict:
    """For the range recorder: the scaled scores inside a fused attention, named ``<node>.scores``."""
    from accel_models.lowering.context import op_name

    if op_name(node.target) != "scaled_dot_product_attention":
        return {}
    q, k = args[0], args[1]
    return {f"{node.name}.scores": (q @ k.transpose(-2, -1)) * sdpa_scale(node, q.shape)}


@register_lowering("scaled_dot_product_attention")
def _sdpa(ctx: Ctx, node: fx.Node) -> None:
    a = positional(node, SDPA_ARGS, {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                                     "enable_gqa": False})
    if a["attn_mask"] is not None or a["is_causal"] or a["enable_gqa"]:
        raise Unsupported("attention with a mask, causal masking or grouped-query heads")
    q, k, v = a["query"], a["key"], a["value"]
    scale = sdpa_scale(node, ctx.shape(q))
    name = _matmul_name(ctx, node)
    kt = f"{node.name}.keyT"
    ctx.ops.append(Layout(ctx.value(k), kt, "transpose.int", (-2, -1)))
    ctx.define(kt, ctx.qparams(k))
    scores = f"{node.name}.scores"
    emit_matmul(ctx, f"{name}.scores", ctx.value(q), kt, ctx.qparams(q), ctx.qparams(k), scores,
                ctx.calibrated(node, scores), alpha=scale)
    probs = f"{node.name}.probs"
    sq = ctx.qp[scores]
    ctx.ops.append(Softmax(scores, probs, len(ctx.shape(q)) - 1, softmax_table(sq.scale), sq.scale, sq.zero_point))
    ctx.define(probs, SOFTMAX_QP)
    emit_matmul(ctx, f"{name}.context", probs, ctx.value(v), SOFTMAX_QP, ctx.qparams(v), node.name, ctx.calibrated(node))
