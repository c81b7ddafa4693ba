"""The process-pool runner of a campaign: this process and forked single-threaded workers.

Workers are forked from a fork server that has imported torch and the engines and run a tiny
faulty network once (:mod:`mitigation.campaign.server_entry`, single-threaded): each starts warm
and never inherits this process's thread pools (unlike 'fork'). 'spawn' where there is no fork
server. A worker gets the evaluator once, as the pickle bytes of
:func:`mitigation.campaign.spawn.worker_blob`, and runs one torch and one numba thread.

No process outlives the campaign process. A worker ignores SIGINT (Ctrl-C reaches the whole
process group; this process decides), exits as soon as the pipe only this process holds reads EOF
(a thread on ``multiprocessing.parent_process().sentinel``) and, on Linux, is killed by the kernel
when the fork server dies (``PR_SET_PDEATHSIG``). It closes its copy of the fork server's "alive"
pipe, so the fork server sees EOF, and exits, as soon as this process is gone; the resource tracker
then follows, its last writer gone. On an interrupt or error :func:`run_pool` kills the workers
(and, on an interrupt, the fork server) before it re-raises.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import os
import pickle
import signal
import threading
from typing import Iterator, Sequence

from mitigation.campaign.evaluator import Evaluator
from mitigation.campaign.jobs import Job, Sink, evaluate_jobs, shipped_population
from mitigation.campaign.populations import Population
from mitigation.campaign.spawn import starting_without_main, worker_blob
from sysarray.lifecycle import die_with_parent, exit_when_readable
from sysarray.runtime import set_threads

MP_CONTEXT = "forkserver"
# What the fork server imports before it forks any worker: its process set-up and warm-up, then the
# functions the workers run.
PRELOAD = ["mitigation.campaign.server_entry", "mitigation.campaign.pool"]
# Pool tasks at least this long (estimated) are submitted one per worker at a time: a worker with a
# second task queued at the end of a campaign of long chips would leave this process idle meanwhile.
LONG_TASK_S = 0.25
# Seconds to wait, after an interrupt or error, for the pool's threads once its workers are killed.
STOP_WAIT_S = 5.0

_WORKER_STATE: tuple[Evaluator, Population | None] | None = None  # set in each pool worker by _init_worker


def _init_worker(blob: bytes) -> None:
    global _WORKER_STATE
    _follow_campaign_process()
    set_threads(1)  # chips run in parallel, not GEMMs
    _WORKER_STATE = pickle.loads(blob)
    # the program, images and fault-free trace live as long as the worker: its full collections
    # would walk them (and the fork server's objects) every few hundred small chips for nothing
    gc.freeze()


def _follow_campaign_process() -> None:
    """Make this pool worker end with the campaign process that started it (see the module docstring)."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the campaign process stops its workers itself
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid != os.getppid():
        # forked by the fork server: killed by the kernel when the fork server exits, which it does
        # once the campaign process is gone; the thread below watches the campaign process itself
        die_with_parent()
    _release_fork_server()
    if parent is not None and parent.sentinel is not None:
        exit_when_readable(parent.sentinel)


def _release_fork_server() -> None:
    """Close this worker's copy of the fork server's "alive" pipe (multiprocessing hands one to each
    process it forks, for their own children): with only the campaign process holding it, the
    fork server reads EOF and exits when that process dies. A campaign worker starts no processes."""
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver
        fd = server._forkserver_alive_fd
    except (ImportError, AttributeError):
        return
    if fd is not None:
        server._forkserver_alive_fd = None
        try:
            os.close(fd)
        except OSError:
            pass


def _pool_task(jobs: Sequence[Job]) -> list[dict]:
    assert _WORKER_STATE is not None  # set by _init_worker
    return evaluate_jobs(*_WORKER_STATE, jobs)


def _mp_context():
    import multiprocessing as mp

    if MP_CONTEXT not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context(MP_CONTEXT)
    if MP_CONTEXT == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def stop_fork_server() -> None:
    """Kill the campaign fork server, if this process started one (its workers, forked from it,
    die with it), and reap it; the next campaign starts a new one."""
    if MP_CONTEXT != "forkserver":
        return
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver
        pid = server._forkserver_pid
        stop = server._stop
    except (ImportError, AttributeError):
        return
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)  # it may be importing and warming up, which nothing would wait for
    except ProcessLookupError:
        pass
    try:
        stop()  # closes its "alive" pipe and reaps it
    except ChildProcessError:  # reaped already (a concurrent ensure_running found it dead)
        server._forkserver_pid = None
        server._forkserver_address = None


def _kill_pool(pool) -> None:
    """Stop ``pool`` (a ProcessPoolExecutor) at once: no new task or worker, its worker processes
    killed (what they were computing is lost, a rerun recomputes it), its manager thread joined."""
    # the executor's own dict: a worker still being started while shutdown() waits for it lands there
    live = getattr(pool, "_processes", None)
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    processes = list(live.values()) if live is not None else []
    for p in processes:
        try:
            p.kill()
        except (OSError, ValueError, AttributeError):  # already gone or closed
            pass
    for p in processes:
        try:
            p.join(STOP_WAIT_S)
        except (OSError, ValueError, AssertionError):
            pass
    if manager is not None:
        manager.join(STOP_WAIT_S)


