"""accel_models: torch models lowered to integer-only int8 programs that run on a simulated chip.

``lower(model, calibration=images)`` gives a :class:`Program`; ``program.run(images, cfg,
faults=..., engine=...)`` runs it on a (faulty) systolic array. ``FakeQuantProgram`` is its
trainable float twin. Datasets, the model zoo, the trainer and checkpoints live in submodules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accel_models.checkpoint import load_checkpoint, save_checkpoint
    from accel_models.data import load_dataset
    from accel_models.fakequant import FakeQuantProgram
    from accel_models.lowering import UnsupportedModelError, lower, register_lowering, supported_layers
    from accel_models.program import Program, RunResult
    from accel_models.zoo import build_model

__all__ = [
    "FakeQuantProgram",
    "Program",
    "RunResult",
    "UnsupportedModelError",
    "build_model",
    "load_checkpoint",
    "load_dataset",
    "lower",
    "register_lowering",
    "save_checkpoint",
    "supported_layers",
]

# Where each public name lives: they import torch, so they load on first use and `import
# accel_models` (which every `sysarray` subcommand's parser module triggers) stays light.
_LAZY = {
    "FakeQuantProgram": "accel_models.fakequant",
    "Program": "accel_models.program",
    "RunResult": "accel_models.program",
    "UnsupportedModelError": "accel_models.lowering",
    "lower": "accel_models.lowering",
    "register_lowering": "accel_models.lowering",
    "supported_layers": "accel_models.lowering",
    "load_dataset": "accel_models.data",
    "build_model": "accel_models.zoo",
    "load_checkpoint": "accel_models.checkpoint",
    "save_checkpoint": "accel_models.checkpoint",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'accel_models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
