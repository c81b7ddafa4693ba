"""The state of one lowering: the captured graph, calibrated ranges, emitted ops and the
quantization of every value; the handler registry; and the small helpers handlers share."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import sympy
import torch
import torch.fx as fx

from accel_models.ppu import BatchDim, Constant
from accel_models.quant import QParams, choose_qparams


class UnsupportedModelError(ValueError):
    """The model uses a layer or construct the integer program cannot express (the message lists
    every such construct with its module path and the reason)."""


class Unsupported(Exception):
    """Raised by a handler: this node cannot be lowered, for the reason given."""


# --------------------------------------------------------------------------- registry
_LOWERINGS: dict[str, Callable] = {}


def op_name(target) -> str | None:
    """The registry key of a node's target: the ATen base name (``"conv2d"``), ``"getitem"``, or
    the custom op's name (``"clipped_relu"``)."""
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "name", None)
    if callable(name):
        return name().split("::", 1)[1].split(".", 1)[0]
    return None


def overload_name(target) -> str:
    """``"permute.default"``: the ATen op with its overload."""
    return f"{op_name(target)}.{target._overloadname}"


def register_lowering(*names: str):
    """Register a handler ``fn(ctx, node)`` for ATen ops given by base name (``"conv2d"``,
    ``"add"``, ...)."""
    def deco(fn):
        for k in names:
            _LOWERINGS[k] = fn
        return fn
    return deco


def handler(name: str | None) -> Callable | None:
    return _LOWERINGS.get(name) if name is not None else None


def registered_names() -> list[str]:
    return sorted(_LOWERINGS)


# --------------------------------------------------------------------------- the context
@dataclass
class Ctx:
    gm: fx.GraphModule
    ranges: dict[str, tuple[float, float]]
    shapes: dict[str, tuple[int, ...]]
    batch: object  # the sympy symbol of the batch size
    clipped: list = field(default_factory=list)  # clipped activations by marker index
    ops: list = field(default_factory=list)
    qp: dict[str, QParams] = field(default_factory=dict)  # value name -> quantization of its codes
    alias: dict[str, str] = field(default_factory=dict)  # node name -> the value whose codes it is
    consumed: set = field(default_factory=set)  # nodes fused into an op emitted earlier
    errors: list = field(default_factory=list)  # (where, reason)
    poisoned: set = field(default_factory=set)  # nodes that could not be lowered (and what uses them)

    # ----------------------------------------------------------------- values
    def name_of(self, node) -> str:
        name = node.name
        while name in self.alias:
            name = self.alias[name]
        return name

    def value(self, node) -> str:
        """The value name holding ``node``'s codes; a parameter used as an activation becomes a
        :class:`Constant`."""
        if not isinstance(node, fx.Node):
            raise Unsupported(f"expected a tensor, got the constant {node!r}")
        if node.op == "get_attr" and node.name not in self.qp:
            self.materialize(node)
        name = self.name_of(node)
        if name not in self.qp:
            raise Unsupported(f"the value '{node.name}' is not an activation the program computes")
        return name

    def qparams(self, node) -> QParams:
        """The quantization of ``node``'s codes (which a scale fold may have changed along an alias)."""
        name = node.name
        while name not in self.qp:
            if name not in self.alias:
                self.value(node)
                return self.qp[self.name_of(node)]
            name = self.alias[name]
        return self.qp[name]

    def materialize(self, node: fx.Node) -> None:
        t = self.constant(node).detach().double()
        qp = choose_qparams(float(t.min()), float(t.max()))
        codes = torch.floor(t / qp.scale + 0.5).add(qp.zero_point).clamp(qp.qmin, qp.qmax).float()
        self.ops.append(Constant(node.name, codes))
        self.qp[node.name] = qp

    def constant(self, node) -> torch.Tensor | None:
        """The tensor of a parameter, buffer or captured constant node; None for activations."""
        if isinstance(node, fx.Node) and node.op == "get_attr":
            obj = self.gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        return None

    def is_constant(self, node) -> bool:
        return self.constant(node) is not None

    def calibrated(self, node: fx.Node, name: str | None = None) -> QParams:
        """8-bit quantization covering the calibrated range of ``node`` (or of the recorded ``name``)."""
        lo, hi = self.ranges[name or node.name]
        return choose_qparams(lo, hi)

    def shape(self, node) -> tuple[int, ...]:
        return self.shapes[node.name]

    def define(self, node_or_name, qp: QParams) -> None:
        self.qp[node_or_name if isinstance(node_or_name, str) else node_or_name.name] = qp

    # ----------------------------------------------------------------- graph structure
    def sole_user(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def feeds_output(self, node: fx.Node) -> bool:
        """True when every use of ``node``'s value reaches the graph output through data movement."""
        from accel_models.lowering.shapes import is_data_movement

        users = list(node.users)
        return bool(users) and all(
            u.op == "output" or (is_data_movement(u) and u.args[0] is node and self.feeds_output(u)) for u in users)

    def sym(self, value):
        """A shape argument as a plain int or a :class:`BatchDim` (sizes linear in the batch)."""
        if isinstance(value, (list, tuple)):
            return [self.sym(v) for v in value]
        if isinstance(value, fx.Node):
            val = value.meta.get("val")
            if not isinstance(val, torch.SymInt):
                raise Unsupported(f"a tensor '{value.name}' where a size was expected")
            value = val
        if isinstance(value, torch.SymInt):
            expr = sympy.expand(value.node.expr)
            coefficient, offset = expr.coeff(self.batch), expr.subs(self.batch, 0)
            if expr.free_symbols - {self.batch} or not (coefficient.is_integer and offset.is_integer) \
                    or sympy.expand(coefficient * self.batch + offset - expr) != 0:
                raise Unsupported(f"a size {expr} that is not linear in the batch size")
            return BatchDim(int(coefficient), int(offset))
        return value


def innermost_module(node: fx.Node) -> tuple[str, str] | None:
    """``(path, type name)`` of the innermost module ``node`` comes from (path "" for the model
    itself); None when the capture recorded none."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, kind = list(stack.values())[-1]
    return path, kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


def module_path(node: fx.Node) -> str:
    """Where ``node`` comes from in the user's model, for messages: the innermost module's path and type."""
    found = innermost_module(node)
    return "the model's forward" if found is None else f"{found[0] or '(top level)'} ({found[1]})"


def positional(node: fx.Node, names: tuple[str, ...], defaults: dict) -> dict:
    """``node``'s arguments by name, defaults filled in."""
    out = dict(defaults)
    out.update(zip(names, node.args))
    out.update(node.kwargs)
    return out
