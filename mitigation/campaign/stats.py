"""Statistics of fault campaigns: confidence intervals and the statistical fault-injection sample size.

- :func:`wilson_interval`: Wilson score interval of a proportion (share of critical chips);
  :func:`wilson_score_interval` the same from a proportion and an effective sample size.
- :func:`bootstrap_interval`: percentile bootstrap of a statistic (mean, median, quartiles), seeded.
- :func:`leveugle_sample_size`: how many chips / faults to inject for an error margin at a
  confidence level (Leveugle, Calvez, Maistri, Vanhauwaert, "Statistical fault injection:
  quantified error and confidence", DATE 2009, eq. 3).
- :func:`aggregate`: the per-(group, rate) summary rows of a campaign.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Iterable, Sequence

import numpy as np

from sysarray.validation import check_fraction, check_positive_int

BOOTSTRAP_RESAMPLES = 2000


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile ``t`` of a confidence level (1.96 for 0.95).

    The standard library's quantile (Wichura's AS 241, within an ulp of scipy's ``norm.ppf``):
    importing ``scipy.stats`` would cost a small campaign more than its chips."""
    return NormalDist().inv_cdf(0.5 + check_fraction(confidence, "confidence", "z_value", open_ends=True) / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``; ``(nan, nan)`` when ``n == 0``."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n. Got successes={successes}, n={n} instead.")
    if n == 0:
        return (math.nan, math.nan)
    return wilson_score_interval(successes / n, n, confidence)


