"""SCALE-Sim v2 files: the ``.cfg`` config, the topology CSVs, and ``COMPUTE_REPORT.csv``.

Hardware (the config) and workload (the topology) are read separately and validated strictly:
every error is a ``ValueError`` that names the file, the line and what was expected. Timing is
:func:`sysarray.timing.gemm_timing`, stall-free, so "Stall Cycles" is always 0.

Formats (SCALE-Sim v2's ``scale_config.py``, ``topology_utils.py``, ``simulator.py``):

- Config: INI. ``[architecture_presets]`` must give ``ArrayHeight``, ``ArrayWidth`` (positive
  integers) and ``Dataflow`` (``os``, ``ws`` or ``is``, any case); every other key (SRAM sizes,
  offsets, bandwidths, ...) and section is accepted and ignored. ``[general] run_name`` is read if
  present. Keys are case-insensitive; ``key: value`` and ``key = value`` both work.
- Topology: the first line is a header and is skipped (it must not look like a data row), blank
  lines are skipped, text after ``#`` is a comment, and the trailing comma SCALE-Sim writes is
  optional. Conv rows: ``Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width,
  Channels, Num Filter, Strides,``. GEMM rows: ``Layer name, M, N, K,``. As in SCALE-Sim, a conv
  layer whose name contains ``DP`` (depth-wise) becomes ``Channels`` layers of one channel each,
  named ``<name>Channel_<i>``.
- Report: header ``LayerID, Total Cycles, Stall Cycles, Overall Util %, Mapping Efficiency %,
  Compute Util %,`` then one row per layer, fields joined by ``", "``, each row ending in ``","``,
  numbers written with ``str()`` (shortest round-trip floats), e.g.
  ``0, 112283, 0, 91.68309650614964, 94.53125, 90.78000992063492,``.
"""
from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sysarray.config import ArrayConfig, Dataflow
from sysarray.stats import GemmStats
from sysarray.timing import conv_gemm_dims, gemm_timing

__all__ = [
    "COMPUTE_REPORT_HEADER",
    "CONV_COLUMNS",
    "CyclesRun",
    "GEMM_COLUMNS",
    "ScaleSimConfig",
    "TopologyLayer",
    "format_compute_row",
    "read_config",
    "read_topology",
    "run_cycles",
    "write_compute_report",
]

COMPUTE_REPORT_HEADER = "LayerID, Total Cycles, Stall Cycles, Overall Util %, Mapping Efficiency %, Compute Util %,"
CONV_COLUMNS = (
    "Layer name", "IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width", "Channels", "Num Filter", "Strides",
)
GEMM_COLUMNS = ("Layer name", "M", "N", "K")
TOPOLOGY_KINDS = ("conv", "gemm")
_ARCH = "architecture_presets"


@dataclass(frozen=True)
class ScaleSimConfig:
    """What sysarray takes from a SCALE-Sim config: the run name and the array."""

    run_name: str
    array: ArrayConfig


@dataclass(frozen=True)
class TopologyLayer:
    """One layer of a topology as the GEMM ``Y[m x n] = A[m x k] . W[k x n]`` that runs on the array.

    ``line`` is the 1-based line of the topology file it came from.
    """

    name: str
    m: int
    k: int
    n: int
    line: int = 0


@dataclass(frozen=True)
class CyclesRun:
    """The result of :func:`run_cycles`: inputs as read, one GemmStats per layer, the report path."""

    config: ScaleSimConfig
    layers: list[TopologyLayer]
    stats: list[GemmStats]
    report: Path


# ----------------------------------------------------------------------------------------- config


def _key_line(lines: list[str], section: str, key: str) -> int:
    """1-based line of ``key`` inside ``[section]`` (0 if not found): for error messages only."""
    current = None
    pattern = re.compile(rf"\s*{re.escape(key)}\s*[:=]", re.IGNORECASE)
    for i, text in enumerate(lines, start=1):
        head = re.match(r"\s*\[([^\]]*)\]", text)
        if head:
            current = head.group(1).strip()
        elif current == section and pattern.match(text):
            return i
    return 0


def _where(path: Path, line: int) -> str:
    return f"{path}, line {line}" if line else f"{path}"


def _read_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 text is a ValueError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start} cannot be decoded).") from None


def _ini_error_line(exc: configparser.Error) -> int:
    lineno = getattr(exc, "lineno", 0)
    if not lineno and getattr(exc, "errors", None):  # ParsingError lists (lineno, line) pairs
        lineno = exc.errors[0][0]
    return int(lineno or 0)


