"""Fault campaigns (campaigns.md): one model on a population of faulty chips, one result row per chip.

A campaign is three inputs kept apart: the *task* (a checkpoint and its test images, or a lowered
program and images: :class:`CheckpointTask`, :class:`ProgramTask`), the *chip* (an ArrayConfig and
an engine) and the *population* of fault maps (:class:`RateGrid`: fault groups x rates x replicas
drawn with :mod:`sysarray.faultgen`; :class:`FaultFiles`: a directory of fault-map files;
:class:`SingleFaults`: one stuck bit per chip, for sweeps and importance sampling).
:func:`run_campaign` evaluates every chip of the population not yet in the output directory's
journal (see :mod:`mitigation.campaign_store`), in this process, in a local process pool, or on
a Dask distributed cluster, and writes ``results.csv`` and ``aggregates.csv``.

Determinism: chip ``i``'s fault map depends only on the population and ``i`` (replica ``j`` of a
grid uses ``SeedSequence(seed).spawn(chips_per_rate)[j]`` at every rate and group, the seeds of
:func:`sysarray.faultgen.population`); the fault-free run is done once, in the parent, and shipped
to the workers; every result is computed from integer counts; rows are written sorted by chip id
with floats in their shortest round-trip form. Nothing in ``results.csv`` depends on the workers.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from mitigation.campaign_spawn import starting_without_main, worker_blob
from mitigation.campaign_store import AGGREGATES, RESULTS, CampaignStore, csv_text, file_sha256
from sysarray.atomic import write_text

DEFAULT_CRITICAL_DROP = 0.05
# The fault-free values an evaluator keeps for its chips to reuse (shipped to every worker):
# LeNet-5 on the digits test split keeps all of its ~3 MB; ResNet-20 on 1,000 images its
# quantized inputs.
TRACE_BYTES = 64 << 20
OUTCOME_COLUMNS = ("faulty_pes", "stuck_bits", "registers", "accuracy", "drop", "sdc_rate", "critical")
REWRITE_RESULTS_EVERY_S = 10.0
_REGISTERS = ("weight", "act", "psum")


# ====================================================================== fault groups
@dataclass(frozen=True)
class FaultGroup:
    """Which stuck bits a chip may get: registers, bit positions (None: all) and stuck values."""

    registers: tuple[str, ...]
    bits: tuple[int, ...] | None = None
    values: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        regs = tuple(str(getattr(r, "value", r)) for r in self.registers)
        for r in regs:
            if r not in _REGISTERS:
                raise ValueError(f"A fault group's registers must be among {', '.join(_REGISTERS)}. Got {r!r} instead.")
        if not regs:
            raise ValueError("A fault group needs at least one register.")
        object.__setattr__(self, "registers", regs)
        if self.bits is not None:
            object.__setattr__(self, "bits", tuple(sorted(set(int(b) for b in self.bits))))
        vals = tuple(sorted(set(int(v) for v in self.values)))
        if not vals or not set(vals) <= {0, 1}:
            raise ValueError(f"A fault group's stuck values must be 0, 1 or both. Got {self.values!r} instead.")
        object.__setattr__(self, "values", vals)

    @classmethod
    def parse(cls, text: str) -> "FaultGroup":
        """``"psum:24-31:1"``, ``"psum:24-31"`` (values random), ``"weight+act"`` (all bits)."""
        from sysarray.cliargs import parse_bits, parse_registers, parse_values

        parts = str(text).split(":")
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise ValueError(f"A fault group must look like REGISTERS[:BITS[:VALUE]], e.g. psum:24-31:1. Got {text!r} instead.")
        regs = parse_registers(parts[0].replace("+", ","))
        bits = parse_bits(parts[1]) if len(parts) > 1 and parts[1] not in ("", "all") else None
        values = parse_values(parts[2]) if len(parts) > 2 else (0, 1)
        return cls(regs, None if bits is None else tuple(bits), values)

    @property
    def label(self) -> str:
        from sysarray.faults_commands import group_label

        return group_label(self.registers, self.bits, self.values)

    def settings(self) -> dict:
        """Keyword arguments of the :mod:`sysarray.faultgen` generators."""
        return {"registers": self.registers, "bits": None if self.bits is None else list(self.bits), "values": self.values}

    def check(self, psum_bits: int) -> None:
        """Raise a ValueError naming the problem unless every register can hold the bits."""
        from sysarray.faultgen import make_sites

        make_sites(psum_bits=psum_bits, where=f"the fault group {self.label}", **self.settings())


# ====================================================================== populations
def _check_seed(seed: object, where: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"The 'seed' of {where} must be a non-negative integer. Got {seed!r} instead.")
    return int(seed)


def _check_count(n: object, name: str, where: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"The '{name}' of {where} must be a positive integer. Got {n!r} instead.")
    return int(n)


def _check_rates(rates: Iterable[object]) -> tuple[float, ...]:
    out = []
    for r in rates:
        if isinstance(r, bool) or not isinstance(r, (int, float, np.integer, np.floating)) or not (
            math.isfinite(r) and 0.0 <= r <= 1.0
        ):
            raise ValueError(f"Fault rates must be numbers within [0, 1]. Got {r!r} instead.")
        out.append(float(r))
    if not out:
        raise ValueError("A campaign needs at least one fault rate.")
    if len(set(out)) != len(out):
        raise ValueError(f"Fault rates must be distinct. Got {out} instead.")
    return tuple(out)


class RateGrid:
    """Fault groups x rates x replicas: ``len(groups) * len(rates) * chips_per_rate`` chips.

    Chip ``i = (g * len(rates) + r) * chips_per_rate + j`` is replica ``j`` of rate ``rates[r]``
    in group ``groups[g]``, drawn by ``faultgen.GENERATORS[method]`` with the seed
    ``SeedSequence(seed).spawn(chips_per_rate)[j]`` (common random numbers: replica ``j`` has the
    same seed at every rate and group, and equals chip ``j`` of ``sysarray faults generate`` with
    the same seed, rate and group).
    """

    kind = "grid"
    drawn_by_workers = True  # a chip's map depends only on the grid and its index
    columns = ("chip", "group", "rate", "replica", "seed")
    aggregate_keys = ("group", "rate")

    def __init__(self, rates: Iterable[float], chips_per_rate: int, seed: int, groups: Sequence[FaultGroup],
                 method: str = "pe_rate", exact: bool = True, faults_per_pe: int = 1, n_clusters: int = 3) -> None:
        from sysarray.faultgen import GENERATORS

        self.rates = _check_rates(rates)
        self.chips_per_rate = _check_count(chips_per_rate, "chips_per_rate", "a campaign")
        self.seed = _check_seed(seed, "a campaign")
        self.groups = tuple(groups)
        if not self.groups or not all(isinstance(g, FaultGroup) for g in self.groups):
            raise ValueError("A campaign needs at least one FaultGroup.")
        if len({g.label for g in self.groups}) != len(self.groups):
            raise ValueError(f"Fault groups must be distinct. Got {[g.label for g in self.groups]} instead.")
        if method not in GENERATORS:
            raise ValueError(f"The fault model must be one of {', '.join(GENERATORS)}. Got {method!r} instead.")
        self.method = method
        self.exact = bool(exact)
        self.faults_per_pe = _check_count(faults_per_pe, "faults_per_pe", "a campaign")
        self.n_clusters = _check_count(n_clusters, "n_clusters", "a campaign")

    @property
    def size(self) -> int:
        return len(self.groups) * len(self.rates) * self.chips_per_rate

    def describe(self) -> dict:
        d = {"method": self.method, "rates": list(self.rates), "chips_per_rate": self.chips_per_rate, "seed": self.seed,
             "groups": [g.label for g in self.groups], "exact": self.exact}
        if self.method != "ber":
            d["faults_per_pe"] = self.faults_per_pe
        if self.method == "clustered":
            d["n_clusters"] = self.n_clusters
        return d

    def check(self, cfg: Any) -> None:
        for g in self.groups:
            g.check(cfg.psum_bits)
        # draw the densest chip of each group once: a rate the allowed sites cannot hold fails now
        for g in self.groups:
            self._draw(cfg, g, max(self.rates), 0)

    def _settings(self, g: FaultGroup) -> dict:
        s: dict = {**g.settings(), "exact": self.exact}
        if self.method != "ber":
            s["faults_per_pe"] = self.faults_per_pe
        if self.method == "clustered":
            s["n_clusters"] = self.n_clusters
        return s

    def _draw(self, cfg: Any, g: FaultGroup, rate: float, j: int):
        from sysarray.faultgen import GENERATORS

        seq = np.random.SeedSequence(self.seed, spawn_key=(j,))  # == SeedSequence(seed).spawn(n)[j]
        return GENERATORS[self.method](cfg, rate, seed=seq, **self._settings(g))

    def chip(self, i: int, cfg: Any) -> tuple[Any, dict]:
        j = i % self.chips_per_rate
        r = (i // self.chips_per_rate) % len(self.rates)
        g = self.groups[i // (self.chips_per_rate * len(self.rates))]
        fm = self._draw(cfg, g, self.rates[r], j)
        return fm, {"chip": i, "group": g.label, "rate": self.rates[r], "replica": j, "seed": self.seed}

    def chip_meta(self, i: int, cfg: Any) -> dict:
        """The ``meta`` of chip ``i`` as a fault-map file (what ``sysarray faults generate`` writes)."""
        _, desc = self.chip(i, cfg)
        g = self.groups[i // (self.chips_per_rate * len(self.rates))]
        return {"generator": self.method, "seed": self.seed, "chip": desc["replica"], "n_chips": self.chips_per_rate,
                "rows": cfg.rows, "cols": cfg.cols, "psum_bits": cfg.psum_bits, "group": g.label,
                "rate": desc["rate"], "settings": self._settings(g)}


class FaultFiles:
    """The fault-map files (``*.npz``) of a directory, sorted by name: chip ``i`` is file ``i``.

    ``rate`` is the generator's rate from the file's meta (``sysarray faults generate`` writes
    it), else the map's PE fault rate; ``group`` is the meta's group label, else ``"files"``.
    """

    kind = "files"
    drawn_by_workers = False  # read where the campaign runs (Dask workers may not see the directory)
    columns = ("chip", "file", "group", "rate")
    aggregate_keys = ("group", "rate")

    def __init__(self, directory: str) -> None:
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ValueError(f"The fault-map directory '{directory}' does not exist or is not a directory.")
        self.directory = directory
        self.files = sorted(n for n in os.listdir(directory) if n.endswith(".npz"))
        if not self.files:
            raise ValueError(f"The fault-map directory '{directory}' holds no .npz fault-map files "
                             "(write some with `sysarray faults generate`).")
        self._hashes = [file_sha256(os.path.join(directory, n)) for n in self.files]

    @property
    def size(self) -> int:
        return len(self.files)

    def describe(self) -> dict:
        return {"files": [{"name": n, "sha256": h} for n, h in zip(self.files, self._hashes)]}

    def check(self, cfg: Any) -> None:
        for i in range(self.size):
            self.chip(i, cfg)

    def chip(self, i: int, cfg: Any) -> tuple[Any, dict]:
        from sysarray.faultio import load_with_meta

        fm, meta = load_with_meta(os.path.join(self.directory, self.files[i]), rows=cfg.rows, cols=cfg.cols,
                                  psum_bits=cfg.psum_bits)
        rate = meta.get("rate")
        if not isinstance(rate, (int, float)) or isinstance(rate, bool):
            settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
            rate = settings.get("pe_rate", settings.get("ber", fm.pe_rate))
        group = meta.get("group") if isinstance(meta.get("group"), str) else "files"
        return fm, {"chip": i, "file": self.files[i], "group": group, "rate": float(rate)}


class SingleFaults:
    """One stuck bit per chip: chip ``i`` has the fault ``records[i]`` = (row, col, register code, bit, value).

    Build with :meth:`exhaustive` (every PE) or :meth:`sampled` (``budget`` PEs per register/bit/
    value, drawn without replacement with a seed), or from any list of faults (importance sampling).
    """

    kind = "single"
    drawn_by_workers = True
    columns = ("chip", "group", "pe_row", "pe_col", "register", "bit", "value")
    aggregate_keys = ("group",)

    def __init__(self, rows: int, cols: int, records: np.ndarray, spec: dict) -> None:
        rec = np.asarray(records, dtype=np.int64).reshape(-1, 5)
        if len(rec) == 0:
            raise ValueError("A single-fault population needs at least one fault.")
        self.rows, self.cols = int(rows), int(cols)
        self.records = rec
        self.spec = dict(spec)

    @staticmethod
    def _sites(registers: Sequence[str], bits: Sequence[int] | None, values: Sequence[int], psum_bits: int) -> list:
        from sysarray.faults import as_register

        sites = []
        for name in registers:
            reg = as_register(name, "a single-fault sweep")
            width = psum_bits if reg.value == "psum" else 8
            chosen = range(width) if bits is None else bits
            for b in chosen:
                if not 0 <= int(b) < width:
                    raise ValueError(f"The bits of a single-fault sweep must be within 0..{width - 1} for register "
                                     f"'{reg.value}'. Got {b} instead.")
            for b in chosen:
                for v in values:
                    if v not in (0, 1):
                        raise ValueError(f"Stuck values must be 0 or 1. Got {v!r} instead.")
                    sites.append((reg.code, int(b), int(v)))
        if not sites:
            raise ValueError("A single-fault sweep needs at least one register, bit and value.")
        return sites

    @classmethod
    def exhaustive(cls, cfg: Any, registers: Sequence[str], bits: Sequence[int] | None, values: Sequence[int]) -> "SingleFaults":
        """Every PE for every (register, bit, value), PE-major inside each (register, bit, value)."""
        sites = cls._sites(registers, bits, values, cfg.psum_bits)
        pes = np.arange(cfg.rows * cfg.cols)
        rec = [(p // cfg.cols, p % cfg.cols, g, b, v) for g, b, v in sites for p in pes]
        spec = {"pes": "all", "registers": list(registers), "bits": None if bits is None else [int(b) for b in bits],
                "values": list(values)}
        return cls(cfg.rows, cfg.cols, np.array(rec), spec)

    @classmethod
    def sampled(cls, cfg: Any, registers: Sequence[str], bits: Sequence[int] | None, values: Sequence[int],
                budget: int, seed: int) -> "SingleFaults":
        """``budget`` distinct PEs per (register, bit, value), uniformly without replacement.

        The PEs of site ``s`` (in the order registers, bits, values) are drawn with
        ``SeedSequence(seed).spawn(...)[s]``, so a site's PEs do not depend on the other sites.
        """
        budget = _check_count(budget, "budget", "a sampled sweep")
        seed = _check_seed(seed, "a sampled sweep")
        sites = cls._sites(registers, bits, values, cfg.psum_bits)
        n = cfg.rows * cfg.cols
        rec = []
        for s, (g, b, v) in enumerate(sites):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(s,)))
            pes = np.sort(rng.choice(n, size=min(budget, n), replace=False))
            rec += [(p // cfg.cols, p % cfg.cols, g, b, v) for p in pes]
        spec = {"pes": {"budget": budget, "seed": seed}, "registers": list(registers),
                "bits": None if bits is None else [int(b) for b in bits], "values": list(values)}
        return cls(cfg.rows, cfg.cols, np.array(rec), spec)

    @property
    def size(self) -> int:
        return len(self.records)

    def describe(self) -> dict:
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(self.records, dtype="<i8").tobytes()).hexdigest()
        return {**self.spec, "faults": self.size, "faults_sha256": digest}

    def check(self, cfg: Any) -> None:
        if (cfg.rows, cfg.cols) != (self.rows, self.cols):
            raise ValueError(f"The single faults are for a {self.rows}x{self.cols} array but the array is {cfg.rows}x{cfg.cols}.")
        psum = self.records[self.records[:, 2] == 2]
        if len(psum) and psum[:, 3].max() >= cfg.psum_bits:
            raise ValueError(f"A psum fault on bit {psum[:, 3].max()} lies outside the {cfg.psum_bits}-bit psum register.")

    def chip(self, i: int, cfg: Any) -> tuple[Any, dict]:
        from sysarray.faults import REGISTER_ORDER, FaultMap

        r, c, g, b, v = (int(x) for x in self.records[i])
        fm = FaultMap.from_records(self.rows, self.cols, self.records[i:i + 1])
        reg = REGISTER_ORDER[g].value
        return fm, {"chip": i, "group": f"{reg}:{b}:{v}", "pe_row": r, "pe_col": c, "register": reg, "bit": b, "value": v}


Population = RateGrid | FaultFiles | SingleFaults


# ====================================================================== tasks and the evaluator
@dataclass
class Evaluator:
    """Runs one chip: everything a worker needs, shipped once per worker.

    ``clean_predictions`` (N,) int64 and ``clean_correct`` come from one fault-free run done by
    :meth:`build`; every chip then costs one faulty inference. On the fast engine that run is a
    :meth:`~accel_models.program.Program.trace`, whose kept values (``trace``, at most
    ``TRACE_BYTES``) the chips' runs reuse up to the first layer each chip changes.
    """

    program: Any
    images: Any
    labels: Any
    cfg: Any
    engine: str
    critical_drop: float
    batch_size: int | None
    clean_predictions: Any = None
    clean_correct: int = 0
    trace: Any = field(default=None, repr=False)

    @classmethod
    def build(cls, program: Any, images: Any, labels: Any, cfg: Any, engine: str = "fast",
              critical_drop: float = DEFAULT_CRITICAL_DROP, batch_size: int | None = None) -> "Evaluator":
        ev = cls(program, images, labels, cfg, engine, float(critical_drop), None if batch_size is None else int(batch_size))
        if engine == "fast" and hasattr(program, "trace") and images.device.type == "cpu":
            ev.trace = program.trace(images, cfg, batch_size=batch_size, max_bytes=TRACE_BYTES)
            clean = ev.trace.result
        else:
            clean = program.run(images, cfg, faults=None, engine=engine, batch_size=batch_size, count_changes=False)
        ev.clean_predictions = clean.predictions.cpu()
        ev.clean_correct = int((ev.clean_predictions == labels.cpu()).sum())
        return ev

    @property
    def images_count(self) -> int:
        return int(len(self.labels))

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.images_count

    def outcome(self, fm: Any) -> dict:
        """Accuracy, drop against the fault-free chip, SDC rate and criticality of chip ``fm``."""
        if fm.is_empty:
            pred = self.clean_predictions
        else:
            pred = self.program.run(self.images, self.cfg, faults=fm, engine=self.engine, batch_size=self.batch_size,
                                    count_changes=False, **({} if self.trace is None else {"reference": self.trace})
                                    ).predictions.cpu()
        n = self.images_count
        correct = int((pred == self.labels.cpu()).sum())
        drop = (self.clean_correct - correct) / n
        return {"faulty_pes": fm.n_faulty_pes, "stuck_bits": len(fm),
                "registers": "+".join(r.value for r in fm.registers()) or "none",
                "accuracy": correct / n, "drop": drop, "sdc_rate": int((pred != self.clean_predictions).sum()) / n,
                "critical": int(drop > self.critical_drop)}


def _program_digest(program: Any, images: Any, labels: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for op in program.gemms:
        for t in (op.weight, op.bias, op.m0, op.shift):
            h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
        h.update(repr((op.name, op.lo, op.hi, op.in_qp, op.out_qp)).encode())
    h.update(np.ascontiguousarray(images.detach().cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(labels.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


@dataclass
class CheckpointTask:
    """A checkpoint judged on the first ``limit`` test images of its dataset (or ``dataset``)."""

    checkpoint: str
    dataset: str | None = None
    data_dir: str | None = None
    limit: int | None = None
    _prepared: Any = field(default=None, repr=False)

    def describe(self) -> dict:
        from accel_models.checkpoint import read_checkpoint

        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"The image limit must be a positive integer. Got {self.limit!r} instead.")
        name = self.dataset or read_checkpoint(self.checkpoint)["dataset"]
        return {"model_sha256": file_sha256(self.checkpoint), "dataset": name, "split": "test", "limit": self.limit}

    def info(self) -> dict:
        return {"model": os.path.abspath(self.checkpoint), "data_dir": self.data_dir}

    def load(self) -> tuple[Any, Any, Any]:
        from accel_models.evaluation import prepare

        if self._prepared is None:
            self._prepared = prepare(self.checkpoint, self.dataset, self.data_dir, self.limit)
        t = self._prepared
        return t.program, t.images, t.labels

    def calibration(self, count: int) -> tuple[Any, Any]:
        """The first ``count`` training images and labels (sensitivity analysis; never the test split)."""
        self.load()
        data = self._prepared.dataset
        return data.train_x[:count], data.train_y[:count]


@dataclass
class ProgramTask:
    """A lowered program and its images/labels (benchmarks, scripts); hashed by content."""

    program: Any
    images: Any
    labels: Any
    name: str = "program"

    def describe(self) -> dict:
        return {"program": self.name, "sha256": _program_digest(self.program, self.images, self.labels)}

    def info(self) -> dict:
        return {}

    def load(self) -> tuple[Any, Any, Any]:
        return self.program, self.images, self.labels

    def calibration(self, count: int) -> tuple[Any, Any]:
        return self.images[:count], self.labels[:count]


# ====================================================================== workers
_WORKER_STATE: tuple[Evaluator, Population | None] | None = None  # set in each pool worker by _init_worker
_THREADS_LIMITED = False


def _limit_threads() -> None:
    """One thread per worker process: chips run in parallel, not GEMMs (parallel efficiency)."""
    global _THREADS_LIMITED
    if _THREADS_LIMITED:
        return
    import torch

    torch.set_num_threads(1)
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    _THREADS_LIMITED = True


@contextlib.contextmanager
def one_thread():
    """One torch and one numba thread in this process for the duration (restored after), as in
    every campaign worker. While the workers run, this process's own chips and idle thread pools
    would otherwise compete with them for the cores (with two threads here, its chips took 2-15x
    longer and slowed the workers)."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def _init_worker(blob: bytes) -> None:
    global _WORKER_STATE
    _limit_threads()
    _WORKER_STATE = pickle.loads(blob)


