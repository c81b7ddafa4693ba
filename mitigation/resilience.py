"""The eFAT resilience map (docs/design.md §6.5; Hanif and Shafique, "eFAT: improving the
effectiveness of fault-aware training for mitigating permanent faults in DNN hardware
accelerators", 2023).

For a fault-rate grid and a retraining-amount grid (epochs, fractions allowed), ``S`` random fault
maps per rate are each retrained for every amount and judged on their own chip; the ``S``
accuracies of a cell are aggregated with the minimum (a per-chip guarantee) or a low quantile.
For an accuracy target the map gives, per rate, the least amount that meets it, made monotone in
the rate; rates no amount meets are *beyond resilience*, and so is every higher rate.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from sysarray.atomic import atomic_write, write_text
from sysarray.validation import check_positive_int

Trainer = Callable[[object, float], float]  # (FaultMap, epochs) -> accuracy on that map's chip


def check_grid(values: Sequence[float], name: str, upper: float | None = None) -> list[float]:
    """Sorted distinct finite values >= 0 (and <= ``upper``)."""
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"The {name} grid must be a list of numbers. Got {values!r} instead.") from None
    bad = [v for v in vals if not math.isfinite(v) or v < 0 or (upper is not None and v > upper)]
    if not vals or bad:
        limit = f"0..{upper:g}" if upper is not None else ">= 0"
        raise ValueError(f"The {name} grid must hold at least one number, each within {limit}. Got {list(values)!r} instead.")
    return sorted(set(vals))


def parse_aggregate(spec: str) -> float | None:
    """``"min"`` -> None; ``"q0.1"`` -> 0.1 (the quantile)."""
    if spec == "min":
        return None
    if isinstance(spec, str) and spec.startswith("q"):
        try:
            q = float(spec[1:])
            if 0.0 <= q <= 1.0:
                return q
        except ValueError:
            pass
    raise ValueError(f"The aggregation over maps must be 'min' or a quantile 'qX' with X in [0, 1] (e.g. q0.1). Got {spec!r} instead.")


@dataclass
class ResilienceMap:
    """Accuracies over (rate, amount), aggregated over ``samples``' maps.

    rates (n_r,), amounts (n_a,) in epochs; samples: (n_r, S, n_a) float64 accuracies (fractions);
    aggregate: "min" or "qX". ``epochs``/``seconds``: what building it cost.
    """

    rates: list[float]
    amounts: list[float]
    samples: np.ndarray
    aggregate: str = "min"
    epochs: float = 0.0
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> np.ndarray:
        """(n_r, n_a) aggregated accuracy."""
        q = parse_aggregate(self.aggregate)
        if q is None:
            return self.samples.min(axis=1)
        return np.quantile(self.samples, q, axis=1)

    def least_amounts(self, target: float) -> list[float | None]:
        """Per grid rate, the least amount whose aggregated accuracy is >= ``target``, made monotone
        (non-decreasing) in the rate; None from the first rate no amount meets onwards."""
        acc = self.accuracy
        out: list[float | None] = []
        floor = 0.0
        beyond = False
        for i in range(len(self.rates)):
            ok = [a for j, a in enumerate(self.amounts) if acc[i, j] >= target]
            if beyond or not ok:
                beyond = True
                out.append(None)
                continue
            floor = max(floor, ok[0])
            out.append(floor)
        return out

    def amount_for(self, rate: float, target: float) -> float | None:
        """The least amount at the smallest grid rate at or above ``rate`` (None: beyond resilience)."""
        least = self.least_amounts(target)
        for r, a in zip(self.rates, least):
            if r >= rate - 1e-12:
                return a
        return None

    # ------------------------------------------------------------------ files
    def to_csv(self) -> str:
        """One row per (rate, map, amount): ``rate,map,epochs,accuracy``, then the aggregate rows
        with ``map`` = the aggregation name."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["rate", "map", "epochs", "accuracy"])
        for i, r in enumerate(self.rates):
            for s in range(self.samples.shape[1]):
                for j, a in enumerate(self.amounts):
                    w.writerow([repr(r), s, repr(a), repr(float(self.samples[i, s, j]))])
        acc = self.accuracy
        for i, r in enumerate(self.rates):
            for j, a in enumerate(self.amounts):
                w.writerow([repr(r), self.aggregate, repr(a), repr(float(acc[i, j]))])
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str, aggregate: str = "min") -> "ResilienceMap":
        rows = list(csv.DictReader(io.StringIO(text)))
        raw = [r for r in rows if r["map"].isdigit()]
        if not raw:
            raise ValueError("The resilience CSV holds no per-map rows (rate,map,epochs,accuracy).")
        rates = sorted({float(r["rate"]) for r in raw})
        amounts = sorted({float(r["epochs"]) for r in raw})
        n_maps = max(int(r["map"]) for r in raw) + 1
        samples = np.full((len(rates), n_maps, len(amounts)), np.nan)
        for r in raw:
            samples[rates.index(float(r["rate"])), int(r["map"]), amounts.index(float(r["epochs"]))] = float(r["accuracy"])
        if np.isnan(samples).any():
            raise ValueError("The resilience CSV is incomplete: some (rate, map, epochs) cells are missing.")
        return cls(rates=rates, amounts=amounts, samples=samples, aggregate=aggregate)

    def save(self, folder: str, target: float | None = None) -> None:
        """Write ``resilience.csv`` and ``resilience.png`` (heatmap; cells meeting ``target`` marked)."""
        write_text(os.path.join(folder, "resilience.csv"), self.to_csv())
        self.heatmap(os.path.join(folder, "resilience.png"), target)

    def heatmap(self, path: str, target: float | None = None) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        acc = self.accuracy
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(self.amounts), 1.0 + 0.45 * len(self.rates)))
        im = ax.imshow(acc, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
        ax.set_xticks(range(len(self.amounts)), [f"{a:g}" for a in self.amounts])
        ax.set_yticks(range(len(self.rates)), [f"{r:.3g}" for r in self.rates])
        ax.set_xlabel("retraining (epochs)")
        ax.set_ylabel("PE fault rate")
        least = self.least_amounts(target) if target is not None else [None] * len(self.rates)
        for i in range(len(self.rates)):
            for j, a in enumerate(self.amounts):
                mark = "*" if least[i] is not None and a == least[i] else ""
                ax.text(j, i, f"{acc[i, j]:.3f}{mark}", ha="center", va="center", fontsize=7,
                        color="white" if acc[i, j] < 0.6 else "black")
        title = f"resilience map ({self.aggregate} over {self.samples.shape[1]} maps)"
        if target is not None:
            title += f"; * least amount for accuracy >= {target:.3f}"
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, label="accuracy")
        fig.tight_layout()
        try:
            atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, metadata={"Software": None}), binary=True)
        finally:
            plt.close(fig)


