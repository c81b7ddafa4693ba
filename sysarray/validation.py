"""Argument checks shared by every public function of sysarray, accel_models and mitigation.

One error format (scikit-learn's): ``The '<name>' argument of <where> must be <requirement>. Got
<value> instead.`` A wrong type raises ``TypeError``, a value of the right type outside what is
allowed raises ``ValueError``; the command line turns both into one line and exit status 2.

One seed rule: a seed is a non-negative integer (``bool`` is not an integer here). Functions that
draw from a stream may also take a ``numpy.random.Generator`` or ``SeedSequence``
(:func:`as_rng`); anything recorded in a file (a campaign's manifest) takes an integer only
(:func:`check_seed`).
"""
from __future__ import annotations

import enum
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

import numpy as np

E = TypeVar("E", bound=enum.Enum)

MAX_SEED = (1 << 64) - 1  # numpy's SeedSequence takes any non-negative integer; JSON and CSV keep 64 bits


def _message(name: str, where: str, requirement: str, value: object) -> str:
    return f"The '{name}' argument of {where} must be {requirement}. Got {value!r} instead."


def is_int(value: object) -> bool:
    """An integer that is not a bool (numpy integers included)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: object) -> bool:
    """A real number that is not a bool (numpy scalars included)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    lo, hi = (f"{v:g}" if isinstance(v, float) else v for v in (lo, hi))
    if lo is not None and hi is not None:
        if not (lo_open or hi_open) and all(isinstance(v, int) for v in (lo, hi)):
            return f"within {lo}..{hi}"
        return f"within {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def check_int(value: object, name: str, where: str, *, lo: int | None = None, hi: int | None = None,
              none_ok: bool = False, what: str | None = None) -> int | None:
    """``value`` as a Python int within ``lo..hi`` (either bound optional); None passes with
    ``none_ok``. ``what`` names the requirement in the message (default: from the bounds)."""
    if type(value) is int and (lo is None or value >= lo) and (hi is None or value <= hi):
        return value  # the common case, ahead of the general test: shape checks run on every layer call
    if value is None and none_ok:
        return None
    if is_int(value):
        v = int(value)
        if (lo is None or v >= lo) and (hi is None or v <= hi):
            return v
    if what is None:
        bounds = _range_text(lo, hi)
        what = "an integer" + (f" {bounds}" if bounds else "")
    what += " or None" if none_ok else ""
    raise (ValueError if is_int(value) else TypeError)(_message(name, where, what, value))


def check_positive_int(value: object, name: str, where: str, *, none_ok: bool = False) -> int | None:
    """A positive integer (``>= 1``)."""
    return check_int(value, name, where, lo=1, none_ok=none_ok, what="a positive integer")


def check_float(value: object, name: str, where: str, *, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False, none_ok: bool = False) -> float | None:
    """``value`` as a finite Python float within the given bounds (open or closed)."""
    if value is None and none_ok:
        return None
    bounds = _range_text(lo, hi, lo_open, hi_open)
    what = "a finite number" + (f" {bounds}" if bounds else "") + (" or None" if none_ok else "")
    if not is_number(value):
        raise TypeError(_message(name, where, what, value))
    v = float(value)
    bad = not math.isfinite(v)
    if lo is not None:
        bad = bad or (v <= lo if lo_open else v < lo)
    if hi is not None:
        bad = bad or (v >= hi if hi_open else v > hi)
    if bad:
        raise ValueError(_message(name, where, what, value))
    return v


def check_fraction(value: object, name: str, where: str, *, open_ends: bool = False) -> float:
    """A number within [0, 1] (or (0, 1) with ``open_ends``)."""
    return check_float(value, name, where, lo=0.0, hi=1.0, lo_open=open_ends, hi_open=open_ends)


