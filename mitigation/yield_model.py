"""Manufacturing yield of a faulty systolic array: defect densities, the per-chip mitigation flow,
and the yield table (docs/yield.md).

Three parts:

- **Defect model.** A die of ``P`` physical PEs (spares included) has ``N`` defective PEs with
  ``N ~ Poisson(lambda)``, ``lambda = D0 x P`` (``D0``: defects per PE, a defect density times the
  PE area), or the negative binomial of Stapper's clustered model, ``N ~ Poisson(L)`` with
  ``L ~ Gamma(alpha, lambda / alpha)`` (mean ``lambda``, variance ``lambda + lambda^2 / alpha``).
  The defective PEs are uniform on the die (Koren and Koren's large-area clustering: dies differ,
  defects on one die do not cluster further) and each gets stuck bits drawn by
  :func:`sysarray.faultgen.by_pe_rate` (registers in a configurable mix, each bit uniform over its
  register, stuck value 0 or 1). :func:`no_defect_yield` and :func:`spare_yield_bound` are the
  closed forms the simulated shares are checked against.
- **The flow per chip** (:class:`YieldEvaluator`): the die is diagnosed from GEMM outputs alone
  (:func:`sysarray.diagnosis.diagnose`), and every decision afterwards uses the diagnosed map; the
  mitigations are applied in order of cost, stopping at the first whose accuracy on the real chip
  meets the constraint (:data:`STEPS`). The last step, ``efat`` (:func:`run_efat_groups`), is a
  population stage after every die's flow: the dies no step shipped are grouped by their
  diagnosed maps and each group retrained once (eFAT, Hanif and Shafique, arXiv 2304.12949).
- **Populations and the runner**: :class:`DefectPopulation` is a campaign population and
  :class:`YieldTask` a campaign task whose evaluator is the flow, so :func:`run_yield` is
  :func:`mitigation.campaign.run_campaign` (resumable, process pool or Dask) plus the yield table
  and plot (:func:`yield_table`, :func:`plot_yield`).
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from mitigation.campaign.evaluator import CheckpointTask
from sysarray.validation import (
    check_choice, check_float, check_fraction, check_instance, check_int, check_positive_int, check_seed,
    check_sequence,
)

DEFECT_MODELS = ("poisson", "negbin")
# The mitigations in order of cost: nothing; a channel permutation; + exact integer repairs; spare
# lines; bypass of the diagnosed PEs (FAP); FAP + retraining; stuck-at-aware retraining; one
# retraining shared by a group of the dies no earlier step shipped (eFAT, a population stage).
STEPS = ("none", "remap", "arith", "spares", "bypass", "fapt", "stuckat", "efat")
DIE_STEPS = STEPS[:-1]
RETRAINING = ("fapt", "stuckat", "efat")
NOT_MET = "rejected"
DEFAULT_EPOCHS = 2.0
DEFAULT_CALIBRATION = 128
DEFAULT_MAX_DROP = 0.01
# eFAT's largest default retraining amount (mitigation.efat.DEFAULT_AMOUNTS): these dies failed --epochs alone
DEFAULT_GROUP_EPOCHS = 8.0
DEFAULT_GROUP_MAX_RATE = 0.05
DEFAULT_GROUPING = "greedy"
YIELD_JSON, YIELD_MD, YIELD_PNG = "yield.json", "yield.md", "yield.png"
EFAT_JSON = "efat_groups.json"
EFAT_FORMAT, EFAT_VERSION = "sysarray-yield-efat", 1
_REGISTERS = ("weight", "act", "psum")


# --------------------------------------------------------------------------- closed forms
def _check_model(model: str, alpha: float | None, where: str) -> float | None:
    check_choice(model, "model", where, DEFECT_MODELS)
    if model == "negbin":
        return check_float(alpha, "alpha", where, lo=0.0, lo_open=True)
    return None


def no_defect_yield(lam: float, model: str = "poisson", alpha: float | None = None) -> float:
    """The share of dies with no defect: ``exp(-lambda)`` (Poisson) or ``(1 + lambda/alpha)^-alpha``
    (negative binomial, Stapper 1983; Koren and Koren 1998, eq. for the clustered model)."""
    lam = check_float(lam, "lam", "no_defect_yield", lo=0.0)
    alpha = _check_model(model, alpha, "no_defect_yield")
    return math.exp(-lam) if model == "poisson" else (1.0 + lam / alpha) ** -alpha


def defect_pmf(k: int, lam: float, model: str = "poisson", alpha: float | None = None) -> float:
    """P(N = k) of the defect count: Poisson, or negative binomial
    ``Gamma(k + alpha) / (k! Gamma(alpha)) (lambda/alpha)^k / (1 + lambda/alpha)^(k + alpha)``."""
    k = check_int(k, "k", "defect_pmf", lo=0)
    lam = check_float(lam, "lam", "defect_pmf", lo=0.0)
    alpha = _check_model(model, alpha, "defect_pmf")
    if lam == 0.0:
        return 1.0 if k == 0 else 0.0
    if model == "poisson":
        return math.exp(k * math.log(lam) - lam - math.lgamma(k + 1))
    r = lam / alpha
    return math.exp(math.lgamma(k + alpha) - math.lgamma(k + 1) - math.lgamma(alpha) + k * math.log(r)
                    - (k + alpha) * math.log1p(r))


def spare_yield_bound(lam: float, spare_rows: int, spare_cols: int, model: str = "poisson",
                      alpha: float | None = None) -> float:
    """A lower bound on the share of dies that spare rows and columns repair completely:
    ``P(N <= a + b)``, since any ``a + b`` defective PEs are covered by ``a`` rows and ``b``
    columns (more can be, when defects share lines)."""
    a = check_int(spare_rows, "spare_rows", "spare_yield_bound", lo=0)
    b = check_int(spare_cols, "spare_cols", "spare_yield_bound", lo=0)
    return min(1.0, sum(defect_pmf(k, lam, model, alpha) for k in range(a + b + 1)))


# --------------------------------------------------------------------------- the population
def parse_register_mix(text: str, psum_bits: int = 32) -> dict[str, float]:
    """``"area"`` (each register in proportion to its bits: a defect hits a uniformly random bit of
    the PE), ``"weight=1,psum=3"`` (weights, normalised by faultgen) or ``"weight,psum"`` (equal)."""
    text = str(text).strip()
    if text == "area":
        return {"weight": 8.0, "act": 8.0, "psum": float(psum_bits)}
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, w = part.partition("=")
        name = name.strip()
        if name not in _REGISTERS:
            raise ValueError(f"A register mix names registers among {', '.join(_REGISTERS)}, e.g. weight=1,psum=3 "
                             f"or area. Got {text!r} instead.")
        try:
            weight = float(w) if sep else 1.0
        except ValueError:
            weight = -1.0
        if not (math.isfinite(weight) and weight >= 0) or name in out:
            raise ValueError(f"A register mix gives each register once with a weight >= 0, e.g. weight=1,psum=3. "
                             f"Got {text!r} instead.")
        out[name] = weight
    if not any(w > 0 for w in out.values()):
        raise ValueError(f"A register mix needs a register with a positive weight. Got {text!r} instead.")
    return out


class DefectPopulation:
    """Dies at defect densities: ``len(densities) x chips`` dies, chip ``i = d * chips + j`` is
    replica ``j`` at density ``densities[d]`` (defects per PE).

    Replica ``j`` draws from ``SeedSequence(seed, spawn_key=(j,))`` at every density (common
    random numbers, as :class:`~mitigation.campaign.RateGrid`): first the defect count (Poisson, or
    Gamma then Poisson), then, with the same generator, the PEs and their stuck bits
    (:func:`sysarray.faultgen.by_pe_rate` with exactly that many PEs). The map has the physical
    geometry of the array (spares included). ``registers``: a mix for :func:`parse_register_mix`
    or a dict; ``values``: the stuck values; ``faults_per_pe``: stuck bits per defective PE.
    """

    kind = "defects"
    drawn_by_workers = True
    columns = ("chip", "density", "replica", "seed", "defects")
    aggregate_keys = ("density",)

    def __init__(self, densities: Sequence[float], chips: int, seed: int, *, model: str = "poisson",
                 alpha: float | None = None, registers: Any = "area", values: Sequence[int] = (0, 1),
                 faults_per_pe: int = 1) -> None:
        where = "DefectPopulation"
        dens = [check_float(d, f"densities[{i}]", where, lo=0.0, hi=1.0)
                for i, d in enumerate(check_sequence(densities, "densities", where))]
        self.densities = tuple(check_sequence(dens, "densities", where, distinct=True))
        self.chips = check_positive_int(chips, "chips", where)
        self.seed = check_seed(seed, where)
        self.alpha = _check_model(model, alpha, where)
        self.model = model
        self.registers = registers if isinstance(registers, dict) else str(registers)
        self.values = tuple(sorted(set(int(v) for v in values)))
        if not self.values or not set(self.values) <= {0, 1}:
            raise ValueError(f"The stuck values of {where} must be 0, 1 or both. Got {values!r} instead.")
        self.faults_per_pe = check_positive_int(faults_per_pe, "faults_per_pe", where)

    @property
    def size(self) -> int:
        return len(self.densities) * self.chips

    def describe(self) -> dict:
        return {"model": self.model, "alpha": self.alpha, "densities": list(self.densities), "chips": self.chips,
                "seed": self.seed, "registers": self.registers, "values": list(self.values),
                "faults_per_pe": self.faults_per_pe, "placement": "uniform"}

    def _mix(self, psum_bits: int) -> dict[str, float]:
        reg = self.registers
        return dict(reg) if isinstance(reg, dict) else parse_register_mix(reg, psum_bits)

    def mean_defects(self, density: float, cfg: Any) -> float:
        """``lambda = D0 x physical PEs`` of a die of ``cfg``."""
        pr, pc = cfg.physical_shape
        return float(density) * pr * pc

    def check(self, cfg: Any) -> None:
        from sysarray.faultgen import make_sites

        sites = make_sites(self._mix(cfg.psum_bits), None, self.values, cfg.psum_bits, where="DefectPopulation")
        if self.faults_per_pe > len(sites):
            raise ValueError(f"DefectPopulation: faults_per_pe={self.faults_per_pe} exceeds the {len(sites)} register "
                             "bits a PE of the mix has.")

    def draw(self, density: float, replica: int, cfg: Any) -> tuple[Any, int]:
        """``(physical FaultMap, defect count)`` of replica ``replica`` at ``density``."""
        from sysarray.faultgen import by_pe_rate

        pr, pc = cfg.physical_shape
        n = pr * pc
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(int(replica),)))
        lam = self.mean_defects(density, cfg)
        if self.model == "negbin" and lam > 0:
            lam = rng.gamma(self.alpha, lam / self.alpha)  # the die's own defect rate (Stapper's mixing)
        count = int(min(rng.poisson(lam), n))  # a die cannot hold more defective PEs than it has
        fm = by_pe_rate((pr, pc), count / n, seed=rng, registers=self._mix(cfg.psum_bits), values=self.values,
                        exact=True, faults_per_pe=self.faults_per_pe, psum_bits=cfg.psum_bits)
        return fm, count

    def chip(self, i: int, cfg: Any) -> tuple[Any, dict]:
        d, j = divmod(int(i), self.chips)
        density = self.densities[d]
        fm, count = self.draw(density, j, cfg)
        return fm, {"chip": int(i), "density": density, "replica": j, "seed": self.seed, "defects": count}


# --------------------------------------------------------------------------- the flow
@dataclass(frozen=True)
class GroupSettings:
    """The eFAT groups step (docs/yield.md §2.1): the grouping policy of
    :mod:`mitigation.grouping` (``greedy``, ``jaccard``, ``fixed[:K]``), the retraining epochs of
    each group, and the largest fused PE rate a group may have (a die whose own diagnosed rate is
    above it is beyond this step). Every rate up to ``max_rate`` gets the same amount ``epochs``:
    the flat resilience map that stands in for eFAT's measured one."""

    grouping: str = DEFAULT_GROUPING
    epochs: float = DEFAULT_GROUP_EPOCHS
    max_rate: float = DEFAULT_GROUP_MAX_RATE

    def __post_init__(self) -> None:
        from mitigation.grouping import get_grouping

        where = "GroupSettings"
        get_grouping(self.grouping)
        object.__setattr__(self, "epochs", check_float(self.epochs, "epochs", where, lo=0.0))
        object.__setattr__(self, "max_rate", check_float(self.max_rate, "max_rate", where, lo=0.0, hi=1.0,
                                                         lo_open=True))

    def amount(self, rate: float) -> float | None:
        """The flat resilience map: ``epochs`` up to ``max_rate``, beyond resilience (None) above."""
        return self.epochs if rate <= self.max_rate + 1e-12 else None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FlowSettings:
    """The flow: which steps (a subsequence of :data:`STEPS`), the constraint (accuracy drop
    against the fault-free chip at most ``max_drop``, a fraction), the retraining epochs, the remap
    saliency's calibration images (training split), the diagnosis seed and refinements, and the
    eFAT groups step's settings (``groups``, used when ``"efat"`` is a step)."""

    steps: tuple[str, ...] = ("none", "remap", "arith")
    max_drop: float = DEFAULT_MAX_DROP
    epochs: float = DEFAULT_EPOCHS
    calibration_images: int = DEFAULT_CALIBRATION
    seed: int = 0
    refinements: int = 8
    batch_size: int = 64
    groups: GroupSettings = field(default_factory=GroupSettings)

    def __post_init__(self) -> None:
        where = "FlowSettings"
        steps = tuple(check_sequence(list(self.steps), "steps", where, distinct=True))
        for s in steps:
            check_choice(s, "steps", where, STEPS)
        object.__setattr__(self, "steps", tuple(sorted(steps, key=STEPS.index)))  # always in order of cost
        object.__setattr__(self, "max_drop", check_fraction(self.max_drop, "max_drop", where))
        object.__setattr__(self, "epochs", check_float(self.epochs, "epochs", where, lo=0.0))
        object.__setattr__(self, "calibration_images", check_positive_int(self.calibration_images,
                                                                          "calibration_images", where))
        object.__setattr__(self, "seed", check_seed(self.seed, where))
        object.__setattr__(self, "refinements", check_int(self.refinements, "refinements", where, lo=0, hi=1000))
        object.__setattr__(self, "batch_size", check_int(self.batch_size, "batch_size", where, lo=2))
        check_instance(self.groups, GroupSettings, "groups", where)

    @property
    def die_steps(self) -> tuple[str, ...]:
        """The steps run die by die (every step but the population stage ``efat``)."""
        return tuple(s for s in self.steps if s in DIE_STEPS)

    @property
    def efat(self) -> bool:
        return "efat" in self.steps

    def check(self, cfg: Any) -> None:
        """A ValueError for steps the array cannot run."""
        if "spares" in self.steps and not (cfg.spare_rows or cfg.spare_cols):
            raise ValueError("The 'spares' step needs an array with spare rows or columns (--spare-rows, --spare-cols).")
        for s in ("bypass", "fapt"):
            if s in self.steps and not cfg.bypass:
                raise ValueError(f"The {s!r} step needs bypass hardware (--bypass).")
            if s in self.steps and cfg.dataflow.value != "ws":
                raise ValueError(f"The {s!r} step (fault-aware pruning) needs the ws dataflow. Got "
                                 f"{cfg.dataflow.value}.")

    def to_dict(self) -> dict:
        """The per-die flow (the campaign's configuration): the eFAT stage keeps its own hash in
        :data:`EFAT_JSON`, so adding or changing it resumes the same campaign."""
        out = {k: v for k, v in asdict(self).items() if k != "groups"}
        return {**out, "steps": list(self.die_steps)}

    def group_mode(self, cfg: Any) -> str:
        """How the eFAT groups retrain: ``"bypass"`` (FAP+T for the fused map) on bypass hardware in
        WS, else ``"stuck-at"`` (stuck-at FAT alternating the members' diagnosed maps)."""
        return "bypass" if cfg.bypass and cfg.dataflow.value == "ws" else "stuck-at"


