"""Seeded, reproducible fault-map generators (docs/design.md §2.10).

Every generator takes a ``seed`` (an int, a :class:`numpy.random.SeedSequence` or a
:class:`numpy.random.Generator`) and the array geometry (an :class:`~sysarray.ArrayConfig`, a
``(rows, cols)`` pair or an ``"RxC"`` string) and returns a :class:`~sysarray.FaultMap`. The same
seed and arguments give the same map (with the same numpy version: numpy does not promise that
``Generator`` streams never change between releases).

Which stuck bits a generator may draw is set by three choices, shared by all generators:

- ``registers``: a register name, a tuple of names, or a dict ``name -> weight`` (weights are
  normalised to sum to 1; a weight of 0 excludes the register). Default: all three registers.
- ``bits``: the allowed bit positions, either one iterable for every register or a dict
  ``register -> iterable`` (registers missing from the dict allow all their bits). Default: every
  bit of the register: ``weight``/``act`` 0..7, ``psum`` 0..psum_bits-1, where ``psum_bits`` comes
  from the ArrayConfig or the ``psum_bits`` argument, else 32. A bit outside a chosen register's
  width is an error, not silently dropped.
- ``values``: the stuck values, ``(0,)``, ``(1,)`` or ``(0, 1)`` (uniform), or a dict
  ``value -> weight``. Each stuck bit draws its value independently.

A *site* is one ``(register, bit)`` of a PE. How a stuck bit picks its site:

- PE-rate generators (:func:`by_pe_rate`, :func:`clustered`): with a tuple of registers, the
  register is uniform over the tuple and the bit uniform over that register's allowed bits; with a
  dict, the register follows the dict. A PE with ``faults_per_pe = k`` gets ``k`` distinct sites,
  drawn one after another without replacement with those probabilities.
- The bit-error-rate generator (:func:`by_ber`): with a tuple of registers every allowed site of
  the array is equally likely (that is what a bit error rate means: with the defaults each of the
  ``8 + 8 + psum_bits`` bits of every PE is equally likely); with a dict, a stuck bit lands in
  register ``g`` with probability ``weight[g]`` and uniformly on its allowed bits.

Rates (docs/design.md §2.10): the PE fault rate is faulty PEs / (R x C); the bit error rate is stuck bits
/ all register bits of the array, ``R x C x (16 + psum_bits)``, whatever the allowed choices are.
``exact=True`` draws exactly ``round(rate x total)`` (Python's ``round``, half to even) distinct
PEs or sites; ``exact=False`` makes every PE (site) faulty independently, with the same expected
count.

:func:`population` builds N chips whose seeds are spawned from one seed with
:meth:`numpy.random.SeedSequence.spawn`, so chip ``i`` can also be rebuilt alone with
:func:`chip_rng`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import numpy as np

from sysarray.config import MAX_PSUM_BITS, MIN_PSUM_BITS, ArrayConfig, parse_array
from sysarray.faults import REGISTER_ORDER, FaultMap, Register
from sysarray.validation import as_rng, check_bool, check_float, check_fraction, check_int, is_int, is_number

Geometry = Union[ArrayConfig, "tuple[int, int]", str]
Seed = Union[int, np.integer, np.random.SeedSequence, np.random.Generator]

_ALL_REGISTERS = tuple(r.value for r in REGISTER_ORDER)


# --------------------------------------------------------------------------- seeds and geometry
def chip_seeds(seed: Seed, n_chips: int) -> list:
    """The per-chip seeds of a population: ``SeedSequence(seed).spawn(n_chips)``.

    Returns a list of SeedSequences (or of Generators when ``seed`` is a Generator, from
    ``Generator.spawn``). Chip ``i`` of an int seed equals :func:`chip_rng(seed, i) <chip_rng>`.
    """
    n = check_int(n_chips, "n_chips", "population", lo=0, hi=1 << 31)
    if isinstance(seed, np.random.Generator):
        return seed.spawn(n)
    if isinstance(seed, np.random.SeedSequence):
        return seed.spawn(n)
    as_rng(seed, "population")  # validates
    return np.random.SeedSequence(int(seed)).spawn(n)


def chip_rng(seed: int, index: int) -> np.random.Generator:
    """The Generator of chip ``index`` of the population with int ``seed``, built alone.

    ``SeedSequence(seed).spawn(n)[index]`` is ``SeedSequence(seed, spawn_key=(index,))``.
    """
    as_rng(seed, "chip_rng")
    index = check_int(index, "index", "chip_rng", lo=0, hi=1 << 31)
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(index,)))


def resolve_geometry(geometry: Geometry, psum_bits: int | None = None, where: str = "FaultMap.random") -> tuple[int, int, int]:
    """``(rows, cols, psum_bits)`` from an ArrayConfig, a ``(rows, cols)`` pair or ``"RxC"``.

    ``psum_bits`` defaults to the ArrayConfig's, else 32; given together with an ArrayConfig it
    must agree with it.
    """
    if isinstance(geometry, ArrayConfig):
        if psum_bits is not None and psum_bits != geometry.psum_bits:
            raise ValueError(
                f"The 'psum_bits' argument of {where} must match the ArrayConfig's {geometry.psum_bits} "
                f"(or be left out). Got {psum_bits!r} instead."
            )
        return geometry.rows, geometry.cols, geometry.psum_bits
    if isinstance(geometry, str):
        rows, cols = parse_array(geometry)
    else:
        try:
            rows, cols = geometry  # type: ignore[misc]
        except (TypeError, ValueError):
            raise TypeError(
                f"The geometry argument of {where} must be an ArrayConfig, a (rows, cols) pair or "
                f"an 'RxC' string. Got {geometry!r} instead."
            ) from None
    rows = check_int(rows, "rows", where, lo=1, hi=1 << 20)
    cols = check_int(cols, "cols", where, lo=1, hi=1 << 20)
    pb = 32 if psum_bits is None else check_int(psum_bits, "psum_bits", where, lo=MIN_PSUM_BITS, hi=MAX_PSUM_BITS)
    return rows, cols, pb


# --------------------------------------------------------------------------- choices
@dataclass(frozen=True)
class Sites:
    """The allowed ``(register, bit)`` sites of one PE and how a stuck bit picks among them.

    ``reg`` and ``bit`` are (S,) int64 (register codes 0 weight, 1 act, 2 psum); ``weight`` is
    (S,) float64, all > 0, summing to 1: the probability that one stuck bit lands on each site.
    ``p_one`` is the probability that a stuck bit is stuck at 1.
    """

    reg: np.ndarray
    bit: np.ndarray
    weight: np.ndarray
    p_one: float

    def __len__(self) -> int:
        return len(self.reg)


def _check_weight(name: str, key: object, w: object, where: str) -> float:
    if not is_number(w) or not (math.isfinite(w) and w >= 0):
        raise ValueError(
            f"The '{name}' argument of {where} must map each key to a finite non-negative weight. "
            f"Got {w!r} for {key!r} instead."
        )
    return float(w)


def _register(name: object, arg: str, where: str) -> Register:
    try:
        return Register(getattr(name, "value", name))
    except ValueError:
        raise ValueError(
            f"The '{arg}' argument of {where} must name registers among {', '.join(_ALL_REGISTERS)}. "
            f"Got {name!r} instead."
        ) from None


def _parse_registers(registers: object, where: str) -> tuple[dict[Register, float], bool]:
    """Register -> weight (not normalised) and whether the caller gave weights (a dict)."""
    def reg(name: object) -> Register:
        return _register(name, "registers", where)

    if isinstance(registers, Mapping):
        out: dict[Register, float] = {}
        for k, w in registers.items():
            out[reg(k)] = out.get(reg(k), 0.0) + _check_weight("registers", k, w, where)
        if not out or sum(out.values()) <= 0:
            raise ValueError(
                f"The 'registers' argument of {where} must give at least one register a positive weight. "
                f"Got {dict(registers)!r} instead."
            )
        return out, True
    if isinstance(registers, (str, Register)):
        registers = (registers,)
    try:
        names = list(registers)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"The 'registers' argument of {where} must be a register name, a tuple of names or a dict "
            f"name -> weight. Got {registers!r} instead."
        ) from None
    if not names:
        raise ValueError(f"The 'registers' argument of {where} must name at least one register. Got {registers!r} instead.")
    return {reg(n): 1.0 for n in names}, False


def _parse_bit_list(bits: object, reg: Register, width: int, where: str) -> np.ndarray:
    if is_int(bits):
        bits = (bits,)
    try:
        items = list(bits)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"The 'bits' argument of {where} must be an iterable of bit positions or a dict register -> bits. "
            f"Got {bits!r} instead."
        ) from None
    if not items:
        raise ValueError(
            f"The 'bits' argument of {where} must allow at least one bit for register '{reg.value}'. Got {bits!r} instead."
        )
    for b in items:
        if not is_int(b):
            raise TypeError(f"The 'bits' argument of {where} must hold integer bit positions. Got {b!r} instead.")
        if not 0 <= b < width:
            raise ValueError(
                f"The 'bits' argument of {where} must be within 0..{width - 1} for register '{reg.value}'. Got {b} instead."
            )
    return np.unique(np.asarray(items, dtype=np.int64))


def _parse_values(values: object, where: str) -> float:
    """The probability that a stuck bit is stuck at 1."""
    if isinstance(values, Mapping):
        w = {0: 0.0, 1: 0.0}
        for k, p in values.items():
            if not is_int(k) or k not in (0, 1):
                raise ValueError(f"The 'values' argument of {where} must use the stuck values 0 and 1 as keys. Got {k!r} instead.")
            w[int(k)] += _check_weight("values", k, p, where)
        if w[0] + w[1] <= 0:
            raise ValueError(f"The 'values' argument of {where} must give 0 or 1 a positive weight. Got {dict(values)!r} instead.")
        return w[1] / (w[0] + w[1])
    if is_int(values):
        values = (values,)
    try:
        items = list(values)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"The 'values' argument of {where} must be (0,), (1,), (0, 1) or a dict value -> weight. Got {values!r} instead.") from None
    if not items:
        raise ValueError(f"The 'values' argument of {where} must allow at least one stuck value. Got {values!r} instead.")
    for v in items:
        if not is_int(v) or v not in (0, 1):
            raise ValueError(f"The 'values' argument of {where} must hold stuck values 0 and/or 1. Got {v!r} instead.")
    uniq = set(int(v) for v in items)
    return 0.5 if uniq == {0, 1} else float(uniq.pop())


def make_sites(
    registers: object = None,
    bits: object = None,
    values: object = (0, 1),
    psum_bits: int = 32,
    *,
    per_site: bool = False,
    where: str = "FaultMap.random",
) -> Sites:
    """Validate the register/bit/value choices and turn them into per-PE :class:`Sites`.

    ``per_site=True`` is the bit-error-rate convention (a tuple of registers makes every allowed
    site equally likely); ``False`` the PE-rate one (the register uniform over the tuple, then
    the bit uniform). See the module docstring. Sites of hashable choices are kept (read-only):
    a campaign draws thousands of chips with the same ones.
    """
    key = (registers, bits, values, psum_bits, bool(per_site), where)
    if not _plain(key[:4]):  # lists, dicts, arrays, bools, floats: validated and built every time
        return _make_sites(*key)
    return _cached_sites(*key)


def _plain(obj: object) -> bool:
    """None, str, exact int, Register, or tuples of them: hashable, and equal only when the
    same (True == 1 and 3.0 == 3 would let a cached call skip the checks that refuse them)."""
    if obj is None or type(obj) in (str, int, Register):
        return True
    return type(obj) is tuple and all(_plain(x) for x in obj)


@functools.lru_cache(maxsize=256)
def _cached_sites(*key) -> Sites:
    sites = _make_sites(*key)
    for a in (sites.reg, sites.bit, sites.weight):
        a.setflags(write=False)
    return sites


def _make_sites(registers, bits, values, psum_bits, per_site, where) -> Sites:
    if registers is None:
        registers = tuple(bits) if isinstance(bits, Mapping) else _ALL_REGISTERS
    reg_w, weighted = _parse_registers(registers, where)
    widths = {Register.WEIGHT: 8, Register.ACT: 8, Register.PSUM: psum_bits}
    if isinstance(bits, Mapping):
        bit_of: dict[Register, object] = {}
        for k, b in bits.items():
            g = _register(k, "bits", where)
            if g not in reg_w:
                raise ValueError(
                    f"The 'bits' argument of {where} must only name registers that can be drawn "
                    f"({', '.join(r.value for r in reg_w)}). Got {g.value!r} instead."
                )
            bit_of[g] = b
    else:
        bit_of = {g: bits for g in reg_w}
    p_one = _parse_values(values, where)

    regs, bit_arrays, weights = [], [], []
    n_regs = sum(1 for w in reg_w.values() if w > 0)
    total_w = sum(reg_w.values())
    for g in REGISTER_ORDER:
        if g not in reg_w:
            continue
        b = bit_of.get(g)
        allowed = np.arange(widths[g], dtype=np.int64) if b is None else _parse_bit_list(b, g, widths[g], where)
        if reg_w[g] <= 0:
            continue
        share = reg_w[g] / total_w if weighted else 1.0 / n_regs
        regs.append(np.full(len(allowed), g.code, dtype=np.int64))
        bit_arrays.append(allowed)
        weights.append(np.full(len(allowed), share / len(allowed)))
    reg = np.concatenate(regs)
    weight = np.concatenate(weights)
    if per_site and not weighted:
        weight = np.full(len(reg), 1.0 / len(reg))
    return Sites(reg=reg, bit=np.concatenate(bit_arrays), weight=weight / weight.sum(), p_one=p_one)


# --------------------------------------------------------------------------- checks
def _checked(where: str, geometry: Geometry, rate_name: str, rate: object, seed: Seed, registers: object, bits: object,
             values: object, exact: object, psum_bits: int | None, per_site: bool = False):
    """The arguments every generator takes, checked: ``(rows, cols, psum_bits, rate, sites, exact, rng)``."""
    rows, cols, pb = resolve_geometry(geometry, psum_bits, where)
    rate = check_fraction(rate, rate_name, where)
    sites = make_sites(registers, bits, values, pb, per_site=per_site, where=where)
    return rows, cols, pb, rate, sites, check_bool(exact, "exact", where), as_rng(seed, where)


def _check_per_pe(k: object, sites: Sites, where: str) -> int:
    return check_int(k, "faults_per_pe", f"{where} (the number of allowed register bits per PE)", lo=1, hi=len(sites))


# --------------------------------------------------------------------------- sampling
def _smallest(keys: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` smallest entries of 1-D ``keys``, ascending index order."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if count >= len(keys):
        return np.arange(len(keys), dtype=np.int64)
    return np.sort(np.argpartition(keys, count - 1)[:count])


def _draw_sites(rng: np.random.Generator, n_pes: int, sites: Sites, k: int) -> np.ndarray:
    """(n_pes, k) site indices: k distinct sites per PE, successive weighted sampling.

    Exponential clocks: site ``s`` fires at ``E_s / weight_s`` and the ``k`` first to fire are
    taken (Efraimidis and Spirakis, 2006), which for ``k = 1`` picks ``s`` with probability
    ``weight_s``.
    """
    if k >= len(sites):
        return np.broadcast_to(np.arange(len(sites)), (n_pes, len(sites)))
    keys = rng.standard_exponential((n_pes, len(sites))) / sites.weight
    return np.argpartition(keys, k - 1, axis=1)[:, :k]


def _to_map(rows: int, cols: int, pe: np.ndarray, site: np.ndarray, sites: Sites, rng: np.random.Generator) -> FaultMap:
    """A FaultMap from flat PE indices (n,) and their site indices (n,); draws the values."""
    value = (rng.random(len(pe)) < sites.p_one).astype(np.int64)
    rec = np.stack([pe // cols, pe % cols, sites.reg[site], sites.bit[site], value], axis=1).astype(np.int64)
    return FaultMap._from_generated(rows, cols, rec.reshape(-1, 5))


def _fill_pes(rows: int, cols: int, pes: np.ndarray, sites: Sites, k: int, rng: np.random.Generator) -> FaultMap:
    """Give each flat PE index in ``pes`` (n,) ``k`` distinct stuck bits."""
    site = _draw_sites(rng, len(pes), sites, k)
    return _to_map(rows, cols, np.repeat(pes, k), site.reshape(-1), sites, rng)


def by_pe_rate(
    geometry: Geometry,
    pe_rate: float,
    *,
    seed: Seed,
    registers: object = None,
    bits: object = None,
    values: object = (0, 1),
    exact: bool = True,
    faults_per_pe: int = 1,
    psum_bits: int | None = None,
) -> FaultMap:
    """Faulty PEs at a PE fault rate (the body of :meth:`FaultMap.random`).

    ``exact=True``: exactly ``round(pe_rate * rows * cols)`` distinct PEs, uniform. ``False``: each
    PE faulty independently with probability ``pe_rate``. Every faulty PE gets ``faults_per_pe``
    distinct stuck bits drawn from ``registers``/``bits``/``values`` (module docstring).
    """
    where = "FaultMap.random"
    rows, cols, pb, rate, sites, exact, rng = _checked(where, geometry, "pe_rate", pe_rate, seed, registers, bits,
                                                       values, exact, psum_bits)
    k = _check_per_pe(faults_per_pe, sites, where)
    n = rows * cols
    if exact:
        pes = np.sort(rng.choice(n, size=round(rate * n), replace=False)).astype(np.int64)
    else:
        pes = np.flatnonzero(rng.random(n) < rate)
    return _fill_pes(rows, cols, pes, sites, k, rng)


def by_ber(
    geometry: Geometry,
    ber: float,
    *,
    seed: Seed,
    registers: object = None,
    bits: object = None,
    values: object = (0, 1),
    exact: bool = True,
    psum_bits: int | None = None,
) -> FaultMap:
    """Stuck bits at a bit error rate (the body of :meth:`FaultMap.random_ber`).

    ``ber`` = stuck bits / ``rows * cols * (16 + psum_bits)``. ``exact=True``: exactly
    ``round(ber * that total)`` distinct sites among the allowed ones (weighted as in the module
    docstring). ``False``: each allowed site stuck independently, with probability
    ``ber * (16 + psum_bits) * weight`` so that the expected count is ``ber * total``; with the
    default choices that is plainly ``ber`` per bit. A rate the allowed sites cannot hold is an
    error.
    """
    where = "FaultMap.random_ber"
    rows, cols, pb, rate, sites, exact, rng = _checked(where, geometry, "ber", ber, seed, registers, bits, values,
                                                       exact, psum_bits, per_site=True)
    n_pes, n_sites = rows * cols, len(sites)
    if exact:
        count = round(rate * n_pes * (16 + pb))
        if count > n_pes * n_sites:
            raise ValueError(
                f"The 'ber' argument of {where} asks for {count} stuck bits but the allowed registers and bits "
                f"hold only {n_pes * n_sites} in a {rows}x{cols} array. Got {ber!r} instead."
            )
        keys = rng.standard_exponential(n_pes * n_sites) / np.tile(sites.weight, n_pes)
        chosen = _smallest(keys, count)
    else:
        q = rate * (16 + pb) * sites.weight
        if q.max() > 1.0 + 1e-12:
            raise ValueError(
                f"The 'ber' argument of {where} is too high for the allowed registers and bits: some bits would "
                f"need a stuck probability of {q.max():.4g}. Got {ber!r} instead."
            )
        chosen = np.flatnonzero(rng.random(n_pes * n_sites) < np.tile(q, n_pes))
    return _to_map(rows, cols, chosen // n_sites, chosen % n_sites, sites, rng)


# --------------------------------------------------------------------------- clusters
def cluster_log_weights(rows: int, cols: int, centres: np.ndarray, radius: float) -> np.ndarray:
    """(rows * cols,) float64: log of ``sum_c exp(-d_c^2 / (2 radius^2))`` per PE (row-major).

    ``centres`` is (n_clusters, 2) float (row, col) in PE units; ``d_c`` the Euclidean distance
    from the PE to centre ``c``. Computed in the log domain so far PEs keep distinct weights.
    """
    r, c = np.divmod(np.arange(rows * cols), cols)
    d2 = (r[:, None] - centres[None, :, 0]) ** 2 + (c[:, None] - centres[None, :, 1]) ** 2
    lw = -d2 / (2.0 * radius * radius)
    top = lw.max(axis=1)
    return top + np.log(np.exp(lw - top[:, None]).sum(axis=1))


def cluster_probabilities(log_w: np.ndarray, rate: float, iters: int = 200) -> np.ndarray:
    """Per-PE fault probabilities ``min(1, s * w)`` whose mean is ``rate``.

    ``log_w`` (n,) are log intensities; the scale ``s`` is found by bisection on ``log s`` (the
    mean is increasing in it), so the expected number of faulty PEs is ``rate * n``.
    """
    if rate <= 0.0:
        return np.zeros_like(log_w)
    if rate >= 1.0:
        return np.ones_like(log_w)
    lo = math.log(rate) - float(log_w.max())  # every p <= rate here
    hi = -float(log_w.min())  # every p == 1 here
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if np.exp(np.minimum(0.0, mid + log_w)).mean() < rate:
            lo = mid
        else:
            hi = mid
    return np.exp(np.minimum(0.0, 0.5 * (lo + hi) + log_w))


def clustered(
    geometry: Geometry,
    pe_rate: float,
    *,
    seed: Seed,
    n_clusters: int = 3,
    radius: float | None = None,
    registers: object = None,
    bits: object = None,
    values: object = (0, 1),
    exact: bool = True,
    faults_per_pe: int = 1,
    psum_bits: int | None = None,
) -> FaultMap:
    """Spatially clustered faulty PEs: a few Gaussian blobs (the body of :meth:`FaultMap.clustered`).

    ``n_clusters`` centres are drawn uniformly over the array (continuous (row, col) in
    ``[0, rows-1] x [0, cols-1]``). PE ``p`` gets the intensity
    ``w(p) = sum_c exp(-d(p, c)^2 / (2 radius^2))``; ``radius`` (in PEs) defaults to
    ``max(1, sqrt(round(pe_rate*R*C) / (pi * n_clusters)))``, so that each blob's one-radius disc
    has about the area of its share of the faulty PEs.

    How the PE rate is respected: ``exact=True`` picks exactly ``round(pe_rate * R * C)`` distinct
    PEs by weighted sampling without replacement with weights ``w`` (so PEs near a centre are
    taken first with high probability, and a blob grows outward when the count needs it);
    ``exact=False`` makes each PE faulty independently with probability ``min(1, s * w(p))``, ``s``
    chosen so that the mean probability is exactly ``pe_rate`` (the count is right on average).
    Each faulty PE then gets ``faults_per_pe`` stuck bits as in :func:`by_pe_rate`.
    """
    where = "FaultMap.clustered"
    rows, cols, pb, rate, sites, exact, rng = _checked(where, geometry, "pe_rate", pe_rate, seed, registers, bits,
                                                       values, exact, psum_bits)
    n_clusters = check_int(n_clusters, "n_clusters", where, lo=1, hi=1 << 20)
    k = _check_per_pe(faults_per_pe, sites, where)
    n = rows * cols
    count = round(rate * n)
    if radius is None:
        radius = max(1.0, math.sqrt(count / (math.pi * n_clusters)))
    else:
        radius = check_float(radius, "radius", f"{where} (in PEs)", lo=0.0, lo_open=True)
    centres = rng.uniform((0.0, 0.0), (rows - 1.0, cols - 1.0), size=(n_clusters, 2))
    log_w = cluster_log_weights(rows, cols, centres, float(radius))
    if exact:
        # exponential clocks in the log domain: log E - log w, smallest first
        pes = _smallest(np.log(rng.standard_exponential(n)) - log_w, count)
    else:
        pes = np.flatnonzero(rng.random(n) < cluster_probabilities(log_w, rate))
    return _fill_pes(rows, cols, pes, sites, k, rng)


# --------------------------------------------------------------------------- populations
GENERATORS: dict[str, Callable[..., FaultMap]] = {
    "pe_rate": by_pe_rate,
    "ber": by_ber,
    "clustered": clustered,
}


def _generator(method: str) -> Callable[..., FaultMap]:
    try:
        return GENERATORS[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"The 'method' argument of population must be one of {', '.join(GENERATORS)}. Got {method!r} instead."
        ) from None


def population(n_chips: int, geometry: Geometry, *, seed: Seed, method: str = "pe_rate", **settings: Any) -> list[FaultMap]:
    """``n_chips`` fault maps, chip ``i`` drawn with seed ``SeedSequence(seed).spawn(n_chips)[i]``.

    ``method`` picks the generator (``"pe_rate"`` :func:`by_pe_rate`, ``"ber"`` :func:`by_ber`,
    ``"clustered"`` :func:`clustered`); ``settings`` are its keyword arguments, e.g.
    ``population(20, cfg, seed=0, pe_rate=0.01, registers=("psum",))``. Chips are independent of
    ``n_chips``: the first 5 chips of a 20-chip population are the 5 chips of a 5-chip one.
    """
    gen = _generator(method)
    return [gen(geometry, seed=s, **settings) for s in chip_seeds(seed, n_chips)]


def population_meta(n_chips: int, geometry: Geometry, *, seed: Seed, method: str = "pe_rate", **settings: Any) -> list[dict]:
    """The JSON-ready ``meta`` of each chip of :func:`population` with the same arguments.

    Each dict: ``generator``, ``seed`` (the int seed, or None for a Generator/SeedSequence),
    ``chip`` (index), ``n_chips``, ``rows``, ``cols``, ``psum_bits`` and ``settings``.
    """
    from sysarray.faultio import jsonable

    _generator(method)
    n = check_int(n_chips, "n_chips", "population", lo=0, hi=1 << 31)
    rows, cols, pb = resolve_geometry(geometry, settings.get("psum_bits"), "population")
    int_seed = int(seed) if is_int(seed) else None
    clean = jsonable({k: v for k, v in settings.items() if k != "psum_bits"})
    return [
        {"generator": method, "seed": int_seed, "chip": i, "n_chips": n, "rows": rows, "cols": cols,
         "psum_bits": pb, "settings": clean}
        for i in range(n)
    ]