def wilson_score_interval(p: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an estimated proportion ``p`` with a (possibly fractional, effective)
    sample size ``n > 0``; it always lies in [0, 1] and contains ``p``."""
    if not (math.isfinite(p) and 0.0 <= p <= 1.0) or not (math.isfinite(n) and n > 0):
        raise ValueError(f"wilson_score_interval needs a proportion 0 <= p <= 1 and a sample size n > 0. "
                         f"Got p={p}, n={n} instead.")
    z = z_value(confidence)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if p == 0.0 else min(p, max(0.0, centre - half))  # exact ends: rounding must not exclude p
    hi = 1.0 if p == 1.0 else max(p, min(1.0, centre + half))
    return (lo, hi)


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | str = "mean",
                       confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int | Sequence[int] = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (1-D), deterministic given ``seed``.

    ``statistic`` is ``"mean"``, ``"median"``, ``"q1"``, ``"q3"`` or a function mapping a (B, n)
    array to (B,) along axis 1. One value gives a zero-width interval; none gives ``(nan, nan)``.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    conf = check_fraction(confidence, "confidence", "bootstrap_interval", open_ends=True)
    if x.size == 0:
        return (math.nan, math.nan)
    if isinstance(statistic, str) and statistic not in _STATISTICS:
        raise ValueError(f"The 'statistic' argument of bootstrap_interval must be one of {', '.join(_STATISTICS)} "
                         f"or a function. Got {statistic!r} instead.")
    return _percentile_interval(_resampled(x, _resample_indices(x.size, resamples, seed), statistic), conf)


def _resample_indices(n: int, resamples: int, seed: int | Sequence[int]) -> np.ndarray:
    """(resamples, n) int64: the indices of the bootstrap resamples drawn from ``seed``."""
    return np.random.default_rng(seed).integers(0, n, size=(int(resamples), n))


def _percentile_interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2], method="linear")
    return (float(lo), float(hi))


def _resampled(x: np.ndarray, idx: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray] | str,
               kth: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """(B,) the statistic of every resample ``x[idx[b]]``: what ``statistic(x[idx])`` gives, to
    the last bit. Medians and quartiles use ``kth`` (:func:`_order_statistics` of ``x, idx``;
    made here if not given) instead of sorting every resample."""
    if statistic == "mean" or not isinstance(statistic, str):
        return (_STATISTICS["mean"] if statistic == "mean" else statistic)(x[idx])
    kth = kth or _order_statistics(x, idx)
    n = x.size
    if statistic == "median":  # np.median: the middle value, or the mean of the two middle ones
        return kth(n // 2) if n % 2 else (kth(n // 2 - 1) + kth(n // 2)) / 2
    # np.quantile's "linear" method: virtual index (n-1) q between its two order statistics, and
    # numpy's interpolation formula (``_lerp``).
    h = (n - 1) * _QUARTILES[statistic]
    below = math.floor(h)
    a, b = kth(below), kth(min(below + 1, n - 1))
    t = h - below
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _order_statistics(x: np.ndarray, idx: np.ndarray) -> Callable[[int], np.ndarray]:
    """``kth(k)``: the k-th smallest value (0-based) of every resample ``x[idx[b]]``, (B,), from
    each resample's counts over the sorted values (sorting every resample would cost the aggregate
    table more than the rest of it)."""
    n = x.size
    order = np.argsort(x, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    rows = np.arange(idx.shape[0], dtype=np.int64)[:, None] * n
    counts = np.bincount((rows + rank[idx]).ravel(), minlength=idx.size).reshape(idx.shape)
    cum = np.cumsum(counts, axis=1, dtype=np.int32)  # cum[b, j]: values of resample b among the j+1 smallest of x
    xs = x[order]
    return lambda k: xs[(cum <= k).sum(axis=1)]


_STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda a: a.mean(axis=1),
    "median": lambda a: np.median(a, axis=1),
    "q1": lambda a: np.quantile(a, 0.25, axis=1),
    "q3": lambda a: np.quantile(a, 0.75, axis=1),
}
_QUARTILES = {"q1": 0.25, "q3": 0.75}


def leveugle_sample_size(margin: float, confidence: float = 0.95, p: float = 0.5,
                         population: int | None = None) -> int:
    """Injections needed so that a proportion is known within ``+-margin`` at ``confidence``.

    Leveugle et al. (DATE 2009), eq. 3: ``n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))`` with
    ``N`` the population (all possible faults or chips), ``e`` the margin, ``t`` the normal
    quantile of the confidence and ``p`` the expected proportion (0.5 is the safe worst case).
    ``population=None`` is an infinite population: ``n = t^2 p (1 - p) / e^2``. Rounded up.
    """
    where = "leveugle_sample_size"
    margin = check_fraction(margin, "margin", where, open_ends=True)
    p = check_fraction(p, "p", where, open_ends=True)
    t = z_value(confidence)
    core = t * t * p * (1 - p)
    if population is None:
        return int(math.ceil(core / (margin * margin) - 1e-9))
    n_pop = check_positive_int(population, "population", where)
    n = n_pop / (1 + margin * margin * (n_pop - 1) / core)
    return min(n_pop, int(math.ceil(n - 1e-9)))


def aggregate(rows: Iterable[dict], confidence: float = 0.95, seed: int = 0,
              keys: tuple[str, ...] = ("group", "rate")) -> list[dict]:
    """Summaries of result rows grouped by ``keys`` (in order of first appearance).

    Each row needs ``accuracy``, ``drop``, ``sdc_rate`` (floats) and ``critical`` (0/1). Output
    per group: ``chips``, mean/median/q1/q3 of the accuracy with bootstrap intervals
    (``*_lo``/``*_hi``), ``worst_accuracy`` (the minimum; no interval), the mean drop and SDC
    rate with bootstrap intervals, and ``critical_share`` with its Wilson interval. Bootstrap
    seeds are ``(seed, group index)``, so the table is the same on every run.
    """
    conf = check_fraction(confidence, "confidence", "aggregate", open_ends=True)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for gi, (key, members) in enumerate(groups.items()):
        acc = np.array([float(m["accuracy"]) for m in members])
        drop = np.array([float(m["drop"]) for m in members])
        sdc = np.array([float(m["sdc_rate"]) for m in members])
        crit = int(sum(int(m["critical"]) for m in members))
        row: dict = dict(zip(keys, key))
        row["chips"] = len(members)
        idx = _resample_indices(len(members), BOOTSTRAP_RESAMPLES, (int(seed), gi))  # one draw serves every statistic
        kths: dict[int, Callable[[int], np.ndarray]] = {}  # per value array: its median and quartiles share one
        for name, values, stat in (("mean_accuracy", acc, "mean"), ("median_accuracy", acc, "median"),
                                   ("q1_accuracy", acc, "q1"), ("q3_accuracy", acc, "q3"),
                                   ("mean_drop", drop, "mean"), ("mean_sdc_rate", sdc, "mean")):
            point = float(_STATISTICS[stat](values[None, :])[0])
            if stat != "mean" and id(values) not in kths:
                kths[id(values)] = _order_statistics(values, idx)
            lo, hi = _percentile_interval(_resampled(values, idx, stat, kths.get(id(values))), conf)
            row[name], row[name + "_lo"], row[name + "_hi"] = point, lo, hi
        row["worst_accuracy"] = float(acc.min())
        row["critical_chips"] = crit
        row["critical_share"] = crit / len(members)
        row["critical_share_lo"], row["critical_share_hi"] = wilson_interval(crit, len(members), confidence)
        out.append(row)
    return out


__all__ = ["aggregate", "bootstrap_interval", "leveugle_sample_size", "wilson_interval", "wilson_score_interval",
           "z_value"]
