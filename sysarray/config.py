"""Array configuration: geometry, dataflow and partial-sum width of one systolic array."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from sysarray.validation import check_bool, check_enum, check_int, check_positive_int

CONFIG_VERSION = 1


class Dataflow(str, enum.Enum):
    """Which operand stays in the PEs (docs/design.md §2.1, SCALE-Sim's convention)."""

    WS = "ws"  # weight-stationary: rows hold K, columns hold N, M streams
    OS = "os"  # output-stationary: rows hold M, columns hold N, K streams
    IS = "is"  # input-stationary: rows hold K, columns hold M, N streams


MIN_PSUM_BITS = 17  # a 16-bit product plus a sign bit must fit
MAX_PSUM_BITS = 32


def parse_array(text: str) -> tuple[int, int]:
    """Parse ``"RxC"`` (rows x columns), e.g. ``"16x16"``, into ``(rows, cols)``."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"The array size must look like ROWSxCOLS, e.g. 16x16. Got {text!r} instead.")
    rows, cols = (int(p) for p in parts)
    if rows < 1 or cols < 1:
        raise ValueError(f"The array size must have at least 1 row and 1 column. Got {text!r} instead.")
    return rows, cols


@dataclass(frozen=True)
class ArrayConfig:
    """One systolic array: ``rows`` x ``cols`` PEs, a dataflow, and the psum register width.

    ``psum_bits`` is the width in bits of the in-array partial-sum/accumulator register
    (two's complement, wraps on overflow); 32 is TPU-like, 20 Gemmini-like. ``bypass`` turns on
    the fault-aware-pruning hardware: a faulty PE forwards its inputs and adds nothing.

    ``spare_rows`` and ``spare_cols``: redundant rows and columns of PEs fabricated beside the
    array (docs/repair.md). ``rows x cols`` is the logical array that workloads and timing see;
    the physical array is ``physical_shape`` = ``(rows + spare_rows, cols + spare_cols)`` and a
    repair plan (:mod:`sysarray.repair`) fuses out ``spare_rows`` rows and ``spare_cols`` columns.
    """

    rows: int
    cols: int
    dataflow: Dataflow | str = Dataflow.WS
    psum_bits: int = 32
    bypass: bool = False
    spare_rows: int = 0
    spare_cols: int = 0

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            object.__setattr__(self, name, check_positive_int(getattr(self, name), name, "ArrayConfig"))
        flow = str(getattr(self.dataflow, "value", self.dataflow)).lower()
        object.__setattr__(self, "dataflow", check_enum(flow, Dataflow, "dataflow", "ArrayConfig"))
        object.__setattr__(self, "psum_bits", check_int(self.psum_bits, "psum_bits", "ArrayConfig", lo=MIN_PSUM_BITS,
                                                        hi=MAX_PSUM_BITS))
        object.__setattr__(self, "bypass", check_bool(self.bypass, "bypass", "ArrayConfig"))
        for name in ("spare_rows", "spare_cols"):
            object.__setattr__(self, name, check_int(getattr(self, name), name, "ArrayConfig", lo=0))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def n_pes(self) -> int:
        return self.rows * self.cols

    @property
    def has_spares(self) -> bool:
        return bool(self.spare_rows or self.spare_cols)

    @property
    def physical_shape(self) -> tuple[int, int]:
        """(rows, cols) of the fabricated array, spares included."""
        return (self.rows + self.spare_rows, self.cols + self.spare_cols)

    def replace(self, **changes: Any) -> "ArrayConfig":
        """A copy with some fields changed (validated again)."""
        return ArrayConfig(**{**self._fields(), **changes})

    def _fields(self) -> dict[str, Any]:
        d = asdict(self)
        d["dataflow"] = self.dataflow.value
        return d

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; the spare counts appear only when non-zero, so an array without spares has
        the same dict (and campaign configuration hash) as before spares existed."""
        d = self._fields()
        for name in ("spare_rows", "spare_cols"):
            if not d[name]:
                del d[name]
        return {"version": CONFIG_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArrayConfig":
        d = dict(d)
        version = d.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(f"ArrayConfig version {version!r} is not supported; this sysarray reads version {CONFIG_VERSION}.")
        unknown = set(d) - {"rows", "cols", "dataflow", "psum_bits", "bypass", "spare_rows", "spare_cols"}
        if unknown:
            raise ValueError(f"ArrayConfig got unknown field(s) {sorted(unknown)}.")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "ArrayConfig":
        """A named array: ``gemmini16``, ``scale32``, ``scale32os``, ``tpu256`` (see ``PRESETS``)."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"Unknown array preset {name!r}. Known presets: {', '.join(sorted(PRESETS))}.") from None
        return base.replace(**changes) if changes else base

    def __str__(self) -> str:
        extra = ", bypass" if self.bypass else ""
        if self.has_spares:
            extra += f", {self.spare_rows} spare row(s) and {self.spare_cols} spare column(s)"
        return f"{self.rows}x{self.cols} {self.dataflow.value.upper()}, {self.psum_bits}-bit psum{extra}"


PRESETS: dict[str, ArrayConfig] = {
    # Gemmini's default 16x16 mesh, weight-stationary, 20-bit accumulation inside the mesh.
    "gemmini16": ArrayConfig(16, 16, Dataflow.WS, psum_bits=20),
    # SCALE-Sim's 32x32 example arrays.
    "scale32": ArrayConfig(32, 32, Dataflow.WS),
    "scale32os": ArrayConfig(32, 32, Dataflow.OS),
    "scale32is": ArrayConfig(32, 32, Dataflow.IS),
    # TPU v1: 256x256 weight-stationary, 32-bit accumulators.
    "tpu256": ArrayConfig(256, 256, Dataflow.WS),
}
