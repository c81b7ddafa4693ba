"""Spare rows and columns: repair plans, the spare allocator and the logical fault map (docs/repair.md).

A chip with ``ArrayConfig(spare_rows=a, spare_cols=b)`` is fabricated as an
``(rows + a) x (cols + b)`` physical array. At test time fuses remove exactly ``a`` physical rows
and ``b`` physical columns; the kept ones, in order, form the ``rows x cols`` logical array the
workload runs on. A fused-out line is a wire: its PEs are on no data path, so their faults have
no effect, and it adds no pipeline stage (the timing is the logical array's).

- :class:`RepairPlan`: which physical rows and columns are fused out (validated, JSON files).
- :func:`allocate_repair`: the classic spare-allocation problem (NP-complete in general):
  must-repair analysis (Kuo & Fuchs 1987), then an exact branch and bound for the fewest faulty
  PEs left, fewest spares used, ties broken by the smallest fused line indices.
- :func:`logical_map`: the faults of the kept PEs at their logical positions.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from sysarray.atomic import write_json
from sysarray.config import ArrayConfig
from sysarray.faults import FaultMap, Register, as_register
from sysarray.validation import check_bool, check_instance, check_int, check_output_path, check_positive_int

__all__ = ["DEFAULT_MAX_NODES", "MustRepair", "RepairPlan", "allocate_repair", "apply_repair", "logical_map",
           "must_repair"]

FORMAT = "sysarray-repair"
VERSION = 1
DEFAULT_MAX_NODES = 200_000  # search nodes before the best plan found so far is returned, marked not optimal
_KEYS = ("format", "version", "rows", "cols", "fused_rows", "fused_cols", "faulty_pes_left", "optimal")


def _lines(value: object, name: str, where: str, n: int) -> tuple[int, ...]:
    """Distinct indices within 0..n-1, as a sorted tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"The '{name}' argument of {where} must be a sequence of indices. Got {value!r} instead.")
    out = [check_int(v, name, where, lo=0, hi=n - 1) for v in value]
    if len(set(out)) != len(out):
        raise ValueError(f"The '{name}' argument of {where} must not repeat an index. Got {list(value)!r} instead.")
    return tuple(sorted(out))


