"""The measured kernel choices of this machine, kept on disk between processes.

The engines compute each exact integer product with whichever of several exact kernels is
fastest here (an int8 GEMM where the CPU has one, float32 exact by bound, a serial or a threaded
compilation; :class:`sysarray.parallel.MeasuredChoice`). A choice is measured on first use per
shape class; this module keeps the decisions in one JSON file per machine signature (CPU model,
its int8 and vector instruction sets, torch and numba versions, and numba's threading layer,
which sets what a threaded kernel's launch costs), so later processes on the same machine start
with them instead of measuring again. The threading layer itself is chosen by measurement too,
per machine without the layer (:mod:`sysarray.threading_choice`); its file lives beside these.

Where: ``$XDG_CACHE_HOME/sysarray/kernels`` (else ``~/.cache/sysarray/kernels``), or the folder
given to :func:`configure`; ``configure(False)`` keeps choices in memory only (tests and
reproducible benchmarks do; a choice can also be pinned with the choice's ``force``). The file is
validated on load: one that is not a choices file of this machine and this format is ignored
(and replaced by the next decision). ``sysarray kernels`` shows and clears it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import threading
from pathlib import Path
from typing import Any, Hashable

FORMAT = "sysarray-kernel-choices"
VERSION = 1
CONFIRMATIONS = 2  # measurements in a row that must agree before a decision is final
# CPU features that decide which exact kernels are fast (int8 dot products, vector widths).
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
          "asimd", "asimddp", "i8mm", "sve")

_lock = threading.Lock()
_folder: Path | None | bool = True  # True: the default folder; False: memory only
_loaded: dict[str, dict[str, dict[str, Any]]] | None = None
_loaded_from: Path | None = None


def configure(folder: str | os.PathLike[str] | bool = True) -> None:
    """Where the choices live: a folder, ``True`` for the default folder (module docstring) or
    ``False`` for memory only. Decisions already made in this process stay."""
    global _folder, _loaded, _loaded_from
    if not isinstance(folder, (bool, str, os.PathLike)):
        raise ValueError(f"kernel_cache.configure takes a folder, True (the default folder) or False (memory only). "
                         f"Got {folder!r} instead.")
    with _lock:
        _folder = Path(folder) if not isinstance(folder, bool) else folder
        _loaded, _loaded_from = None, None


def default_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sysarray" / "kernels"


def machine_signature(layer: bool = True) -> dict[str, Any]:
    """What the choices depend on: CPU model and instruction sets, library versions and (``layer``)
    the numba threading layer this process asks for (``NUMBA_THREADING_LAYER``, else "default")."""
    out = dict(_hardware())
    if layer:
        out["threading_layer"] = os.environ.get("NUMBA_THREADING_LAYER") or "default"
    return out


def folder() -> Path | None:
    """The folder of this machine's choice files (None when kept in memory only)."""
    return None if _folder is False else default_folder() if _folder is True else _folder


def _version(package: str) -> str:
    """A package's version from its metadata: no import (torch must load after process tuning)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return __import__(package).__version__


@functools.lru_cache(maxsize=1)
def _hardware() -> tuple:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name":
                    model = value.strip()
                elif name in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags and name == "":
                    break
    except OSError:
        pass
    return (("cpu", model), ("arch", platform.machine()), ("flags", sorted(f for f in _FLAGS if f in flags)),
            ("torch", _version("torch")), ("numba", _version("numba")), ("python", platform.python_version()))


def path() -> Path | None:
    """The choices file of this machine (None when kept in memory only)."""
    where = folder()
    return None if where is None else where / f"kernels-{signature_digest(machine_signature())}.json"


def signature_digest(signature: dict[str, Any]) -> str:
    """A short stable name for a machine signature (file names)."""
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]


def _read(file: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The choices in ``file``; empty when it is missing or not a valid choices file of this machine."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    ok = (isinstance(data, dict) and data.get("format") == FORMAT and data.get("version") == VERSION
          and data.get("machine") == machine_signature() and isinstance(data.get("choices"), dict)
          and all(isinstance(v, dict) and all(isinstance(e, dict) and isinstance(e.get("option"), (str, int))
                                              and isinstance(e.get("confirmations", 1), int)
                                              for e in v.values()) for v in data["choices"].values()))
    return data["choices"] if ok else {}


def _choices() -> dict[str, dict[str, dict[str, Any]]]:
    global _loaded, _loaded_from
    file = path()
    if _loaded is None or _loaded_from != file:
        _loaded, _loaded_from = ({} if file is None else _read(file)), file
    return _loaded


def _key_text(key: Hashable) -> str | None:
    try:
        return json.dumps(key)
    except TypeError:
        return None  # a key that is not plain data (an object's identity): kept in memory only


def lookup(name: str, key: Hashable, labels: list[str] | None = None) -> tuple[str | int, int] | None:
    """``(option, confirmations)`` recorded for choice ``name`` at ``key`` (how many measurements
    in a row chose the option; 1 for a file without the count), or None; with ``labels``, None
    also when the decision was made among other options (a new candidate is measured, not
    skipped)."""
    text = _key_text(key)
    if text is None or _folder is False:
        return None
    with _lock:
        entry = _choices().get(name, {}).get(text)
    if entry is None or (labels is not None and sorted(entry.get("median_s", {})) != sorted(labels)):
        return None
    return entry["option"], int(entry.get("confirmations", 1))


def record(name: str, key: Hashable, option: str | int, medians_s: dict[str, float], confirmations: int = 1) -> None:
    """Keep a decision and how many measurements in a row made it (merged into the file as it is
    now; a file that cannot be written leaves the decision in memory only)."""
    from sysarray.atomic import write_json

    text = _key_text(key)
    if text is None or _folder is False:
        return
    with _lock:
        file = path()
        choices = _choices()
        entry = {"option": option, "median_s": {k: float(v) for k, v in medians_s.items()},
                 "confirmations": int(confirmations)}
        choices.setdefault(name, {})[text] = entry
        current = _read(file)
        current.setdefault(name, {})[text] = entry
        try:
            write_json(file, {"format": FORMAT, "version": VERSION, "machine": machine_signature(), "choices": current})
        except OSError:
            pass


def recorded() -> dict[str, dict[str, dict[str, Any]]]:
    """Every decision in the file (choice name -> key -> {option, median_s, confirmations})."""
    with _lock:
        file = path()
        return {} if file is None else _read(file)


def clear() -> Path | None:
    """Delete this machine's choices file and forget its decisions; returns the file's path."""
    global _loaded
    with _lock:
        _loaded = None
        return delete(path())


def delete(file: Path | None) -> Path | None:
    """Delete a choices file if it is there; returns its path (None stays None)."""
    if file is not None:
        file.unlink(missing_ok=True)
    return file