def check_bool(value: object, name: str, where: str) -> bool:
    """True or False (numpy bools included; 0 and 1 are not booleans here)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(_message(name, where, "True or False", value))
    return bool(value)


def check_seed(seed: object, where: str, name: str = "seed") -> int:
    """The seed rule: a non-negative integer (below 2**64)."""
    return check_int(seed, name, where, lo=0, hi=MAX_SEED, what="a non-negative integer (below 2**64)")


def as_rng(seed: object, where: str, name: str = "seed") -> np.random.Generator:
    """A numpy Generator from a seed (:func:`check_seed`), a SeedSequence or a Generator (returned as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if not is_int(seed):
        raise TypeError(_message(name, where, "a non-negative integer, a numpy SeedSequence or a numpy Generator "
                                              "(an explicit seed makes the result reproducible)", seed))
    return np.random.default_rng(check_seed(seed, where, name))


def check_choice(value: object, name: str, where: str, choices: Sequence[str]) -> str:
    """One of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(_message(name, where, f"one of {', '.join(map(str, choices))}", value))
    return value


def check_enum(value: object, enum_type: type[E], name: str, where: str) -> E:
    """A member of ``enum_type``, given as the member or its value."""
    try:
        return enum_type(getattr(value, "value", value))
    except (ValueError, TypeError):
        allowed = ", ".join(str(m.value) for m in enum_type)
        raise ValueError(_message(name, where, f"one of {allowed}", value)) from None


def check_instance(value: object, types: type | tuple[type, ...], name: str, where: str, *,
                   none_ok: bool = False, what: str | None = None) -> Any:
    """``value`` itself when it is an instance of ``types`` (or None with ``none_ok``)."""
    if value is None and none_ok:
        return None
    if not isinstance(value, types):
        if what is None:
            names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
            what = " or ".join(("an " if n[0].lower() in "aeiou" else "a ") + n for n in names)
        if none_ok:
            what += " or None"
        raise TypeError(f"The '{name}' argument of {where} must be {what}. Got {type(value).__name__} instead.")
    return value


def check_sequence(values: object, name: str, where: str, *, nonempty: bool = True, distinct: bool = False) -> list:
    """``values`` (any iterable but a string) as a list, non-empty and without repeats if asked."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(_message(name, where, "a sequence", values))
    out = list(values)
    if nonempty and not out:
        raise ValueError(_message(name, where, "a non-empty sequence", out))
    if distinct and len(set(out)) != len(out):
        raise ValueError(_message(name, where, "a sequence of distinct values", out))
    return out


def check_path(path: object, name: str, where: str, *, exists: bool = False, kind: str | None = None) -> Path:
    """A path (str or os.PathLike). ``exists``: it must exist; ``kind`` "file" or "dir": and be one."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(_message(name, where, "a path (a non-empty str or os.PathLike)", path))
    p = Path(path)
    if exists and not p.exists():
        raise FileNotFoundError(f"The '{name}' argument of {where} must be an existing path. Got '{p}' instead "
                                "(no such file or folder).")
    if kind == "file" and p.exists() and not p.is_file():
        raise ValueError(_message(name, where, "a file", str(p)))
    if kind == "dir" and p.exists() and not p.is_dir():
        raise ValueError(_message(name, where, "a folder", str(p)))
    return p


def check_output_path(path: object, name: str, where: str, *, kind: str = "file") -> Path:
    """A path to write: a ``kind`` "file" must not be an existing folder, a "dir" not an existing
    file, and the nearest existing parent must be a writable folder. Checked before any work so
    that a long run does not fail at its end."""
    p = check_path(path, name, where, kind=kind)
    parent = p if kind == "dir" and p.exists() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(_message(name, where, "a path whose parent is a folder", str(p)))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"The '{name}' argument of {where} must be a writable path. Got '{p}' instead "
                              f"('{parent}' is not writable).")
    return p


def _dtype_name(d: Any) -> str:
    if isinstance(d, type) and issubclass(d, np.generic):
        return np.dtype(d).name
    return str(d).replace("torch.", "")


def check_array_dtype(x: Any, name: str, where: str, dtypes: Sequence[Any]) -> None:
    """``x.dtype`` (numpy or torch) must be one of ``dtypes``."""
    if x.dtype not in tuple(dtypes):
        allowed = " or ".join(_dtype_name(d) for d in dtypes)
        raise TypeError(f"The '{name}' argument of {where} must have dtype {allowed}. Got {_dtype_name(x.dtype)} instead.")


def check_device(device: object, name: str, where: str, *, cpu_as_none: bool = False):
    """``device`` as a ``torch.device`` on which the engines and the trainer run: a CPU or an
    existing CUDA device; None passes through (the caller's default), and so does the CPU as
    None with ``cpu_as_none`` (callers that do something only on a GPU)."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"The '{name}' argument of {where} must be a torch device such as 'cpu' or 'cuda'. "
                         f"Got {device!r} instead.") from None
    if dev.type not in ("cpu", "cuda"):  # the fast engine's kernels and the cycle engine's copies are CPU or CUDA
        raise ValueError(f"The '{name}' argument of {where} must be a CPU or CUDA device such as 'cpu' or 'cuda:0'. "
                         f"Got {device!r} instead.")
    why = cuda_unavailable() if dev.type == "cuda" else None
    if why is not None:
        raise ValueError(f"The '{name}' argument of {where} is {device!r}, but this torch has no CUDA device: torch "
                         f"{torch.__version__} {why}. Use 'cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"The '{name}' argument of {where} is {device!r}, but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s), numbered from 0.")
    return None if cpu_as_none and dev.type == "cpu" else dev


def cuda_unavailable() -> str | None:
    """Why torch cannot run on CUDA here ("is a CPU-only build" or "sees no CUDA device"), or None
    when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    return "is a CPU-only build" if torch.version.cuda is None else "sees no CUDA device"
