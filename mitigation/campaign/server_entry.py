"""The campaign fork server's process entry point: imported only by the fork server's preload list
(:data:`mitigation.campaign.pool.PRELOAD`), never by library code.

Importing this module sets up the fork server's process and warms it: thread counts of one before
torch or numba start any thread pool, so that the server forks from a single-threaded process (a
fork of a process with live thread pools can hang or run slowly), the engines' process tuning
(:func:`sysarray.runtime.configure`), then a tiny faulty network run once on every dataflow, so
that torch initialises and numba loads its cached kernels here and every worker forked from the
server starts warm; what the server holds then is moved to the collector's permanent generation
(``gc.freeze``, as Python's documentation advises before forking). It is the one module of the
project that changes the process at import,
because ``multiprocessing``'s fork-server preload can only import modules.

The server ignores SIGINT from here on (a Ctrl-C reaches the whole process group; the campaign
process stops the server and its workers itself), and its workers inherit that. While it warms up,
a thread watches the campaign process and ends the server if it dies; afterwards the server's own
loop does (its "alive" pipe reads EOF), and the thread is gone before the first fork.
"""
from __future__ import annotations

import gc
import os
import signal
import threading

signal.signal(signal.SIGINT, signal.SIG_IGN)
if hasattr(signal, "pthread_sigmask"):  # held back by the campaign process while it started this one
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
_PARENT = os.getppid()
_warm = threading.Event()


def _exit_if_orphaned() -> None:
    """Poll the parent every 0.1 s until the warm-up is done; exit at once if it died (this
    process was re-parented)."""
    while not _warm.wait(0.1):
        if os.getppid() != _PARENT:
            os._exit(0)


_watcher = threading.Thread(target=_exit_if_orphaned, name="forkserver-warmup-watch", daemon=True)
_watcher.start()

# numba, OpenMP and MKL read these once, when they load: here, before (mitigation.campaign loads neither)
for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
# one thread per worker, where the layer makes no difference, and workqueue is fork-safe (OpenMP is not)
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import sysarray.runtime  # noqa: E402  (after the thread counts above)

sysarray.runtime.configure(threads=1)


def warm_up() -> None:
    """Run small conv + pool + linear programs (uint8 and int8 inputs, batches of 72 and 8) on faulty 4x4 chips of each
    dataflow: with act faults (the im2col path) and without (convolutions without im2col and their
    direct psum replay kernel, with 32-bit and narrow psum registers), psum faults alone with and
    without a fault-free trace (what a campaign's chips run), and draw one chip of a rate grid
    (which imports the fault generators, otherwise imported on every worker's first chip)."""
    import torch
    from torch import nn

    import sysarray as sa
    from accel_models.lowering import lower
    from mitigation.campaign import FaultGroup, RateGrid

    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 5)).eval()
    # 72 images: the linear layers' psum replay runs take the SIMD kernel (runs of at least 64
    # images); the first 8 alone take the pass kernel (shorter runs)
    x = torch.rand(72, 1, 6, 6, generator=gen)
    for images in (x, x - 0.5, x[:8]):
        program = lower(model, images)
        for flow in ("ws", "os", "is"):
            for pb in (32, 20):
                cfg = sa.ArrayConfig(4, 4, flow, psum_bits=pb)
                only_psum = sa.FaultMap(4, 4).add(0, 0, "psum", pb - 1, 1)
                psum = sa.FaultMap(4, 4).add(0, 0, "psum", pb - 1, 1).add(2, 2, "weight", 6, 0)
                every = sa.FaultMap(4, 4).add(0, 0, "psum", pb - 1, 1).add(1, 1, "act", 7, 1)
                program.run(images, cfg, count_changes=False)
                for fm in (only_psum, psum, every):
                    program.run(images, cfg, faults=fm, count_changes=False)
                trace = program.trace(images, cfg)
                program.run(images, cfg, faults=only_psum, count_changes=False, reference=trace)
    RateGrid([0.1], 1, 0, [FaultGroup(("psum",))]).chip(0, sa.ArrayConfig(4, 4))


try:
    warm_up()
finally:
    _warm.set()
    _watcher.join()  # the server forks its workers from a single-threaded process
# Everything made so far (torch's, numba's and the warm-up's objects) lives as long as the server:
# in the permanent generation, a worker's full collections skip it and its pages stay shared.
gc.freeze()
