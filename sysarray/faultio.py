"""The fault-map file format (docs/design.md §2.10): one versioned ``.npz`` archive, validated on load.

A fault-map file is a numpy ``.npz`` archive (a zip of ``.npy`` members, written compressed, no
pickled objects) with exactly these keys:

==========  ==================  ==========================================================
key         numpy value         meaning
==========  ==================  ==========================================================
``format``  0-d str             always ``"sysarray-faultmap"``
``version`` 0-d int64           the format version, ``1``
``rows``    0-d int64           array rows R (>= 1)
``cols``    0-d int64           array columns C (>= 1)
``faults``  (n, 5) int64        one stuck bit per row: ``row, col, register code, bit, value``;
                                register codes 0 ``weight``, 1 ``act``, 2 ``psum``; ``value`` 0
                                or 1; rows sorted, no repeats; ``n`` may be 0 (shape (0, 5))
``meta``    0-d str, optional   a JSON object: how the map was made (generator, settings,
                                seed, chip index, ...); free-form, not needed to load the map
==========  ==================  ==========================================================

Loading checks every key, dtype, shape and range (``0 <= row < R``, ``0 <= col < C``, bit within
the register's width: 0..7 for ``weight``/``act``, 0..31 for ``psum``, value 0/1) and refuses a bit
stuck at both 0 and 1; each problem is a ValueError naming the file. ``load(..., rows=, cols=,
psum_bits=)`` also checks that the map fits a given array. Saving writes a temporary file in the
target's directory and renames it over the target (``os.replace``), so a crash never leaves a
half-written map. The path is used exactly as given (no ``.npz`` is appended).

Files whose ``version`` is another number are refused; a reader of version ``v`` reads only ``v``.
"""
from __future__ import annotations

import enum
import json
import os
import zipfile
from typing import Any

import numpy as np

from sysarray.atomic import atomic_write
from sysarray.faults import FaultMap
from sysarray.validation import check_instance, check_output_path

FORMAT = "sysarray-faultmap"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "rows", "cols", "faults")
OPTIONAL_KEYS = ("meta",)


