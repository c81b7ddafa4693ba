"""Numba kernels compiled twice, with threads and without, each call taking the one that pays.

Launching a parallel numba region has a fixed cost (tens of microseconds), even with one
thread, and a campaign worker runs one thread; the kernels of small layers (linear layers, a
handful of replayed outputs) do less work than a launch costs. :func:`threaded` compiles a kernel written with ``prange`` both ways (``prange``
is ``range`` without ``parallel=True``: same code, same results); a call runs the serial one
when numba has one thread or ``work`` is below the kernel's threshold.
"""
from __future__ import annotations

import functools
import types
from typing import Callable

import numba
from numba import njit


# Elements a simple elementwise kernel (about a nanosecond each) must have for two threads to
# beat one by more than a launch costs.
ELEMENTWISE = 1 << 17
KERNELS: list["ThreadedKernel"] = []  # every kernel made here (the tests run each both ways)


class ThreadedKernel:
    """``kernel(*args, work=n)``: the parallel or the serial compilation of one function."""

    def __init__(self, fn: Callable, min_work: int, **options) -> None:
        self.parallel = njit(cache=True, parallel=True, **options)(fn)
        self.serial = njit(cache=True, **options)(_renamed(fn, "_serial"))
        self.min_work = min_work
        functools.update_wrapper(self, fn)
        KERNELS.append(self)

    def __call__(self, *args, work: int):
        if work < self.min_work or numba.get_num_threads() == 1:
            return self.serial(*args)
        return self.parallel(*args)


def threaded(min_work: int, **options) -> Callable[[Callable], ThreadedKernel]:
    """Decorator: a :class:`ThreadedKernel` that runs in parallel from ``min_work`` units of work
    (the caller's measure: elements, multiply-adds) on; ``options`` go to ``njit``."""
    return lambda fn: ThreadedKernel(fn, min_work, **options)


def _renamed(fn: Callable, suffix: str) -> Callable:
    """A copy of ``fn`` under another qualified name: numba's on-disk cache is keyed by the
    function's name and not by its compile flags, so the serial compilation needs its own."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy
