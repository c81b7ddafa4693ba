"""Helpers shared by the benchmarks: timing, machine description, JSON output and tables.

Timing rules every benchmark follows: a warm-up call first (numba compiles, torch allocates;
its time is kept apart as ``first_call_s``), then ``repeats`` timed calls with the garbage
collector off, reported as the median (and min/max). Calls that are compared with each other
are timed round-robin (one call of each per round), so a slow spell of a shared machine hits
all of them alike instead of biasing one side of a ratio.

Every benchmark is a program: it calls :func:`sysarray.runtime.configure` first thing, before
torch loads (which takes the threading settings measured on this machine, where they are
recorded: :mod:`sysarray.threading_choice`), measures the engines' kernel choices afresh
(none read from this machine's :mod:`sysarray.kernel_cache`), and its JSON carries
:func:`provenance` (the command, the run mode, what ``configure`` reported and the machine),
which ``render_performance.py`` puts in docs/performance.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from sysarray import kernel_cache
from sysarray.runtime import usable_cores
from sysarray.atomic import write_json as atomic_write_json

# Each benchmark run measures its kernel choices afresh: its figures do not depend on what an
# earlier process on this machine chose and kept (sysarray.kernel_cache).
kernel_cache.configure(False)
# Untimed rounds at most before timing while the kernel choices are still measured: a choice's
# decision is final after its first measurement and one more that agrees, RECHECK_AFTER calls on.
SETTLE_ROUNDS = 128


def summarize_times(times: Sequence[float], first_call_s: float | None = None) -> dict[str, Any]:
    """Median, min and max (seconds) of repeated timings, with the raw list."""
    ts = sorted(float(t) for t in times)
    n = len(ts)
    median = ts[n // 2] if n % 2 else 0.5 * (ts[n // 2 - 1] + ts[n // 2])
    out: dict[str, Any] = {"median_s": median, "min_s": ts[0], "max_s": ts[-1], "repeats": n, "times_s": list(times)}
    if first_call_s is not None:
        out["first_call_s"] = float(first_call_s)
    return out


def time_round_robin(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     settle_rounds: int = SETTLE_ROUNDS) -> dict[str, dict[str, Any]]:
    """Time every call ``repeats`` times, one call of each per round; returns ``summarize_times`` per name.

    Each call first runs ``warmup`` times untimed (the first of those is reported as
    ``first_call_s``: it includes any JIT compilation or cache load); then untimed rounds follow
    until every kernel choice the calls made is final (:func:`settle`, at most ``settle_rounds``),
    so that the timed calls see the steady state, not the measuring of the choices.
    """
    if repeats < 1:
        raise ValueError(f"The 'repeats' argument of time_round_robin must be at least 1. Got {repeats} instead.")
    first: dict[str, float] = {}
    for name, fn in calls.items():
        for i in range(warmup):
            t0 = time.perf_counter()
            fn()
            if i == 0:
                first[name] = time.perf_counter() - t0
    rounds = settle(calls.values(), settle_rounds) if settle_rounds else 0
    times: dict[str, list[float]] = {name: [] for name in calls}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return {name: {**summarize_times(times[name], first.get(name)), "settle_rounds": rounds} for name in calls}


def settle(calls, max_rounds: int = SETTLE_ROUNDS) -> int:
    """Run ``calls`` (callables) round-robin, untimed, until a round in which every kernel choice
    they call has a final decision (a choice's first measurement, then the one that confirms it:
    :class:`sysarray.parallel.MeasuredChoice`; a choice only the measuring of another one called
    is not called again once that one is final), at most ``max_rounds`` rounds; returns the rounds."""
    from sysarray import parallel

    rounds = 0
    while rounds < max_rounds:
        with parallel.watch_choices() as seen:
            for fn in calls:
                fn()
        rounds += 1
        if parallel.settled(seen):
            break
    return rounds


def time_once(fn: Callable[[], object]) -> tuple[float, object]:
    """``(seconds, result)`` of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(values: Sequence[float]) -> float:
    return summarize_times(values)["median_s"]


def fastest_exact_gemm(seconds: Mapping[str, float | None]) -> tuple[str, float]:
    """``(name, seconds)`` of the machine's fastest exact GEMM in a fast-engine case of
    bench_engines (its ``seconds``): ``"int_mm"`` (``torch._int_mm``, "a", None where it does not
    apply) or ``"exact_matmul"`` (the float32 GEMM exact by bound, "b"), whichever is faster."""
    return min(((name, seconds[k]) for k, name in (("a", "int_mm"), ("b", "exact_matmul"))
                if seconds.get(k) is not None), key=lambda ns: ns[1])


def use_fresh_numba_cache() -> str:
    """Point numba's on-disk cache at a new empty folder, so the first calls really compile.

    Must run before any ``cache=True`` kernel is defined (i.e. before ``sysarray.engines`` is
    imported). Returns the folder; the caller removes it.
    """
    path = tempfile.mkdtemp(prefix="bench-numba-cache-")
    os.environ["NUMBA_CACHE_DIR"] = path
    if "numba" in sys.modules:
        # re-read numba's config so later kernels cache here (the layer configure() chose is in the environment too)
        from numba.core import config

        config.reload_config()
    return path


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            out[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return out


class CpuMonitor:
    """How much CPU other processes (and the hypervisor) took while this one was measuring.

    ``other_frac`` = busy CPU time of the whole machine minus this process's own (with all its
    descendants: a campaign's worker processes are children of multiprocessing's fork server),
    divided by wall time x cores; ``steal_frac`` = time the hypervisor gave our vCPUs to someone
    else. Either well above 0 means the timings are slowed by work that is not ours.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        v = [int(x) for x in fields]
        hz = os.sysconf("SC_CLK_TCK")
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        steal = v[7] if len(v) > 7 else 0
        busy = sum(v[:8]) - idle - steal
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system + _live_descendants_cpu_s(hz)
        return time.perf_counter(), busy / hz, steal / hz, own

    def stop(self) -> dict[str, float] | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        cores = usable_cores()
        busy, steal, own = (end[i] - self._start[i] for i in (1, 2, 3))
        return {
            "wall_s": round(wall, 3),
            "own_cpu_s": round(own, 3),
            "other_frac": round(max(0.0, busy - own) / (wall * cores), 4),
            "steal_frac": round(steal / (wall * cores), 4),
        }


def _live_descendants_cpu_s(hz: int) -> float:
    """CPU seconds of this process's live descendants, each with its reaped children (Linux /proc;
    0 elsewhere). Reaped direct children are already in ``os.times()``."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        ticks[pid] = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    me, total = os.getpid(), 0
    for pid, t in ticks.items():
        p = parent.get(pid)
        while p is not None and p != me and p > 1:
            p = parent.get(p)
        if p == me:
            total += t
    return total / hz


def wait_for_idle(max_wait_s: float, threshold: float = 0.1, window_s: float = 2.0) -> float:
    """Wait until other processes use less than ``threshold`` of the CPUs over ``window_s``.

    Gives up after ``max_wait_s`` seconds; returns the seconds waited. For shared machines,
    where someone else's job would slow one side of a comparison.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        mon = CpuMonitor()
        time.sleep(window_s)
        got = mon.stop()
        if got is None or got["other_frac"] + got["steal_frac"] < threshold:
            break
    return time.perf_counter() - t0


class IdleGate:
    """Measure when the machine is quiet: wait for other work to stop, retry disturbed measurements.

    ``budget_s`` is the total time the whole run may spend waiting (0: never wait nor retry).
    :meth:`measure` waits (within the budget) until other processes use less than
    ``threshold`` of the CPUs, runs the measurement under a :class:`CpuMonitor`, and runs it
    again (at most ``retries`` more times) while other work took more than ``threshold``.
    """

    def __init__(self, budget_s: float, threshold: float = 0.05, retries: int = 2) -> None:
        self.remaining = max(0.0, float(budget_s))
        self.threshold = threshold
        self.retries = retries
        self.waited_s = 0.0

    def wait(self) -> None:
        if self.remaining > 0:
            w = wait_for_idle(self.remaining, self.threshold)
            self.remaining -= w
            self.waited_s += w

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any] | None]:
        """``(fn(), contention)``; contention has CpuMonitor's fields plus ``attempts`` and ``clean``."""
        attempts = 0
        while True:
            self.wait()
            mon = CpuMonitor()
            out = fn()
            cont = mon.stop()
            attempts += 1
            clean = cont is None or cont["other_frac"] + cont["steal_frac"] < self.threshold
            if clean or attempts > self.retries or self.remaining <= 0:
                return out, None if cont is None else {**cont, "attempts": attempts, "clean": clean}


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other work on a shared machine skews timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 2)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git(repo: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# CPU flags that decide which kernels and GEMMs run fast (numba's SIMD width, torch's int8 paths).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def machine_info(repo: Path | None = None) -> dict[str, Any]:
    """CPU (model, ISA flags, cores), memory, library versions and thread settings of this run.

    Call it after the measured kernels ran: numba's threading layer is only known once a
    parallel kernel has launched its threads.
    """
    import numba
    import numpy
    import torch

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = f"not launched (configured: {numba.config.THREADING_LAYER})"
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "cpu_family_model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}",
        "cpu_mhz": cpu.get("cpu mhz"),
        "simd": [f for f in ISA_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "mem_total_gib": _mem_total_gib(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                                           "NUMBA_THREADING_LAYER", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY") if k in os.environ},
    }
    try:
        import sysarray
        from sysarray.engines.simd import LANES

        info["sysarray"] = sysarray.__version__
        info["engine_simd_lanes"] = LANES  # the lane width the engines' SIMD kernels are compiled for
    except ImportError:
        pass
    if repo is not None:
        info["git_commit"] = _git(repo, "rev-parse", "HEAD")
        status = _git(repo, "status", "--porcelain", "--untracked-files=no")
        info["git_dirty"] = None if status is None else bool(status)
    return info


def command_line(repo: Path | None = None) -> str:
    """This process's command as one could retype it from ``repo`` (the script path relative to it)."""
    argv = list(sys.argv)
    if argv and repo is not None:
        with contextlib.suppress(ValueError):
            argv[0] = str(Path(argv[0]).resolve().relative_to(repo.resolve()))
    exe = Path(sys.executable)
    if repo is not None:
        with contextlib.suppress(ValueError):
            exe = Path(os.path.abspath(sys.executable)).relative_to(repo.resolve())
    return shlex.join([str(exe), *argv])


def provenance(tuning: Any, mode: str, repo: Path | None = None) -> dict[str, Any]:
    """What a benchmark's JSON records beside its figures: the run ``mode`` ("full" or "quick"),
    the command, what :func:`sysarray.runtime.configure` reported (``tuning``, its ``Tuning``) and
    :func:`machine_info`."""
    return {"mode": mode, "command": command_line(repo), "tuning": dataclasses.asdict(tuning),
            "machine": machine_info(repo)}


def describe_tuning(tuning: Mapping[str, Any] | None) -> str:
    """One line of what :func:`sysarray.runtime.configure` reported (a ``Tuning`` as a dict)."""
    if not tuning:
        return "not recorded"
    return ", ".join(f"{k}={v}" for k, v in tuning.items())


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (temp file + rename)."""
    atomic_write_json(path, data, default=_json_default)


def _json_default(x: Any) -> Any:
    # numpy scalars and arrays, Paths, enums
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "value"):
        return x.value
    return str(x)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[format_value(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_num(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()

    out = []
    if title:
        out.append(title)
    out.append(line(cells[0]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or v is None


def format_value(v: Any) -> str:
    """A table cell: ``-`` for None, yes/NO for booleans, floats to about three significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        a = abs(v)
        if a != 0 and (a >= 1e5 or a < 1e-3):
            return f"{v:.3g}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if a < 1 else f"{v:.2f}"
    return str(v)


def float_and_chip_calls(model, x, program, cfg, seed: int, n_maps: int, device=None) -> tuple[dict, dict]:
    """``(maps, calls)`` for timing a model against its integer program: ``maps`` the fault maps
    by seed (``seed .. seed + n_maps - 1``, 1% psum-faulty PEs on ``cfg``), ``calls`` float32
    inference (``"float32"``), the program fault-free (``"int_fault_free"``) and on each map
    (``"int_faulty_map<seed>"``), without the fault-free GEMMs that count changed outputs.
    ``device``: where the program runs (``model`` and ``x`` already there; None: the CPU)."""
    import torch

    import sysarray as sa

    # Several chips: the replay's cost depends on where the faulty PEs sit (their rows set the chains' length).
    maps = {s: sa.FaultMap.random(cfg, pe_rate=0.01, registers=("psum",), seed=s) for s in range(seed, seed + n_maps)}

    def float_run():
        with torch.no_grad():
            return model(x)

    on = {} if device is None else {"device": device}
    calls = {
        "float32": float_run,
        "int_fault_free": lambda: program.run(x, cfg, count_changes=False, **on),
        **{f"int_faulty_map{s}": (lambda fm=fm: program.run(x, cfg, faults=fm, count_changes=False, **on))
           for s, fm in maps.items()},
    }
    return maps, calls


def train_base_model(name: str, dataset: str, epochs: int, path: Path, select=None, **model_kw) -> tuple[str, float]:
    """Train zoo model ``name`` (weights and shuffling seed 0) on ``dataset``'s training images
    (``select``: the indices or slice to train on, default all), save it as a checkpoint at
    ``path``; returns (path, training seconds)."""
    import torch

    from accel_models.checkpoint import save_checkpoint
    from accel_models.data import load_dataset
    from accel_models.evaluation import DEFAULT_CALIBRATION_IMAGES
    from accel_models.train import evaluate, train
    from accel_models.zoo import build_model

    data = load_dataset(dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(name, data.input_shape, data.num_classes, **model_kw)
    keep = slice(None) if select is None else select
    t0 = time.perf_counter()
    history = train(model, data.train_x[keep], data.train_y[keep], epochs=epochs, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    history["test_accuracy"] = evaluate(model, data.test_x, data.test_y)
    save_checkpoint(path, model, dataset=data, preprocessing=data.preprocessing, history=history,
                    extra={"calibration": {"images": DEFAULT_CALIBRATION_IMAGES, "split": "train", "method": "minmax"}})
    return str(path), seconds
