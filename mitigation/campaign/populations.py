"""The populations of a campaign: which chips, and the fault map of each (docs/design.md §6.1).

- :class:`RateGrid`: fault groups x rates x replicas drawn with :mod:`sysarray.faultgen`;
- :class:`FaultFiles`: the fault-map files of a directory;
- :class:`SingleFaults`: one stuck bit per chip, for sweeps and importance sampling.

A population has a ``size`` (chips ``0 .. size - 1``), ``chip(i, cfg)`` giving chip ``i``'s
``(FaultMap, descriptor columns)``, the descriptor ``columns`` of its result rows, the
``aggregate_keys`` its summaries group by, ``describe()`` (what a campaign's configuration hash
keeps), ``check(cfg)`` (a ValueError now for chips the array cannot hold) and ``drawn_by_workers``
(whether the process that evaluates a chip may draw its map itself). Chip ``i``'s map depends only
on the population and ``i``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from mitigation.campaign.store import file_sha256
from sysarray.validation import (
    check_choice, check_fraction, check_instance, check_positive_int, check_seed, check_sequence,
)

_REGISTERS = ("weight", "act", "psum")


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
        regs = parse_registers(parts[0].replace("+", ","), option="--group")
        bits = parse_bits(parts[1], option="The bits of --group") if len(parts) > 1 and parts[1] not in ("", "all") else None
        values = parse_values(parts[2], option="The value of --group") if len(parts) > 2 else (0, 1)
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

        where = "RateGrid"
        rates = [check_fraction(r, f"rates[{i}]", where) for i, r in enumerate(check_sequence(rates, "rates", where))]
        self.rates = tuple(check_sequence(rates, "rates", where, distinct=True))
        self.chips_per_rate = check_positive_int(chips_per_rate, "chips_per_rate", where)
        self.seed = check_seed(seed, where)
        self.groups = tuple(check_instance(g, FaultGroup, f"groups[{i}]", where)
                            for i, g in enumerate(check_sequence(groups, "groups", where)))
        check_sequence([g.label for g in self.groups], "groups", where, distinct=True)
        self.method = check_choice(method, "method", where, tuple(GENERATORS))
        self.exact = bool(exact)
        self.faults_per_pe = check_positive_int(faults_per_pe, "faults_per_pe", where)
        self.n_clusters = check_positive_int(n_clusters, "n_clusters", where)

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
        budget = check_positive_int(budget, "budget", "SingleFaults.sampled")
        seed = check_seed(seed, "SingleFaults.sampled")
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


__all__ = ["FaultFiles", "FaultGroup", "Population", "RateGrid", "SingleFaults"]
