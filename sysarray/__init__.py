"""sysarray: exact simulation of systolic-array DNN accelerators with permanent PE faults.

The public API is the names below and the public modules (:mod:`sysarray.config`,
:mod:`sysarray.faults`, :mod:`sysarray.faultgen`, :mod:`sysarray.faultio`,
:mod:`sysarray.mapping`, :mod:`sysarray.timing`, :mod:`sysarray.runtime`,
:mod:`sysarray.validation`, :mod:`sysarray.parallel`, :mod:`sysarray.tensor_memo`,
:mod:`sysarray.atomic`, :mod:`sysarray.scalesim`, :mod:`sysarray.corrections`, :mod:`sysarray.cli`);
``sysarray.engines`` is
internal. Importing sysarray changes nothing in the process; process tuning is the explicit call
:func:`sysarray.runtime.configure` (see docs/design.md).
"""
from sysarray.config import PRESETS, ArrayConfig, Dataflow, parse_array
from sysarray.faults import Fault, FaultMap, Register
from sysarray.stats import GemmStats

__version__ = "0.1.0"

__all__ = [
    "ArrayConfig",
    "Chip",
    "ConvHints",
    "Dataflow",
    "Engine",
    "Fault",
    "FaultMap",
    "GemmStats",
    "PRESETS",
    "Register",
    "parse_array",
    "simulate_gemm",
    "__version__",
]

_LAZY = {"simulate_gemm": "sysarray.gemm", "Chip": "sysarray.chip", "ConvHints": "sysarray.chip",
         "Engine": "sysarray.chip"}


def __getattr__(name: str):
    # These pull in torch; loading them on first use keeps `import sysarray` (and the CLI) light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sysarray' has no attribute {name!r}")
