"""numba's threading layer, chosen by measurement on this machine and kept on disk.

A threaded kernel's launch and the state its threads leave (spinning or asleep) cost differently
per machine and layer: where the engines were first tuned, numba's OpenMP layer kept its threads
spinning into torch's GEMMs; elsewhere it is the faster one. The layer is fixed when numba starts
its threads, so it cannot be measured in the process that uses it: :func:`measure` times the
same workload (:mod:`sysarray.threading_probe`: faulty-chip convolutions with torch ops between
them, as an integer program runs) in child processes, alternating the candidate layers, and keeps
the faster for the thread count. :func:`sysarray.runtime.configure` then asks for it
(:func:`recorded`); a ``NUMBA_THREADING_LAYER`` the user set always wins.

The decision lives beside the kernel choices (:func:`sysarray.kernel_cache.folder`) in
``threading-<digest>.json``, one file per machine signature without the layer (CPU, instruction
sets, torch, numba and Python versions); a file that is not this machine's valid choice is
ignored. ``sysarray kernels --measure-layer`` measures, ``sysarray kernels`` shows it and
``--clear`` deletes it. Results never depend on the layer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from sysarray import kernel_cache
from sysarray.validation import check_int

FORMAT = "sysarray-threading-layer"
VERSION = 1
LAYERS = ("workqueue", "omp")  # numba's layers that need no extra package (tbb does)
PROBE_TIMEOUT_S = 600


def path() -> Path | None:
    """This machine's layer file (None when choices are kept in memory only)."""
    where = kernel_cache.folder()
    signature = kernel_cache.machine_signature(layer=False)
    return None if where is None else where / f"threading-{kernel_cache.signature_digest(signature)}.json"


def _read(file: Path | None) -> dict[str, dict[str, Any]]:
    """Thread count (text) -> {"layer", "median_s"}; empty when missing or not this machine's."""
    if file is None:
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    ok = (isinstance(data, dict) and data.get("format") == FORMAT and data.get("version") == VERSION
          and data.get("machine") == kernel_cache.machine_signature(layer=False)
          and isinstance(data.get("choices"), dict)
          and all(isinstance(e, dict) and e.get("layer") in LAYERS for e in data["choices"].values()))
    return data["choices"] if ok else {}


def recorded(threads: int) -> str | None:
    """The layer measured faster here for ``threads`` threads, or None."""
    entry = _read(path()).get(str(int(threads)))
    return None if entry is None else entry["layer"]


def recorded_all() -> dict[str, dict[str, Any]]:
    """Every decision in this machine's file (thread count -> {layer, median_s})."""
    return _read(path())


def record(threads: int, layer: str, medians_s: dict[str, float]) -> Path | None:
    """Keep ``layer`` for ``threads`` threads; returns the file (None: memory only, nothing kept)."""
    from sysarray.atomic import write_json

    if layer not in LAYERS:
        raise ValueError(f"The threading layer must be one of {', '.join(LAYERS)}. Got {layer!r} instead.")
    file = path()
    if file is None:
        return None
    choices = _read(file)
    choices[str(int(threads))] = {"layer": layer, "median_s": {k: float(v) for k, v in medians_s.items()}}
    write_json(file, {"format": FORMAT, "version": VERSION, "machine": kernel_cache.machine_signature(layer=False),
                      "choices": choices})
    return file


def clear() -> Path | None:
    """Delete this machine's layer file; returns its path."""
    return kernel_cache.delete(path())


def usable_cores() -> int:
    """The cores this process may run on (the thread count a configured process uses by default)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def probe(layer: str, threads: int, rounds: int, size: str = "full") -> list[float]:
    """Seconds per round of :mod:`sysarray.threading_probe` in a child process on ``layer``;
    a RuntimeError (its last line of stderr) when the child fails, e.g. a layer numba cannot load."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    out = subprocess.run([sys.executable, "-m", "sysarray.threading_probe", json.dumps([threads, rounds, size])],
                         env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit code {out.returncode}")
    return [float(t) for t in json.loads(out.stdout.strip().splitlines()[-1])]


def measure(threads: int | None = None, repeats: int = 3, rounds: int = 5, *, size: str = "full",
            keep: bool = True, on_probe: Callable[[str, list[float] | str], None] | None = None) -> dict[str, Any]:
    """Time every layer of :data:`LAYERS` in ``repeats`` child processes each (alternating, so a
    busy spell of the machine hits both alike), ``rounds`` rounds of the probe per child, and keep
    the faster (``keep``). ``threads``: the thread count (default: this process's usable cores).
    ``on_probe(layer, seconds per round or the failure's text)`` follows each child.

    Returns ``{"threads", "layer", "median_s": {layer: median seconds per round}, "failed":
    {layer: why}, "file"}``; ``layer`` is None when no layer ran."""
    import numpy as np

    threads = check_int(usable_cores() if threads is None else threads, "threads", "measure", lo=1)
    repeats = check_int(repeats, "repeats", "measure", lo=1)
    rounds = check_int(rounds, "rounds", "measure", lo=1)
    times: dict[str, list[float]] = {layer: [] for layer in LAYERS}
    failed: dict[str, str] = {}
    for _ in range(repeats):
        for layer in LAYERS:
            if layer in failed:
                continue
            try:
                got = probe(layer, threads, rounds, size)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failed[layer] = str(exc)
                if on_probe is not None:
                    on_probe(layer, failed[layer])
                continue
            times[layer].extend(got)
            if on_probe is not None:
                on_probe(layer, got)
    medians = {layer: float(np.median(t)) for layer, t in times.items() if t and layer not in failed}
    best = min(medians, key=medians.get) if medians else None
    file = record(threads, best, medians) if keep and best is not None else None
    return {"threads": threads, "layer": best, "median_s": medians, "failed": failed, "file": file}


__all__ = ["FORMAT", "LAYERS", "VERSION", "clear", "measure", "path", "probe", "record", "recorded", "recorded_all",
           "usable_cores"]
