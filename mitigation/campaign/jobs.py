"""A campaign's unit of work, a job (one chip), how jobs are batched into tasks, and the serial runner.

Every runner (this process: :func:`run_serial`; a process pool: :mod:`mitigation.campaign.pool`;
a Dask cluster: :mod:`mitigation.campaign.dask_runner`) hands chunks of jobs to
:func:`evaluate_jobs` and passes the records it returns to a ``sink`` (the campaign's store).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Sequence

from mitigation.campaign.evaluator import Evaluator
from mitigation.campaign.populations import Population
from sysarray.runtime import usable_cores

# (chip id, (FaultMap, descriptor columns)), or (chip id, None): the evaluating process draws the
# chip from the population itself (populations with ``drawn_by_workers``), so that the parent of a
# process pool does not spend, on every chip, time on the cores its workers need.
Job = tuple[int, Any]
Sink = Callable[[list[dict]], None]

# Work per task a campaign's workers get by default: each task's round trip through the pool costs
# the parent time on the workers' cores, which small tasks multiply; large ones unbalance the end.
TASK_SECONDS = 0.05
# A chip costs about this many fault-free runs (the faulty engine's usual cost).
CHIP_PER_CLEAN_RUN = 1.5


def evaluate_jobs(evaluator: Evaluator, population: Population | None, jobs: Sequence[Job],
                  each: Sink | None = None) -> list[dict]:
    """The journal records of some chips: descriptor + outcome + ``seconds`` (wall time, the
    map's drawing included). ``each``: called with each chip's record as it finishes (then none
    are returned).

    The maps of all the jobs are drawn first, then the chips evaluated: drawing a map is some
    twenty small numpy calls, slower right after a chip's evaluation has filled the caches with
    its data than in a row."""
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


def shipped_population(population: Population) -> Population | None:
    """What the workers get to draw chips from (None: every job carries its map)."""
    return population if population.drawn_by_workers else None


local_cores = usable_cores  # the cores this process may run on


def auto_chunk_size(clean_s: float, chips: int, workers: int) -> int:
    """Chips per task: about ``TASK_SECONDS`` of work, a chip taken as ``CHIP_PER_CLEAN_RUN``
    fault-free runs of ``clean_s`` seconds, and at least four tasks per worker, so
    that the last tasks still balance."""
    per_chip = max(1e-4, CHIP_PER_CLEAN_RUN * clean_s)
    return max(1, min(math.ceil(TASK_SECONDS / per_chip), chips // (4 * max(1, workers))))


def chunks(jobs: Iterator[Job], size: int) -> Iterator[list[Job]]:
    """``jobs`` in lists of ``size`` (the last one shorter)."""
    chunk: list[Job] = []
    for job in jobs:
        chunk.append(job)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_serial(evaluator: Evaluator, population: Population, jobs: Iterator[Job], sink: Sink, chunk_size: int) -> None:
    """Chips in this process, ``chunk_size`` maps drawn at a time, each chip written as it finishes."""
    for chunk in chunks(jobs, chunk_size):
        evaluate_jobs(evaluator, population, chunk, each=sink)


__all__ = ["CHIP_PER_CLEAN_RUN", "Job", "TASK_SECONDS", "auto_chunk_size", "chunks", "evaluate_jobs", "local_cores",
           "run_serial", "shipped_population"]