@dataclass(frozen=True)
class RepairPlan:
    """Which physical rows and columns of an array with spares are fused out.

    rows, cols: the logical array (the workload's ``R x C``). fused_rows, fused_cols: physical
    indices (0-based, stored sorted) of the fused-out lines; the physical array is
    ``(rows + len(fused_rows)) x (cols + len(fused_cols))``. The kept physical rows, in increasing
    order, are logical rows 0..rows-1 (likewise columns). faulty_pes_left: faulty PEs of the
    counted registers in the logical array under this plan (None when unknown); optimal: whether
    the allocator proved the plan optimal for its objective (None for a plan written by hand).
    """

    rows: int
    cols: int
    fused_rows: tuple[int, ...] = ()
    fused_cols: tuple[int, ...] = ()
    faulty_pes_left: int | None = None
    optimal: bool | None = None

    def __post_init__(self) -> None:
        where = "RepairPlan"
        for name in ("rows", "cols"):
            object.__setattr__(self, name, check_positive_int(getattr(self, name), name, where))
        object.__setattr__(self, "fused_rows", _lines(self.fused_rows, "fused_rows", where, 1 << 20))
        object.__setattr__(self, "fused_cols", _lines(self.fused_cols, "fused_cols", where, 1 << 20))
        for name, n in (("fused_rows", self.physical_shape[0]), ("fused_cols", self.physical_shape[1])):
            _lines(getattr(self, name), name, where, n)  # every fused line lies on the physical array
        object.__setattr__(self, "faulty_pes_left",
                           check_int(self.faulty_pes_left, "faulty_pes_left", where, lo=0, none_ok=True))
        if self.optimal is not None:
            object.__setattr__(self, "optimal", check_bool(self.optimal, "optimal", where))

    # ------------------------------------------------------------------ views
    @property
    def physical_shape(self) -> tuple[int, int]:
        return (self.rows + len(self.fused_rows), self.cols + len(self.fused_cols))

    @property
    def kept_rows(self) -> tuple[int, ...]:
        """Physical row of each logical row (length ``rows``, increasing)."""
        fused = set(self.fused_rows)
        return tuple(r for r in range(self.physical_shape[0]) if r not in fused)

    @property
    def kept_cols(self) -> tuple[int, ...]:
        """Physical column of each logical column (length ``cols``, increasing)."""
        fused = set(self.fused_cols)
        return tuple(c for c in range(self.physical_shape[1]) if c not in fused)

    @property
    def complete(self) -> bool | None:
        """Whether no counted faulty PE is left in the logical array (None when unknown)."""
        return None if self.faulty_pes_left is None else self.faulty_pes_left == 0

    @classmethod
    def spares_unused(cls, config: ArrayConfig) -> "RepairPlan":
        """The plan of a fault-free chip: the spares themselves (last rows, last columns) fused out."""
        check_instance(config, ArrayConfig, "config", "RepairPlan.spares_unused")
        pr, pc = config.physical_shape
        return cls(config.rows, config.cols, tuple(range(config.rows, pr)), tuple(range(config.cols, pc)))

    def check_fits(self, config: ArrayConfig, where: str = "RepairPlan") -> None:
        """Raise ValueError unless this plan is for ``config``'s logical array and spares."""
        want = (config.rows, config.cols, config.spare_rows, config.spare_cols)
        got = (self.rows, self.cols, len(self.fused_rows), len(self.fused_cols))
        if got != want:
            raise ValueError(f"The repair plan of {where} fuses {got[2]} row(s) and {got[3]} column(s) out of a "
                             f"{self.physical_shape[0]}x{self.physical_shape[1]} array to a {got[0]}x{got[1]} one, but "
                             f"the array is {want[0]}x{want[1]} with {want[2]} spare row(s) and {want[3]} spare "
                             "column(s).")

    def summary(self) -> str:
        pr, pc = self.physical_shape
        state = {None: "", True: ", complete", False: ", incomplete"}[self.complete]
        left = "" if self.faulty_pes_left is None else f"; {self.faulty_pes_left} faulty PE(s) left{state}"
        proof = {None: "", True: ", optimal", False: ", not proven optimal (search budget reached)"}[self.optimal]
        return (f"RepairPlan {pr}x{pc} -> {self.rows}x{self.cols}: fused rows {list(self.fused_rows)}, "
                f"fused columns {list(self.fused_cols)}{left}{proof}")

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "rows": self.rows, "cols": self.cols,
                "fused_rows": list(self.fused_rows), "fused_cols": list(self.fused_cols),
                "faulty_pes_left": self.faulty_pes_left, "optimal": self.optimal}

    @classmethod
    def from_dict(cls, d: dict) -> "RepairPlan":
        """The plan of :meth:`to_dict`'s dict; a missing, unknown or mistyped key is a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"A repair plan must be a JSON object. Got {type(d).__name__} instead.")
        if d.get("format") != FORMAT:
            raise ValueError(f"A repair plan has format {FORMAT!r}. Got {d.get('format')!r} instead.")
        if d.get("version") != VERSION:
            raise ValueError(f"Repair plan version {d.get('version')!r} is not supported; this sysarray reads "
                             f"version {VERSION}.")
        missing, unknown = sorted(set(_KEYS) - set(d)), sorted(set(d) - set(_KEYS))
        if missing or unknown:
            raise ValueError(f"A repair plan has the keys {list(_KEYS)}. Got missing {missing}, unknown {unknown}.")
        try:
            return cls(d["rows"], d["cols"], d["fused_rows"], d["fused_cols"], d["faulty_pes_left"], d["optimal"])
        except TypeError as e:
            raise ValueError(str(e)) from e

    def save(self, path: "str | os.PathLike[str]") -> None:
        """Write the plan as JSON, atomically."""
        write_json(check_output_path(path, "path", "RepairPlan.save"), self.to_dict())

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "RepairPlan":
        """Read and validate a plan file; a problem is a ValueError naming the file."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            return cls.from_dict(d)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"Repair plan file '{path}' is not usable: {str(e).rstrip('.')}.") from e