def default_steps(cfg: Any, retraining: bool = False, efat: bool = False) -> tuple[str, ...]:
    """The steps an array supports: none, remap, arith; spares with spares; bypass and FAP+T with
    bypass hardware in WS; stuck-at FAT when ``retraining``; the eFAT groups when ``efat``."""
    steps = ["none", "remap", "arith"]
    if cfg.spare_rows or cfg.spare_cols:
        steps.append("spares")
    if cfg.bypass and cfg.dataflow.value == "ws":
        steps += ["bypass", "fapt"]
    if retraining:
        steps.append("stuckat")
    if efat:
        steps.append("efat")
    return tuple(steps)


def outcome_columns(steps: Sequence[str]) -> tuple[str, ...]:
    """The result columns of the flow: the campaign's outcome columns (``accuracy``, ``drop``,
    ``sdc_rate``, ``critical`` = not shipped) with the diagnosis, the step that met the
    constraint, the costs and each step's accuracy."""
    return ("faulty_pes", "stuck_bits", "registers", "diag_confirmed", "diag_exact", "diag_pes", "diag_tests",
            "diag_cycles", "shipped_step", "steps_tried", "accuracy", "drop", "sdc_rate", "critical",
            "spare_pes", "spare_lines_used", "pes_bypassed", "retrain_epochs") + tuple(f"acc_{s}" for s in steps)


