"""Numba kernels compiled twice, with threads and without, each call taking the one that pays.

Launching a parallel numba region has a fixed cost that depends on the machine and the
threading layer (from a few to a couple of hundred microseconds), and a campaign worker runs
one thread; the kernels of small layers (linear layers, a handful of replayed outputs) do less
work than a launch costs. :func:`threaded` compiles a kernel written with ``prange`` both ways
(``prange`` is ``range`` without ``parallel=True``: same code, same results). A call runs the
serial one when numba has one thread or ``work`` is below the kernel's floor; above it, the
first calls of each size class (a power of two of ``work``) time both compilations in turn and
the class then keeps the faster, so the choice is made by measurement on the machine at hand
(and measured again until two measurements agree: :class:`MeasuredChoice`).
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
import types
from collections import OrderedDict
from typing import Callable, Hashable, Iterator, Mapping, Sequence, TypeVar

import numba
from numba import njit

from sysarray.kernel_cache import CONFIRMATIONS


# Elements a simple elementwise kernel (about a nanosecond each) must have before two threads
# can beat one by more than the cheapest launches cost; above it the choice is measured.
ELEMENTWISE = 1 << 17
KERNELS: list["ThreadedKernel"] = []  # every kernel made here (the tests run each both ways)
TRIALS = 3  # timed calls of each option per key, after one untimed warm-up call each
RECHECK_AFTER = 16  # calls of a key with an unconfirmed decision before it is measured again
MAX_SKIPPED = 8  # per option: calls of a measurement left untimed because other choices measured inside them
# an option this many times slower than another loses at once: no busy moment of a machine makes a
# kernel that much faster, and its remaining trials (an int8 GEMM where the CPU has no int8 dot
# products, say) would cost seconds
DOMINATED = 8.0
_LOCAL = threading.local()  # measuring calls so far in this thread (MeasuredChoice.__call__)
T = TypeVar("T")


class _Decision:
    """A key's chosen option; ``confirmations``: how many measurements in a row chose it; an
    unconfirmed one is measured again after ``until_recheck`` more calls."""

    __slots__ = ("option", "confirmations", "until_recheck")

    def __init__(self, option: int | str, confirmations: int) -> None:
        self.option = option
        self.confirmations = confirmations
        self.until_recheck = RECHECK_AFTER


class MeasuredChoice:
    """The fastest of interchangeable ways to compute one result, chosen per key by timing.

    ``choice(key, options)`` runs one of ``options`` (callables returning the same value, as a
    sequence or as a mapping from labels) and returns its result. While a key is new, calls take
    each option in turn for a run of calls: the first a warm-up, then ``trials`` timed ones back to
    back (the state an option leaves, caches and the core's vector-unit licence, is what the calls
    after it find once it is chosen), after which the key keeps the option with the lowest median
    time. ``sync`` (say ``torch.cuda.synchronize``): called before and after each timed call, for
    options that only queue their work (a GPU's kernels), so that the time is the work's. A call
    of an option during which another choice measured (a program run whose kernels
    are still being chosen, timed with their losing options) is not counted, and the option is
    called again (at most ``MAX_SKIPPED`` times per option): nested choices would otherwise bias
    the outer one against whichever option ran while they measured. One measurement can be
    misled by a busy moment of a shared machine (another tenant on the second core makes a
    threaded kernel look slower than its serial twin), so a decision is final only once
    ``CONFIRMATIONS`` measurements in a row agree: until then the key takes the decided option
    and is measured again after ``RECHECK_AFTER`` calls. An option whose first timed call takes
    more than ``DOMINATED`` times the median of an option already measured gets no more trials,
    and a decision whose runner-up is that much slower is final at once. Keys are kept for the
    ``max_keys`` most recently decided. ``force``: an option's index or label that every call
    takes where it is among the options, else the first option (tests, reproducible
    benchmarks); None to measure.

    A choice with a ``name`` whose options are labelled and whose keys are plain data (numbers,
    strings, tuples of them) keeps its decisions in :mod:`sysarray.kernel_cache`: another process
    on the same machine starts with them (an unconfirmed one is measured again there too)."""

    def __init__(self, trials: int = TRIALS, max_keys: int = 4096, name: str | None = None) -> None:
        self.trials = trials
        self.max_keys = max_keys
        self.name = name
        self.force: int | str | None = None
        self._timings: dict[Hashable, list[list[float]]] = {}
        self._skipped: dict[Hashable, int] = {}  # calls of a key's measurement not timed (see __call__)
        self._chosen: OrderedDict[Hashable, _Decision] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, key: Hashable, options: Sequence[Callable[[], T]] | Mapping[str, Callable[[], T]],
                 sync: Callable[[], None] | None = None) -> T:
        labels = list(options) if isinstance(options, Mapping) else None
        calls = list(options.values()) if labels is not None else list(options)
        if self.force is not None:
            if isinstance(self.force, str):
                return calls[labels.index(self.force) if labels is not None and self.force in labels else 0]()
            return calls[self.force if self.force < len(calls) else 0]()
        for seen in _WATCHES:
            seen.add((self, key))
        persisted = labels is not None and self.name is not None
        decision = self._chosen.get(key)
        if decision is None and persisted:
            from sysarray import kernel_cache

            found = kernel_cache.lookup(self.name, key, labels)
            if found is not None:
                with self._lock:
                    decision = self._chosen[key] = _Decision(*found)
        if decision is not None and (labels is None or decision.option in labels):
            if decision.confirmations >= CONFIRMATIONS or decision.until_recheck > 0:
                decision.until_recheck -= 1
                return calls[decision.option if labels is None else labels.index(decision.option)]()
        with self._lock:
            times = self._timings.setdefault(key, [[] for _ in calls])
            if len(times) != len(calls):  # another set of options for this key: measure it afresh
                times = self._timings[key] = [[] for _ in calls]
            # each option's warm-up and timed calls back to back: the state one leaves (caches, the
            # core's vector-unit licence) is what the calls after it find once it is chosen
            done = self._measured(times)
            which = min(range(len(calls)), key=lambda i: (done[i], -len(times[i])))
        nested = getattr(_LOCAL, "measuring", 0)
        _LOCAL.measuring = nested + 1
        if sync is not None:
            sync()  # work queued before the call is not the option's
        start = time.perf_counter()
        out = calls[which]()
        if sync is not None:
            sync()
        elapsed = time.perf_counter() - start
        # an option that made other choices measure (a run whose kernels are still being chosen)
        # was timed with their losing options: not its steady state, so the call is timed again
        inner = _LOCAL.measuring - nested - 1
        decided = first = None
        with self._lock:
            skipped = self._skipped.get(key, 0)
            if inner and times[which] and skipped < MAX_SKIPPED * len(calls):
                self._skipped[key] = skipped + 1
            else:
                times[which].append(elapsed)
            if key in self._timings and all(self._measured(times)):
                medians = [_median(t) for t in times]
                best = medians.index(min(medians))
                option = best if labels is None else labels[best]
                before = self._chosen.pop(key, None)
                first = before is None
                agreed = before is not None and before.option == option
                runner_up = min((m for i, m in enumerate(medians) if i != best), default=float("inf"))
                confirmations = (CONFIRMATIONS if runner_up > DOMINATED * medians[best]
                                 else before.confirmations + 1 if agreed else 1)
                decided = self._chosen[key] = _Decision(option, confirmations)
                del self._timings[key]
                self._skipped.pop(key, None)
                while len(self._chosen) > self.max_keys:
                    self._chosen.popitem(last=False)
        # on disk: a key's first decision and its confirmation (a key whose options tie may change
        # its mind at every measurement; that stays in memory)
        if decided is not None and persisted and (first or decided.confirmations == CONFIRMATIONS):
            from sysarray import kernel_cache

            kernel_cache.record(self.name, key, decided.option, dict(zip(labels, medians)), decided.confirmations)
        return out

    def _measured(self, times: list[list[float]]) -> list[bool]:
        """Per option, whether its measurement is complete: a warm-up and ``trials`` timed calls,
        or a timed call ``DOMINATED`` times slower than a complete option's median."""
        done = [len(t) > self.trials for t in times]
        best = min((_median(t) for t, d in zip(times, done) if d), default=None)
        if best is None:
            return done
        return [d or (len(t) > 1 and min(t[1:]) > DOMINATED * best) for t, d in zip(times, done)]

    def chosen(self, key: Hashable) -> int | str | None:
        """The option chosen for ``key`` (its label where the options are labelled; None while it
        is first measured)."""
        decision = self._chosen.get(key)
        return None if decision is None else decision.option

    def confirmed(self, key: Hashable) -> bool:
        """Whether ``key``'s decision is final (``CONFIRMATIONS`` measurements in a row agreed)."""
        decision = self._chosen.get(key)
        return decision is not None and decision.confirmations >= CONFIRMATIONS

    def choices(self) -> dict[Hashable, int | str]:
        return {key: decision.option for key, decision in self._chosen.items()}


def _median(times: list[float]) -> float:
    """The median of an option's timed calls (its first call, the warm-up, left out)."""
    timed = sorted(times[1:])
    return timed[len(timed) // 2]


_WATCHES: list[set] = []  # the (choice, key) sets of the open watch_choices() blocks


@contextlib.contextmanager
def watch_choices() -> Iterator[set]:
    """A block that collects the ``(choice, key)`` pairs of every :class:`MeasuredChoice` call
    made inside it, for :func:`settled` (a benchmark warms its calls up until their choices are
    final, so that it times the steady state and not the measuring)."""
    seen: set = set()
    _WATCHES.append(seen)
    try:
        yield seen
    finally:
        _WATCHES.remove(seen)


def settled(seen: set) -> bool:
    """Whether every ``(choice, key)`` of ``seen`` (:func:`watch_choices`) has a final decision."""
    return all(choice.confirmed(key) for choice, key in seen)


class ThreadedKernel:
    """``kernel(*args, work=n)``: the parallel or the serial compilation of one function.

    ``force``: "serial" or "parallel" runs that compilation whatever the work (tests, and
    benchmarks that want one fixed path); None measures (see the module docstring)."""

    def __init__(self, fn: Callable, min_work: int, **options) -> None:
        self.parallel = njit(cache=True, parallel=True, **options)(fn)
        self.serial = njit(cache=True, **options)(_renamed(fn, "_serial"))
        self.min_work = min_work
        self.force: str | None = None
        self._choice = MeasuredChoice(name=f"threads:{fn.__module__}.{fn.__qualname__}")
        functools.update_wrapper(self, fn)
        KERNELS.append(self)

    def __call__(self, *args, work: int):
        if self.force is not None:
            return (self.parallel if self.force == "parallel" else self.serial)(*args)
        if work < self.min_work:  # before asking numba its thread count, which costs microseconds
            return self.serial(*args)
        threads = numba.get_num_threads()
        if threads == 1:
            return self.serial(*args)
        return self._choice((int(work).bit_length(), threads),
                            {"serial": lambda: self.serial(*args), "parallel": lambda: self.parallel(*args)})

    def choices(self) -> dict[tuple[int, int], str]:
        """The measured choice per (size class, threads): "serial" or "parallel" (for reports)."""
        return self._choice.choices()


def threaded(min_work: int, **options) -> Callable[[Callable], ThreadedKernel]:
    """Decorator: a :class:`ThreadedKernel` that may run in parallel from ``min_work`` units of
    work (the caller's measure: elements, multiply-adds) on; ``options`` go to ``njit``."""
    return lambda fn: ThreadedKernel(fn, min_work, **options)


def _renamed(fn: Callable, suffix: str) -> Callable:
    """A copy of ``fn`` under another qualified name: numba's on-disk cache is keyed by the
    function's name and not by its compile flags, so the serial compilation needs its own."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy
