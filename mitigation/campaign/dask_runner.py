"""The Dask runner of a campaign: chunks of chips as tasks on a Dask distributed cluster.

The evaluator (and the population, where workers draw the maps) is scattered to every worker
once; results come back in any order and the store sorts them by chip.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator, Sequence

from mitigation.campaign.evaluator import Evaluator
from mitigation.campaign.jobs import Job, Sink, chunks, evaluate_jobs, shipped_population
from mitigation.campaign.populations import Population
from sysarray.runtime import set_threads

# numba's workqueue threading layer aborts when two threads launch parallel kernels at once, so the
# threads of one Dask worker process take turns (workers with one thread each never wait).
_DASK_LOCK = threading.Lock()


def _dask_task(shipped: tuple[Evaluator, Population | None], jobs: Sequence[Job]) -> list[dict]:
    with _DASK_LOCK:
        set_threads(1)  # chips run in parallel, not GEMMs (numba's count is per thread)
        return evaluate_jobs(*shipped, jobs)


def run_dask(evaluator: Evaluator, population: Population, jobs: Iterator[Job], sink: Sink, scheduler: Any,
             workers: int, chunk_size: int) -> None:
    """The jobs on a Dask distributed cluster, ``chunk_size`` chips a task, at most three tasks per
    worker in flight. ``scheduler``: an address, ``"local"`` (a LocalCluster of ``workers``
    processes, closed after), a Cluster or a Client."""
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
        ev = client.scatter((evaluator, shipped_population(population)), broadcast=True)
        futures = as_completed()
        window = 0
        for chunk in chunks(jobs, chunk_size):
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


__all__ = ["run_dask"]