_UNEXPLAINED = re.compile(r"^(?:column (\d+)|PE \((\d+), (\d+)\))$")


def suspect_pes(diagnosis: Any) -> np.ndarray:
    """(R, C) bool: the PEs the diagnosis holds faulty or cannot clear: those of the map it acts on
    (:func:`acted_map`), of every alias, and every PE of a region it could not explain."""
    bad = acted_map(diagnosis).faulty_pes().copy()
    for group in diagnosis.aliased:
        for f in group:
            bad[int(f.row), int(f.col)] = True
    for name in diagnosis.unexplained:
        m = _UNEXPLAINED.match(name)
        if m is None:
            raise ValueError(f"suspect_pes: unknown unexplained region {name!r}.")
        if m.group(1) is not None:
            bad[:, int(m.group(1))] = True
        else:
            bad[int(m.group(2)), int(m.group(3))] = True
    return bad


def acted_map(diagnosis: Any) -> Any:
    """The stuck bits the flow acts on: the located ones when the diagnosis is confirmed and has no
    alias; otherwise (fallback) its full hypothesis, one member of each alias group included."""
    return diagnosis.faults if diagnosis.confirmed and not diagnosis.aliased else diagnosis.hypothesis


def with_pes(fm: Any, pes: np.ndarray) -> Any:
    """``fm`` plus a placeholder stuck bit (weight bit 0 stuck at 0) on each PE of ``pes`` (R, C)
    bool that has none: a map whose faulty PEs are the suspects, for PE-level decisions only."""
    from sysarray import FaultMap

    rows, cols = np.nonzero(pes & ~fm.faulty_pes())
    extra = np.stack([rows, cols] + [np.zeros_like(rows)] * 3, axis=1).astype(np.int64)
    return FaultMap.from_records(*fm.shape, np.concatenate([fm.records, extra]))