def build_resilience_map(trainer: Trainer, make_map: Callable[[float, int], object], rates: Sequence[float],
                         amounts: Sequence[float], maps_per_rate: int, aggregate: str = "min",
                         progress: bool = False) -> ResilienceMap:
    """Retrain for every (rate, map, amount) cell: ``make_map(rate, s)`` gives the s-th map of a rate,
    ``trainer(map, epochs)`` retrains a fresh copy of the model for it and returns its accuracy on
    that map's chip. Returns the map; its ``epochs`` is the total retraining spent."""
    from tqdm.auto import tqdm

    rates = check_grid(rates, "fault-rate", 1.0)
    amounts = check_grid(amounts, "retraining-amount")
    parse_aggregate(aggregate)
    maps_per_rate = check_positive_int(maps_per_rate, "maps_per_rate", "build_resilience_map")
    samples = np.zeros((len(rates), maps_per_rate, len(amounts)))
    spent = 0.0
    start = time.perf_counter()
    with tqdm(total=len(rates) * maps_per_rate * len(amounts), desc="resilience map", unit="cell",
              disable=not progress, leave=False) as bar:
        for i, r in enumerate(rates):
            for s in range(maps_per_rate):
                fm = make_map(r, s)
                for j, a in enumerate(amounts):
                    samples[i, s, j] = trainer(fm, a)
                    spent += a if not fm.is_empty else 0.0
                    bar.update(1)
    return ResilienceMap(rates=rates, amounts=amounts, samples=samples, aggregate=aggregate, epochs=spent,
                         seconds=time.perf_counter() - start)


__all__ = ["ResilienceMap", "build_resilience_map", "check_grid", "parse_aggregate"]
