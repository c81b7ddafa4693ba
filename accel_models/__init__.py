"""accel_models: torch models lowered to integer-only int8 programs that run on a simulated chip.

``lower(model, calibration=images)`` gives a :class:`Program`; ``program.run(images, cfg,
faults=..., engine=...)`` runs it on a (faulty) systolic array. ``FakeQuantProgram`` is its
trainable float twin. Datasets, the model zoo, the trainer and checkpoints live in submodules.
"""
from accel_models.fakequant import FakeQuantProgram
from accel_models.lowering import UnsupportedModelError, lower, register_lowering, supported_layers
from accel_models.program import Program, RunResult

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


def __getattr__(name: str):
    # Loaded on first use so `import accel_models` stays light.
    if name == "load_dataset":
        from accel_models.data import load_dataset

        return load_dataset
    if name == "build_model":
        from accel_models.zoo import build_model

        return build_model
    if name in ("load_checkpoint", "save_checkpoint"):
        from accel_models import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'accel_models' has no attribute {name!r}")