def without_pes(fm: Any, pes: np.ndarray) -> Any:
    """``fm`` less every stuck bit of the PEs in ``pes`` (R, C) bool (bypassed PEs: no effect)."""
    from sysarray import FaultMap

    rec = fm.records
    keep = ~pes[rec[:, 0], rec[:, 1]] if len(rec) else np.zeros(0, dtype=bool)
    return FaultMap.from_records(*fm.shape, rec[keep])


@dataclass
class YieldEvaluator:
    """One die through the flow (docs/yield.md §2); shipped once to every campaign worker.

    ``cfg`` is the array as fabricated (spares, bypass hardware). Every accuracy is measured on the
    logical array without bypass (``lcfg``), with the die's true logical map: a bypassed PE is
    simulated as its weights pruned to 0 and its stuck bits removed, which equals the bypass chip
    in WS (docs/design.md §2.7) and lets the bypass set be the diagnosed one rather than the truth.
    """

    prepared: Any
    cfg: Any
    settings: FlowSettings
    critical_drop: float
    clean_predictions: Any = None
    clean_correct: int = 0
    trace: Any = field(default=None, repr=False)

    @classmethod
    def build(cls, prepared: Any, cfg: Any, settings: FlowSettings, critical_drop: float) -> "YieldEvaluator":
        settings.check(cfg)
        ev = cls(prepared, cfg, settings, float(critical_drop))
        ev.trace = prepared.program.trace(prepared.images, ev.lcfg)
        ev.clean_predictions = ev.trace.result.predictions.cpu()
        ev.clean_correct = int((ev.clean_predictions == prepared.labels.cpu()).sum())
        return ev

    @property
    def lcfg(self) -> Any:
        """The logical array the workload runs on (no spares, bypass off)."""
        return self.cfg.replace(spare_rows=0, spare_cols=0, bypass=False)

    @property
    def pcfg(self) -> Any:
        """The die as the tester sees it: every physical PE, bypass off."""
        pr, pc = self.cfg.physical_shape
        return self.cfg.replace(rows=pr, cols=pc, spare_rows=0, spare_cols=0, bypass=False)

    @property
    def images_count(self) -> int:
        return int(len(self.prepared.labels))

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.images_count

    def _predict(self, program: Any, faults: Any, reference: bool = False) -> Any:
        if faults.is_empty and reference:
            return self.clean_predictions
        kw = {"reference": self.trace} if reference else {}
        return program.run(self.prepared.images, self.lcfg, faults=faults, engine="fast", count_changes=False,
                           **kw).predictions.cpu()

    def _meets(self, correct: int) -> bool:
        # integer counts: a drop of exactly max_drop meets it whatever the float rounding
        return (self.clean_correct - correct) <= self.settings.max_drop * self.images_count + 1e-9

    def _calibration(self) -> tuple[Any, Any]:
        data = self.prepared.dataset
        n = self.settings.calibration_images
        return data.train_x[:n], data.train_y[:n]

    def _mapped(self, program: Any, diag: Any, repair: bool) -> Any:
        """``program`` remapped (and repaired) for the logical diagnosed map ``diag``."""
        from mitigation.arith_repair import repair_program
        from mitigation.remap import remap_program

        if diag.is_empty:
            return program
        x, y = self._calibration()
        mapped, _ = remap_program(program, self.lcfg, diag, "effect", x, y, batch_size=self.settings.batch_size,
                                  repair=repair)
        if repair:
            mapped, _ = repair_program(mapped, self.lcfg, diag)
        return mapped

    @property
    def _spares(self) -> bool:
        return bool(self.cfg.spare_rows or self.cfg.spare_cols)

    def _diagnosed(self, fm: Any) -> tuple[Any, Any, np.ndarray, Any]:
        """``(diagnosis, acted map, suspect PEs, suspect map)`` of the physical die ``fm``."""
        from sysarray import Chip
        from sysarray.diagnosis import diagnose

        pcfg = self.pcfg
        diag = diagnose(Chip(pcfg, fm), pcfg, seed=self.settings.seed, refinements=self.settings.refinements)
        acted = acted_map(diag)
        suspects = suspect_pes(diag)
        return diag, acted, suspects, with_pes(acted, suspects)

    def _logical(self, fm: Any, acted: Any, suspect_map: Any, plan: Any) -> dict:
        """The true, diagnosed and suspect maps on the logical array of repair ``plan``."""
        from sysarray.repair import logical_map

        maps = {"true": fm, "diag": acted, "suspect": suspect_map}
        return {k: logical_map(self.cfg, m, plan) for k, m in maps.items()} if self._spares else maps

    def group_maps(self, fm: Any) -> dict:
        """The logical maps an eFAT group member is retrained for and judged on: the die's state
        before ``bypass`` in the flow (spare-repaired when ``spares`` is a step), from the same
        seeded diagnosis as its per-die run. ``true``, ``diag`` (stuck bits acted on), ``suspect``
        (FaultMaps) and ``suspects`` ((R, C) bool, the PEs bypassed)."""
        from sysarray.repair import RepairPlan, allocate_repair

        with self._one_thread():
            _, acted, _, suspect_map = self._diagnosed(fm)
            if not self._spares:
                plan = None
            elif "spares" in self.settings.die_steps:
                plan = allocate_repair(self.cfg, suspect_map)
            else:
                plan = RepairPlan.spares_unused(self.cfg)
            maps = self._logical(fm, acted, suspect_map, plan)
        maps["suspects"] = maps["suspect"].faulty_pes()
        return maps

    def group_outcome(self, members: Sequence[dict], mode: str, epochs: float) -> tuple[list[int], float]:
        """One retraining for a group (``members``: :meth:`group_maps` of each) and each member's
        correct test images on its own true chip. ``mode`` ``"bypass"``: FAP+T for the fused map
        (the OR of the members' suspect PEs), each member bypassing its own suspects (the pruned
        weights of the others are 0 already: exact for every member); ``"stuck-at"``: stuck-at FAT
        with batches alternating the members' diagnosed maps. Returns ``(correct per member,
        epochs spent)``."""
        from mitigation.fat import fap_t, lower_like, prune_program, stuckat_fat
        from sysarray import FaultMap

        s, lcfg, prepared = self.settings, self.lcfg, self.prepared
        data = prepared.dataset
        labels = prepared.labels.cpu()
        with self._one_thread():
            if mode == "bypass":
                fused = np.zeros(members[0]["suspects"].shape, dtype=bool)
                for m in members:
                    fused |= m["suspects"]
                fused_map = with_pes(FaultMap(*fused.shape), fused)
                model, res = fap_t(prepared.model, prepared.program, lcfg, fused_map, data.train_x, data.train_y,
                                   epochs, batch_size=s.batch_size, seed=s.seed)
                prog = lower_like(model, prepared)
                prog = prune_program(prog, lcfg, fused_map) if fused.any() else prog
                preds = [self._predict(prog, without_pes(m["true"], m["suspects"])) for m in members]
            else:
                model, res = stuckat_fat(prepared.model, prepared.program, lcfg, [m["diag"] for m in members],
                                         data.train_x, data.train_y, epochs,
                                         relower=lambda mod: lower_like(mod, prepared), batch_size=s.batch_size,
                                         seed=s.seed)
                prog = lower_like(model, prepared)
                preds = [self._predict(prog, m["true"]) for m in members]
        return [int((p == labels).sum()) for p in preds], float(res.epochs)

    @staticmethod
    def _one_thread() -> Any:
        from sysarray.runtime import threads

        return threads(1)  # float reductions must not depend on the machine's thread count

    def outcome(self, fm: Any) -> dict:
        """The flow on the die with physical map ``fm`` (see :func:`outcome_columns`); the journal
        record also gets ``step_seconds`` (wall time per step, diagnosis included), kept out of
        the results."""
        from sysarray.runtime import threads

        with threads(1):  # retraining's float reductions must not depend on the runner's thread count
            return self._outcome(fm)

    def _outcome(self, fm: Any) -> dict:
        from mitigation.fat import fap_t, lower_like, prune_program, stuckat_fat
        from sysarray.repair import RepairPlan, allocate_repair

        s, cfg, lcfg = self.settings, self.cfg, self.lcfg
        prepared = self.prepared
        program = prepared.program
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        diag, acted, suspects, suspect_map = self._diagnosed(fm)
        seconds["diagnosis"] = time.perf_counter() - t0
        plan0 = RepairPlan.spares_unused(cfg) if self._spares else None
        state = self._logical(fm, acted, suspect_map, plan0)
        spare_lines = 0
        accs: dict[str, float] = {}
        preds: dict[str, Any] = {}
        shipped = NOT_MET
        epochs = 0.0
        bypassed = 0
        n = self.images_count
        labels = prepared.labels.cpu()
        for step in s.die_steps:
            t1 = time.perf_counter()
            true, dmap, smap = state["true"], state["diag"], state["suspect"]
            if step == "none":
                pred = self._predict(program, true, reference=True)
            elif step == "remap":
                pred = self._predict(self._mapped(program, dmap, repair=False), true)
            elif step == "arith":
                pred = self._predict(self._mapped(program, dmap, repair=True), true)
            elif step == "spares":
                plan = allocate_repair(cfg, suspect_map)
                spare_lines = sum(1 for r in plan.fused_rows if r < cfg.rows) + \
                    sum(1 for c in plan.fused_cols if c < cfg.cols)
                state = self._logical(fm, acted, suspect_map, plan)
                true, dmap = state["true"], state["diag"]
                best = "arith" if "arith" in s.steps else "remap" if "remap" in s.steps else None
                prog = program if best is None else self._mapped(program, dmap, repair=best == "arith")
                pred = self._predict(prog, true)
            else:
                keep = smap.faulty_pes()
                if step in ("bypass", "fapt"):
                    bypassed = int(keep.sum())
                if step == "bypass":
                    prog = prune_program(program, lcfg, smap) if bypassed else program
                    pred = self._predict(prog, without_pes(true, keep))
                elif step == "fapt":
                    data = prepared.dataset
                    model, res = fap_t(prepared.model, program, lcfg, smap, data.train_x, data.train_y, s.epochs,
                                       batch_size=s.batch_size, seed=s.seed)
                    epochs += res.epochs
                    prog = lower_like(model, prepared)
                    prog = prune_program(prog, lcfg, smap) if bypassed else prog
                    pred = self._predict(prog, without_pes(true, keep))
                else:  # stuckat: the diagnosed stuck bits in the forward pass, judged on the real chip
                    data = prepared.dataset
                    model, res = stuckat_fat(prepared.model, program, lcfg, dmap, data.train_x, data.train_y,
                                             s.epochs, relower=lambda m: lower_like(m, prepared),
                                             batch_size=s.batch_size, seed=s.seed)
                    epochs += res.epochs
                    pred = self._predict(lower_like(model, prepared), true)
            seconds[step] = time.perf_counter() - t1
            correct = int((pred == labels).sum())
            accs[step] = correct / n
            preds[step] = pred
            if self._meets(correct):
                shipped = step
                break
        final = shipped if shipped != NOT_MET else max(accs, key=lambda k: (accs[k], -s.steps.index(k)))
        pred = preds[final]
        correct = int((pred == labels).sum())
        drop = (self.clean_correct - correct) / n
        pr, pc = cfg.physical_shape
        out = {"faulty_pes": fm.n_faulty_pes, "stuck_bits": len(fm),
               "registers": "+".join(r.value for r in fm.registers()) or "none",
               "diag_confirmed": int(diag.confirmed), "diag_exact": int(diag.faults == fm),
               "diag_pes": int(suspects.sum()), "diag_tests": diag.tests, "diag_cycles": diag.cycles,
               "shipped_step": shipped, "steps_tried": len(accs), "accuracy": correct / n, "drop": drop,
               "sdc_rate": int((pred != self.clean_predictions).sum()) / n, "critical": int(shipped == NOT_MET),
               "spare_pes": pr * pc - cfg.rows * cfg.cols, "spare_lines_used": spare_lines,
               "pes_bypassed": bypassed, "retrain_epochs": round(float(epochs), 6)}
        for step in s.die_steps:
            out[f"acc_{step}"] = accs.get(step)
        out["step_seconds"] = {k: round(v, 6) for k, v in seconds.items()}
        return out


