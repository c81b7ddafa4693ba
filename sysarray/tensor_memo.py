"""Values derived from tensors, computed once per tensor content.

A campaign runs the same program on thousands of chips, and a run recomputes small things from
each layer's weights and parameters (latched weights, norms, range checks), each a few torch
calls. :class:`TensorMemo` keeps such values keyed by the source tensors' storage
address, version counter (bumped by every in-place write), shape, strides, dtype and device,
plus a caller's key; an entry holds its tensors, so their addresses cannot be reused by other
tensors while it is kept.

Inside :func:`transient`, values derived from tensors are computed and not kept: a training step
runs the chip on weights that change every step, and keeping their values would fill the memos
with tensors never seen again. Values keyed by objects only (a chip's plans) are kept as usual.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch


_LOCAL = threading.local()


class transient:  # noqa: N801  a context manager used like a function; a class: a generator's costs more per layer
    """Within the block (in this thread), :meth:`TensorMemo.get` with tensors among its keys
    computes its value and neither looks for a kept one nor keeps it."""

    __slots__ = ("_before",)

    def __enter__(self) -> None:
        self._before = getattr(_LOCAL, "transient", False)
        _LOCAL.transient = True

    def __exit__(self, *exc) -> None:
        _LOCAL.transient = self._before


def _identity(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)


class TensorMemo:
    """A bounded memo: ``memo.get(tensors, key, compute)`` returns ``compute()`` the first time for
    these tensors' current contents and ``key``, and the same object afterwards. ``compute``
    must depend only on the tensors' values and ``key``. ``max_bytes`` bounds the sum of the
    values' sizes as ``nbytes(value)`` reports them.

    Eviction is least recently used first, except that it does not thrash: a key that comes back
    after being evicted (a program whose values do not all fit, run again) is kept only if it
    fits without evicting, so the memo holds a stable part of a working set too large for it
    instead of evicting each value just before its next use. New keys (another program, changed
    weights) evict as usual."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 256 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[tuple[torch.Tensor, ...], Any, int]] = OrderedDict()
        self._evicted: OrderedDict[tuple, None] = OrderedDict()  # keys evicted lately (no tensors held)
        self._bytes = 0
        self._lock = threading.Lock()  # programs may run in several threads (Dask workers)

    def get_for(self, owner: object, tensors: tuple[torch.Tensor, ...], key: Hashable, compute: Callable[[], Any],
                nbytes: Callable[[Any], int] = lambda value: 0) -> Any:
        """:meth:`get` for a value that also depends on an object compared by identity (a chip's
        masks): its ``id`` joins the key and the entry holds the object, so that id cannot be
        reused by another object while the value is kept. ``nbytes`` sizes the value; the key
        tensors count too."""
        size = lambda held: sum(t.nbytes for t in tensors) + int(nbytes(held[1]))  # noqa: E731
        return self.get(tensors, (id(owner), key), lambda: (owner, compute()), nbytes=size)[1]

    def get(self, tensors: tuple[torch.Tensor, ...], key: Hashable, compute: Callable[[], Any],
            nbytes: Callable[[Any], int] = lambda value: 0) -> Any:
        if tensors and getattr(_LOCAL, "transient", False):
            return compute()  # tensors of one step (a training step's weights): never seen again, nor kept
        full = (tuple(_identity(t) for t in tensors), key)
        with self._lock:
            hit = self._entries.get(full)
            if hit is not None:
                self._entries.move_to_end(full)
                return hit[1]
        value = compute()  # outside the lock: two threads may both compute a value, one is kept
        size = int(nbytes(value))
        if size > self.max_bytes:
            return value
        with self._lock:
            if full in self._entries:
                return value
            fits = len(self._entries) < self.max_entries and self._bytes + size <= self.max_bytes
            if full in self._evicted and not fits:
                return value  # a working set larger than the memo: keep the values it holds
            self._evicted.pop(full, None)
            self._entries[full] = (tensors, value, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                old, (_, _, old_size) = self._entries.popitem(last=False)
                self._bytes -= old_size
                self._evicted[old] = None
            while len(self._evicted) > 4 * self.max_entries:
                self._evicted.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._evicted.clear()
            self._bytes = 0