@contextlib.contextmanager
def _interrupts_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back from this thread inside the block, and from the processes it
    starts until they unblock them (the fork server does, once it ignores SIGINT): a Ctrl-C sent to
    the process group while the fork server starts up does not end it with a traceback."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def start_workers_early(wait: bool = False) -> None:
    """Start the fork server now (it imports and warms up while this process loads the model).
    ``wait``: return only once it has finished (one process forked from it has run), so that
    campaigns started later fork their workers at once."""
    ctx = _mp_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver, resource_tracker

        resource_tracker.ensure_running()  # first: starting it unblocks the signals held back below
        with _interrupts_blocked():
            forkserver.ensure_running()
    if wait:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            pool.submit(os.getpid).result()


def run_pool(evaluator: Evaluator, population: Population, jobs: Iterator[Job], sink: Sink, workers: int,
             chunk_size: int, total: int, chip_s: float) -> None:
    """``workers`` processes evaluate ``total`` jobs: this one and ``workers - 1`` forked ones.

    This process is warm (no fork, no unpickling, no first calls), so it evaluates chips
    throughout, a few at a time (their maps drawn together; at most ``chunk_size`` and the
    remaining jobs over 16 per process, one at a time for long tasks), each written as it
    finishes. The pool is fed from its callback thread: a finished task's results are
    written and the next task submitted as it comes back, so each worker holds one task ahead
    (none for tasks of at least ``LONG_TASK_S``, estimated from ``chip_s`` seconds a chip: at
    the end a worker would otherwise still have a whole task to run while this process idles).
    Pool tasks shrink as the jobs run out (at most the remaining jobs over four per process),
    and at the end this process takes back the tasks no worker has started.

    On any exception (KeyboardInterrupt included) nothing more is written to ``sink``, the workers
    are killed, and on KeyboardInterrupt the fork server too; then the exception is re-raised.
    Every record written to ``sink`` before stays written.
    """
    from concurrent.futures import ProcessPoolExecutor

    # The evaluator goes to the workers as plain pickle bytes made here, before this process starts
    # evaluating chips: multiprocessing's own pickler would move the program's tensors into shared
    # memory (torch's reductions) from the thread that starts the workers, while this thread reads
    # them, and a chip evaluated meanwhile could see half-moved weights (a wrong result that comes and goes).
    # Its tensors travel as numpy arrays (mitigation.campaign.spawn: faster both ways).
    blob = worker_blob((evaluator, shipped_population(population)))
    pool = ProcessPoolExecutor(max_workers=workers - 1, mp_context=_mp_context(), initializer=_init_worker,
                               initargs=(blob,))
    # `lock` guards the jobs, the tasks in flight and the sink: this thread and the pool's
    # callback thread both take jobs, submit tasks and write results.
    # (re-entrant: a task already done when its callback is added runs it at once, in feed).
    lock = threading.RLock()
    errors: list[BaseException] = []
    inflight: dict = {}  # future -> its jobs
    left = [total]  # jobs not yet handed to a process
    stopped = [False]  # after a failure nothing more is submitted or written (the store is closing)
    ahead = 1 if chunk_size * chip_s >= LONG_TASK_S else 2
    window = ahead * (workers - 1)

    def take(n: int) -> list[Job]:  # under `lock`
        chunk = list(itertools.islice(jobs, n))
        left[0] -= len(chunk)
        return chunk

    def feed() -> None:  # under `lock`
        while not (stopped[0] or errors) and len(inflight) < window and left[0] > 0:
            chunk = take(max(1, min(chunk_size, left[0] // (4 * workers))))
            f = pool.submit(_pool_task, chunk)
            inflight[f] = chunk
            f.add_done_callback(finished)

    def keep(records: list[dict]) -> None:  # under `lock`
        if not stopped[0]:
            sink(records)

    def finished(f) -> None:
        try:
            with lock:
                inflight.pop(f, None)
                if not f.cancelled():
                    keep(f.result())
                    feed()
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    try:
        # Submitting starts the worker processes (a fork from the warm fork server, then unpickling
        # the evaluator): a thread submits the first tasks while this process evaluates chips.
        def start() -> None:
            try:
                # The processes start on these no-op tasks, outside `lock`: this process's first
                # job waits on the lock, which starting a worker while holding it would delay.
                with starting_without_main(blob):
                    for _ in range(workers - 1):
                        pool.submit(int)
                with lock:
                    feed()
            except BaseException as e:
                errors.append(e)

        starter = threading.Thread(target=start, name="campaign-start-workers", daemon=True)
        starter.start()

        def keep_now(records: list[dict]) -> None:
            with lock:
                keep(records)
        while not errors:
            with lock:  # a sixteenth of a process's share at most: the end stays balanced
                chunk = take(max(1, min(chunk_size if ahead > 1 else 1, left[0] // (16 * workers))))
            if not chunk:
                break
            evaluate_jobs(evaluator, population, chunk, each=keep_now)
        starter.join()
        if errors:
            raise errors[0]
        # The jobs have run out: take back the tasks no worker has started, newest first.
        with lock:
            unstarted = sorted(inflight.items(), key=lambda item: -item[1][0][0])
        for f, chunk in unstarted:
            if errors:
                raise errors[0]
            if f.cancel():
                evaluate_jobs(evaluator, population, chunk, each=keep_now)
        pool.shutdown(wait=True)
        if errors:
            raise errors[0]
    except BaseException as exc:
        # set before taking the lock: the callback thread may hold it while waiting on the fork server
        stopped[0] = True
        if isinstance(exc, KeyboardInterrupt):
            stop_fork_server()  # first: it unblocks a thread waiting for a fork from it
        _kill_pool(pool)
        if lock.acquire(timeout=STOP_WAIT_S):  # a write to the sink in progress ends before the store closes
            lock.release()
        raise


__all__ = ["LONG_TASK_S", "MP_CONTEXT", "PRELOAD", "STOP_WAIT_S", "run_pool", "start_workers_early", "stop_fork_server"]