@dataclass
class YieldTask(CheckpointTask):
    """A checkpoint judged on its test images by the yield flow: a campaign task whose evaluator
    is :class:`YieldEvaluator` and whose result columns are :func:`outcome_columns`."""

    settings: FlowSettings = field(default_factory=FlowSettings)

    def describe(self) -> dict:
        return {**super().describe(), "flow": self.settings.to_dict()}

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        return outcome_columns(self.settings.die_steps)

    def build_evaluator(self, program: Any, images: Any, labels: Any, cfg: Any, engine: str, critical_drop: float,
                        batch_size: int | None) -> YieldEvaluator:
        if engine != "fast":
            raise ValueError(f"The yield flow runs on the fast engine. Got engine={engine!r}.")
        self.load()
        return YieldEvaluator.build(self._prepared, cfg, self.settings, critical_drop)


# --------------------------------------------------------------------------- the eFAT groups stage
def efat_config(manifest: dict, settings: FlowSettings, cfg: Any) -> dict:
    """What the eFAT stage's results depend on: the per-die campaign (its configuration hash) and
    the group settings; its hash is kept in :data:`EFAT_JSON`."""
    return {"format": EFAT_FORMAT, "version": EFAT_VERSION, "campaign": manifest["config_hash"],
            "groups": settings.groups.to_dict(), "mode": settings.group_mode(cfg)}