# ---------------------------------------------------------------------------- allocation
class MustRepair(NamedTuple):
    """The must-repair lines (Kuo & Fuchs 1987): in every complete repair. ``fits``: they fit the spares."""

    rows: tuple[int, ...]
    cols: tuple[int, ...]
    fits: bool


def _faulty(config: ArrayConfig, physical_map: FaultMap, registers: object, where: str) -> np.ndarray:
    """(physical rows, physical cols) bool: PEs with a stuck bit in a counted register."""
    check_instance(config, ArrayConfig, "config", where)
    check_instance(physical_map, FaultMap, "physical_map", where)
    _check_physical(config, physical_map, where)
    if registers is None:
        return physical_map.faulty_pes()
    regs = [registers] if isinstance(registers, (str, Register)) else list(registers)
    if not regs:
        raise ValueError(f"The 'registers' argument of {where} must name at least one register or be None. "
                         f"Got {registers!r} instead.")
    out = np.zeros(physical_map.shape, dtype=bool)
    for r in regs:
        out |= physical_map.faulty_pes(as_register(r, where))
    return out


def _check_physical(config: ArrayConfig, physical_map: FaultMap, where: str) -> None:
    pr, pc = config.physical_shape
    if physical_map.shape != (pr, pc):
        raise ValueError(f"{where} needs the physical fault map of a {pr}x{pc} array ({config.rows}x{config.cols} "
                         f"with {config.spare_rows} spare row(s) and {config.spare_cols} spare column(s)). Got a "
                         f"{physical_map.rows}x{physical_map.cols} map instead.")
    physical_map.check_fits(pr, pc, config.psum_bits)


def _must(bad: np.ndarray, a: int, b: int) -> MustRepair:
    """Iterated must-repair analysis: a row with more faulty PEs than spare columns left must be
    fused out, and vice versa, until nothing changes or the lines exceed the spares."""
    rows: list[int] = []
    cols: list[int] = []
    live = bad.copy()
    changed = True
    while changed:
        changed = False
        for axis, chosen, other, budget in ((1, rows, cols, b), (0, cols, rows, a)):
            counts = live.sum(axis=axis)
            new = [int(i) for i in np.flatnonzero(counts > budget - len(other))]  # budget - len(other) >= 0 here
            if new:
                chosen.extend(new)
                changed = True
                if axis == 1:
                    live[new, :] = False
                else:
                    live[:, new] = False
            if len(rows) > a or len(cols) > b:
                return MustRepair(tuple(sorted(rows)), tuple(sorted(cols)), False)
    return MustRepair(tuple(sorted(rows)), tuple(sorted(cols)), True)


def must_repair(config: ArrayConfig, physical_map: FaultMap, *, registers: object = None) -> MustRepair:
    """The must-repair rows and columns of ``physical_map`` (physical indices) for ``config``'s spares.

    Every complete repair fuses them out; ``fits`` is False when they exceed the spares (then no
    complete repair exists). ``registers``: the registers whose faults count (None: all).
    """
    bad = _faulty(config, physical_map, registers, "must_repair")
    return _must(bad, config.spare_rows, config.spare_cols)


