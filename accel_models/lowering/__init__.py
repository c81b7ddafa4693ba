"""torch model -> integer program (docs/design.md §5).

``lower(model, calibration=images)`` captures the model with ``torch.export`` (:mod:`.capture`),
runs the float graph over the calibration images to record the range of every activation
(min/max, or a percentile), and turns each ATen node into integer ops with one registered handler
per op (``@register_lowering``): convolutions and linear layers become GEMMs on the array with a
BatchNorm that follows folded in and a ReLU-type activation fused into the output clamp
(:mod:`.gemms`); every other elementwise function of one activation becomes a lookup table, and
add/sub/mul of two activations fixed-point units (:mod:`.elementwise`); data movement, ``cat``,
pooling and means keep or average codes (:mod:`.shapes`); products of two activations run on the
array, softmax and LayerNorm in fixed-point units (:mod:`.attention`).

Every construct that cannot be lowered is reported in one :class:`UnsupportedModelError`, each
with the module it comes from and the reason.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from accel_models.lowering import attention, elementwise, gemms, shapes  # noqa: F401  (register handlers)
from accel_models.lowering.capture import (CaptureError, RangeRecorder, batch_symbol, capture, clipped_markers,
                                           prepared_copy)
from accel_models.lowering.context import (Ctx, Unsupported, UnsupportedModelError, handler, module_path, op_name,
                                           register_lowering, registered_names)
from accel_models.lowering.gemms import gemm_op
from accel_models.program import Gemm, Program, QuantizeInput
from sysarray.validation import check_instance

__all__ = ["UnsupportedModelError", "gemm_op", "lower", "register_lowering", "supported_layers"]

ELEMENTWISE = "any other elementwise ATen op of one activation (a lookup table)"


def supported_layers() -> list[str]:
    """The ATen ops the lowering has a handler for (``"aten.conv2d"``, ...), and the rule for
    every other elementwise op."""
    return [f"aten.{n}" for n in registered_names() if n not in ("getitem", "clipped_relu")] + \
        ["ClippedReLU (accel_models.clipact)", ELEMENTWISE]


def _is_tensor_node(node: fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return True
    return isinstance(val, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in val)


def _inputs(node: fx.Node) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if n.op != "get_attr"]


def _lower_node(ctx: Ctx, node: fx.Node) -> None:
    name = op_name(node.target)
    fn = handler(name)
    if fn is None:
        if elementwise.is_pointwise(node):
            fn = elementwise._elementwise
        else:
            raise Unsupported(f"there is no integer unit for aten.{name}" if name else f"{node.target} is not an ATen op")
    fn(ctx, node)


def _check_calibration(calibration) -> None:
    if not isinstance(calibration, torch.Tensor) or calibration.dim() < 2 or not calibration.is_floating_point() \
            or not calibration.shape[0]:
        got = f"{calibration.dtype} {tuple(calibration.shape)}" if isinstance(calibration, torch.Tensor) else \
            type(calibration).__name__
        raise ValueError(f"The 'calibration' argument of lower must be a float tensor of images (N, C, H, W). "
                         f"Got {got} instead.")
    if not bool(torch.isfinite(torch.stack(torch.aminmax(calibration.float()))).all()):
        raise ValueError("The 'calibration' argument of lower must hold finite float32 values. Got NaN or infinite "
                         "values (after conversion to float32) instead.")


def _batches(calibration: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Calibration batches of at least two images (the capture's batch dimension starts at 2)."""
    x = calibration.float()
    if x.shape[0] == 1:
        x = x.repeat(2, *([1] * (x.dim() - 1)))
    cuts = list(range(0, x.shape[0], batch_size))
    parts = [x[i:i + batch_size] for i in cuts]
    if len(parts) > 1 and parts[-1].shape[0] < 2:
        parts[-2] = torch.cat(parts[-2:])
        parts.pop()
    return parts


def lower(model: nn.Module, calibration: torch.Tensor, *, percentile: float | None = None,
          batch_size: int = 512) -> Program:
    """Lower a float torch model to an integer-only int8 :class:`Program`.

    calibration: float images (N, C, H, W) whose activation ranges set the quantization (their
    shape, batch aside, is the shape the program takes). percentile: e.g. 99.99 to clip ranges at
    that percentile instead of min/max. Raises :class:`UnsupportedModelError` listing every
    construct the integer program cannot express.
    """
    check_instance(model, nn.Module, "model", "lower", what="a torch.nn.Module")
    _check_calibration(calibration)
    model = prepared_copy(model)
    parts = _batches(calibration, batch_size)
    with clipped_markers(model) as clipped, torch.no_grad():
        try:
            gm = capture(model, parts[0][:8] if parts[0].shape[0] >= 2 else parts[0])
        except CaptureError as exc:
            raise UnsupportedModelError(str(exc)) from None
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise UnsupportedModelError(f"The model's forward must take exactly one tensor. Got {len(placeholders)}.")
        rec = RangeRecorder(gm, percentile, extra=attention.record_sdpa_scores)
        for part in parts:
            rec.run(part)
        rec.finish()
        ctx = Ctx(gm=gm, ranges=rec.ranges, shapes=rec.shapes, batch=batch_symbol(gm), clipped=clipped)
        dropped = _final_normalization(ctx)
        output = _walk(ctx, type(model).__name__)
        if output is not None and output is dropped:
            output = dropped.args[0]
    return _program(ctx, output, placeholders[0], calibration, percentile)


