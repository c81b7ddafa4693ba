"""Capture a float model as an ATen graph with ``torch.export``, and record its activation ranges.

The batch dimension is exported as symbolic, so shapes that depend on it (``x.reshape(B, ...)``,
``cls_token.expand(B, -1, -1)``) stay expressions of the batch; every other size is fixed by the
example. Shape checks in ``forward`` (``if x.shape[-2:] != (28, 28): raise ...``) and reads such as
``x.ndim`` are resolved at capture; optional ``forward`` arguments take their defaults.

Clipped activations (:class:`accel_models.clipact.ClippedReLU`) are kept whole: during capture
each is replaced by a marker module that calls the custom op ``sysarray::clipped_relu`` with the
activation's index, so the lowering sees one node per clipped activation, not its decomposition.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from accel_models.clipact import ClippedReLU

_CLIPPED: list[ClippedReLU] = []  # the clipped activations of the model being lowered, by index


@torch.library.custom_op("sysarray::clipped_relu", mutates_args=())
def clipped_relu(x: torch.Tensor, index: int) -> torch.Tensor:
    """The clipped activation ``index`` of the model being lowered (eval mode), as one graph node."""
    return _CLIPPED[index](x).clone()


@clipped_relu.register_fake
def _(x: torch.Tensor, index: int) -> torch.Tensor:
    return torch.empty_like(x)


class _ClipMarker(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.sysarray.clipped_relu(x, self.index)


@contextlib.contextmanager
def clipped_markers(model: nn.Module):
    """Replace ``model``'s clipped activations (in place) by markers; yields the list of the
    originals by marker index, valid until the context exits."""
    found = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, ClippedReLU):
                found.append(child)
                setattr(module, child_name, _ClipMarker(len(found) - 1))
    _CLIPPED[:] = found
    try:
        yield found
    finally:
        _CLIPPED.clear()


class CaptureError(ValueError):
    """``torch.export`` could not capture the model."""


def _mutates(graph: fx.Graph) -> bool:
    """True when an op of ``graph`` writes into one of its inputs (``relu_``, ``add_``)."""
    return any(n.op == "call_function" and getattr(getattr(n.target, "_schema", None), "is_mutable", False)
               for n in graph.nodes)


@contextlib.contextmanager
def _quiet_export():
    """torch.export logs and prints the graph it gave up on; the lowering reports the reason itself."""
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def capture(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """``model`` (eval mode, on CPU, clipped activations already replaced by markers) exported
    with ``example`` (N >= 2, C, H, W) as a graph module of ATen ops; the batch is symbolic."""
    batch = torch.export.Dim("batch")
    try:
        with _quiet_export():
            exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
            if _mutates(exported.graph):
                exported = exported.run_decompositions({})  # functional ops only (x += y is add), nothing decomposed
    except Exception as exc:  # torch.export raises many kinds of errors on code it cannot capture
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Constraints violated (batch)" in first:
            first = ("its forward does not work for every batch size (it treats the batch dimension as data, "
                     "e.g. a recurrent layer over the batch, or specializes on it); " + first)
        if "data-dependent" in first:
            first = "its forward branches on tensor values (e.g. `if x.sum() > 0:`), which a fixed program cannot " \
                    "express; " + first
        raise CaptureError(f"torch.export cannot capture {type(model).__name__}: {first}") from None
    return exported.module()


def batch_symbol(gm: fx.GraphModule):
    """The sympy symbol of the batch size in ``gm``'s shapes."""
    ph = next(n for n in gm.graph.nodes if n.op == "placeholder")
    return ph.meta["val"].shape[0].node.expr


class RangeRecorder(fx.Interpreter):
    """Runs the captured graph in float and records each float tensor node's range (min/max, or
    percentiles) and its shape for one sample (``shapes[name]`` is the full shape of the last
    batch). ``extra(node, args, out)`` may return more named tensors to record (the scores inside
    a fused attention)."""

    def __init__(self, gm: fx.GraphModule, percentile: float | None, extra=None):
        super().__init__(gm)
        self.ranges: dict[str, tuple[float, float]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.samples: dict[str, list[np.ndarray]] = {}
        self.percentile = percentile
        self.extra = extra
        self.nan_at: str | None = None  # the first recorded tensor holding NaN

    def run(self, *args, **kwargs):
        """One calibration batch; raises ValueError naming the first tensor that held NaN (a NaN
        range has no quantization, and the error it causes later names no node)."""
        out = super().run(*args, **kwargs)
        if self.nan_at is not None:
            raise ValueError(f"Calibrating the model gives NaN values in its tensor {self.nan_at!r} (the first such "
                             f"tensor); lower needs finite weights and activations. Check the model's weights and "
                             f"buffers for NaN or infinite values.")
        return out

    def _record(self, name: str, out: torch.Tensor) -> None:
        lo, hi = float(out.min()), float(out.max())
        if (np.isnan(lo) or np.isnan(hi)) and self.nan_at is None:  # min and max propagate NaN
            self.nan_at = name
        old = self.ranges.get(name)
        self.ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        self.shapes[name] = tuple(out.shape)
        if self.percentile is not None:
            flat = out.detach().flatten()
            step = max(1, flat.numel() // 100_000)
            self.samples.setdefault(name, []).append(flat[::step].numpy())

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
            self._record(n.name, out)
        elif isinstance(out, (tuple, list)):
            for i, o in enumerate(out):
                if isinstance(o, torch.Tensor) and o.is_floating_point() and o.numel():
                    self._record(f"{n.name}[{i}]", o)
        if self.extra is not None and n.op == "call_function":
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            for name, value in (self.extra(n, args, kwargs) or {}).items():
                self._record(name, value)
        return out

    def finish(self) -> None:
        if self.percentile is not None:
            for name, parts in self.samples.items():
                v = np.concatenate(parts)
                self.ranges[name] = (float(np.percentile(v, 100 - self.percentile)), float(np.percentile(v, self.percentile)))


def prepared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode on CPU (the lowering never changes the user's model)."""
    return copy.deepcopy(model).eval().cpu()
