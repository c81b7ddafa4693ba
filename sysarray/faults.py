"""FaultMap: the permanent stuck-at faults of one chip's PE array (docs/design.md §2.3, §2.10).

A fault is ``(row, col, register, bit, value)``: bit ``bit`` of register ``register`` in PE
``(row, col)`` always reads ``value``. A map belongs to one array geometry ``rows x cols``.
Maps are immutable values (hashable, equal by content): :meth:`FaultMap.add` and
:meth:`FaultMap.union` return new maps. Generators live in :mod:`sysarray.faultgen`, the file
format in :mod:`sysarray.faultio`.
"""
from __future__ import annotations

import enum
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from sysarray.validation import check_int


class Register(str, enum.Enum):
    """The three registers of a PE that can hold stuck bits."""

    WEIGHT = "weight"  # 8 bits
    ACT = "act"  # 8 bits
    PSUM = "psum"  # psum_bits bits (at most 32)

    @property
    def code(self) -> int:
        return REGISTER_ORDER.index(self)

    @property
    def max_width(self) -> int:
        return 32 if self is Register.PSUM else 8


REGISTER_ORDER: tuple[Register, ...] = (Register.WEIGHT, Register.ACT, Register.PSUM)


def as_register(name: "Register | str", where: str = "FaultMap") -> Register:
    """Turn ``"weight"``/``"act"``/``"psum"`` (or a :class:`Register`) into a Register."""
    try:
        return Register(getattr(name, "value", name))
    except ValueError:
        allowed = ", ".join(r.value for r in Register)
        raise ValueError(f"The register given to {where} must be one of {allowed}. Got {name!r} instead.") from None


class Fault(NamedTuple):
    row: int
    col: int
    register: Register
    bit: int
    value: int


def _init(fm: "FaultMap", rows: int, cols: int, faults: np.ndarray) -> None:
    faults.setflags(write=False)
    object.__setattr__(fm, "rows", rows)
    object.__setattr__(fm, "cols", cols)
    object.__setattr__(fm, "_faults", faults)


def _rebuild(rows: int, cols: int, faults: np.ndarray) -> "FaultMap":
    """Unpickling: the map of already validated faults."""
    fm = FaultMap.__new__(FaultMap)
    _init(fm, rows, cols, np.array(faults))
    return fm


_DTYPE = np.dtype([("row", np.int32), ("col", np.int32), ("reg", np.int8), ("bit", np.int8), ("value", np.int8)])


def _structured(records: np.ndarray) -> np.ndarray:
    """Validated (n, 5) integer records (row, col, register code, bit, value) as the map's
    structured array, in the same order."""
    out = np.empty(len(records), dtype=_DTYPE)
    for i, name in enumerate(_DTYPE.names):
        out[name] = records[:, i]
    return out


