"""sysarray: exact simulation of systolic-array DNN accelerators with permanent PE faults."""
from sysarray.config import PRESETS, ArrayConfig, Dataflow, parse_array
from sysarray.faults import Fault, FaultMap, Register
from sysarray.stats import GemmStats

__version__ = "0.1.0"

__all__ = [
    "ArrayConfig",
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


def __getattr__(name: str):
    # simulate_gemm pulls in torch; loading it on first use keeps `import sysarray` (and the CLI) light.
    if name in ("simulate_gemm", "Engine"):
        from sysarray import gemm

        return getattr(gemm, name)
    raise AttributeError(f"module 'sysarray' has no attribute {name!r}")
