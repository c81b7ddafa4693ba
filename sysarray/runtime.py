"""Process tuning for fast simulation: an explicit call, never an import side effect.

Importing sysarray, accel_models or mitigation changes nothing in the process. Programs tune
their process with one call to :func:`configure`, first thing (the ``sysarray`` command, the
benchmarks and campaign workers do)::

    import sysarray.runtime
    sysarray.runtime.configure()      # before `import torch` for the OpenMP setting to apply
    import torch, sysarray as sa ...

What it sets, and why (the figures are in docs/performance.md):

- ``GOMP_SPINCOUNT=3000`` where this machine measured a short spin faster: torch's OpenMP
  threads (libgomp) otherwise spin for milliseconds after every parallel op, which on some
  machines takes the cores from the engines' numba kernels that follow each convolution and on
  others keeps the threads ready for them. libgomp reads the variable once, when torch loads it,
  so this applies only when torch is not imported yet; a value the user set (or
  ``OMP_WAIT_POLICY``) is kept.
- numba's threading layer measured faster on this machine (``workqueue`` or ``omp``): on some
  machines numba's OpenMP layer keeps its threads spinning after a parallel loop and steals the
  cores from torch's GEMMs, on others it launches the engines' kernels faster. Applies until
  numba starts its threads; a ``NUMBA_THREADING_LAYER`` the user set is kept.

  Both come from this machine's measurement for the thread count (:mod:`sysarray.threading_choice`,
  ``sysarray kernels --measure-layer``); where none is recorded, libgomp's spin and numba's
  layer stay their libraries' own defaults.
- glibc malloc thresholds (Linux): large freed blocks (a layer's activations) stay in the process
  for the next run instead of going back to the system, so a run's tensors do not start as fresh
  pages (a page fault every 4 KB). The process keeps up to 1 GB of freed memory for reuse.
- ``threads``: torch's and numba's thread counts (campaign workers run one each); a program sets
  them with :func:`set_threads`, not torch's own call, which numba's OpenMP layer would undo when
  its threads start.

Results never depend on any of this: the engines are exact whatever the threads and layers.
Whether each setting pays depends on the machine (docs/performance.md has the measured effect on
the machine its figures come from); each can be turned off by its argument.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from typing import Iterator

from sysarray.validation import check_bool, check_int

SPIN_COUNT = 3000  # libgomp pause loops: long enough for torch's back-to-back ops, short enough to free the core after
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class Tuning:
    """What :func:`configure` did. ``omp_spin``: "set", "kept" (the user's own setting), "late"
    (set, but torch had already loaded libgomp, which will not read it) or "off".
    ``numba_layer``: the layer numba will use, "default" (numba's own choice: nothing measured
    here) or "late" (numba's threads had already started with another). ``malloc``: the glibc
    thresholds were applied. ``threads``: torch's and numba's thread count now; ``omp_spin`` is
    "default" where this machine measured libgomp's own spin faster or measured nothing (nothing
    set). ``measured``: the spin and the layer not kept from the user's environment come from
    this machine's measurement (:mod:`sysarray.threading_choice`); without one, both are the
    libraries' own defaults."""

    omp_spin: str
    numba_layer: str
    malloc: bool
    threads: tuple[int, int] | None
    measured: bool = False


def configure(*, threads: int | None = None, omp_spin: bool = True, numba_layer: bool = True,
              malloc: bool = True) -> Tuning:
    """Tune this process for the engines (see the module docstring); idempotent.

    threads: torch and numba threads (None: leave them). omp_spin, numba_layer, malloc: apply
    that setting. Returns a :class:`Tuning` saying what took effect.
    """
    threads = check_int(threads, "threads", "configure", lo=1, none_ok=True)
    for name, flag in (("omp_spin", omp_spin), ("numba_layer", numba_layer), ("malloc", malloc)):
        check_bool(flag, name, "configure")
    measured = None
    if omp_spin or numba_layer:
        from sysarray import threading_choice

        measured = threading_choice.recorded(threads or usable_cores())
    layer_wanted, spin_wanted = measured or (None, "default")
    spin = _set_omp_spin(spin_wanted == "short") if omp_spin else "off"
    layer = _set_numba_layer(layer_wanted) if numba_layer else "off"
    mem = keep_freed_memory() if malloc else False
    counts = set_threads(threads) if threads is not None else None
    return Tuning(spin, layer, mem, counts, measured is not None)


def _set_omp_spin(short: bool) -> str:
    if {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):
        return "kept"
    if not short:
        return "default"
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return "late" if "torch" in sys.modules else "set"


def _set_numba_layer(layer: str | None) -> str:
    if layer is None:  # nothing measured: numba's own choice, or the user's
        return os.environ.get("NUMBA_THREADING_LAYER", "default")
    # Through the environment: numba reads it when it loads, and re-reads its whole config from
    # the environment whenever a NUMBA_* variable changes, which would undo a config-only setting.
    wanted = os.environ.setdefault("NUMBA_THREADING_LAYER", layer)
    if "numba" not in sys.modules:
        return wanted
    import numba
    from numba.np.ufunc import parallel

    if parallel._is_initialized:
        return wanted if numba.threading_layer() == wanted else "late"
    numba.config.THREADING_LAYER = wanted
    return wanted


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def keep_freed_memory() -> bool:
    """glibc's malloc thresholds that keep freed activation-sized blocks in the process (Linux
    with glibc only). Returns whether they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def set_threads(n: int, *, numba_threads: int | None = None) -> tuple[int, int]:
    """torch's thread count ``n`` and numba's ``numba_threads`` (default ``n``, at most numba's
    pool size). Returns them as they now are.

    numba's count is set first, which starts its threads: its OpenMP layer shares libgomp with
    torch and sets the count torch reads when they start, which would undo torch's count had it
    been set before."""
    import numba
    import torch

    n = check_int(n, "n", "set_threads", lo=1)
    numba_threads = check_int(n if numba_threads is None else numba_threads, "numba_threads", "set_threads", lo=1)
    numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))  # starts numba's threads first
    torch.set_num_threads(n)
    return torch.get_num_threads(), numba.get_num_threads()


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch and numba limited to ``n`` threads for the duration, restored after (a campaign's
    parent process evaluates chips beside its single-threaded workers this way)."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        set_threads(before[0], numba_threads=before[1])
