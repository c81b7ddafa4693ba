"""One append-only JSONL journal: a line per finished piece of work, durable as soon as it is written.

A campaign directory (one line per chip, :mod:`mitigation.campaign.store`) and an eFAT run (one
line per stage, :mod:`mitigation.efat`) keep their progress in such a file and resume from it.

Writing: each :meth:`Journal.append` writes whole lines, one JSON object each (sorted keys), and
flushes them at once, so a kill of the process loses nothing written; it then fsyncs, so a machine
crash loses nothing either. ``sync_interval_s`` > 0 groups the fsyncs of quick appends (group
commit): a crash then loses at most the last interval, which a rerun recomputes.

Reading, one rule: a line that does not parse is tolerated only as the last one, a write cut by a
kill; :meth:`Journal.recover` cuts it off so that the next append starts a fresh line. A line that
does not parse anywhere else means the file was not written this way or was edited: a ValueError
naming the file and the line number.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence


def _object(entry: Any) -> None:
    if not isinstance(entry, dict):
        raise TypeError("a journal line must hold a JSON object")


def encode(entries: Sequence[dict]) -> bytes:
    """The journal lines of ``entries``: one JSON object per line, keys sorted, ASCII."""
    return "".join(json.dumps(e, sort_keys=True, allow_nan=True) + "\n" for e in entries).encode()


def read_entries(path: str | os.PathLike, check: Callable[[Any], object] = _object,
                 what: str = "journal") -> tuple[list[dict], int]:
    """``(entries, valid_bytes)``: the journal's entries in file order (none when there is no file)
    and the length in bytes of its valid prefix (shorter than the file when the last line was cut).

    ``check(entry)`` raises ValueError, KeyError or TypeError for a JSON value that is not a valid
    entry; such a line counts as one that does not parse. ``what`` names the file in the error.
    """
    entries: list[dict] = []
    if not os.path.exists(path):
        return entries, 0
    with open(path, "rb") as f:
        data = f.read()
    valid = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and line == b"":
            break
        try:
            entry = json.loads(line)  # a complete last line without its newline is kept (recover adds one)
            check(entry)
        except (ValueError, KeyError, TypeError):
            if last:
                break
            raise ValueError(f"The {what} '{os.fspath(path)}' has a corrupt line {i + 1} (not the last one, so not "
                             "a write cut by a kill); it was not written by sysarray or was edited. Move it away to "
                             "start over.") from None
        entries.append(entry)
        valid += len(line) + (0 if last else 1)
    return entries, valid


class Journal:
    """The journal file at ``path`` (see the module docstring): :meth:`recover` it when resuming,
    then :meth:`append`; close it (or use it as a context manager) to fsync and release the file.

    ``check`` and ``what``: as in :func:`read_entries`. ``sync_interval_s``: seconds between fsyncs
    of consecutive appends (0: every append is fsynced).
    """

    def __init__(self, path: str | os.PathLike, *, check: Callable[[Any], object] = _object, what: str = "journal",
                 sync_interval_s: float = 0.0) -> None:
        self.path = os.fspath(path)
        self.check = check
        self.what = what
        self.sync_interval_s = float(sync_interval_s)
        self._file: Any = None
        self._synced = time.monotonic()

    def read(self) -> tuple[list[dict], int]:
        """``(entries, valid_bytes)`` of the file (:func:`read_entries`); changes nothing."""
        return read_entries(self.path, self.check, self.what)

    def recover(self) -> list[dict]:
        """The entries, with the file made ready for appending: a cut last line is truncated away,
        and a complete last line without its newline gets one."""
        entries, valid = self.read()
        if os.path.exists(self.path):
            size = os.path.getsize(self.path)
            if valid < size:
                with open(self.path, "r+b") as f:
                    f.truncate(valid)
                    _sync(f)
            elif size and not _ends_with_newline(self.path):
                with open(self.path, "ab") as f:
                    f.write(b"\n")
                    _sync(f)
        return entries

    def append(self, entries: Sequence[dict]) -> None:
        """Write ``entries`` as lines at the end of the file, flushed at once and fsynced unless
        the last fsync is younger than ``sync_interval_s``."""
        if not entries:
            return
        if self._file is None:
            self._file = open(self.path, "ab")
        self._file.write(encode(entries))
        self._file.flush()
        if time.monotonic() - self._synced >= self.sync_interval_s:
            self.sync()

    def sync(self) -> None:
        """fsync what was appended."""
        if self._file is not None:
            _sync(self._file)
        self._synced = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


__all__ = ["Journal", "encode", "read_entries"]