class FaultMap:
    """Stuck-at faults of an ``rows x cols`` PE array; an immutable value.

    Faults are kept sorted by (row, col, register, bit); the same fault added twice is kept
    once, and the same bit stuck at both 0 and 1 is refused.
    """

    __slots__ = ("rows", "cols", "_faults", "_masks_cache", "_hash")

    def __init__(self, rows: int, cols: int) -> None:
        _init(self, check_int(rows, "rows", "FaultMap", lo=1, hi=1 << 20),
              check_int(cols, "cols", "FaultMap", lo=1, hi=1 << 20), np.zeros(0, dtype=_DTYPE))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"FaultMap is immutable: its '{name}' cannot be set. add() and union() return new maps.")

    def __reduce__(self):
        return (_rebuild, (self.rows, self.cols, self._faults))

    # ----------------------------------------------------------------- building
    def add(self, row: int, col: int, register: "Register | str", bit: int, value: int) -> "FaultMap":
        """A new map with one more stuck bit (this one is unchanged; calls chain:
        ``FaultMap(16, 16).add(...).add(...)``)."""
        reg = as_register(register, "FaultMap.add")
        row = check_int(row, "row", "FaultMap.add", lo=0, hi=self.rows - 1)
        col = check_int(col, "col", "FaultMap.add", lo=0, hi=self.cols - 1)
        bit = check_int(bit, "bit", f"FaultMap.add for register '{reg.value}'", lo=0, hi=reg.max_width - 1)
        value = check_int(value, "value", "FaultMap.add", lo=0, hi=1)
        rec = np.array([(row, col, reg.code, bit, value)], dtype=_DTYPE)
        return FaultMap._of(self.rows, self.cols, np.concatenate([self._faults, rec]))

    @classmethod
    def from_records(cls, rows: int, cols: int, records: np.ndarray | Iterable) -> "FaultMap":
        """A map from an (n, 5) integer array of ``row, col, register code, bit, value``.

        Register codes: 0 weight, 1 act, 2 psum. Every field is validated.
        """
        fm = cls(rows, cols)
        arr = np.asarray(list(records) if not isinstance(records, np.ndarray) else records)
        if arr.size == 0:
            return fm
        if arr.ndim != 2 or arr.shape[1] != 5 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"Fault records must be an (n, 5) integer array. Got shape {arr.shape}, dtype {arr.dtype}.")
        row, col, reg, bit, value = (arr[:, i].astype(np.int64) for i in range(5))
        problems = [
            ("row", row, 0, rows - 1),
            ("col", col, 0, cols - 1),
            ("register code", reg, 0, len(REGISTER_ORDER) - 1),
            ("value", value, 0, 1),
        ]
        for name, vals, lo, hi in problems:
            bad = (vals < lo) | (vals > hi)
            if bad.any():
                raise ValueError(f"Fault {name} must be within {lo}..{hi}. Got {vals[bad][0]} instead.")
        widths = np.array([r.max_width for r in REGISTER_ORDER])[reg]
        bad = (bit < 0) | (bit >= widths)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            name = REGISTER_ORDER[reg[i]].value
            raise ValueError(f"Fault bit must be within 0..{widths[i] - 1} for register '{name}'. Got {bit[i]} instead.")
        return cls._of(rows, cols, _structured(arr))

    @classmethod
    def _from_generated(cls, rows: int, cols: int, records: np.ndarray) -> "FaultMap":
        """:meth:`from_records` for a generator's (n, 5) int64 records, which lie on the array and
        hold valid register bits by construction: sorted by ``lexsort`` into the order ``_set``
        gives (``np.unique`` on the structured array is a large part of drawing a map). Repeated sites
        take the general path, which decides about them."""
        rec = records[np.lexsort(records.T[::-1])]
        if len(rec) > 1 and (rec[1:, :4] == rec[:-1, :4]).all(axis=1).any():
            return cls.from_records(rows, cols, rec)
        fm = cls(rows, cols)
        faults = _structured(rec)
        faults.setflags(write=False)
        object.__setattr__(fm, "_faults", faults)
        return fm

    @classmethod
    def _of(cls, rows: int, cols: int, faults: np.ndarray) -> "FaultMap":
        """A map of validated structured ``faults`` (any order, repeats allowed)."""
        faults = np.unique(faults)  # sorts by (row, col, reg, bit, value) and drops repeats
        key = faults[["row", "col", "reg", "bit"]]
        clash = key[1:] == key[:-1]
        if clash.any():
            f = faults[1:][clash][0]
            raise ValueError(
                f"PE ({f['row']}, {f['col']}) register '{REGISTER_ORDER[f['reg']].value}' bit {f['bit']} "
                "cannot be stuck at both 0 and 1."
            )
        faults.setflags(write=False)
        fm = cls(rows, cols)
        object.__setattr__(fm, "_faults", faults)
        return fm

    def union(self, *others: "FaultMap") -> "FaultMap":
        """All faults of this map and the others (same geometry required)."""
        parts = [self._faults]
        for o in others:
            self._check_same_shape(o, "union")
            parts.append(o._faults)
        return FaultMap._of(self.rows, self.cols, np.concatenate(parts))

    __or__ = union

    def _check_same_shape(self, other: "FaultMap", what: str) -> None:
        if not isinstance(other, FaultMap):
            raise TypeError(f"FaultMap.{what} needs FaultMap objects. Got {type(other).__name__} instead.")
        if (other.rows, other.cols) != (self.rows, self.cols):
            raise ValueError(
                f"FaultMap.{what} needs maps of one array size: {self.rows}x{self.cols} vs {other.rows}x{other.cols}."
            )

    # ----------------------------------------------------------------- views
    @property
    def records(self) -> np.ndarray:
        """(n, 5) int64 array: row, col, register code (0 weight, 1 act, 2 psum), bit, value."""
        f = self._faults
        return np.stack([f["row"], f["col"], f["reg"], f["bit"], f["value"]], axis=1).astype(np.int64).reshape(-1, 5)

    def __iter__(self) -> Iterator[Fault]:
        for r, c, g, b, v in self.records:
            yield Fault(int(r), int(c), REGISTER_ORDER[g], int(b), int(v))

    def __len__(self) -> int:
        """Number of stuck bits."""
        return len(self._faults)

    def __bool__(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FaultMap):
            return NotImplemented
        return self.shape == other.shape and np.array_equal(self._faults, other._faults)

    def __hash__(self) -> int:
        h = getattr(self, "_hash", None)
        if h is None:  # computed once: the map never changes, and memos hash it on every lookup
            h = hash((self.shape, self._faults.tobytes()))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def is_empty(self) -> bool:
        return len(self._faults) == 0

    def faulty_pes(self, register: "Register | str | None" = None) -> np.ndarray:
        """(rows, cols) bool: PEs with at least one stuck bit (in ``register`` if given)."""
        out = np.zeros((self.rows, self.cols), dtype=bool)
        f = self._faults
        if register is not None:
            f = f[f["reg"] == as_register(register).code]
        out[f["row"], f["col"]] = True
        return out

    @property
    def n_faulty_pes(self) -> int:
        return int(self.faulty_pes().sum())

    @property
    def pe_rate(self) -> float:
        """Faulty PEs / all PEs (the eFAT/FAP convention)."""
        return self.n_faulty_pes / (self.rows * self.cols)

    def bit_error_rate(self, psum_bits: int = 32) -> float:
        """Stuck bits / all register bits of the array (8 + 8 + psum_bits per PE)."""
        return len(self) / (self.rows * self.cols * (16 + psum_bits))

    def registers(self) -> tuple[Register, ...]:
        """The registers that hold at least one stuck bit, in weight, act, psum order."""
        return tuple(REGISTER_ORDER[g] for g in np.unique(self._faults["reg"]))

    def masks(self, register: "Register | str") -> tuple[np.ndarray, np.ndarray]:
        """Per-PE forcing masks of one register: ``(stuck, ones)``, each (rows, cols) int64
        (read-only: computed once per map).

        ``stuck`` has a 1 at every stuck bit, ``ones`` at every bit stuck at 1, so a register
        pattern ``x`` reads ``(x & ~stuck) | ones``.
        """
        both = self.all_masks()[as_register(register).code]
        return both[0], both[1]

    def all_masks(self) -> np.ndarray:
        """(registers, 2, rows, cols) int64: every register's ``stuck`` and ``ones``, made in one
        pass and kept (the map never changes)."""
        f = self._faults
        cached = getattr(self, "_masks_cache", None)
        if cached is not None:
            return cached
        out = np.zeros((len(REGISTER_ORDER), 2, self.rows, self.cols), dtype=np.int64)
        bits = np.left_shift(np.int64(1), f["bit"].astype(np.int64))
        reg, row, col = f["reg"].astype(np.int64), f["row"].astype(np.int64), f["col"].astype(np.int64)
        np.bitwise_or.at(out, (reg, 0, row, col), bits)
        np.bitwise_or.at(out, (reg, 1, row, col), bits * f["value"].astype(np.int64))
        out.setflags(write=False)
        object.__setattr__(self, "_masks_cache", out)
        return out

    def max_bit(self, register: "Register | str") -> int:
        """Highest stuck bit in ``register``, or -1 when it has none."""
        f = self._faults[self._faults["reg"] == as_register(register).code]
        return int(f["bit"].max()) if len(f) else -1

    def check_fits(self, rows: int, cols: int, psum_bits: int = 32) -> None:
        """Raise ValueError unless this map fits an ``rows x cols`` array with ``psum_bits``."""
        if (self.rows, self.cols) != (rows, cols):
            raise ValueError(
                f"The fault map is for a {self.rows}x{self.cols} array but the array is {rows}x{cols}."
            )
        top = self.max_bit(Register.PSUM)
        if top >= psum_bits:
            raise ValueError(
                f"The fault map has a psum fault on bit {top}, outside the {psum_bits}-bit psum register (bits 0..{psum_bits - 1})."
            )

    # ----------------------------------------------------------------- generators (sysarray.faultgen)
    @classmethod
    def random(cls, geometry: object, pe_rate: float, *, seed: object, **options: object) -> "FaultMap":
        """Faulty PEs at a PE fault rate: :func:`sysarray.faultgen.by_pe_rate` (options ``registers``,
        ``bits``, ``values``, ``exact``, ``faults_per_pe``, ``psum_bits``).

        ``geometry`` is an ArrayConfig, ``(rows, cols)`` or ``"RxC"``; ``exact=True`` gives exactly
        ``round(pe_rate * rows * cols)`` faulty PEs, ``False`` independent Bernoulli PEs.
        """
        from sysarray import faultgen

        return faultgen.by_pe_rate(geometry, pe_rate, seed=seed, **options)

    @classmethod
    def random_ber(cls, geometry: object, ber: float, *, seed: object, **options: object) -> "FaultMap":
        """Stuck bits at a bit error rate (stuck bits / all register bits): :func:`sysarray.faultgen.by_ber`
        (options ``registers``, ``bits``, ``values``, ``exact``, ``psum_bits``)."""
        from sysarray import faultgen

        return faultgen.by_ber(geometry, ber, seed=seed, **options)

    @classmethod
    def clustered(cls, geometry: object, pe_rate: float, *, seed: object, **options: object) -> "FaultMap":
        """Faulty PEs in a few Gaussian blobs: :func:`sysarray.faultgen.clustered` (options
        ``n_clusters``, ``radius``, ``registers``, ``bits``, ``values``, ``exact``, ``faults_per_pe``,
        ``psum_bits``)."""
        from sysarray import faultgen

        return faultgen.clustered(geometry, pe_rate, seed=seed, **options)

    # ----------------------------------------------------------------- files (sysarray.faultio)
    def save(self, path: object, meta: dict | None = None) -> None:
        """Write this map (and an optional JSON ``meta`` dict) atomically; see :mod:`sysarray.faultio`."""
        from sysarray import faultio

        faultio.save(self, path, meta=meta)

    @classmethod
    def load(
        cls, path: object, *, rows: int | None = None, cols: int | None = None, psum_bits: int | None = None
    ) -> "FaultMap":
        """Read and validate a map file; with ``rows``/``cols``/``psum_bits`` it must fit that array."""
        from sysarray import faultio

        return faultio.load(path, rows=rows, cols=cols, psum_bits=psum_bits)

    # ----------------------------------------------------------------- text
    def picture(self) -> str:
        """One character per PE, one line per row: '.' healthy, 'w'/'a'/'p' by register, '*' several."""
        f = self._faults
        regs = np.zeros((self.rows, self.cols), dtype=np.int64)  # bit g set: register code g is stuck
        np.bitwise_or.at(regs, (f["row"], f["col"]), np.left_shift(1, f["reg"].astype(np.int64)))
        chars = np.full(8, "*")
        chars[0] = "."
        for r in REGISTER_ORDER:
            chars[1 << r.code] = r.value[0]
        width = len(str(self.rows - 1))
        head = " " * (width + 1) + "".join(str(c % 10) for c in range(self.cols))
        lines = [f"{r:>{width}} " + "".join(chars[regs[r]]) for r in range(self.rows)]
        return "\n".join([head] + lines)

    def to_text(self, max_faults: int | None = None, picture_max_cols: int = 64) -> str:
        """A readable listing: the summary, one line per stuck bit, and the :meth:`picture`.

        ``max_faults`` limits the listed faults (None lists all); the picture is included when the
        array has at most ``picture_max_cols`` columns.
        """
        lines = [self.summary()]
        if len(self):
            lines.append(f"{'row':>5} {'col':>5}  {'register':<8} {'bit':>3}  value")
            shown = self.records if max_faults is None else self.records[:max_faults]
            for r, c, g, b, v in shown:
                lines.append(f"{r:>5} {c:>5}  {REGISTER_ORDER[g].value:<8} {b:>3}  {v}")
            if len(shown) < len(self):
                lines.append(f"... and {len(self) - len(shown)} more")
        if self.cols <= picture_max_cols:
            lines.append("")
            lines.append(self.picture())
        return "\n".join(lines)

    def summary(self) -> str:
        regs = ", ".join(r.value for r in self.registers()) or "none"
        return (
            f"FaultMap {self.rows}x{self.cols}: {len(self)} stuck bit(s) in {self.n_faulty_pes} PE(s) "
            f"(PE rate {self.pe_rate:.4g}); registers: {regs}"
        )

    def __repr__(self) -> str:
        return f"<{self.summary()}>"