class _Search:
    """Exact search for the plan with the smallest key (faulty PEs left, lines used, fused rows,
    fused columns) over every set of at most ``a`` rows and ``b`` columns of ``bad``, the
    ``forced`` lines always included. It enumerates subsets of one dimension (the one with fewer
    subsets) in order of decreasing fault count; for a fixed subset the best lines of the other
    dimension are exact by a sort (the most faulty PEs, lowest index on ties). A branch is cut
    when even its best case, every remaining line covering its own faults, leaves more faulty PEs
    than the best plan so far."""

    def __init__(self, bad: np.ndarray, a: int, b: int, forced_rows: Sequence[int], forced_cols: Sequence[int],
                 max_nodes: int) -> None:
        res = bad.copy()
        res[list(forced_rows), :] = False
        res[:, list(forced_cols)] = False
        self.forced = (tuple(forced_rows), tuple(forced_cols))
        a, b = a - len(forced_rows), b - len(forced_cols)
        n_rows, n_cols = int(res.any(axis=1).sum()), int(res.any(axis=0).sum())
        # enumerate the dimension with fewer subsets; the key stays in rows-then-columns order
        self.transposed = _subsets(n_cols, b) < _subsets(n_rows, a)
        self.m = res.T if self.transposed else res
        self.a, self.b = (b, a) if self.transposed else (a, b)
        counts = self.m.sum(axis=1)
        self.order = [int(i) for i in np.lexsort((np.arange(len(counts)), -counts)) if counts[i] > 0]
        self.counts = counts
        self.max_nodes = max_nodes
        self.nodes = 0
        self.best: tuple | None = None
        self.complete_search = True

    def run(self) -> tuple[tuple[int, ...], tuple[int, ...], int, bool]:
        """(rows, cols, faulty PEs left, proven optimal) of the best plan, lines without padding."""
        total = int(self.m.sum())
        self._visit([], 0, self.m.sum(axis=0), total)
        _, _, rows, cols = self.best
        return rows, cols, self.best[0], self.complete_search

    def _leaf(self, outer: list[int], inner_counts: np.ndarray, remaining: int) -> int:
        """Score ``outer`` with its best inner lines; returns the faulty PEs it leaves."""
        pick = np.lexsort((np.arange(len(inner_counts)), -inner_counts))[:self.b]
        pick = pick[inner_counts[pick] > 0]
        left = remaining - int(inner_counts[pick].sum())
        inner = [int(i) for i in pick]
        rows, cols = (inner, outer) if self.transposed else (outer, inner)
        rows = tuple(sorted(list(self.forced[0]) + rows))
        cols = tuple(sorted(list(self.forced[1]) + cols))
        key = (left, len(rows) + len(cols), rows, cols)
        if self.best is None or key < self.best:
            self.best = key
        return left

    def _visit(self, outer: list[int], start: int, inner_counts: np.ndarray, remaining: int) -> None:
        self.nodes += 1
        self._leaf(outer, inner_counts, remaining)
        k = self.a - len(outer)
        if k == 0:
            return
        top_inner = int(np.sort(inner_counts)[::-1][:self.b].sum())
        for j in range(start, len(self.order)):
            if self.nodes >= self.max_nodes:
                self.complete_search = False
                return
            # best case of any plan adding order[j] and later lines: they and the top inner lines
            # cover disjoint faulty PEs
            top_outer = int(self.counts[self.order[j:j + k]].sum())
            if remaining - top_outer - top_inner > self.best[0]:
                return  # later lines have no more faults than order[j]: no later start does better
            line = self.order[j]
            self._visit(outer + [line], j + 1, inner_counts - self.m[line], remaining - int(self.counts[line]))


def _subsets(n: int, k: int) -> int:
    """The number of subsets of at most ``k`` of ``n`` items (an exact Python int)."""
    from math import comb

    return sum(comb(n, i) for i in range(min(n, k) + 1))


def _pad(lines: Sequence[int], n: int, size: int) -> tuple[int, ...]:
    """``lines`` plus the highest-index other lines of ``0..n-1`` up to ``size`` (unused spares
    fuse out the last lines: the spares themselves on a fault-free chip)."""
    out = set(lines)
    for i in range(n - 1, -1, -1):
        if len(out) >= size:
            break
        out.add(i)
    return tuple(sorted(out))


