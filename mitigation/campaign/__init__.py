"""Fault campaigns (docs/design.md §6.1): one model on a population of faulty chips, one result row per chip.

The modules, one job each:

- :mod:`~mitigation.campaign.populations`: which chips (fault groups x rates x replicas, fault-map
  files, single faults);
- :mod:`~mitigation.campaign.evaluator`: the task and the per-chip evaluator;
- :mod:`~mitigation.campaign.jobs`, :mod:`~mitigation.campaign.pool`,
  :mod:`~mitigation.campaign.dask_runner`: the chips in this process, a process pool or on Dask;
- :mod:`~mitigation.campaign.spawn`: how pool workers are sent the evaluator and started;
- :mod:`~mitigation.campaign.run`: :func:`run_campaign`, the campaign end to end;
- :mod:`~mitigation.campaign.store`, :mod:`~mitigation.campaign.journal`: the campaign directory
  and its append-only journal;
- :mod:`~mitigation.campaign.stats`: confidence intervals, sample sizes, the aggregate table;
- :mod:`~mitigation.campaign.commands`: the ``sysarray`` subcommands (a CLI plugin);
- :mod:`~mitigation.campaign.server_entry`: the fork server's process entry point (imported by the
  fork server only).
"""
from mitigation.campaign.evaluator import DEFAULT_CRITICAL_DROP, OUTCOME_COLUMNS, CheckpointTask, Evaluator, ProgramTask
from mitigation.campaign.jobs import auto_chunk_size, evaluate_jobs, local_cores
from mitigation.campaign.pool import start_workers_early
from mitigation.campaign.populations import FaultFiles, FaultGroup, Population, RateGrid, SingleFaults
from mitigation.campaign.run import CampaignRun, campaign_config, run_campaign, write_aggregates

__all__ = ["CampaignRun", "CheckpointTask", "DEFAULT_CRITICAL_DROP", "Evaluator", "FaultFiles", "FaultGroup",
           "OUTCOME_COLUMNS", "Population", "ProgramTask", "RateGrid", "SingleFaults", "auto_chunk_size",
           "campaign_config", "evaluate_jobs", "local_cores", "run_campaign", "start_workers_early",
           "write_aggregates"]
