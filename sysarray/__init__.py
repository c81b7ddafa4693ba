"""sysarray: exact simulation of systolic-array DNN accelerators with permanent PE faults."""
from sysarray.config import PRESETS, ArrayConfig, Dataflow, parse_array
from sysarray.faults import Fault, FaultMap, Register
from sysarray.stats import GemmStats

__version__ = "0.1.0"

__all__ = [
    "ArrayConfig",
    "Dataflow",
    "Fault",
    "FaultMap",
    "GemmStats",
    "PRESETS",
    "Register",
    "parse_array",
    "__version__",
]
