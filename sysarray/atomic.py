"""Crash-safe file writes: a temporary file beside the target, fsync, then ``os.replace``.

A reader (or a crashed writer's rerun) sees either the old file or the whole new one, never a
half-written file under the final name. A new file gets the permissions any new file gets (0o666
less the process umask, so 0o644 under the common umask 022); a replaced file keeps its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import IO, Any, Callable

_TEMP_ATTEMPTS = 100


def _create_temp(folder: str, name: str) -> tuple[int, str]:
    """``(fd, path)`` of a new, empty temporary file for ``name`` in ``folder``.

    Created with ``os.open(..., 0o666)``, not ``tempfile.mkstemp`` (which makes files 0o600), so
    the kernel applies the umask (and any default ACL) exactly as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_ATTEMPTS):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a temporary file for {name!r} in {folder!r}: "
                          f"{_TEMP_ATTEMPTS} random names were all taken.")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO], None], *, binary: bool = False,
                 mode: int | None = None) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder (created if needed), fsync it and
    rename it over ``path``.

    ``mode``: the permission bits to give the file; None (the default) keeps an existing target's
    and gives a new one the usual 0o666 less the umask."""
    path = os.fspath(path)
    if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777):
        raise ValueError(f"The 'mode' argument of atomic_write must be None or permission bits within 0..0o7777. "
                         f"Got {mode!r} instead.")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if mode is None:
        with contextlib.suppress(FileNotFoundError):
            mode = os.stat(path).st_mode & 0o7777
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], obj: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``obj`` as indented JSON with sorted keys, atomically (same bytes for the same object)."""
    def dump(f: IO) -> None:
        json.dump(obj, f, indent=2, sort_keys=True, default=default)
        f.write("\n")

    atomic_write(path, dump)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text))
