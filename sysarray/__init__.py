"""sysarray: exact simulation of systolic-array DNN accelerators with permanent PE faults."""
import os
import sys
import warnings


class ImportOrderWarning(UserWarning):
    """sysarray was imported after torch, too late to set torch's OpenMP spin time."""


def _warn_if_torch_spins() -> None:
    """Warn when torch (multi-threaded) was loaded first with libgomp's default spin time."""
    try:
        threads = sys.modules["torch"].get_num_threads()
    except Exception:  # a partly imported torch
        return
    if threads > 1:  # one thread: no OpenMP team to spin
        # Measured (ResNet-20, batch 256, 1% psum faults, 2 threads): faulty inference 1.74-1.87x
        # float32 with torch imported first, 1.28-1.46x with the setting.
        warnings.warn("sysarray was imported after torch, so torch's OpenMP threads spin for milliseconds after each op "
                      "and slow the fault engines' threads (faulty inference about 25% slower on several threads): "
                      "import sysarray (or accel_models, mitigation) before torch, or set GOMP_SPINCOUNT=3000 in the "
                      "environment.", ImportOrderWarning, stacklevel=3)


# torch's OpenMP threads (libgomp, in torch's Linux wheels) spin for about 300,000 pause loops,
# milliseconds, after every parallel region, and the engines' numba kernels that follow each
# convolution share the cores with them. 3,000 (about 0.1 ms) keeps the spin between torch's own
# back-to-back ops: ResNet-20, batch 256, 1% faulty PEs on 2 cores, 714 -> 609 ms (means of five
# and two runs), LeNet-5 and torch's float models unchanged. (OMP_WAIT_POLICY=PASSIVE gave 645 ms but
# slowed LeNet-5 by 7%: waking a sleeping thread is slow in a VM.) libgomp reads it when torch
# loads it, so it takes effect only where sysarray (or accel_models, mitigation) is imported
# before torch; an explicit setting wins.
if "torch" in sys.modules and not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):
    _warn_if_torch_spins()
os.environ.setdefault("GOMP_SPINCOUNT", "3000")

# Large freed buffers stay in the process for the next run's activations (no page fault per 4 KB of
# every new tensor; see sysarray._malloc). SYSARRAY_MALLOC_TUNING=0 leaves glibc's defaults.
from sysarray._malloc import keep_freed_memory  # noqa: E402

keep_freed_memory()

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
    "ImportOrderWarning",
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
