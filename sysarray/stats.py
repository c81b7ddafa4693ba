"""Timing and utilization statistics of one GEMM on one array (docs/design.md §2.11)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class GemmStats:
    """What a GEMM costs on the array.

    ``cycles`` is the clock count of the whole GEMM (SCALE-Sim's "Total Cycles" is
    ``cycles - 1``); ``fold_cycles`` holds the count of every fold in execution order;
    ``macs`` = M x K x N. The three utilizations are percentages exactly as SCALE-Sim v2
    reports them (docs/design.md §2.11).
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
    *,
    dataflow: str | None = None,
) -> GemmStats:
    """Build :class:`GemmStats` from per-fold integer counts, the way SCALE-Sim v2 does.

    Both the timing formulas and the cycle engine (which counts these numbers from its own
    clock) call this, so equal counts in the same fold order give bit-identical floats.

    fold_cycles: (F,) clock cycles of each fold; fold_mapped_pes: (F,) PEs holding mapped
    data (rows_used x cols_used); fold_useful_macs: (F,) MACs on real data (mapped PEs x T);
    all in execution order (SCALE-Sim's: column fold outer, row fold inner, see
    :mod:`sysarray.timing`). dataflow: ``"os"`` or ``"ws"``/``"is"`` (``None`` means WS/IS).

    The floats are SCALE-Sim v2's, reproduced bit for bit (``single_layer_sim.py`` and
    ``compute/systolic_compute_*.py``):

    - Overall Util = ``(macs * 100) / (TotalCycles * R * C)``, one correctly rounded division
      of Python ints, with TotalCycles = ``cycles - 1`` (SCALE-Sim's last cycle index).
    - Per fold, mapping = ``mapped / (R*C)`` and compute = ``useful / (R*C*u)`` (again int / int),
      where ``u`` is the fold's cycle count plus ``C - 1`` in WS and IS, but the fold's cycle
      count itself in OS: SCALE-Sim measures ``u`` on a demand matrix that in WS/IS is ``C - 1``
      rows longer than the fold and in OS is exactly as long.
    - Each percentage is ``sum(per-fold values) / F * 100`` where ``sum`` is CPython's builtin
      ``sum()`` of floats as of 3.12 (Neumaier-compensated), computed here explicitly so the
      result does not depend on our interpreter. SCALE-Sim run under CPython <= 3.11 (plain
      left-to-right sum) can differ in the last digits, e.g. AlexNet conv1 on 32x32 WS gives
      Compute Util 90.78000992063492 here and on CPython >= 3.12, 90.78000992063485 on 3.11.
    """

    def python312_sum(values: list[float]) -> float:
        # CPython >= 3.12 builtin sum() of floats: Neumaier's improved Kahan-Babuska summation.
        total, comp = 0.0, 0.0
        for x in values:
            t = total + x
            if abs(total) >= abs(x):
                comp += (total - t) + x
            else:
                comp += (x - t) + total
            total = t
        return total + comp if comp else total

    flow = str(getattr(dataflow, "value", dataflow)).lower() if dataflow is not None else "ws"
    if flow not in ("ws", "os", "is"):
        raise ValueError(f"The 'dataflow' argument of summarize must be one of ws, os, is. Got {dataflow!r} instead.")
    fold_cycles = np.asarray(fold_cycles, dtype=np.int64)
    fold_mapped_pes = np.asarray(fold_mapped_pes, dtype=np.int64)
    fold_useful_macs = np.asarray(fold_useful_macs, dtype=np.int64)
    n_pes = int(rows) * int(cols)
    cycles = int(fold_cycles.sum())
    total_reported = cycles - 1  # SCALE-Sim reports the index of the last cycle
    overall = (int(macs) * 100) / (total_reported * n_pes) if total_reported > 0 else 0.0
    extra = 0 if flow == "os" else int(cols) - 1
    n_folds = len(fold_cycles)
    mapping_fracs = [int(p) / n_pes for p in fold_mapped_pes.tolist()]
    compute_fracs = [
        int(u) / (n_pes * (int(fc) + extra)) for u, fc in zip(fold_useful_macs.tolist(), fold_cycles.tolist())
    ]
    mapping = python312_sum(mapping_fracs) / n_folds * 100 if n_folds else 0.0
    compute = python312_sum(compute_fracs) / n_folds * 100 if n_folds else 0.0
    return GemmStats(
        cycles=cycles,
        fold_cycles=fold_cycles,
        folds=n_folds,
        macs=int(macs),
        overall_util=overall,
        mapping_efficiency=mapping,
        compute_util=compute,
    )
