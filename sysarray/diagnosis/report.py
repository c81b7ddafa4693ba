"""What a diagnosis found, which stuck bits no test can see, and the score against a true map
(docs/diagnosis.md §4-5)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from sysarray.config import ArrayConfig, Dataflow
from sysarray.faults import REGISTER_ORDER, Fault, FaultMap, Register

Record = tuple[int, int, int, int, int]


def as_fault(rec: Iterable[int]) -> Fault:
    r, c, g, b, v = (int(x) for x in rec)
    return Fault(r, c, REGISTER_ORDER[g], b, v)


def _paths(cfg: ArrayConfig) -> list[tuple[Register, str, list[list[tuple[int, int]]]]]:
    """The passing registers of ``cfg``'s dataflow and their paths (PEs in the order data visits
    them): act east in WS and OS, weight east in IS, weight south in OS."""
    rows = [[(r, c) for c in range(cfg.cols)] for r in range(cfg.rows)]
    cols = [[(r, c) for r in range(cfg.rows)] for c in range(cfg.cols)]
    if cfg.dataflow is Dataflow.WS:
        return [(Register.ACT, "east", rows)]
    if cfg.dataflow is Dataflow.IS:
        return [(Register.WEIGHT, "east", rows)]
    return [(Register.ACT, "east", rows), (Register.WEIGHT, "south", cols)]


def masked_sites(faults: FaultMap, cfg: ArrayConfig) -> list[tuple[Fault, str]]:
    """Stuck bits that would change no output of any GEMM on a chip that has ``faults``.

    A passing register (act or weight moving PE to PE) latches what its upstream neighbour
    passed on; where the nearest upstream PE on the path has bit ``b`` of that register stuck at
    ``v``, every value arriving has bit ``b = v``, so the same bit stuck at ``v`` here forces
    nothing. Stationary registers (loaded by the fault-free preload chain) and the psum register
    (written with a fresh sum) have no such site. Sites where ``faults`` already holds a stuck bit
    are not listed.
    """
    out = []
    for reg, direction, paths in _paths(cfg):
        stuck, ones = faults.masks(reg)
        for path in paths:
            for b in range(8):
                state, source = None, None
                for r, c in path:
                    here = int(stuck[r, c]) >> b & 1
                    if state is not None and not here:
                        why = (f"{reg.value} bit {b} arrives stuck at {state} from PE {source} ({direction} path): "
                               "the same stuck value here forces nothing")
                        out.append((Fault(r, c, reg, b, state), why))
                    if here:
                        state, source = int(ones[r, c]) >> b & 1, (r, c)
    return out


def is_masked(fault: Fault, others: FaultMap, cfg: ArrayConfig) -> bool:
    """Whether ``fault`` changes no output on a chip that already has ``others`` (the rule of
    :func:`masked_sites`)."""
    return any(f == fault for f, _ in masked_sites(others, cfg) if (f.row, f.col) == (fault.row, fault.col))


@dataclass(frozen=True)
class RegisterScore:
    """Counts of one register: true stuck bits located exactly (PE, register, bit, value),
    missed, aliased (in an unresolved candidate group), undetectable (masked by another fault),
    and false alarms (located bits the chip does not have)."""

    located: int = 0
    missed: int = 0
    aliased: int = 0
    undetectable: int = 0
    false_alarms: int = 0

    @property
    def detectable(self) -> int:
        return self.located + self.missed + self.aliased

    def to_dict(self) -> dict:
        return {"located": self.located, "missed": self.missed, "aliased": self.aliased,
                "undetectable": self.undetectable, "false_alarms": self.false_alarms}


@dataclass(frozen=True)
class Diagnosis:
    """The result of :func:`sysarray.diagnosis.diagnose`.

    faults: the located stuck bits (unique explanations, confirmed by the engine).
    hypothesis: the full explanation (one member of each alias group included).
    aliased: groups of stuck bits that explain the observations equally well (one of each group
    is on the chip); none of them is in ``faults``.
    undetectable: sites (PE, register, bit, value) that no test can observe on a chip with the
    located faults, with the reason.
    unexplained: regions (``"column c"`` or ``"PE (r, c)"``) whose outputs no candidate map
    reproduced; located bits there are withheld.
    confirmed: the engine reproduces every observed output from ``hypothesis``.
    tests / refinement_tests: test GEMMs applied (all) / of them adaptive; cycles and macs: their
    cost on the array (:func:`sysarray.timing.gemm_timing`); tile_cycles: one fold streaming
    ``tile_stream`` elements, the reference cost of one inference GEMM tile.
    """

    config: ArrayConfig
    faults: FaultMap
    hypothesis: FaultMap
    aliased: tuple[tuple[Fault, ...], ...]
    undetectable: tuple[tuple[Fault, str], ...]
    unexplained: tuple[str, ...]
    confirmed: bool
    tests: int
    refinement_tests: int
    cycles: int
    macs: int
    tile_cycles: int
    tile_stream: int
    test_kinds: tuple[str, ...] = field(default=(), repr=False)

    @property
    def tile_share(self) -> float:
        """Test cycles / one inference tile's cycles."""
        return self.cycles / self.tile_cycles

    def score(self, truth: FaultMap) -> dict[str, RegisterScore]:
        """Per register (and ``"all"``): how the located faults compare with the chip's true map."""
        if truth.shape != self.faults.shape:
            raise ValueError(f"Diagnosis.score needs a {self.faults.rows}x{self.faults.cols} map. Got "
                             f"{truth.rows}x{truth.cols} instead.")
        true_set = set(truth)
        found = set(self.faults)
        in_groups = {f for g in self.aliased for f in g}
        counts = {reg.value: dict(located=0, missed=0, aliased=0, undetectable=0, false_alarms=0)
                  for reg in REGISTER_ORDER}
        for f in true_set:
            k = counts[f.register.value]
            if f in found:
                k["located"] += 1
            elif is_masked(f, FaultMap.from_records(truth.rows, truth.cols, np.array(
                    [rec for rec in truth.records.tolist() if as_fault(rec) != f], dtype=np.int64).reshape(-1, 5)),
                    self.config):
                k["undetectable"] += 1
            elif f in in_groups:
                k["aliased"] += 1
            else:
                k["missed"] += 1
        for f in found - true_set:
            counts[f.register.value]["false_alarms"] += 1
        out = {name: RegisterScore(**k) for name, k in counts.items()}
        out["all"] = RegisterScore(**{key: sum(getattr(s, key) for s in out.values())
                                      for key in ("located", "missed", "aliased", "undetectable", "false_alarms")})
        return out

    def to_dict(self, truth: FaultMap | None = None) -> dict:
        """A JSON-ready record (with the score when ``truth`` is given)."""
        def rec(f: Fault) -> dict:
            return {"row": f.row, "col": f.col, "register": f.register.value, "bit": f.bit, "value": f.value}

        d = {
            "config": self.config.to_dict(),
            "located": [rec(f) for f in self.faults],
            "aliased": [[rec(f) for f in g] for g in self.aliased],
            "undetectable": [{**rec(f), "reason": why} for f, why in self.undetectable],
            "unexplained": list(self.unexplained),
            "confirmed": self.confirmed,
            "cost": {"tests": self.tests, "refinement_tests": self.refinement_tests, "cycles": self.cycles,
                     "macs": self.macs, "tile_stream": self.tile_stream, "tile_cycles": self.tile_cycles,
                     "tile_share": self.tile_share},
            "test_kinds": list(self.test_kinds),
        }
        if truth is not None:
            d["score"] = {k: v.to_dict() for k, v in self.score(truth).items()}
        return d