def _efat_interrupted(done: int, total: int) -> Any:
    from sysarray.lifecycle import Interrupted

    return Interrupted(f"interrupted in the efat step at {done}/{total} groups (every die's flow is kept, "
                       f"{EFAT_JSON} not written); rerun the same command to resume")


def run_efat_groups(task: YieldTask, population: DefectPopulation, out: str, cfg: Any, *,
                    progress: bool = False) -> dict:
    """The eFAT groups step on a finished yield campaign ``out`` (docs/yield.md §2.1): per density,
    the dies no per-die step shipped are grouped by their diagnosed faulty PEs
    (:func:`mitigation.grouping.make_groups` with the flat amount of :class:`GroupSettings`),
    each group retrained once (:meth:`YieldEvaluator.group_outcome`) and every member judged on its
    own true chip; those that meet the constraint ship at step ``"efat"``.

    Writes :data:`EFAT_JSON` atomically once every group is done; when that file is there with the
    same configuration hash nothing is recomputed (it is returned), with another hash a ValueError.
    Interrupted (SIGINT, SIGTERM), nothing is written and :class:`sysarray.lifecycle.Interrupted`
    is raised. Returns the file's content plus ``"trained"``: groups retrained by this call."""
    from mitigation.campaign.store import config_hash, read_results
    from sysarray.lifecycle import interrupt_of, sigterm_as_interrupt

    s = task.settings
    path = os.path.join(out, EFAT_JSON)
    manifest, rows = read_results(out)
    if len(rows) != population.size:
        raise ValueError(f"The efat step groups the dies of a finished campaign; {out} holds {len(rows)} of "
                         f"{population.size}. Rerun the same command to finish it.")
    config = efat_config(manifest, s, cfg)
    digest = config_hash(config)
    if os.path.exists(path):
        import json

        with open(path) as fh:
            old = json.load(fh)
        if old.get("config_hash") == digest:
            return {**old, "trained": 0}
        differs = sorted(k for k in config if old.get("config", {}).get(k) != config[k])
        raise ValueError(f"{path} holds an efat step with another configuration (differs in: "
                         f"{', '.join(differs)}); delete that file to redo the step with these settings, or use "
                         "another -o directory.")
    count = {"done": 0, "groups": 0}
    with sigterm_as_interrupt():
        try:
            return _efat_groups(task, population, cfg, rows, config, digest, path, progress, count)
        except (KeyboardInterrupt, SystemError) as raised:
            exc = interrupt_of(raised)
            if exc is None:
                raise
            raise _efat_interrupted(count["done"], count["groups"]) from exc


