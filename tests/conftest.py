"""Suite-wide settings: the test process is tuned as the ``sysarray`` command tunes its own
(:func:`sysarray.runtime.configure`), with one torch thread for every test.

The models here are tiny, so intra-op threads only add contention: ``make test`` runs two workers
on two cores, and two threads per worker made small trainings many times slower (OpenMP spinning).
One thread everywhere also makes the session fixtures' trained weights the same with and without
pytest-xdist. Campaign worker processes set their own thread counts. Tests of the import-time
contract and of untuned processes run in child processes.

Tests marked ``gpu`` need a CUDA device and skip without one (``pytest -m gpu`` runs just them on
a GPU machine). Measured kernel choices stay in memory in the test processes, and the commands that tests run in
child processes keep theirs in a temporary folder (``XDG_CACHE_HOME``), never in the user's cache.
"""
from __future__ import annotations

import os
import tempfile


def pytest_configure(config) -> None:
    from sysarray import kernel_cache, runtime

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sysarray-test-cache-")
    kernel_cache.configure(False)
    runtime.configure()
    import numba

    # numba keeps its own count; set_threads, not torch's call, which numba's OpenMP layer would undo
    runtime.set_threads(1, numba_threads=numba.config.NUMBA_NUM_THREADS)


def pytest_collection_modifyitems(config, items) -> None:
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
