"""The process's threading settings, chosen by measurement on this machine and kept on disk:
numba's threading layer and whether OpenMP threads spin briefly or as long as libgomp's default.

A threaded kernel's launch and the state its threads leave (spinning or asleep) cost differently
per machine: where the engines were first tuned, numba's OpenMP layer and torch's spinning
OpenMP threads took the cores from each other, so the workqueue layer and a short spin
(``GOMP_SPINCOUNT``) paid; elsewhere the OpenMP layer and the default spin are the faster. Both
are fixed when the threads start, so they cannot be measured in the process that uses them:
:func:`measure` times the same workload (:mod:`sysarray.threading_probe`: faulty-chip
convolutions with torch ops between them, as an integer program runs) in child processes,
alternating the candidate settings (:data:`CANDIDATES`), and keeps the fastest for the thread
count. :func:`sysarray.runtime.configure` then applies it (:func:`recorded`); a
``NUMBA_THREADING_LAYER``, ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` the user set always wins.

The decision lives beside the kernel choices (:func:`sysarray.kernel_cache.folder`) in
``threading-<digest>.json``, one file per machine signature without the layer (CPU, instruction
sets, torch, numba and Python versions); a file that is not this machine's valid choice is
ignored. ``sysarray kernels --measure-layer`` measures, ``sysarray kernels`` shows it and
``--clear`` deletes it. Results never depend on these settings.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from sysarray import kernel_cache
from sysarray.runtime import usable_cores
from sysarray.validation import check_int

FORMAT = "sysarray-threading-layer"
VERSION = 2
LAYERS = ("workqueue", "omp")  # numba's layers that need no extra package (tbb does)
SPINS = ("short", "default")  # GOMP_SPINCOUNT set by configure(), or libgomp's own
# every "layer/spin" pair; where none was measured, configure() leaves both to numba and libgomp
CANDIDATES = tuple(f"{layer}/{spin}" for spin in SPINS for layer in LAYERS)
PROBE_TIMEOUT_S = 600


def settings(candidate: str) -> tuple[str, str]:
    """``(layer, spin)`` of a candidate label such as ``"omp/default"``; a ValueError for others."""
    if candidate not in CANDIDATES:
        raise ValueError(f"The threading settings must be one of {', '.join(CANDIDATES)}. Got {candidate!r} instead.")
    layer, spin = candidate.split("/")
    return layer, spin


def path() -> Path | None:
    """This machine's layer file (None when choices are kept in memory only)."""
    where = kernel_cache.folder()
    signature = kernel_cache.machine_signature(layer=False)
    return None if where is None else where / f"threading-{kernel_cache.signature_digest(signature)}.json"


def _read(file: Path | None) -> dict[str, dict[str, Any]]:
    """Thread count (text) -> {"settings", "median_s"}; empty when missing or not this machine's."""
    if file is None:
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    ok = (isinstance(data, dict) and data.get("format") == FORMAT and data.get("version") == VERSION
          and data.get("machine") == kernel_cache.machine_signature(layer=False)
          and isinstance(data.get("choices"), dict)
          and all(isinstance(e, dict) and e.get("settings") in CANDIDATES for e in data["choices"].values()))
    return data["choices"] if ok else {}


def recorded(threads: int) -> tuple[str, str] | None:
    """``(layer, spin)`` measured fastest here for ``threads`` threads, or None."""
    entry = _read(path()).get(str(int(threads)))
    return None if entry is None else settings(entry["settings"])


def recorded_all() -> dict[str, dict[str, Any]]:
    """Every decision in this machine's file (thread count -> {settings, median_s})."""
    return _read(path())


def record(threads: int, candidate: str, medians_s: dict[str, float]) -> Path | None:
    """Keep ``candidate`` ("layer/spin") for ``threads`` threads; returns the file (None: memory
    only, nothing kept)."""
    from sysarray.atomic import write_json

    settings(candidate)
    file = path()
    if file is None:
        return None
    choices = _read(file)
    choices[str(int(threads))] = {"settings": candidate, "median_s": {k: float(v) for k, v in medians_s.items()}}
    write_json(file, {"format": FORMAT, "version": VERSION, "machine": kernel_cache.machine_signature(layer=False),
                      "choices": choices})
    return file


def clear() -> Path | None:
    """Delete this machine's layer file; returns its path."""
    return kernel_cache.delete(path())


def probe(candidate: str, threads: int, rounds: int, size: str = "full") -> list[float]:
    """Seconds per round of :mod:`sysarray.threading_probe` in a child process with the settings
    ``candidate``; a RuntimeError (its last line of stderr) when the child fails, e.g. a layer
    numba cannot load."""
    layer, spin = settings(candidate)
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["NUMBA_THREADING_LAYER"] = layer
    args = json.dumps([threads, rounds, size, spin == "short"])
    out = subprocess.run([sys.executable, "-m", "sysarray.threading_probe", args], env=env, capture_output=True,
                         text=True, timeout=PROBE_TIMEOUT_S)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit code {out.returncode}")
    return [float(t) for t in json.loads(out.stdout.strip().splitlines()[-1])]


def measure(threads: int | None = None, repeats: int = 3, rounds: int = 5, *, size: str = "full",
            keep: bool = True, on_probe: Callable[[str, list[float] | str], None] | None = None) -> dict[str, Any]:
    """Time every candidate of :data:`CANDIDATES` in ``repeats`` child processes each
    (alternating, so a busy spell of the machine hits all alike), ``rounds`` rounds of the probe
    per child, and keep the fastest (``keep``). ``threads``: the thread count (default: this
    process's usable cores). ``on_probe(candidate, seconds per round or the failure's text)``
    follows each child.

    Returns ``{"threads", "settings", "median_s": {candidate: median seconds per round},
    "failed": {candidate: why}, "file"}``; ``settings`` is None when no candidate ran."""
    import numpy as np

    threads = check_int(usable_cores() if threads is None else threads, "threads", "measure", lo=1)
    repeats = check_int(repeats, "repeats", "measure", lo=1)
    rounds = check_int(rounds, "rounds", "measure", lo=1)
    times: dict[str, list[float]] = {c: [] for c in CANDIDATES}
    failed: dict[str, str] = {}
    for _ in range(repeats):
        for candidate in CANDIDATES:
            if candidate in failed:
                continue
            try:
                got = probe(candidate, threads, rounds, size)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failed[candidate] = str(exc)
                if on_probe is not None:
                    on_probe(candidate, failed[candidate])
                continue
            times[candidate].extend(got)
            if on_probe is not None:
                on_probe(candidate, got)
    medians = {c: float(np.median(t)) for c, t in times.items() if t and c not in failed}
    best = min(medians, key=medians.get) if medians else None
    file = record(threads, best, medians) if keep and best is not None else None
    return {"threads": threads, "settings": best, "median_s": medians, "failed": failed, "file": file}


__all__ = ["CANDIDATES", "FORMAT", "LAYERS", "SPINS", "VERSION", "clear", "measure", "path", "probe", "record",
           "recorded", "recorded_all", "settings"]
