"""How long runs end: interrupts, the death of a parent process, a closed stdout, no memory.

- :class:`Interrupted` is the KeyboardInterrupt of a run that saved its progress first; its text
  is the one line the ``sysarray`` command prints (with exit code :data:`EXIT_INTERRUPTED`).
- :func:`sigterm_as_interrupt`: inside the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does,
  so that a terminated run stops its workers and saves what finished.
- :func:`die_with_parent` and :func:`exit_when_readable`: helper processes (a campaign's workers)
  exit when the process they serve is gone, even when it was killed with SIGKILL.
- :func:`stdout_reader_gone`, :func:`silence_stdout`, :func:`out_of_memory`: what the command
  line needs to end quietly on a closed pipe and in one line when memory runs out.

Importing this module changes nothing in the process; every function says what it changes.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

# The shell's codes for a death by SIGINT and by SIGPIPE (128 + signal number).
EXIT_INTERRUPTED = 128 + 2
EXIT_BROKEN_PIPE = 128 + 13
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after it saved what had finished. ``str(exc)`` is one
    line for the user, e.g. ``interrupted at 1078/3000 chips; rerun the same command to resume``."""


def interrupt_of(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind ``exc``: itself, or for a SystemError the one in its cause
    chain (an interrupt raised while a compiled function returns, e.g. a numba kernel, surfaces as
    "returned a result with an exception set"); None when there is none."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        if not isinstance(exc, SystemError):
            return None
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises KeyboardInterrupt in the main thread; the previous handler
    is restored after. Nothing changes outside the main thread or when SIGTERM already has a
    handler or is ignored (the host's choice)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def die_with_parent(signum: int = signal.SIGKILL if hasattr(signal, "SIGKILL") else 9) -> bool:
    """Ask the kernel to send this process ``signum`` when the thread that created it exits (Linux
    ``prctl(PR_SET_PDEATHSIG)``). Returns whether it was set: False on other systems, where
    :func:`exit_when_readable` on a pipe from the parent does the job."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def exit_when_readable(fd: int, code: int = 1) -> threading.Thread:
    """Start a daemon thread that ends this process with ``os._exit(code)`` (no cleanup, no
    output) as soon as ``fd`` becomes readable: a pipe whose other end only the parent holds reads
    EOF when the parent dies, however it died."""
    import selectors

    def watch() -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not sel.select():
                pass
        os._exit(code)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def stdout_reader_gone() -> bool:
    """Whether this process's stdout is a pipe or socket whose reading end was closed (what a
    BrokenPipeError from writing to it means); False when that cannot be told."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file (tests)
        return False
    try:
        import select

        poller = select.poll()
        poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever is asked for
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(): take the error at its word
        return True


def silence_stdout() -> None:
    """Point this process's stdout file descriptor at the null device, so that what Python still
    flushes at exit goes nowhere instead of failing again on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` reports a failed allocation: a MemoryError (numpy's included), torch's
    OutOfMemoryError or torch's CPU allocator's RuntimeError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("DefaultCPUAllocator" in text and "memory" in text)


__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "Interrupted", "die_with_parent", "exit_when_readable",
           "out_of_memory", "sigterm_as_interrupt", "silence_stdout", "stdout_reader_gone"]
