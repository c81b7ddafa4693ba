"""glibc malloc settings that keep freed activation buffers in the process.

A network's activations are a few large tensors per layer (a ResNet-20 layer at batch 256: 16.8
MB), allocated and freed on every run. glibc serves blocks that large with ``mmap`` and gives them
back with ``munmap`` (its adaptive threshold follows freed blocks only up to a point, and it trims
the heap's free top past twice that), so the next run's tensors start as fresh pages and take a
page fault per 4 KB: a faulty ResNet-20 chip on 256 images took 4,000-45,000 minor faults and up
to 150 ms of system time a run. With blocks up to 32 MB (glibc's largest threshold) taken from the
heap and its top kept, runs reuse their memory: no faults after the first run, fault-free
ResNet-20 inference ~15% faster here (the same advice as PyTorch's CPU performance notes give
with jemalloc or tcmalloc, without another allocator). The process keeps up to 1 GB of freed
memory for reuse instead of returning it to the system.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Apply the settings above (glibc on Linux only; ``SYSARRAY_MALLOC_TUNING=0`` turns them
    off). Returns whether they were applied."""
    if not sys.platform.startswith("linux") or os.environ.get("SYSARRAY_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