def _ini_error_text(exc: configparser.Error, bad_line: str) -> str:
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return "it must start with a [section] header such as [general] or [architecture_presets]."
    if isinstance(exc, configparser.ParsingError):
        return f"expected 'key: value', 'key = value' or '[section]'. Got {bad_line!r} instead."
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"'{exc.option}' is set twice in [{exc.section}]."
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"the section [{exc.section}] appears twice."
    return " ".join(str(exc).split())


def _config_int(parser: configparser.ConfigParser, lines: list[str], path: Path, key: str) -> int:
    raw = parser.get(_ARCH, key).strip()
    if not re.fullmatch(r"\+?\d+", raw) or int(raw) < 1:
        where = _where(path, _key_line(lines, _ARCH, key))
        raise ValueError(f"{where}: '{key}' in [{_ARCH}] must be a positive integer. Got {raw!r} instead.")
    return int(raw)


def read_config(path: str | os.PathLike) -> ScaleSimConfig:
    """Read a SCALE-Sim v2 ``.cfg`` file into the run name and an :class:`ArrayConfig`.

    The array is ``ArrayHeight`` rows x ``ArrayWidth`` columns with the given ``Dataflow`` and
    sysarray's defaults for the rest (32-bit psum, no bypass). ``run_name`` defaults to the file
    name without its extension. Raises FileNotFoundError, or ValueError naming file and line.
    """
    path = Path(path)
    text = _read_text(path)
    lines = text.splitlines()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        line = _ini_error_line(exc)
        bad = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        raise ValueError(
            f"{_where(path, line)}: not a valid SCALE-Sim config (INI) file: {_ini_error_text(exc, bad)}"
        ) from None
    if not parser.has_section(_ARCH):
        raise ValueError(f"{path}: the config must have an [{_ARCH}] section with ArrayHeight, ArrayWidth and Dataflow.")
    for key in ("ArrayHeight", "ArrayWidth", "Dataflow"):
        if not parser.has_option(_ARCH, key):
            raise ValueError(f"{path}: the [{_ARCH}] section must set '{key}'; it is missing.")
    rows = _config_int(parser, lines, path, "ArrayHeight")
    cols = _config_int(parser, lines, path, "ArrayWidth")
    flow = parser.get(_ARCH, "Dataflow").strip().lower()
    allowed = [d.value for d in Dataflow]
    if flow not in allowed:
        where = _where(path, _key_line(lines, _ARCH, "Dataflow"))
        raise ValueError(
            f"{where}: 'Dataflow' in [{_ARCH}] must be one of {', '.join(allowed)}. "
            f"Got {parser.get(_ARCH, 'Dataflow').strip()!r} instead."
        )
    run_name = parser.get("general", "run_name", fallback="").strip() or path.stem
    return ScaleSimConfig(run_name=run_name, array=ArrayConfig(rows, cols, flow))


# --------------------------------------------------------------------------------------- topology


def _fields(text: str) -> list[str]:
    """Split one CSV line into stripped fields, dropping a ``#`` comment and the trailing comma."""
    body = text.split("#", 1)[0]
    fields = [f.strip() for f in body.split(",")]
    if len(fields) > 1 and fields[-1] == "":
        fields.pop()
    return fields


def _is_count(field: str) -> bool:
    return re.fullmatch(r"\+?\d+", field) is not None


def _parse_row(fields: list[str], columns: tuple[str, ...], path: Path, line: int, kind: str) -> list[int]:
    """The integer fields of a data row, after checking the count, names and values."""
    where = _where(path, line)
    expected = ", ".join(columns) + ","
    if len(fields) != len(columns):
        other = {len(CONV_COLUMNS): "conv", len(GEMM_COLUMNS): "gemm"}.get(len(fields))
        hint = f" (it looks like a {other} topology)" if other and other != kind else ""
        raise ValueError(
            f"{where}: a {kind} topology row must have {len(columns)} fields ({expected}). "
            f"Got {len(fields)} instead{hint}."
        )
    if not fields[0]:
        raise ValueError(f"{where}: the '{columns[0]}' field must not be empty.")
    values = []
    for column, field in zip(columns[1:], fields[1:]):
        if not _is_count(field) or int(field) < 1:
            raise ValueError(f"{where}: '{column}' must be a positive integer. Got {field!r} instead.")
        values.append(int(field))
    return values


