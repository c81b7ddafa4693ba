"""Single-fault sweeps (docs/design.md §6.1): the accuracy drop of one stuck bit at every PE.

A sweep is a campaign of one-fault chips (:class:`mitigation.campaign.SingleFaults`), so it runs
in parallel, resumes and is reproducible like any campaign. From its rows:

- :func:`heatmaps`: for each (register, bit, value), an ``R x C`` array of the drop of a fault at
  each PE (NaN where a sampled sweep did not go), the PE-array heatmap;
- :func:`bit_sensitivity`: the mean drop over the swept PEs versus the bit position, per register
  and stuck value, with bootstrap intervals.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from mitigation.campaign import CampaignRun, SingleFaults, run_campaign
from mitigation.campaign.stats import bootstrap_interval


def run_sweep(task: Any, cfg: Any, out: str, registers: Sequence[str], bits: Sequence[int] | None = None,
              values: Sequence[int] = (1,), budget: int | None = None, seed: int = 0, **campaign_options: Any) -> CampaignRun:
    """Sweep one stuck bit over the PEs for every (register, bit, value): every PE (``budget=None``)
    or ``budget`` PEs per (register, bit, value) drawn with ``seed``. Options go to :func:`run_campaign`."""
    if budget is None:
        population = SingleFaults.exhaustive(cfg, registers, bits, values)
    else:
        population = SingleFaults.sampled(cfg, registers, bits, values, budget, seed)
    return run_campaign(task, population, out, cfg, **campaign_options)


def _site(row: dict) -> tuple[str, int, int]:
    return (str(row["register"]), int(row["bit"]), int(row["value"]))


def heatmaps(rows: Iterable[dict], shape: tuple[int, int], field: str = "drop") -> dict[tuple[str, int, int], np.ndarray]:
    """``{(register, bit, value): (R, C) float64}`` of ``field`` (default the accuracy drop) per PE.

    PEs a sampled sweep did not visit are NaN. Keys are sorted (register, bit, value).
    """
    out: dict[tuple[str, int, int], np.ndarray] = {}
    for r in rows:
        grid = out.setdefault(_site(r), np.full(shape, np.nan))
        grid[int(r["pe_row"]), int(r["pe_col"])] = float(r[field])
    return dict(sorted(out.items()))


def bit_sensitivity(rows: Iterable[dict], confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Mean drop over swept PEs per (register, value, bit), sorted; bootstrap interval and critical share."""
    groups: dict[tuple[str, int, int], list[dict]] = {}
    for r in rows:
        reg, bit, value = _site(r)
        groups.setdefault((reg, value, bit), []).append(r)
    out = []
    for i, (key, members) in enumerate(sorted(groups.items())):
        drops = np.array([float(m["drop"]) for m in members])
        lo, hi = bootstrap_interval(drops, "mean", confidence, seed=(seed, i))
        out.append({"register": key[0], "value": key[1], "bit": key[2], "faults": len(members),
                    "mean_drop": float(drops.mean()), "mean_drop_lo": lo, "mean_drop_hi": hi,
                    "max_drop": float(drops.max()),
                    "critical_share": float(np.mean([int(m["critical"]) for m in members]))})
    return out


__all__ = ["bit_sensitivity", "heatmaps", "run_sweep"]