def _efat_groups(task: YieldTask, population: DefectPopulation, cfg: Any, rows: list[dict], config: dict,
                 digest: str, path: str, progress: bool, count: dict) -> dict:
    from tqdm.auto import tqdm

    from mitigation.grouping import Chip as GroupChip, make_groups
    from sysarray.atomic import write_json

    s = task.settings
    mode = s.group_mode(cfg)
    rejected = [r for r in rows if r["shipped_step"] == NOT_MET]
    ev = task.build_evaluator(*task.load(), cfg, "fast", s.max_drop, None) if rejected else None
    plans, dies = [], []
    for density in population.densities:
        at = [r for r in rejected if float(r["density"]) == density]
        maps = {int(r["chip"]): ev.group_maps(population.chip(int(r["chip"]), cfg)[0]) for r in at}
        pes = {c: (m["suspects"] if mode == "bypass" else m["diag"].faulty_pes()) for c, m in maps.items()}
        chips = [GroupChip(str(c), pes[c]) for c in sorted(maps)
                 if s.groups.amount(float(pes[c].mean())) is not None]
        replica = {int(r["chip"]): int(r["replica"]) for r in at}
        for c in sorted(maps):
            dies.append({"chip": c, "density": density, "replica": replica[c],
                         "diag_pes": int(pes[c].sum()), "rate": float(pes[c].mean()), "group": None,
                         "accuracy": None, "drop": None, "shipped_step": NOT_MET,
                         "pes_bypassed": int(maps[c]["suspects"].sum()) if mode == "bypass" else 0,
                         "retrain_epochs": 0.0})
        for members in (make_groups(chips, s.groups.amount, s.groups.grouping) if chips else []):
            ids = [int(chips[i].name) for i in members]
            fused = np.zeros_like(pes[ids[0]])
            for c in ids:
                fused |= pes[c]
            plans.append({"density": density, "members": ids, "fused_pes": int(fused.sum()),
                          "fused_rate": float(fused.mean()), "maps": [maps[c] for c in ids]})
    groups = []
    by_chip = {d["chip"]: d for d in dies}
    n = ev.images_count if ev is not None else 0
    count["groups"] = len(plans)
    for gid, plan in enumerate(tqdm(plans, desc="efat groups", unit="group", disable=not progress, leave=False)):
        t0 = time.perf_counter()
        correct, epochs = ev.group_outcome(plan["maps"], mode, s.groups.epochs)
        shipped = [c for c, k in zip(plan["members"], correct) if ev._meets(k)]
        groups.append({"group": gid, "density": plan["density"], "members": plan["members"],
                       "fused_pes": plan["fused_pes"], "fused_rate": plan["fused_rate"], "epochs": epochs,
                       "shipped": shipped, "seconds": round(time.perf_counter() - t0, 6)})
        for c, k in zip(plan["members"], correct):
            by_chip[c].update(group=gid, accuracy=k / n, drop=(ev.clean_correct - k) / n,
                              shipped_step="efat" if c in shipped else NOT_MET,
                              retrain_epochs=round(epochs / len(plan["members"]), 6))
        count["done"] = len(groups)
    result = {"config": config, "config_hash": digest, "mode": mode, "max_drop": s.max_drop,
              "groups": groups, "dies": sorted(dies, key=lambda d: d["chip"])}
    write_json(path, result)
    return {**result, "trained": len(groups)}


# --------------------------------------------------------------------------- running and the table
def run_yield(task: YieldTask, population: DefectPopulation, out: str, cfg: Any, *, workers: int | None = None,
              scheduler: Any = None, progress: bool = False, confidence: float = 0.95) -> dict:
    """The flow on every die of ``population`` (a resumable campaign directory ``out``), then, when
    ``efat`` is a step, the eFAT groups stage (:func:`run_efat_groups`), then ``yield.json``,
    ``yield.md`` and ``yield.png`` there. Returns the yield table (a dict)."""
    from mitigation.campaign import run_campaign

    task.settings.check(cfg)
    run = run_campaign(task, population, out, cfg, critical_drop=task.settings.max_drop, confidence=confidence,
                       workers=workers, scheduler=scheduler, progress=progress, chunk_size=1)
    efat = run_efat_groups(task, population, out, cfg, progress=progress) if task.settings.efat else None
    table = yield_table(out, population, cfg, efat=efat)
    table["run"] = {"evaluated": run.evaluated, "already_done": run.already_done, "seconds": round(run.seconds, 3)}
    if efat is not None:
        table["run"]["efat_groups_trained"] = efat["trained"]
    write_yield_files(out, table)
    return table