def _conv_layers(name: str, values: list[int], path: Path, line: int) -> list[TopologyLayer]:
    h, w, fh, fw, ch, nf, s = values
    where = _where(path, line)
    if fh > h:
        raise ValueError(f"{where}: 'Filter Height' must be at most 'IFMAP Height' ({h}). Got {fh} instead.")
    if fw > w:
        raise ValueError(f"{where}: 'Filter Width' must be at most 'IFMAP Width' ({w}). Got {fw} instead.")
    if "DP" in name:
        # SCALE-Sim's depth-wise convention: one single-channel layer per channel.
        m, k, n = conv_gemm_dims(h, w, fh, fw, 1, nf, s)
        return [TopologyLayer(f"{name}Channel_{i}", m, k, n, line) for i in range(ch)]
    m, k, n = conv_gemm_dims(h, w, fh, fw, ch, nf, s)
    return [TopologyLayer(name, m, k, n, line)]


def read_topology(path: str | os.PathLike, kind: str = "conv") -> list[TopologyLayer]:
    """Read a SCALE-Sim v2 topology CSV (``kind`` ``"conv"`` or ``"gemm"``) into GEMM layers.

    Conv layers are lowered with :func:`sysarray.timing.conv_gemm_dims` (no padding, batch 1);
    GEMM rows are ``name, M, N, K`` (note the order). Returns the layers in file order (depth-wise
    ``DP`` layers expanded). Raises FileNotFoundError, or ValueError naming file and line.
    """
    if kind not in TOPOLOGY_KINDS:
        raise ValueError(f"The 'kind' argument of read_topology must be one of {', '.join(TOPOLOGY_KINDS)}. Got {kind!r} instead.")
    path = Path(path)
    lines = _read_text(path).splitlines()
    columns = CONV_COLUMNS if kind == "conv" else GEMM_COLUMNS
    if not lines:
        raise ValueError(f"{path}: the topology file is empty; it needs a header line and at least one layer.")
    header = _fields(lines[0])
    if len(header) == len(columns) and all(_is_count(f) for f in header[1:]):
        raise ValueError(
            f"{_where(path, 1)}: the first line must be a header ({', '.join(columns)},); "
            f"it looks like a layer, which SCALE-Sim would skip."
        )
    layers: list[TopologyLayer] = []
    for number, text in enumerate(lines[1:], start=2):
        fields = _fields(text)
        if fields == [""]:
            continue
        values = _parse_row(fields, columns, path, number, kind)
        name = fields[0]
        if kind == "conv":
            layers.extend(_conv_layers(name, values, path, number))
        else:
            m, n, k = values
            layers.append(TopologyLayer(name, m, k, n, number))
    if not layers:
        raise ValueError(f"{path}: the topology has no layers after its header line.")
    return layers


# ----------------------------------------------------------------------------------------- report


def format_compute_row(layer_id: int, stats: GemmStats) -> str:
    """One ``COMPUTE_REPORT.csv`` row (no newline), formatted exactly as SCALE-Sim v2 writes it."""
    items = [stats.cycles - 1, 0, stats.overall_util, stats.mapping_efficiency, stats.compute_util]
    return f"{layer_id}, " + ", ".join(str(x) for x in items) + ","


def write_compute_report(path: str | os.PathLike, stats: list[GemmStats]) -> Path:
    """Write SCALE-Sim v2's ``COMPUTE_REPORT.csv`` for ``stats`` (one per layer, LayerID = index).

    ``path`` is the file, or a directory in which ``COMPUTE_REPORT.csv`` is written.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "COMPUTE_REPORT.csv"
    rows = [COMPUTE_REPORT_HEADER] + [format_compute_row(i, s) for i, s in enumerate(stats)]
    path.write_text("\n".join(rows) + "\n")
    return path


def run_cycles(
    config_path: str | os.PathLike,
    topology_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    kind: str = "conv",
) -> CyclesRun:
    """SCALE-Sim's compute report for a config and a topology: ``out_dir/COMPUTE_REPORT.csv``.

    Creates ``out_dir`` if needed. Every layer is timed with :func:`sysarray.timing.gemm_timing`.
    """
    config = read_config(config_path)
    layers = read_topology(topology_path, kind)
    stats = [gemm_timing(layer.m, layer.k, layer.n, config.array) for layer in layers]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = write_compute_report(out / "COMPUTE_REPORT.csv", stats)
    return CyclesRun(config=config, layers=layers, stats=stats, report=report)
