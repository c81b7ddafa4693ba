"""Values derived from tensors, computed once per tensor content.

A campaign runs the same program on thousands of chips, and a run recomputes small things from
each layer's weights and parameters (latched weights, norms, range checks), each a few torch
calls. :class:`TensorMemo` keeps such values keyed by the source tensors' storage
address, version counter (bumped by every in-place write), shape, strides, dtype and device,
plus a caller's key; an entry holds its tensors, so their addresses cannot be reused by other
tensors while it is kept.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch


def _identity(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)


class TensorMemo:
    """A bounded memo (least recently used out first): ``memo.get(tensors, key, compute)``
    returns ``compute()`` the first time for these tensors' current contents and ``key``, and the
    same object afterwards. ``compute`` must depend only on the tensors' values and ``key``.
    ``max_bytes`` bounds the sum of the values' sizes as ``nbytes(value)`` reports them."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 256 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[tuple[torch.Tensor, ...], Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # programs may run in several threads (Dask workers)

    def get(self, tensors: tuple[torch.Tensor, ...], key: Hashable, compute: Callable[[], Any],
            nbytes: Callable[[Any], int] = lambda value: 0) -> Any:
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
            if full not in self._entries:
                self._entries[full] = (tensors, value, size)
                self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._bytes -= self._entries.popitem(last=False)[1][2]
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
