"""Starting a campaign's pool workers cheaply: what they are sent and what they run on start.

Two costs of a worker's start that do not depend on the work:

- The evaluator goes to each worker as one pickle. torch pickles every tensor's storage through
  a nested ``torch.save``, which for an evaluator of many small tensors costs more, in the parent
  before its first chip and again in every worker, than the bytes themselves.
  :func:`worker_blob` pickles plain CPU tensors as numpy arrays instead (one copy of the bytes).
  Values, dtypes, shapes and strides are kept; dense tensors that were views of one storage
  arrive as separate tensors (nothing a worker does depends on that).
- A worker started by ``multiprocessing`` (fork server or spawn) first re-runs the parent's main
  script as ``__mp_main__``, so that objects pickled from it can be found; a script that imports
  much (a benchmark's) makes every worker import it again. Python 3.11's fork-server preload of
  ``__main__`` would do it once, but never runs (it looks for a key, ``main_path``, that
  ``spawn.get_preparation_data`` does not produce). Campaign workers run only functions of this
  package, so :func:`starting_without_main` leaves the main script out -- unless the pickled
  evaluator refers to ``__main__`` (a population or task class defined in the user's script),
  in which case nothing changes.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import threading
from typing import Any, Iterator

_state = threading.local()
_patch_lock = threading.Lock()
_patched = False


def _tensor_from_array(memory: Any, size: tuple, stride: tuple) -> Any:
    import torch

    return torch.from_numpy(memory).as_strided(size, stride)


def _dense(t: Any) -> bool:
    """Whether ``t``'s elements fill one span of memory exactly, in some order of its dimensions."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride != expected:
            return False
        expected *= size
    return True


class _BlobPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        import torch

        # Dense tensors only (any layout, e.g. channels-last): their elements fill one span of
        # memory, sent as a 1-D array and viewed again with the same strides. Others (strided
        # slices), subclasses, tensors needing grad and dtypes numpy lacks go through torch's own
        # pickling.
        if (type(obj) is torch.Tensor and obj.device.type == "cpu" and not obj.requires_grad
                and obj.layout == torch.strided and _dense(obj)):
            try:
                memory = torch.as_strided(obj, (obj.numel(),), (1,)).numpy()
            except (TypeError, RuntimeError):  # bfloat16, conjugate or negative bits, ...
                return NotImplemented
            return _tensor_from_array, (memory, tuple(obj.shape), obj.stride())
        return NotImplemented


def worker_blob(obj: Any) -> bytes:
    """``obj`` pickled for a pool worker, plain CPU tensors as numpy arrays (``pickle.loads`` reads it)."""
    buf = io.BytesIO()
    _BlobPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _install() -> None:
    """Wrap ``multiprocessing.spawn.get_preparation_data`` (once) so that processes started in a
    thread inside :func:`starting_without_main` do not re-run the main script."""
    global _patched
    with _patch_lock:
        if _patched:
            return
        from multiprocessing import spawn

        original = spawn.get_preparation_data

        def get_preparation_data(name: str) -> dict:
            data = original(name)
            if getattr(_state, "active", False):
                data.pop("init_main_from_path", None)
                data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = get_preparation_data
        _patched = True


@contextlib.contextmanager
def starting_without_main(blob: bytes) -> Iterator[None]:
    """Worker processes started by this thread inside the block skip re-running the main script,
    unless ``blob`` (what they will unpickle) refers to ``__main__``."""
    if b"__main__" in blob:
        yield
        return
    _install()
    _state.active = True
    try:
        yield
    finally:
        _state.active = False


__all__ = ["starting_without_main", "worker_blob"]