def jsonable(obj: Any) -> Any:
    """``obj`` with tuples, ranges, sets, numpy scalars/arrays and enums turned into JSON types."""
    if isinstance(obj, dict):
        return {str(k.value if isinstance(k, enum.Enum) else k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value)
    if isinstance(obj, (list, tuple, range)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(jsonable(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"The 'meta' of a fault-map file must hold JSON values. Got {obj!r} ({type(obj).__name__}) instead.")


# --------------------------------------------------------------------------- save
def save(fm: FaultMap, path: "str | os.PathLike[str]", meta: dict | None = None) -> None:
    """Write ``fm`` (and optional JSON-ready ``meta``) to ``path`` atomically, in the format above."""
    check_instance(fm, FaultMap, "fm", "save")
    path = check_output_path(path, "path", "FaultMap.save")
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "rows": np.array(fm.rows, dtype=np.int64),
        "cols": np.array(fm.cols, dtype=np.int64),
        "faults": fm.records.astype(np.int64).reshape(-1, 5),
    }
    if meta is not None:
        check_instance(meta, dict, "meta", "save", what="a dict (a JSON object)")
        arrays["meta"] = np.array(json.dumps(jsonable(meta), sort_keys=True))
    _atomic_write(os.fspath(path), arrays)


def _atomic_write(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write the npz atomically (:func:`sysarray.atomic.atomic_write`: an existing file keeps its
    mode, a new one gets the umask's)."""
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays), binary=True)


# --------------------------------------------------------------------------- load
class _Bad(ValueError):
    """A problem found while reading one file; turned into a message naming the file."""


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Fault map file '{path}' does not exist.")
    if os.path.isdir(path):
        raise _Bad("it is a directory, not a .npz file")
    if not zipfile.is_zipfile(path):
        raise _Bad("it is not a .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                raise _Bad(f"missing key(s) {missing}; a fault-map file has {list(REQUIRED_KEYS)} and optionally 'meta'")
            extra = [k for k in keys if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
            if extra:
                raise _Bad(f"unexpected key(s) {extra}; a fault-map file has {list(REQUIRED_KEYS)} and optionally 'meta'")
            out = {}
            for k in keys:
                try:
                    out[k] = npz[k]
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                    raise _Bad(f"key '{k}' could not be read as a numpy array ({e})") from e
            return out
    except _Bad:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _Bad(f"it could not be read as a .npz file ({e})") from e


def _scalar_str(arrays: dict[str, np.ndarray], key: str) -> str:
    a = arrays[key]
    if not isinstance(a, np.ndarray) or a.ndim != 0 or a.dtype.kind != "U":
        raise _Bad(f"key '{key}' must be a 0-d string; got {_describe(a)}")
    return str(a[()])


def _scalar_int(arrays: dict[str, np.ndarray], key: str) -> int:
    a = arrays[key]
    if not isinstance(a, np.ndarray) or a.ndim != 0 or a.dtype.kind not in "iu":
        raise _Bad(f"key '{key}' must be a 0-d integer; got {_describe(a)}")
    return int(a[()])


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"shape {a.shape}, dtype {a.dtype}"
    return type(a).__name__


def _parse(arrays: dict[str, np.ndarray]) -> tuple[FaultMap, dict]:
    fmt = _scalar_str(arrays, "format")
    if fmt != FORMAT:
        raise _Bad(f"its format is {fmt!r}, not {FORMAT!r}")
    version = _scalar_int(arrays, "version")
    if version != VERSION:
        raise _Bad(f"format version {version} is not supported; this sysarray reads version {VERSION}")
    rows, cols = _scalar_int(arrays, "rows"), _scalar_int(arrays, "cols")
    for name, v in (("rows", rows), ("cols", cols)):
        if not 1 <= v <= 1 << 20:
            raise _Bad(f"'{name}' must be within 1..{1 << 20}; got {v}")
    faults = arrays["faults"]
    if faults.ndim != 2 or faults.shape[1] != 5 or faults.dtype.kind not in "iu":
        raise _Bad(f"key 'faults' must be an (n, 5) integer array; got {_describe(faults)}")
    meta: dict = {}
    if "meta" in arrays:
        text = _scalar_str(arrays, "meta")
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as e:
            raise _Bad(f"key 'meta' is not valid JSON ({e})") from e
        if not isinstance(meta, dict):
            raise _Bad(f"key 'meta' must be a JSON object; got {type(meta).__name__}")
    try:
        fm = FaultMap.from_records(rows, cols, faults)
    except ValueError as e:
        raise _Bad(f"bad fault: {str(e).rstrip('.')}") from e  # the file's message adds its own period
    return fm, meta


def load_with_meta(
    path: "str | os.PathLike[str]", *, rows: int | None = None, cols: int | None = None, psum_bits: int | None = None
) -> tuple[FaultMap, dict]:
    """The map in ``path`` and its ``meta`` dict (``{}`` when the file has none).

    With ``rows`` and ``cols`` (both or neither) the map must be for that array; with
    ``psum_bits`` its psum faults must lie within the register. Every problem is a ValueError that
    names the file; a missing file is a FileNotFoundError.
    """
    path = os.fspath(path)
    if (rows is None) != (cols is None):
        raise ValueError(f"load needs both 'rows' and 'cols' to check the array size, or neither. Got rows={rows!r}, cols={cols!r}.")
    try:
        fm, meta = _parse(_read_arrays(path))
        if rows is not None:
            if fm.shape != (rows, cols):
                raise _Bad(f"the file is for a {fm.rows}x{fm.cols} array but the array is {rows}x{cols}")
        if psum_bits is not None:
            top = fm.max_bit("psum")
            if top >= psum_bits:
                raise _Bad(f"it has a psum fault on bit {top}, outside the {psum_bits}-bit psum register (bits 0..{psum_bits - 1})")
    except _Bad as e:
        raise ValueError(f"Fault map file '{path}' is not usable: {e}.") from e.__cause__
    return fm, meta


def load(
    path: "str | os.PathLike[str]", *, rows: int | None = None, cols: int | None = None, psum_bits: int | None = None
) -> FaultMap:
    """The map in ``path``, validated (see :func:`load_with_meta`)."""
    return load_with_meta(path, rows=rows, cols=cols, psum_bits=psum_bits)[0]


def read_meta(path: "str | os.PathLike[str]") -> dict:
    """The ``meta`` dict of the (validated) file ``path``; ``{}`` when it has none."""
    return load_with_meta(path)[1]
