"""Fault campaigns (docs/design.md §6.1): one model on a population of faulty chips, one result row per chip.

A campaign is three inputs kept apart: the *task* (a checkpoint and its test images, or a lowered
program and images: :mod:`mitigation.campaign.evaluator`), the *chip* (an ArrayConfig and an
engine) and the *population* of fault maps (:mod:`mitigation.campaign.populations`).
:func:`run_campaign` evaluates every chip of the population not yet in the output directory's
journal (see :mod:`mitigation.campaign.store`), in this process, in a local process pool or on a
Dask distributed cluster, and writes ``results.csv`` and ``aggregates.csv``.

Determinism: chip ``i``'s fault map depends only on the population and ``i`` (replica ``j`` of a
grid uses ``SeedSequence(seed).spawn(chips_per_rate)[j]`` at every rate and group, the seeds of
:func:`sysarray.faultgen.population`); the fault-free run is done once, in the parent, and shipped
to the workers; every result is computed from integer counts; rows are written sorted by chip id
with floats in their shortest round-trip form. Nothing in ``results.csv`` depends on the workers.

Interrupts: SIGINT, and SIGTERM while :func:`run_campaign` runs in the main thread of a process
that left SIGTERM at its default, stop the workers (and the fork server), write ``results.csv``
from every chip finished so far and raise :class:`sysarray.lifecycle.Interrupted` (a
KeyboardInterrupt) saying how far it got; rerunning the same call resumes.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

from mitigation.campaign.dask_runner import run_dask
from mitigation.campaign.evaluator import DEFAULT_CRITICAL_DROP, OUTCOME_COLUMNS, CheckpointTask, Evaluator, ProgramTask
from mitigation.campaign.jobs import CHIP_PER_CLEAN_RUN, auto_chunk_size, local_cores, run_serial
from mitigation.campaign.pool import run_pool, start_workers_early
from mitigation.campaign.populations import Population
from mitigation.campaign.stats import aggregate
from mitigation.campaign.store import AGGREGATES, RESULTS, CampaignStore, csv_text
from sysarray.atomic import write_text
from sysarray.lifecycle import Interrupted, interrupt_of, sigterm_as_interrupt
from sysarray.runtime import threads
from sysarray.validation import check_choice, check_fraction, check_instance, check_output_path, check_positive_int

REWRITE_RESULTS_EVERY_S = 10.0


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

    where = "run_campaign"
    critical_drop = check_fraction(critical_drop, "critical_drop", where)
    check_choice(engine, "engine", where, ("fast", "cycle"))
    confidence = check_fraction(confidence, "confidence", where, open_ends=True)
    check_instance(cfg, sysarray.ArrayConfig, "cfg", where)
    return {"task": task.describe(), "array": cfg.to_dict(), "engine": engine, "critical_drop": critical_drop,
            "confidence": confidence, "population": {"kind": population.kind, **population.describe()}}


@sigterm_as_interrupt()
def run_campaign(task: CheckpointTask | ProgramTask, population: Population, out: str, cfg: Any, *,
                 engine: str = "fast", critical_drop: float = DEFAULT_CRITICAL_DROP, confidence: float = 0.95,
                 workers: int | None = None, scheduler: Any = None, progress: bool = False, batch_size: int | None = None,
                 chunk_size: int | None = None, device: Any = None) -> CampaignRun:
    """Evaluate every chip of ``population`` not yet in ``out`` and write its result files.

    ``workers``: processes on this machine (default: all usable cores; 1 runs in this process);
    ``scheduler``: a Dask scheduler address, ``"local"`` (a LocalCluster of ``workers`` processes),
    a Cluster or a Client. Results do not depend on either. Rerunning with the same arguments
    resumes (finished chips are skipped); a different configuration in ``out`` is a ValueError.
    Interrupted (SIGINT; SIGTERM too, see the module docstring), it keeps every finished chip and
    raises :class:`sysarray.lifecycle.Interrupted`, whose text gives the chips done out of all.
    A task may define ``outcome_columns`` and ``build_evaluator(program, images, labels, cfg,
    engine, critical_drop, batch_size)`` (an object with ``cfg`` and ``outcome(fault_map) -> dict``
    of those columns, e.g. the yield flow's); the default is :class:`Evaluator` and
    ``OUTCOME_COLUMNS``. ``aggregates.csv`` needs ``accuracy``, ``drop``, ``sdc_rate`` and ``critical``.
    ``chunk_size``: chips per task sent to a worker (default: enough for about
    ``jobs.TASK_SECONDS`` of work each, from the fault-free run's time; see :func:`auto_chunk_size`).
    ``device``: where the fast engine runs the chips (None or "cpu": this machine's CPUs; "cuda"
    or "cuda:i": that GPU, every chip in this process, so neither ``workers`` above 1 nor a
    ``scheduler``). Results do not depend on it, so a campaign started on one resumes on the other.
    """
    import sysarray

    t_start = time.perf_counter()
    workers = check_positive_int(workers, "workers", "run_campaign", none_ok=True)
    chunk_size = check_positive_int(chunk_size, "chunk_size", "run_campaign", none_ok=True)
    device = campaign_device(device, engine, workers, scheduler, task)
    n_workers = 1 if device is not None else workers or local_cores()
    population.check(cfg)
    config = campaign_config(task, population, cfg, engine, critical_drop, confidence)
    columns = tuple(population.columns) + tuple(getattr(task, "outcome_columns", OUTCOME_COLUMNS))
    info = {**task.info(), "package_version": sysarray.__version__}
    check_output_path(out, "out", "run_campaign", kind="dir")
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
            build = getattr(task, "build_evaluator", None)  # a task may bring its own per-chip evaluator
            evaluator = (build(program, images, labels, cfg, engine, critical_drop, batch_size) if build is not None
                         else Evaluator.build(program, images, labels, cfg, engine, critical_drop, batch_size,
                                              device=device))
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
                    run_dask(evaluator, population, jobs, sink, scheduler, n_workers, chunk_size)
                elif use_pool:
                    # this process's own chips and idle thread pools would otherwise take the workers' cores
                    with threads(1):
                        run_pool(evaluator, population, jobs, sink, min(n_workers, len(todo)), chunk_size, len(todo),
                                 CHIP_PER_CLEAN_RUN * clean_s)
                else:
                    run_serial(evaluator, population, jobs, sink, chunk_size)
            finally:
                bar.close()
                stopped = sys.exc_info()[0] is not None
                if stopped:  # an interrupt may have come between a journal write and the records' update
                    store.reconcile()
                if evaluated or stopped:
                    store.write_results()
        if not evaluated and not store.results_current():  # e.g. killed before the final rebuild
            store.write_results()
        if evaluated or not os.path.exists(store.path(AGGREGATES)):
            write_aggregates(store, population.aggregate_keys, confidence)
        return CampaignRun(store.directory, population.size, done_before, evaluated, clean,
                           time.perf_counter() - t_start, setup_s, first_result_s)
    except (KeyboardInterrupt, SystemError) as raised:
        exc = interrupt_of(raised)
        if exc is None:
            raise
        if isinstance(exc, Interrupted):
            raise exc from None
        raise Interrupted(f"interrupted at {len(store.records)}/{population.size} chips; "
                          "rerun the same command to resume") from exc
    finally:
        store.close()


def campaign_device(device: Any, engine: str, workers: int | None, scheduler: Any, task: Any) -> Any:
    """``device`` checked for :func:`run_campaign`: None for the CPU, else the CUDA torch.device;
    a ValueError where the rest of the campaign cannot run there."""
    import torch

    from sysarray.validation import check_device

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None  # check_device says what is wrong with it
    if kind == "cuda":
        if scheduler is not None or (workers or 1) > 1:
            given = f"scheduler={scheduler!r}" if scheduler is not None else f"workers={workers}"
            raise ValueError(f"A campaign on {device} runs every chip in this process on the GPU, so it takes neither "
                             f"worker processes nor a Dask scheduler; leave out {given}.")
        if engine != "fast":
            raise ValueError(f"The {engine} engine runs on the CPU; a campaign on {device} needs the fast engine.")
        if getattr(task, "build_evaluator", None) is not None:
            raise ValueError(f"This task brings its own per-chip evaluator, which runs on the CPU; "
                             f"leave out device={device!r}.")
    return check_device(device, "device", "run_campaign", cpu_as_none=True)


def write_aggregates(store: CampaignStore, keys: Sequence[str], confidence: float) -> str:
    """aggregates.csv from the store's rows (bootstrap seeded with the campaign's config hash)."""
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


__all__ = ["CampaignRun", "REWRITE_RESULTS_EVERY_S", "campaign_config", "campaign_device", "run_campaign",
           "write_aggregates"]