def yield_table(directory: str, population: DefectPopulation, cfg: Any, efat: dict | None = None) -> dict:
    """Per density: dies, the analytic no-defect yield, the simulated defect-free share, the share
    shipped after each step (cumulative), and the costs per shipped chip. From the campaign's
    journal and, with ``efat`` (what :func:`run_efat_groups` returns), the eFAT groups stage:
    ``yield_efat``, the groups, their epochs (in the epochs per shipped die too) and seconds. Wall
    times (``seconds``) are the only entries that change between runs."""
    from mitigation.campaign.store import read_results

    manifest, rows = read_results(directory)
    steps = list(manifest["config"]["task"]["flow"]["steps"]) + (["efat"] if efat is not None else [])
    a, b = cfg.spare_rows, cfg.spare_cols
    out_rows = []
    for density in population.densities:
        members = [r for r in rows if float(r["density"]) == density]
        if not members:
            continue
        n = len(members)
        lam = population.mean_defects(density, cfg)
        row: dict = {"density": density, "lambda": lam, "chips": n,
                     "analytic_no_defect": no_defect_yield(lam, population.model, population.alpha),
                     "defect_free": sum(1 for r in members if int(r["defects"]) == 0) / n}
        if a or b:
            row["analytic_spares_bound"] = spare_yield_bound(lam, a, b, population.model, population.alpha)
        groups = [g for g in efat["groups"] if g["density"] == density] if efat is not None else []
        group_epochs = sum(float(g["epochs"]) for g in groups)
        shipped = 0
        for step in steps:
            if step == "efat":
                shipped += sum(len(g["shipped"]) for g in groups)
            else:
                shipped += sum(1 for r in members if r["shipped_step"] == step)
            row[f"yield_{step}"] = shipped / n
        row["shipped"] = shipped
        per = max(shipped, 1)
        row["diag_cycles_per_shipped"] = sum(int(r["diag_cycles"]) for r in members) / per if shipped else None
        epochs = sum(float(r["retrain_epochs"]) for r in members) + group_epochs
        row["retrain_epochs_per_shipped"] = epochs / per if shipped else None
        row["spare_pes_per_shipped"] = sum(int(r["spare_pes"]) for r in members) / per if shipped else None
        row["diag_exact_share"] = sum(int(r["diag_exact"]) for r in members) / n
        row["diag_confirmed_share"] = sum(int(r["diag_confirmed"]) for r in members) / n
        if efat is not None:
            by_efat = sum(len(g["shipped"]) for g in groups)
            row["efat_candidates"] = sum(1 for r in members if r["shipped_step"] == NOT_MET)
            row["efat_grouped"] = sum(len(g["members"]) for g in groups)
            row["efat_groups"] = len(groups)
            row["efat_shipped"] = by_efat
            row["efat_epochs"] = group_epochs
            row["efat_epochs_per_shipped"] = group_epochs / by_efat if by_efat else None
        secs: dict[str, float] = {}
        for r in members:
            for k, v in (r.get("step_seconds") or {}).items():
                secs[k] = secs.get(k, 0.0) + float(v)
        if groups:
            secs["efat"] = sum(float(g["seconds"]) for g in groups)
        row["seconds"] = {k: round(v, 3) for k, v in secs.items()}
        row["seconds_per_shipped"] = round(sum(secs.values()) / per, 3) if shipped else None
        out_rows.append(row)
    return {"steps": list(steps), "model": population.model, "alpha": population.alpha,
            "array": cfg.to_dict(), "max_drop": manifest["config"]["task"]["flow"]["max_drop"],
            "clean_accuracy": manifest.get("info", {}).get("clean_accuracy"), "rows": out_rows}


def table_markdown(table: dict) -> str:
    """The yield table as markdown: one row per density, the cumulative yield after each step."""
    steps = table["steps"]
    spares = any("analytic_spares_bound" in r for r in table["rows"])
    head = ["D0 (defects/PE)", "lambda", "dies", "analytic Y0", "defect-free"] + \
        (["spares bound"] if spares else []) + [f"after {s}" for s in steps] + \
        ["test cycles / shipped", "epochs / shipped", "spare PEs / shipped", "CPU s / shipped"] + \
        (["efat groups", "efat epochs / efat-shipped"] if "efat" in steps else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: Any, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    for r in table["rows"]:
        cells = [f"{r['density']:g}", f(r["lambda"], 2), str(r["chips"]), f(r["analytic_no_defect"]),
                 f(r["defect_free"])] + ([f(r.get("analytic_spares_bound"))] if spares else []) + \
            [f(r[f"yield_{s}"]) for s in steps] + \
            [f(r["diag_cycles_per_shipped"], 0), f(r["retrain_epochs_per_shipped"], 2),
             f(r["spare_pes_per_shipped"], 1), f(r["seconds_per_shipped"], 2)] + \
            ([f"{r['efat_groups']} ({r['efat_grouped']}/{r['efat_candidates']} dies)",
              f(r["efat_epochs_per_shipped"], 2)] if "efat" in steps else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_yield(table: dict, path: str, title: str | None = None) -> str:
    """Yield vs defect density: one curve per step (cumulative), the simulated defect-free share,
    and the analytic no-defect yield of the model (a PNG with reproducible bytes)."""
    from matplotlib.figure import Figure

    from sysarray.atomic import atomic_write

    rows = table["rows"]
    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    d = [r["density"] for r in rows]
    for step in table["steps"]:
        ax.plot(d, [r[f"yield_{step}"] for r in rows], marker="o", label=f"after {step}")
    lam_max = max(r["lambda"] for r in rows) if rows else 1.0
    per_pe = (rows[0]["lambda"] / rows[0]["density"]) if rows and rows[0]["density"] else None
    if per_pe:
        grid = np.linspace(0.0, max(d), 200)
        ax.plot(grid, [no_defect_yield(g * per_pe, "poisson") for g in grid], "k--", lw=1, label="Poisson exp(-lambda)")
        if table.get("alpha"):
            ax.plot(grid, [no_defect_yield(g * per_pe, "negbin", table["alpha"]) for g in grid], "k:", lw=1,
                    label=f"neg. binomial, alpha={table['alpha']:g}")
    ax.plot(d, [r["defect_free"] for r in rows], "kx", label="defect-free dies (simulated)")
    ax.set_xlabel("defect density D0 (defects per PE)")
    ax.set_ylabel("share of dies meeting the constraint")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"yield, accuracy drop <= {100 * table['max_drop']:g} points (lambda up to {lam_max:.1f})",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": None}), binary=True)
    return path


def write_yield_files(directory: str, table: dict) -> None:
    """``yield.json`` (the table), ``yield.md`` and ``yield.png`` in the campaign directory."""
    from sysarray.atomic import write_json, write_text

    write_json(os.path.join(directory, YIELD_JSON), table)
    write_text(os.path.join(directory, YIELD_MD), table_markdown(table))
    plot_yield(table, os.path.join(directory, YIELD_PNG))


__all__ = ["DEFAULT_EPOCHS", "DEFAULT_GROUPING", "DEFAULT_GROUP_EPOCHS", "DEFAULT_GROUP_MAX_RATE", "DEFAULT_MAX_DROP",
           "DEFECT_MODELS", "DIE_STEPS", "EFAT_JSON", "DefectPopulation", "FlowSettings", "GroupSettings", "NOT_MET",
           "RETRAINING", "STEPS", "YieldEvaluator", "YieldTask", "acted_map", "default_steps", "defect_pmf",
           "efat_config", "no_defect_yield", "outcome_columns", "parse_register_mix", "plot_yield", "run_efat_groups",
           "run_yield", "spare_yield_bound", "suspect_pes", "table_markdown", "with_pes", "without_pes",
           "write_yield_files", "yield_table"]
