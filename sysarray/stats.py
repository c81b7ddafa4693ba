"""Timing and utilization statistics of one GEMM on one array (chip.md section 5)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class GemmStats:
    """What a GEMM costs on the array.

    ``cycles`` is the clock count of the whole GEMM (SCALE-Sim's "Total Cycles" is
    ``cycles - 1``); ``fold_cycles`` holds the count of every fold in execution order;
    ``macs`` = M x K x N. The three utilizations are percentages exactly as SCALE-Sim v2
    reports them (chip.md section 5).
    """

    cycles: int
    fold_cycles: np.ndarray = field(repr=False)
    folds: int
    macs: int
    overall_util: float
    mapping_efficiency: float
    compute_util: float

    @property
    def scalesim_total_cycles(self) -> int:
        return self.cycles - 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fold_cycles"] = [int(x) for x in self.fold_cycles]
        return d

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GemmStats):
            return NotImplemented
        return (
            self.cycles == other.cycles
            and self.folds == other.folds
            and self.macs == other.macs
            and np.array_equal(self.fold_cycles, other.fold_cycles)
            and self.overall_util == other.overall_util
            and self.mapping_efficiency == other.mapping_efficiency
            and self.compute_util == other.compute_util
        )


def summarize(
    rows: int,
    cols: int,
    macs: int,
    fold_cycles: np.ndarray,
    fold_mapped_pes: np.ndarray,
    fold_useful_macs: np.ndarray,
) -> GemmStats:
    """Build :class:`GemmStats` from per-fold integer counts, the way SCALE-Sim v2 does.

    Both the timing formulas and the cycle engine (which counts these numbers from its own
    clock) call this, so equal counts give bit-identical floats.

    fold_cycles: (F,) clock cycles of each fold; fold_mapped_pes: (F,) PEs holding mapped
    data (rows_used x cols_used); fold_useful_macs: (F,) MACs on real data (mapped PEs x T).
    """
    fold_cycles = np.asarray(fold_cycles, dtype=np.int64)
    fold_mapped_pes = np.asarray(fold_mapped_pes, dtype=np.int64)
    fold_useful_macs = np.asarray(fold_useful_macs, dtype=np.int64)
    n_pes = rows * cols
    cycles = int(fold_cycles.sum())
    total_reported = cycles - 1  # SCALE-Sim reports the index of the last cycle
    overall = 100.0 * macs / (total_reported * n_pes) if total_reported > 0 else 0.0
    mapping = float(np.mean([100.0 * int(p) / n_pes for p in fold_mapped_pes]))
    compute = float(
        np.mean([100.0 * int(u) / (n_pes * (int(fc) + cols - 1)) for u, fc in zip(fold_useful_macs, fold_cycles)])
    )
    return GemmStats(
        cycles=cycles,
        fold_cycles=fold_cycles,
        folds=len(fold_cycles),
        macs=int(macs),
        overall_util=overall,
        mapping_efficiency=mapping,
        compute_util=compute,
    )
