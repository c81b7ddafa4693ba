"""The durable results store of a campaign directory: manifest, journal, results and timings.

A campaign directory holds:

==================  ===========================================================================
``manifest.json``   format ``"sysarray-campaign"``, version, kind, the configuration that fixes
                    the results (``config``) and its SHA-256 (``config_hash``), the result
                    columns, the chip count, and informational fields (``info``: paths, the
                    fault-free accuracy, package version) that are not hashed
``chips.jsonl``     the journal: one JSON object per finished chip (its result row plus
                    ``seconds``), appended and flushed as each chip finishes, fsynced at
                    least every ``FSYNC_INTERVAL_S`` (group commit) and at the end
``results.csv``     one row per chip, sorted by chip id, rebuilt atomically from the journal;
                    byte-identical for the same configuration whatever the workers or crashes
``timings.csv``     ``chip,seconds``: wall time per chip (kept out of results.csv, which must
                    not depend on the machine)
``aggregates.csv``  per (group, rate) summaries with confidence intervals (written at the end)
``.lock``           an advisory ``flock`` held while a run writes to the directory
==================  ===========================================================================

Resume: opening an existing directory compares the configuration hash and refuses a different
one; the journal is read back (:mod:`mitigation.campaign.journal`: a truncated last line, left by
a kill in the middle of a write, is cut off; a corrupt line elsewhere is refused; a chip present
twice keeps its first record) and finished chips are skipped.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
from typing import Any, Iterable, Sequence

from mitigation.campaign.journal import Journal
from sysarray.atomic import write_json, write_text

FORMAT = "sysarray-campaign"
VERSION = 1
MANIFEST = "manifest.json"
JOURNAL = "chips.jsonl"
RESULTS = "results.csv"
TIMINGS = "timings.csv"
AGGREGATES = "aggregates.csv"
LOCK = ".lock"
FSYNC_INTERVAL_S = 0.5


def canonical_json(obj: Any) -> str:
    """The one JSON text of ``obj`` that is hashed: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def format_value(v: Any) -> str:
    """One CSV cell: ints as is, floats as Python's shortest round-trip ``repr`` (``nan`` for NaN),
    bools as 0/1, None as an empty cell."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def csv_text(columns: Sequence[str], rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([format_value(r.get(c)) for c in columns])
    return buf.getvalue()


def read_manifest(directory: str) -> dict:
    """The manifest of a campaign directory; a clear ValueError when ``directory`` is not one."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise ValueError(f"'{directory}' is not a campaign directory: it does not exist or is not a directory.")
    if not os.path.isfile(path):
        raise ValueError(f"'{directory}' is not a campaign directory: it has no {MANIFEST} "
                         "(write one with `sysarray campaign ... -o DIR`).")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"'{path}' is not a valid campaign manifest: {e}.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a campaign manifest (its 'format' is not {FORMAT!r}).")
    if manifest.get("version") != VERSION:
        raise ValueError(f"'{path}' has campaign format version {manifest.get('version')!r}; this sysarray reads {VERSION}.")
    return manifest


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [f"{prefix or 'config'} ({_short(old)} -> {_short(new)})"]


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _chip_of(record: Any) -> int:
    return int(record["chip"])


def _journal(path: str) -> Journal:
    return Journal(path, check=_chip_of, what="campaign journal", sync_interval_s=FSYNC_INTERVAL_S)


def _by_chip(entries: Iterable[dict]) -> dict[int, dict]:
    """``{chip: record}`` in journal order; the first record of a chip wins."""
    records: dict[int, dict] = {}
    for rec in entries:
        records.setdefault(_chip_of(rec), rec)
    return records


def read_journal(path: str) -> tuple[dict[int, dict], int]:
    """``({chip: record}, valid_bytes)``: the records of a journal and the length of its valid prefix.

    A line that does not parse is tolerated only as the last one (a write cut by a kill; see
    :mod:`mitigation.campaign.journal`); the first record of a chip wins.
    """
    entries, valid = _journal(path).read()
    return _by_chip(entries), valid


