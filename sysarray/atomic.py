"""Crash-safe file writes: a temporary file beside the target, fsync, then ``os.replace``.

A reader (or a crashed writer's rerun) sees either the old file or the whole new one, never a
half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Callable


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO], None], *, binary: bool = False,
                 mode: int = 0o644) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder (created if needed), fsync it,
    give it permissions ``mode`` (mkstemp makes files private) and rename it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
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