FINAL_NORMALIZATIONS = ("softmax", "_softmax", "log_softmax", "_log_softmax")


def _final_normalization(ctx: Ctx) -> fx.Node | None:
    """A softmax or log-softmax over the classes that produces the model's output: left out (the
    program returns the logits before it; the predictions are the same). Returns that node."""
    output = next(n for n in ctx.gm.graph.nodes if n.op == "output")
    result = output.args[0]
    result = result[0] if isinstance(result, (list, tuple)) and len(result) == 1 else result
    if isinstance(result, fx.Node) and result.op == "call_function" and op_name(result.target) in FINAL_NORMALIZATIONS \
            and len(ctx.shape(result)) == 2 and int(result.args[1]) % 2 == 1 and len(result.users) == 1:
        ctx.consumed.add(result.name)
        return result
    return None


def _walk(ctx: Ctx, model_name: str) -> fx.Node:
    """Lower every node; returns the node whose value is the model's output."""
    output = None
    for node in ctx.gm.graph.nodes:
        if node.op == "placeholder":
            qp = ctx.calibrated(node)
            ctx.ops.append(QuantizeInput(node.name, qp))
            ctx.define(node, qp)
        elif node.op == "output":
            output = node
        elif node.op != "call_function" or node.name in ctx.consumed or not _is_tensor_node(node):
            continue  # parameters (taken when used), guards, shape arithmetic
        elif any(n.name in ctx.poisoned for n in _inputs(node)):
            ctx.poisoned.add(node.name)  # no calibrated range to stand in for its input: reported where it started
        else:
            try:
                _lower_node(ctx, node)
            except Unsupported as exc:
                ctx.errors.append(f"{module_path(node)}: aten.{op_name(node.target)}: {exc}")
                if node.name in ctx.ranges:
                    # its calibrated range stands in for the value, so what follows is still examined
                    ctx.define(node, ctx.calibrated(node))
                else:
                    ctx.poisoned.add(node.name)
    result = output.args[0]
    if isinstance(result, (list, tuple)):
        if len(result) != 1:
            ctx.errors.append(f"the model's forward: it returns {len(result)} values; one tensor of logits is expected")
            result = None
        else:
            result = result[0]
    if result is not None and not isinstance(result, fx.Node):
        ctx.errors.append("the model's forward: it does not return a tensor")
    if ctx.errors:
        lines = "\n".join(f"  - {e}" for e in ctx.errors)
        raise UnsupportedModelError(
            f"{model_name} cannot be lowered to the integer program; {len(ctx.errors)} construct"
            f"{'s' if len(ctx.errors) > 1 else ''} the chip cannot express:\n{lines}\n"
            "accel_models.supported_layers() lists what the lowering supports.")
    return result


def _program(ctx: Ctx, result: fx.Node, placeholder: fx.Node, calibration: torch.Tensor, percentile) -> Program:
    chip_ops = [op for op in ctx.ops if isinstance(op, Gemm)]
    if not chip_ops:
        raise UnsupportedModelError("The model has no convolution or linear layer to run on the chip.")
    out_shape = ctx.shape(result)
    if len(out_shape) != 2:
        raise UnsupportedModelError(f"The model must return (N, classes) logits; it returns shape {tuple(out_shape)}.")
    value = ctx.value(result)
    final = [op for op in chip_ops if op.out_qp is None]
    # the largest value one image makes (sizes the batches of a run); shapes are the last calibration batch's
    batch = ctx.shape(placeholder)[0]
    peak = max(int(np.prod(shape)) for shape in ctx.shapes.values()) // batch
    for op in chip_ops:  # a convolution's im2col rows (output pixels x K), where the engine needs them
        if op.kind == "conv" and op.output in ctx.shapes:
            peak = max(peak, int(np.prod(ctx.shapes[op.output][2:])) * int(op.weight[0].numel()))
    meta = {"percentile": percentile, "calibration_images": int(calibration.shape[0]), "capture": "torch.export",
            "peak_values": peak}
    common = dict(ops=ctx.ops, input_name=placeholder.name, output_name=value,
                  input_shape=tuple(calibration.shape[1:]), num_classes=int(out_shape[-1]), meta=meta)
    if final:
        return Program(**common, head_shape=tuple(ctx.shapes[final[0].output][1:]))
    return Program(**common, output_qp=ctx.qparams(result))