class CampaignStore:
    """One campaign directory (see the module docstring). Use :meth:`open`; close to release the lock."""

    def __init__(self, directory: str, manifest: dict, records: dict[int, dict], lock_fd: int | None,
                 journal: Journal) -> None:
        self.directory = directory
        self.manifest = manifest
        self.records = records
        self._lock_fd = lock_fd
        self._journal = journal

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, directory: str, kind: str, config: dict, columns: Sequence[str], chips: int,
             info: dict | None = None) -> "CampaignStore":
        """Create ``directory`` as a campaign of ``config``, or reopen it for the same config."""
        directory = os.fspath(directory)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ValueError(f"The campaign output '{directory}' exists and is not a directory.")
        os.makedirs(directory, exist_ok=True)
        lock_fd = _lock(directory)
        try:
            digest = config_hash(config)
            mpath = os.path.join(directory, MANIFEST)
            if os.path.exists(mpath):
                old = read_manifest(directory)
                if old.get("config_hash") != digest or old.get("kind") != kind:
                    diff = _differences({"kind": old.get("kind"), **old.get("config", {})}, {"kind": kind, **config})
                    raise ValueError(
                        f"'{directory}' holds a campaign with a different configuration (changed: "
                        f"{'; '.join(diff[:4]) or 'config hash'}{'; ...' if len(diff) > 4 else ''}). "
                        "Rerun with the same options to resume it, or choose another output directory."
                    )
                manifest = old
            else:
                others = [n for n in os.listdir(directory) if n != LOCK and not n.startswith(".")]
                if others:
                    raise ValueError(f"'{directory}' is not empty and is not a campaign directory (no {MANIFEST}); "
                                     "choose a new or empty output directory.")
                manifest = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config,
                            "config_hash": digest, "columns": list(columns), "chips": int(chips),
                            "info": dict(info or {})}
                write_json(mpath, manifest)
            journal = _journal(os.path.join(directory, JOURNAL))
            records = _by_chip(journal.recover())
            return cls(directory, manifest, records, lock_fd, journal)
        except BaseException:
            _unlock(lock_fd)
            raise

    def close(self) -> None:
        self._journal.close()
        _unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> "CampaignStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    @property
    def columns(self) -> list[str]:
        return list(self.manifest["columns"])

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def update_info(self, **info: Any) -> None:
        """Add informational (not hashed) fields to the manifest, rewriting it atomically if they change."""
        new = {**self.manifest.get("info", {}), **info}
        if new != self.manifest.get("info"):
            self.manifest["info"] = new
            write_json(self.path(MANIFEST), self.manifest)

    def append(self, records: Sequence[dict]) -> None:
        """Append finished chips to the journal: one line each, written and flushed at once (a kill
        of this process loses nothing written), fsynced at most every ``FSYNC_INTERVAL_S`` and on
        close (a machine crash loses at most that last interval, which a rerun recomputes)."""
        fresh = [r for r in records if int(r["chip"]) not in self.records]
        if not fresh:
            return
        self._journal.append(fresh)
        for r in fresh:
            self.records[int(r["chip"])] = r

    def sync(self) -> None:
        """fsync the journal."""
        self._journal.sync()

    def reconcile(self) -> None:
        """Make the records those the journal holds, after an interrupt that may have come between
        a journal write and the records' update: the journal is flushed and read back."""
        self._journal.sync()
        self.records = _by_chip(self._journal.read()[0])

    def rows(self) -> list[dict]:
        """The result rows, sorted by chip id."""
        return [self.records[c] for c in sorted(self.records)]

    def results_current(self) -> bool:
        """Whether results.csv and timings.csv hold exactly the journal's rows."""
        rows = self.rows()
        for name, columns in ((RESULTS, self.columns), (TIMINGS, ("chip", "seconds"))):
            try:
                with open(self.path(name), newline="") as f:
                    if f.read() != csv_text(columns, rows):
                        return False
            except FileNotFoundError:
                return False
        return True

    def write_results(self) -> str:
        """Rebuild results.csv and timings.csv atomically from the journal; returns results.csv's path."""
        self.sync()  # results.csv never holds a chip the journal could still lose
        rows = self.rows()
        write_text(self.path(RESULTS), csv_text(self.columns, rows))
        write_text(self.path(TIMINGS), csv_text(("chip", "seconds"), rows))
        return self.path(RESULTS)


def _lock(directory: str) -> int | None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory lock
        return None
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for any new file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(f"Another campaign run is writing to '{directory}' right now; wait for it or use another directory.") from None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def read_results(directory: str) -> tuple[dict, list[dict]]:
    """``(manifest, rows)`` of a campaign directory, rows parsed from results.csv (or the journal)."""
    manifest = read_manifest(directory)
    records, _ = read_journal(os.path.join(directory, JOURNAL))
    rows = [records[c] for c in sorted(records)]
    return manifest, rows


__all__ = ["CampaignStore", "canonical_json", "config_hash", "csv_text", "file_sha256",
           "format_value", "read_journal", "read_manifest", "read_results"]