# (chip id, (FaultMap, descriptor columns)), or (chip id, None): the evaluating process draws the
# chip from the population itself (populations with ``drawn_by_workers``). Drawing a map costs
# about 0.5 ms, which the parent of a process pool would otherwise spend on every chip, on cores
# its workers need.
Job = tuple[int, Any]


def evaluate_jobs(evaluator: Evaluator, population: Population | None, jobs: Sequence[Job],
                  each: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """The journal records of some chips: descriptor + outcome + ``seconds`` (wall time, the
    map's drawing included). ``each``: called with each chip's record as it finishes (then none
    are returned).

    The maps of all the jobs are drawn first, then the chips evaluated: drawing a map is some
    twenty small numpy calls, which right after a chip's evaluation (caches full of its data)
    took LeNet-5 ~560 us a map against ~300 us in a row of eight."""
    maps = []
    for chip, drawn in jobs:
        t0 = time.perf_counter()
        maps.append((drawn if drawn is not None else population.chip(chip, evaluator.cfg), time.perf_counter() - t0))
    out = []
    for (fm, desc), draw_s in maps:
        t0 = time.perf_counter()
        rec = {**desc, **evaluator.outcome(fm)}
        rec["seconds"] = round(draw_s + time.perf_counter() - t0, 6)
        if each is not None:
            each([rec])
        else:
            out.append(rec)
    return out


def _pool_task(jobs: Sequence[Job]) -> list[dict]:
    assert _WORKER_STATE is not None  # set by _init_worker
    return evaluate_jobs(*_WORKER_STATE, jobs)


# numba's workqueue threading layer aborts when two threads launch parallel kernels at once, so the
# threads of one Dask worker process take turns (workers with one thread each never wait).
_DASK_LOCK = threading.Lock()


def _dask_task(shipped: tuple[Evaluator, Population | None], jobs: Sequence[Job]) -> list[dict]:
    with _DASK_LOCK:
        _limit_threads()
        return evaluate_jobs(*shipped, jobs)


def local_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Workers are forked from a fork server that has imported torch and the engines and run a tiny
# faulty network once (mitigation.campaign_warmup, single-threaded): each worker starts warm in a
# fraction of a second and never inherits the parent's thread pools (unlike 'fork'). 'spawn'
# where there is no fork server.
MP_CONTEXT = "forkserver"
_PRELOAD = ["mitigation.campaign_warmup", "mitigation.campaign"]


def _mp_context():
    import multiprocessing as mp

    if MP_CONTEXT not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context(MP_CONTEXT)
    if MP_CONTEXT == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def start_workers_early(wait: bool = False) -> None:
    """Start the fork server now (it imports and warms up while this process loads the model).
    ``wait``: return only once it has finished (one process forked from it has run), so that
    campaigns started later fork their workers at once."""
    ctx = _mp_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
    if wait:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            pool.submit(os.getpid).result()


# Work per task a campaign's workers get by default: a task's round trip through the pool costs
# the parent, on the cores the workers run on, about a millisecond, which with one LeNet-5 chip
# (~8 ms) per task cut the 2-worker efficiency to 0.65-0.8 (0.93-1.0 with four chips a task).
TASK_SECONDS = 0.05
# A chip costs about this many fault-free runs (the faulty engine's usual cost).
CHIP_PER_CLEAN_RUN = 1.5
# Pool tasks at least this long (estimated) are submitted one per worker at a time: a worker with a
# second one queued at the end of a ResNet-20 campaign (~3 s chips) left this process idle for it.
LONG_TASK_S = 0.25


def auto_chunk_size(clean_s: float, chips: int, workers: int) -> int:
    """Chips per task: about ``TASK_SECONDS`` of work, a chip taken as ``CHIP_PER_CLEAN_RUN``
    fault-free runs of ``clean_s`` seconds, and at least four tasks per worker, so
    that the last tasks still balance."""
    per_chip = max(1e-4, CHIP_PER_CLEAN_RUN * clean_s)
    return max(1, min(math.ceil(TASK_SECONDS / per_chip), chips // (4 * max(1, workers))))


def _chunks(jobs: Iterator[Job], size: int) -> Iterator[list[Job]]:
    chunk: list[Job] = []
    for job in jobs:
        chunk.append(job)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_serial(evaluator: Evaluator, population: Population, jobs: Iterator[Job],
                sink: Callable[[list[dict]], None], chunk_size: int) -> None:
    """Chips in this process, ``chunk_size`` maps drawn at a time, each chip written as it finishes."""
    for chunk in _chunks(jobs, chunk_size):
        evaluate_jobs(evaluator, population, chunk, each=sink)


def _run_pool(evaluator: Evaluator, population: Population, jobs: Iterator[Job], sink: Callable[[list[dict]], None],
              workers: int, chunk_size: int, total: int, chip_s: float) -> None:
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
    """
    from concurrent.futures import ProcessPoolExecutor

    # The evaluator goes to the workers as plain pickle bytes made here, before this process starts
    # evaluating chips: multiprocessing's own pickler would move the program's tensors into shared
    # memory (torch's reductions) from the thread that starts the workers, while this thread reads
    # them, and a chip evaluated meanwhile could see half-moved weights (seen as a flaky result).
    # Its tensors travel as numpy arrays (campaign_spawn: ~6x faster both ways).
    blob = worker_blob((evaluator, _shipped_population(population)))
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
                # job waits on the lock, and starting a worker while holding it cost LeNet-5 ~50 ms.
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
    except BaseException:
        with lock:
            stopped[0] = True
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _shipped_population(population: Population) -> Population | None:
    """What the workers get to draw chips from (None: every job carries its map)."""
    return population if population.drawn_by_workers else None


def _run_dask(evaluator: Evaluator, population: Population, jobs: Iterator[Job], sink: Callable[[list[dict]], None],
              scheduler: Any, workers: int, chunk_size: int) -> None:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if isinstance(scheduler, str) and scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    elif isinstance(scheduler, str):
        client = Client(scheduler, timeout="30s")
    else:  # a Cluster object (has scheduler_address) or a Client
        client = scheduler if hasattr(scheduler, "submit") else Client(scheduler)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        ev = client.scatter((evaluator, _shipped_population(population)), broadcast=True)
        futures = as_completed()
        window = 0
        for chunk in _chunks(jobs, chunk_size):
            if window >= 3 * n_workers:
                sink(next(futures).result())
                window -= 1
            futures.add(client.submit(_dask_task, ev, chunk, pure=False))
            window += 1
        for f in futures:
            sink(f.result())
    finally:
        if client is not scheduler:
            client.close()
        if cluster is not None:
            cluster.close()


# ====================================================================== the campaign
@dataclass
class CampaignRun:
    """What :func:`run_campaign` did."""

    directory: str
    chips: int
    already_done: int
    evaluated: int
    clean_accuracy: float | None
    seconds: float
    setup_s: float = 0.0  # until the first chip was handed out (loading, the fault-free run)
    first_result_s: float = 0.0  # from then until the first chip finished (worker start-up included)

    @property
    def results(self) -> str:
        return os.path.join(self.directory, RESULTS)


def campaign_config(task: Any, population: Population, cfg: Any, engine: str, critical_drop: float,
                    confidence: float) -> dict:
    """The configuration whose hash a campaign directory keeps (everything the results depend on)."""
    import sysarray

    if isinstance(critical_drop, bool) or not isinstance(critical_drop, (int, float)) or not 0 <= critical_drop <= 1:
        raise ValueError(f"The critical drop threshold must be within [0, 1]. Got {critical_drop!r} instead.")
    if engine not in ("fast", "cycle"):
        raise ValueError(f"The engine must be fast or cycle. Got {engine!r} instead.")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"The confidence level must be within (0, 1), e.g. 0.95. Got {confidence!r} instead.")
    if not isinstance(cfg, sysarray.ArrayConfig):
        raise TypeError(f"The chip of a campaign must be an ArrayConfig. Got {type(cfg).__name__} instead.")
    return {"task": task.describe(), "array": cfg.to_dict(), "engine": engine, "critical_drop": float(critical_drop),
            "confidence": float(confidence), "population": {"kind": population.kind, **population.describe()}}


def run_campaign(task: CheckpointTask | ProgramTask, population: Population, out: str, cfg: Any, *,
                 engine: str = "fast", critical_drop: float = DEFAULT_CRITICAL_DROP, confidence: float = 0.95,
                 workers: int | None = None, scheduler: Any = None, progress: bool = False, batch_size: int | None = None,
                 chunk_size: int | None = None) -> CampaignRun:
    """Evaluate every chip of ``population`` not yet in ``out`` and write its result files.

    ``workers``: processes on this machine (default: all usable cores; 1 runs in this process);
    ``scheduler``: a Dask scheduler address, ``"local"`` (a LocalCluster of ``workers`` processes),
    a Cluster or a Client. Results do not depend on either. Rerunning with the same arguments
    resumes (finished chips are skipped); a different configuration in ``out`` is a ValueError.
    ``chunk_size``: chips per task sent to a worker (default: enough for about
    ``TASK_SECONDS`` of work each, from the fault-free run's time; see :func:`auto_chunk_size`).
    """
    import sysarray

    t_start = time.perf_counter()
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"The number of workers must be a positive integer. Got {workers!r} instead.")
    if chunk_size is not None:
        chunk_size = _check_count(chunk_size, "chunk_size", "run_campaign")
    n_workers = workers or local_cores()
    population.check(cfg)
    config = campaign_config(task, population, cfg, engine, critical_drop, confidence)
    columns = tuple(population.columns) + OUTCOME_COLUMNS
    info = {**task.info(), "package_version": sysarray.__version__}
    store = CampaignStore.open(out, population.kind, config, columns, population.size, info)
    try:
        done_before = len(store.records)
        todo = [i for i in range(population.size) if i not in store.records]
        evaluated = 0
        setup_s = first_result_s = 0.0
        clean = store.manifest.get("info", {}).get("clean_accuracy")
        if todo:
            use_pool = scheduler is None and n_workers > 1 and len(todo) > 1
            if use_pool:
                start_workers_early()
            program, images, labels = task.load()
            t_clean = time.perf_counter()
            evaluator = Evaluator.build(program, images, labels, cfg, engine, critical_drop, batch_size)
            clean_s = time.perf_counter() - t_clean
            if chunk_size is None:
                chunk_size = auto_chunk_size(clean_s, len(todo), n_workers)
            clean = evaluator.clean_accuracy
            store.update_info(clean_accuracy=clean, clean_correct=evaluator.clean_correct, images=evaluator.images_count)
            bar = _progress_bar(population.size, done_before, progress)
            last_write = [time.monotonic()]
            setup_s = time.perf_counter() - t_start

            def sink(records: list[dict]) -> None:
                nonlocal evaluated, first_result_s
                if not records:
                    return
                if not evaluated:
                    first_result_s = time.perf_counter() - t_start - setup_s
                store.append(records)
                evaluated += len(records)
                bar.update(len(records))
                if time.monotonic() - last_write[0] > REWRITE_RESULTS_EVERY_S:
                    store.write_results()
                    last_write[0] = time.monotonic()

            jobs = ((i, None if population.drawn_by_workers else population.chip(i, cfg)) for i in todo)
            try:
                if scheduler is not None:
                    _run_dask(evaluator, population, jobs, sink, scheduler, n_workers, chunk_size)
                elif use_pool:
                    with one_thread():
                        _run_pool(evaluator, population, jobs, sink, min(n_workers, len(todo)), chunk_size, len(todo),
                                  CHIP_PER_CLEAN_RUN * clean_s)
                else:
                    _run_serial(evaluator, population, jobs, sink, chunk_size)
            finally:
                bar.close()
                if evaluated:
                    store.write_results()
        if not evaluated and not store.results_current():  # e.g. killed before the final rebuild
            store.write_results()
        if evaluated or not os.path.exists(store.path(AGGREGATES)):
            write_aggregates(store, population.aggregate_keys, confidence)
        return CampaignRun(store.directory, population.size, done_before, evaluated, clean,
                           time.perf_counter() - t_start, setup_s, first_result_s)
    finally:
        store.close()


def write_aggregates(store: CampaignStore, keys: Sequence[str], confidence: float) -> str:
    """aggregates.csv from the store's rows (bootstrap seeded with the campaign's config hash)."""
    from mitigation.campaign_stats import aggregate

    seed = int(store.manifest["config_hash"][:8], 16)
    rows = aggregate(store.rows(), confidence=confidence, seed=seed, keys=tuple(keys))
    cols = list(keys) + [k for k in (rows[0] if rows else {}) if k not in keys]
    path = store.path(AGGREGATES)
    write_text(path, csv_text(cols, rows))
    return path


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="chip", desc="campaign", disable=not enabled, dynamic_ncols=True,
                smoothing=0.1)


__all__ = ["CampaignRun", "CheckpointTask", "DEFAULT_CRITICAL_DROP", "Evaluator", "FaultFiles", "FaultGroup",
           "ProgramTask", "RateGrid", "SingleFaults", "campaign_config", "evaluate_jobs", "local_cores",
           "run_campaign", "write_aggregates"]