def allocate_repair(config: ArrayConfig, physical_map: FaultMap, *, registers: object = None,
                    max_nodes: int = DEFAULT_MAX_NODES) -> RepairPlan:
    """The repair plan for ``physical_map`` (``config.physical_shape``) with ``config``'s spares.

    Objective, in order: the fewest faulty PEs left in the logical array; the fewest spare lines
    used; the smallest fused row indices, then column indices (sorted tuples compared
    lexicographically). Unused spares fuse out the last rows and columns not already fused.

    Method (docs/repair.md): must-repair analysis (Kuo & Fuchs 1987); if the must-repair lines fit
    and the faults left are at most ``2 a' b'`` (``a'``, ``b'`` the spares they leave), an exact
    search over the rest for a complete repair; if none exists, an exact branch and bound over all
    plans for the fewest faulty PEs left. Each search stops after ``max_nodes`` nodes with the
    best plan found, marked ``optimal=False``. ``registers``: the registers whose faults count
    (None: all); the logical map keeps every fault of the kept PEs whatever is counted.
    """
    where = "allocate_repair"
    bad = _faulty(config, physical_map, registers, where)
    max_nodes = check_positive_int(max_nodes, "max_nodes", where)
    a, b = config.spare_rows, config.spare_cols
    found = None
    must = _must(bad, a, b)
    if must.fits:
        rest = bad.copy()
        rest[list(must.rows), :] = False
        rest[:, list(must.cols)] = False
        if int(rest.sum()) <= 2 * (a - len(must.rows)) * (b - len(must.cols)):
            found = _Search(bad, a, b, must.rows, must.cols, max_nodes).run()
            if found[2] > 0:
                found = None  # no complete repair (proven unless the budget ran out): search every plan
    if found is None:
        found = _Search(bad, a, b, (), (), max_nodes).run()
    rows, cols, _, optimal = found
    pr, pc = config.physical_shape
    fused_rows, fused_cols = _pad(rows, pr, a), _pad(cols, pc, b)
    kept = np.delete(np.delete(bad, fused_rows, axis=0), fused_cols, axis=1)
    return RepairPlan(config.rows, config.cols, fused_rows, fused_cols, int(kept.sum()), optimal)


# ---------------------------------------------------------------------------- the logical chip
def logical_map(config: ArrayConfig, physical_map: FaultMap, plan: RepairPlan) -> FaultMap:
    """The ``rows x cols`` fault map of the logical array: every fault of a kept PE, at its logical
    position (logical row ``i`` is the ``i``-th kept physical row); faults of fused-out lines are
    dropped (those PEs are on no data path)."""
    where = "logical_map"
    check_instance(config, ArrayConfig, "config", where)
    check_instance(physical_map, FaultMap, "physical_map", where)
    check_instance(plan, RepairPlan, "plan", where)
    _check_physical(config, physical_map, where)
    plan.check_fits(config, where)
    row_of = np.full(plan.physical_shape[0], -1, dtype=np.int64)
    row_of[list(plan.kept_rows)] = np.arange(config.rows)
    col_of = np.full(plan.physical_shape[1], -1, dtype=np.int64)
    col_of[list(plan.kept_cols)] = np.arange(config.cols)
    rec = physical_map.records.copy()
    rec[:, 0], rec[:, 1] = row_of[rec[:, 0]], col_of[rec[:, 1]]
    return FaultMap.from_records(config.rows, config.cols, rec[(rec[:, 0] >= 0) & (rec[:, 1] >= 0)])


def apply_repair(config: ArrayConfig, physical_map: FaultMap | None, repair: "RepairPlan | str | None" = "auto",
                 where: str = "apply_repair") -> tuple[RepairPlan, FaultMap | None]:
    """The plan and the logical fault map of a chip with spares.

    ``repair``: a :class:`RepairPlan` for ``config``, or ``"auto"``/None for
    :func:`allocate_repair` (every register counted). A None map (a fault-free chip) gives
    :meth:`RepairPlan.spares_unused` under ``"auto"`` and a None logical map.
    """
    check_instance(config, ArrayConfig, "config", where)
    check_instance(physical_map, FaultMap, "faults", where, none_ok=True)
    if physical_map is not None:
        _check_physical(config, physical_map, where)
    if repair is None or (isinstance(repair, str) and repair == "auto"):
        if physical_map is None:
            return RepairPlan.spares_unused(config), None
        plan = allocate_repair(config, physical_map)
    elif isinstance(repair, RepairPlan):
        plan = repair
        plan.check_fits(config, where)
    else:
        raise TypeError(f"The 'repair' argument of {where} must be a RepairPlan, 'auto' or None. "
                        f"Got {repair!r} instead.")
    if physical_map is None:
        return plan, None
    return plan, logical_map(config, physical_map, plan)
