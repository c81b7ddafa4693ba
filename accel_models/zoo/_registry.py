"""The registry of zoo architectures: name -> builder, and how a built model remembers itself.

Each builder is an ``nn.Module`` subclass whose constructor is
``Builder(input_shape, num_classes, **kwargs)``. ``build_model`` binds the arguments against that
signature (defaults filled in) and stores them on the model as ``model.arch``, so a checkpoint
can rebuild the very same architecture from the registry with nothing else.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from sysarray.validation import check_int

MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding an architecture to ``MODELS`` under ``name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MODELS:
            raise ValueError(f"Model name {name!r} is already registered to {MODELS[name].__name__}.")
        MODELS[name] = cls
        return cls

    return decorator


def model_names() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(MODELS)


def check_input_shape(input_shape: Sequence[int], num_classes: int,
                      where: str = "build_model") -> tuple[tuple[int, int, int], int]:
    """Validate and normalise ``(C, H, W)`` and ``num_classes``; returns plain ints."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except TypeError:
        raise TypeError(
            f"The 'input_shape' argument of {where} must be a sequence (C, H, W) of positive ints. "
            f"Got {input_shape!r} instead."
        ) from None
    if len(shape) != 3 or any(d < 1 for d in shape) or any(int(d) != d for d in input_shape):
        raise ValueError(
            f"The 'input_shape' argument of {where} must be (C, H, W) with positive ints. "
            f"Got {tuple(input_shape)!r} instead."
        )
    return shape, check_int(num_classes, "num_classes", where, lo=2)  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """Tuples become lists so ``arch`` is JSON-able and loads with ``torch.load(weights_only=True)``."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the float zoo model ``name`` for inputs ``N x C x H x W`` and ``num_classes`` logits.

    The model's ``arch`` attribute is ``{"name", "input_shape", "num_classes", "kwargs"}`` with
    every constructor argument (defaults included), enough to rebuild it.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(model_names())}.")
    cls = MODELS[name]
    shape, n_cls = check_input_shape(input_shape, num_classes, "build_model")
    try:
        bound = inspect.signature(cls).bind(shape, n_cls, **kwargs)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(cls).parameters if p not in ("input_shape", "num_classes")]
        raise TypeError(
            f"Bad arguments for model {name!r}: {str(exc).rstrip('.')}. Its arguments are: {', '.join(allowed) or 'none'}."
        ) from None
    bound.apply_defaults()
    model = cls(*bound.args, **bound.kwargs)
    resolved = {k: _plain(v) for k, v in bound.arguments.items() if k not in ("input_shape", "num_classes")}
    model.arch = {"name": name, "input_shape": list(shape), "num_classes": n_cls, "kwargs": resolved}
    return model


def pooled_size(size: int, max_pools: int) -> tuple[int, int]:
    """How many 2x2 stride-2 pools (at most ``max_pools``) a side of ``size`` affords, and the size after.

    A pool is kept while the side is at least 2, so small inputs (8x8 digits) drop the last pools
    instead of shrinking to zero.
    """
    n = 0
    while n < max_pools and size >= 2:
        size //= 2
        n += 1
    return n, size
