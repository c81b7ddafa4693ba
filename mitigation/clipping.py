"""Clipped-activation hardening (docs/design.md §6.3): four ways to find the thresholds.

- ``ranger`` (Chen et al., DSN 2021): ``T`` = the activation's maximum over a calibration subset
  (default 1,024 training images), no training.
- ``ftclipact`` (Hoang et al., DATE 2020): layer-wise; from every layer zero-clipped at its
  profiled maximum, each layer in forward order gets an interval search on ``[0, max]`` scored by
  the area under the accuracy-vs-fault-rate curve, measured by fault injection (on the chip or in
  the weight memory, :class:`FaultSetting`) on a calibration subset.
- ``fitact`` (Ghavami et al., DATE 2022): neuron-wise thresholds from the profiled maxima, trained
  with everything else frozen (smooth-zero policy, cross-entropy + L2 on the thresholds, Adam,
  cosine schedule).
- ``proact`` (Mousavi et al. 2024): hybrid thresholds (layer-wise, the last activation
  neuron-wise) trained one layer at a time from the last toward the input, with distillation from
  the unclipped model and a weight-decay sweep from strong to weak, keeping the strongest setting
  whose validation accuracy stays within a tolerance of the clipped-at-maximum model.

Every method takes a float model (not changed) and a :class:`~accel_models.data.Dataset`, uses
only its training split (calibration images are its first images, ProAct's validation images a
seeded stratified part of it), and returns a :class:`ClipResult` with the clipped model, its spec
(:mod:`accel_models.clipact`), the threshold count and the time the search or training took.
Methods are registered in :data:`CLIP_METHODS` (``@register_clip_method``).
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from accel_models.clipact import (
    SPEC_GRANULARITIES, apply_clipping, clippable_activations, clipped_modules, clipping_spec, hybrid_granularities,
    make_spec, set_policy, threshold_count,
)
from mitigation.weightfaults import WEIGHT_FORMATS, corrupt_model, corrupt_program, float_accuracy
from sysarray.validation import check_choice, check_instance, check_int, check_positive_int, check_seed, is_number

DEFAULT_BER_RATES = (1e-7, 1e-6, 3e-6, 1e-5, 3e-5)
DEFAULT_PE_RATES = (0.005, 0.01, 0.02, 0.03, 0.05)
DEPLOY_POLICIES = ("clamp", "zero")  # smooth is only used while training
DEFAULT_CHIP_BITS = tuple(range(24, 31))  # psum bits stuck at 1 that make a value huge (bit 31 makes it negative)
CALIBRATION_IMAGES = 1024
QUANT_CALIBRATION_IMAGES = 512  # the lowering's calibration (accel_models.evaluation default)


# --------------------------------------------------------------------------- results and registry
@dataclass
class ClipResult:
    """A hardened model: ``model`` (float, clipped), ``spec`` (for the checkpoint), ``seconds`` the
    search/training took, ``thresholds`` stored, ``model_parameters`` of the unclipped model."""

    method: str
    model: nn.Module
    spec: dict
    seconds: float
    thresholds: int
    model_parameters: int
    history: dict = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        """Thresholds as a fraction of the model's parameters (memory overhead)."""
        return self.thresholds / max(1, self.model_parameters)


ClipMethod = Callable[..., "tuple[dict, dict]"]
CLIP_METHODS: dict[str, ClipMethod] = {}


def register_clip_method(name: str) -> Callable[[ClipMethod], ClipMethod]:
    """Register ``fn(model, dataset, *, seed, progress, **options) -> (thresholds spec, history)``."""
    def deco(fn: ClipMethod) -> ClipMethod:
        CLIP_METHODS[name] = fn
        return fn
    return deco


def method_names() -> list[str]:
    return list(CLIP_METHODS)


def base_parameter_count(model: nn.Module) -> int:
    """Parameters of the model without clipping thresholds."""
    clip = {id(m.threshold) for m in clipped_modules(model).values()}
    return int(sum(p.numel() for p in model.parameters() if id(p) not in clip))


def find_thresholds(model: nn.Module, dataset, method: str, *, seed: int = 0, progress: bool = True,
                    **options: Any) -> ClipResult:
    """Run clipping method ``method`` on a copy of ``model`` with ``dataset``'s training split."""
    check_choice(method, "method", "find_thresholds", list(CLIP_METHODS))
    check_instance(model, nn.Module, "model", "find_thresholds", what="a torch.nn.Module")
    seed = check_seed(seed, "find_thresholds")
    model = copy.deepcopy(model).cpu().eval()
    if clipped_modules(model):
        raise ValueError("The model is already clipped; find thresholds for the unclipped model it came from.")
    clippable_activations(model)  # a clear error when there is nothing to clip
    t0 = time.perf_counter()
    spec, history = CLIP_METHODS[method](model, dataset, seed=seed, progress=progress, **options)
    seconds = time.perf_counter() - t0
    clipped = apply_clipping(copy.deepcopy(model), spec).eval()
    spec["settings"] = {**spec.get("settings", {}), "seconds": seconds, "seed": int(seed)}
    return ClipResult(method=method, model=clipped, spec=spec, seconds=seconds, thresholds=threshold_count(spec),
                      model_parameters=base_parameter_count(model), history=history)


# --------------------------------------------------------------------------- shared pieces
def calibration_subset(dataset, count: int, *, name: str = "count",
                       where: str = "calibration_subset") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` training images and labels (deterministic, never the test split);
    ``name`` and ``where`` name the count in the error message of a bad one."""
    count = check_positive_int(count, name, where)
    return dataset.train_x[:count], dataset.train_y[:count]


@torch.no_grad()
def profile_maxima(model: nn.Module, images: torch.Tensor, granularities: Mapping[str, str],
                   batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The maximum of each named ReLU's output over ``images`` at its granularity: a scalar
    (layer), per channel ``(C,)`` or per element of one sample (neuron). Float32 tensors."""
    mods = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}

    def reduce(name: str, y: torch.Tensor) -> torch.Tensor:
        g = granularities[name]
        if g == "layer":
            return y.amax()
        if g == "channel":
            return y.transpose(0, 1).reshape(y.shape[1], -1).amax(dim=1)
        return y.amax(dim=0)

    hooks = []
    for name in granularities:
        def hook(m, inp, y, name=name):
            r = reduce(name, y.detach().float())
            out[name] = r if name not in out else torch.maximum(out[name], r)
        hooks.append(mods[name].register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {n: out[n].clone() for n in granularities}


def _granularities(model: nn.Module, granularity: str, where: str) -> dict[str, str]:
    check_choice(granularity, "granularity", where, SPEC_GRANULARITIES)
    names = list(clippable_activations(model))
    return hybrid_granularities(names) if granularity == "hybrid" else {n: granularity for n in names}


def _profiled_maxima(model: nn.Module, dataset, granularity: str, profile_images: int,
                     where: str) -> dict[str, torch.Tensor]:
    """:func:`profile_maxima` at ``granularity`` over the first ``profile_images`` training images."""
    grans = _granularities(model, granularity, where)
    images, _ = calibration_subset(dataset, profile_images, name="profile_images", where=where)
    return profile_maxima(model, images, grans)


# --------------------------------------------------------------------------- fault injection
@dataclass(frozen=True)
class FaultSetting:
    """Where and how FT-ClipAct (and the benchmark) inject faults.

    ``site="memory"``: bit errors in stored weights and thresholds at each bit error rate of
    ``rates`` (``mode`` flip/stuck*), in the ``weight_format`` the weights are stored in:
    ``"int8"`` (default, the spec's: the lowered program's int8 weights and threshold codes,
    :func:`mitigation.weightfaults.corrupt_program`) or ``"float32"`` (the clipping papers'
    setting: the float model's IEEE-754 Conv/Linear weights and thresholds,
    :func:`mitigation.weightfaults.corrupt_model`; judged on the float model, not on a chip).
    ``site="chip"``: random PE fault maps at each PE fault rate of ``rates`` on an ``array``
    ``dataflow`` chip (:func:`sysarray.faultgen.by_pe_rate` with ``registers``, ``bits``, ``values``),
    run with the fast engine. ``repetitions`` draws per rate; draw ``(rate i, repetition j)`` uses
    the seed ``SeedSequence(seed, spawn_key=(i, j))``, so every candidate sees the same faults.
    """

    site: str = "memory"
    rates: tuple = DEFAULT_BER_RATES
    repetitions: int = 5
    seed: int = 0
    mode: str = "flip"
    array: str = "16x16"
    dataflow: str = "ws"
    psum_bits: int = 32
    registers: tuple = ("psum",)
    bits: tuple | None = DEFAULT_CHIP_BITS
    values: tuple = (1,)
    weight_format: str = "int8"

    def __post_init__(self) -> None:
        check_choice(self.site, "site", "FaultSetting", ("memory", "chip"))
        check_choice(self.weight_format, "weight_format", "FaultSetting", WEIGHT_FORMATS)
        if self.site == "chip" and self.weight_format != "int8":
            raise ValueError(f"The 'weight_format' argument of FaultSetting must be int8 with site='chip': the weight "
                             f"format applies to the memory fault site only (a chip runs int8). "
                             f"Got {self.weight_format!r} instead.")
        rates = tuple(float(r) for r in self.rates)
        if not rates or any(not 0 <= r <= 1 for r in rates) or list(rates) != sorted(rates):
            raise ValueError(f"The 'rates' argument of FaultSetting must be an increasing list of numbers in [0, 1]. "
                             f"Got {self.rates!r} instead.")
        object.__setattr__(self, "rates", rates)
        check_positive_int(self.repetitions, "repetitions", "FaultSetting")
        check_seed(self.seed, "FaultSetting")

    @classmethod
    def chip(cls, rates=DEFAULT_PE_RATES, **kw) -> "FaultSetting":
        return cls(site="chip", rates=tuple(rates), **kw)

    @property
    def config(self):
        import sysarray as sa

        rows, cols = sa.config.parse_array(self.array)
        return sa.ArrayConfig(rows, cols, self.dataflow, psum_bits=self.psum_bits)

    def seed_of(self, rate_index: int, repetition: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(int(self.seed), spawn_key=(int(rate_index), int(repetition)))

    def fault_map(self, rate_index: int, repetition: int):
        from sysarray.faultgen import by_pe_rate

        return by_pe_rate(self.config, self.rates[rate_index], seed=self.seed_of(rate_index, repetition),
                          registers=self.registers, bits=self.bits, values=self.values)

    @property
    def on_float_model(self) -> bool:
        """Whether draws are judged on the float model (float32 weight memory) rather than on an
        integer program."""
        return self.site == "memory" and self.weight_format == "float32"

    def target(self, model: nn.Module, dataset):
        """What :meth:`accuracy` takes for the (clipped) float ``model``: the model itself for the
        float32 memory site, else its integer program (:func:`lower_clipped`)."""
        return model if self.on_float_model else lower_clipped(model, dataset)

    def accuracy(self, target, images: torch.Tensor, labels: torch.Tensor, rate_index: int, repetition: int) -> float:
        """Accuracy of ``target`` on ``images`` under draw ``(rate_index, repetition)``: an
        integer Program (chip, int8 memory) or a float ``nn.Module`` (float32 memory; a NaN logit
        row counts as wrong, :func:`mitigation.weightfaults.float_accuracy`)."""
        from accel_models.program import Program

        want = nn.Module if self.on_float_model else Program
        if not isinstance(target, want):
            what = "a float torch model" if self.on_float_model else "an integer Program (lower_clipped)"
            site = f"the {self.site} fault site{' with float32 weights' if self.on_float_model else ''}"
            raise TypeError(f"The 'target' argument of FaultSetting.accuracy for {site} must be {what}. "
                            f"Got {type(target).__name__} instead.")
        seed = self.seed_of(rate_index, repetition)
        if self.on_float_model:
            return float_accuracy(corrupt_model(target, self.rates[rate_index], seed=seed, mode=self.mode), images, labels)
        program = target
        cfg = self.config
        if self.site == "memory":
            bad = corrupt_program(program, self.rates[rate_index], seed=seed, mode=self.mode)
            return bad.run(images, cfg, engine="fast", count_changes=False).accuracy(labels)
        fm = self.fault_map(rate_index, repetition)
        return program.run(images, cfg, faults=fm, engine="fast", count_changes=False).accuracy(labels)

    def curve(self, target, images, labels) -> np.ndarray:
        """Accuracy (fraction) per rate and repetition, shape ``(len(rates), repetitions)``;
        ``target`` as for :meth:`accuracy`."""
        return np.array([[self.accuracy(target, images, labels, i, j) for j in range(self.repetitions)]
                         for i in range(len(self.rates))])

    def auc(self, target, images, labels) -> float:
        """Area under the mean accuracy-vs-rate curve (trapezoid), divided by the rate span, in
        accuracy points: the curve's mean height (a single rate gives that rate's accuracy)."""
        mean = self.curve(target, images, labels).mean(axis=1) * 100
        if len(self.rates) == 1:
            return float(mean[0])
        x = np.asarray(self.rates)
        return float(np.trapezoid(mean, x) / (x[-1] - x[0]))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def lower_clipped(model: nn.Module, dataset, calibration: int = QUANT_CALIBRATION_IMAGES):
    """The integer program of a (clipped) float model, calibrated as ``sysarray run`` does."""
    from accel_models.lowering import lower

    return lower(model, dataset.train_x[:calibration])


# --------------------------------------------------------------------------- Ranger
@register_clip_method("ranger")
def ranger(model: nn.Module, dataset, *, seed: int = 0, progress: bool = True, calibration_images: int = CALIBRATION_IMAGES,
           granularity: str = "layer", policy: str = "zero") -> tuple[dict, dict]:
    """Ranger: ``T`` = the activation's maximum over the first ``calibration_images`` training images.

    A max pool after a clipped activation is bounded by the same ``T`` for free (the max of
    clipped values is clipped). ``policy`` zero (default, spec section 1) or clamp (Ranger's own).
    """
    grans = _granularities(model, granularity, "ranger")
    x, _ = calibration_subset(dataset, calibration_images, name="calibration_images", where="ranger")
    maxima = profile_maxima(model, x, grans)
    policy = check_choice(policy, "policy", "ranger", DEPLOY_POLICIES)
    spec = make_spec(model, maxima, policy=policy, granularity=granularity, method="ranger",
                     settings={"calibration_images": int(min(calibration_images, len(dataset.train_x)))})
    return spec, {}


# --------------------------------------------------------------------------- FT-ClipAct
def _candidates(lo: float, hi: float, n: int) -> list[float]:
    """``n`` equally spaced points of ``(lo, hi]`` (the lower end is never a candidate: ``T = 0``
    would silence the layer, and it is the previous round's neighbour)."""
    return [lo + (hi - lo) * (i + 1) / n for i in range(n)]


@register_clip_method("ftclipact")
def ftclipact(model: nn.Module, dataset, *, seed: int = 0, progress: bool = True, faults: FaultSetting | None = None,
              calibration_images: int = 256, profile_images: int = CALIBRATION_IMAGES, candidates: int = 4,
              min_rounds: int = 3, max_rounds: int = 4, tolerance: float = 0.2, policy: str = "zero",
              clean_drop: float = 0.5, scorer: Callable | None = None) -> tuple[dict, dict]:
    """FT-ClipAct's layer-by-layer interval search (Hoang et al. 2020, section IV).

    Every activation starts zero-clipped at its profiled maximum. For each activation in forward
    order: ``candidates`` equally spaced thresholds in ``(lo, hi]`` (start ``(0, max]``), each
    scored by :meth:`FaultSetting.auc` of the lowered model (of the float model for the float32
    weight-memory site, which is how the paper searches) on the first ``calibration_images``
    training images; the interval shrinks to the neighbours of the best candidate; after
    ``min_rounds`` rounds the search stops once the best candidate's neighbours score within
    ``tolerance`` points of it, and always after ``max_rounds``. The best threshold seen is kept.
    ``scorer(model, program) -> points`` replaces the fault-injection score (tests, other metrics).

    ``clean_drop`` (accuracy points, default 0.5) is a choice, in neither the paper nor the spec:
    the fault score alone may pick a tight threshold that costs fault-free accuracy, and clipping
    may cost at most 1 point of fault-free accuracy. A candidate is eligible only if the clipped float
    model's fault-free accuracy on the first ``profile_images`` training images is at most
    ``clean_drop`` points below the unclipped model's on the same images (earlier layers at their
    fixed thresholds, so the bound holds for the final model). An ineligible candidate scores
    ``-inf`` (never chosen, not fault-injected); the starting threshold, the profiled maximum, is
    always eligible (on the profiling images it changes nothing). In the stopping rule an
    ineligible neighbour is never "within ``tolerance``": the search goes on refining toward the
    eligibility boundary, up to ``max_rounds``. ``math.inf`` turns the guard off. ``history``
    records the baseline (``"clean_baseline"``, %) and, per round, each candidate's clean accuracy
    (``"clean"``, %) and ``"eligible"``.
    """
    faults = faults if faults is not None else FaultSetting(seed=seed)
    check_instance(faults, FaultSetting, "faults", "ftclipact")
    min_rounds = check_positive_int(min_rounds, "min_rounds", "ftclipact")
    max_rounds = check_int(max_rounds, "max_rounds", "ftclipact", lo=min_rounds)
    candidates = check_int(candidates, "candidates", "ftclipact", lo=2)
    if not is_number(clean_drop) or not clean_drop >= 0:
        message = (f"The 'clean_drop' argument of ftclipact must be a number of accuracy points >= 0 "
                   f"(math.inf turns the guard off). Got {clean_drop!r} instead.")
        raise (ValueError if is_number(clean_drop) else TypeError)(message)
    clean_drop = float(clean_drop)
    grans = _granularities(model, "layer", "ftclipact")
    px, py = calibration_subset(dataset, profile_images, name="profile_images", where="ftclipact")
    maxima = {n: float(t) for n, t in profile_maxima(model, px, grans).items()}
    baseline = 100 * float_accuracy(model, px, py)
    x, y = calibration_subset(dataset, calibration_images, name="calibration_images", where="ftclipact")
    policy = check_choice(policy, "policy", "ftclipact", DEPLOY_POLICIES)
    thresholds = dict(maxima)
    scores_seen: dict[tuple, float] = {}
    clean_seen: dict[tuple, float] = {}

    def score(name: str, t: float) -> float:
        key = (name, round(t, 9))
        if key not in scores_seen:
            trial = dict(thresholds, **{name: t})
            m = apply_clipping(copy.deepcopy(model), make_spec(model, trial, policy=policy, granularity="layer")).eval()
            clean_seen[key] = 100 * float_accuracy(m, px, py)
            if t != maxima[name] and clean_seen[key] < baseline - clean_drop:
                scores_seen[key] = -math.inf  # costs too much fault-free accuracy: never chosen, not fault-injected
            elif scorer is not None:
                scores_seen[key] = float(scorer(m, lower_clipped(m, dataset)))
            else:
                scores_seen[key] = faults.auc(faults.target(m, dataset), x, y)
        return scores_seen[key]

    def within_tolerance(best: float, other: float) -> bool:
        return math.isfinite(other) and abs(best - other) <= tolerance  # an ineligible neighbour never is

    history: dict[str, Any] = {"layers": {}, "faults": faults.to_dict(), "clean_baseline": baseline,
                               "clean_drop": clean_drop}
    total = len(grans) * max_rounds * candidates
    bar = tqdm(total=total, desc="ftclipact", unit="candidate", disable=not progress, leave=False)
    for name in grans:
        lo, hi = 0.0, maxima[name]
        best_t, best_s = hi, score(name, hi)
        rounds = []
        for r in range(max_rounds):
            cands = _candidates(lo, hi, candidates)
            s = [score(name, c) for c in cands]
            bar.update(candidates)
            b = int(np.argmax(s))
            clean = [clean_seen[(name, round(c, 9))] for c in cands]
            rounds.append({"candidates": cands, "scores": s, "clean": clean, "eligible": [math.isfinite(v) for v in s]})
            if s[b] > best_s or (s[b] == best_s and cands[b] < best_t):
                best_t, best_s = cands[b], s[b]
            # neighbours of the best: the previous grid point below (lo when b == 0) and the next one
            left = cands[b - 1] if b > 0 else lo
            right = cands[b + 1] if b + 1 < len(cands) else hi
            neigh = [s[i] for i in (b - 1, b + 1) if 0 <= i < len(s)]
            lo, hi = left, right
            if r + 1 >= min_rounds and all(within_tolerance(s[b], v) for v in neigh):
                break
        bar.update(candidates * (max_rounds - len(rounds)))
        thresholds[name] = best_t
        history["layers"][name] = {"max": maxima[name], "threshold": best_t, "score": best_s,
                                   "clean": clean_seen[(name, round(best_t, 9))], "rounds": rounds}
    bar.close()
    spec = make_spec(model, thresholds, policy=policy, granularity="layer", method="ftclipact",
                     settings={"calibration_images": calibration_images, "profile_images": profile_images,
                               "candidates": candidates, "min_rounds": min_rounds, "max_rounds": max_rounds,
                               "tolerance": tolerance, "clean_drop": clean_drop, "faults": faults.to_dict()})
    return spec, history


# --------------------------------------------------------------------------- training helpers
def _threshold_params(model: nn.Module, names: Sequence[str] | None = None) -> list[nn.Parameter]:
    mods = clipped_modules(model)
    return [mods[n].threshold for n in (names if names is not None else mods)]


def _freeze_all_but(model: nn.Module, trainable: Sequence[nn.Parameter]) -> None:
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def _train_thresholds(model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                      lr: float, weight_decay: float, batch_size: int, seed: int, teacher: nn.Module | None = None,
                      temperature: float = 1.0, progress: bool = False, desc: str = "thresholds") -> list[float]:
    """Train ``params`` (thresholds) only: model in eval mode (BatchNorm statistics and dropout
    frozen), clipped activations in training mode with the smooth-zero policy, Adam (L2 as its
    ``weight_decay``), cosine schedule per step; cross-entropy, plus KL distillation from
    ``teacher`` at ``temperature`` when given. Thresholds stay >= 0. Returns the epoch losses."""
    _freeze_all_but(model, params)
    model.eval()
    set_policy(model, "smooth")
    for m in clipped_modules(model).values():
        m.train()
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, math.ceil(len(x) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(int(seed))
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False):
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                logits = model(x[idx])
                loss = F.cross_entropy(logits, y[idx])
                if teacher is not None:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x[idx]) / temperature, dim=1)
                    loss = loss + F.kl_div(F.log_softmax(logits / temperature, dim=1), soft,
                                           reduction="batchmean") * temperature ** 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    for p in params:
                        p.clamp_(min=0.0)
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(x))
    set_policy(model, "zero")
    model.eval()
    _freeze_all_but(model, [])
    return losses


# --------------------------------------------------------------------------- FitAct
@register_clip_method("fitact")
def fitact(model: nn.Module, dataset, *, seed: int = 0, progress: bool = True, profile_images: int = CALIBRATION_IMAGES,
           granularity: str = "neuron", epochs: int = 10, lr: float = 1e-3, l2: float = 1e-4,
           batch_size: int = 64) -> tuple[dict, dict]:
    """FitAct: thresholds (neuron-wise by default) start at the profiled maxima and are trained on
    the training split with every weight, bias and BatchNorm statistic frozen (smooth-zero policy,
    cross-entropy + ``l2`` on the thresholds, Adam ``lr``, cosine schedule); deployed with the
    hard zero policy."""
    maxima = _profiled_maxima(model, dataset, granularity, profile_images, "fitact")
    clipped = apply_clipping(copy.deepcopy(model), make_spec(model, maxima, policy="zero", granularity=granularity))
    losses = _train_thresholds(clipped, _threshold_params(clipped), dataset.train_x, dataset.train_y, epochs=epochs,
                               lr=lr, weight_decay=l2, batch_size=batch_size, seed=seed, progress=progress, desc="fitact")
    spec = clipping_spec(clipped, method="fitact", settings={"profile_images": profile_images, "epochs": epochs, "lr": lr,
                                                            "l2": l2, "batch_size": batch_size})
    spec["granularity"] = granularity
    return spec, {"loss": losses}


# --------------------------------------------------------------------------- ProAct
PROACT_WEIGHT_DECAYS = tuple(4.0 * 10.0 ** -e for e in range(5, 16))  # 4e-5 ... 4e-15


@register_clip_method("proact")
def proact(model: nn.Module, dataset, *, seed: int = 0, progress: bool = True, profile_images: int = CALIBRATION_IMAGES,
           granularity: str = "hybrid", epochs: int = 3, lr: float = 1e-2, weight_decays: Sequence[float] = PROACT_WEIGHT_DECAYS,
           tolerance: float = 0.2, val_fraction: float = 0.2, temperature: float = 1.0,
           batch_size: int = 64) -> tuple[dict, dict]:
    """ProAct: progressive layer-by-layer threshold training (last activation first).

    Hybrid thresholds start at the profiled maxima. The training split is split (seeded,
    stratified) into ``1 - val_fraction`` for training and ``val_fraction`` for validation. For
    each activation from the last to the first: for each weight decay from strongest to weakest,
    train only this layer's thresholds (from where they were) for ``epochs`` with cross-entropy +
    distillation from the unclipped model (``temperature``), and accept the first setting whose
    validation accuracy is at least the clipped-at-maximum model's minus ``tolerance`` points;
    if none is, the layer keeps its profiled maximum. Then the layer is frozen.
    """
    if not weight_decays or list(weight_decays) != sorted(weight_decays, reverse=True):
        raise ValueError(f"The 'weight_decays' argument of proact must go from strong to weak. "
                         f"Got {weight_decays!r} instead.")
    maxima = _profiled_maxima(model, dataset, granularity, profile_images, "proact")
    tx, ty, vx, vy = dataset.validation_split(fraction=val_fraction, seed=seed)
    clipped = apply_clipping(copy.deepcopy(model), make_spec(model, maxima, policy="zero", granularity=granularity))
    teacher = copy.deepcopy(model).eval()
    reference = float_accuracy(clipped, vx, vy)
    mods = clipped_modules(clipped)
    history: dict[str, Any] = {"reference_val_accuracy": reference, "layers": {}}
    order = list(maxima)[::-1]
    bar = tqdm(total=len(order) * len(weight_decays), desc="proact", unit="setting", disable=not progress, leave=False)
    for li, name in enumerate(order):
        start = mods[name].threshold.detach().clone()
        accepted, tried = None, []
        for wd in weight_decays:
            with torch.no_grad():
                mods[name].threshold.copy_(start)
            _train_thresholds(clipped, [mods[name].threshold], tx, ty, epochs=epochs, lr=lr, weight_decay=wd,
                              batch_size=batch_size, seed=seed + li, teacher=teacher, temperature=temperature)
            acc = float_accuracy(clipped, vx, vy)
            tried.append({"weight_decay": wd, "val_accuracy": acc})
            bar.update(1)
            if acc * 100 >= reference * 100 - tolerance:
                accepted = wd
                break
        bar.update(len(weight_decays) - len(tried))
        if accepted is None:
            with torch.no_grad():
                mods[name].threshold.copy_(start)
        history["layers"][name] = {"accepted_weight_decay": accepted, "tried": tried,
                                   "mean_threshold": float(mods[name].threshold.detach().mean()),
                                   "mean_max": float(start.mean())}
    bar.close()
    spec = clipping_spec(clipped, method="proact", settings={
        "profile_images": profile_images, "epochs": epochs, "lr": lr, "weight_decays": list(weight_decays),
        "tolerance": tolerance, "val_fraction": val_fraction, "temperature": temperature, "batch_size": batch_size})
    spec["granularity"] = granularity
    return spec, history


# --------------------------------------------------------------------------- checkpoints
def clip_checkpoint(checkpoint: str, out: str, method: str, *, dataset: str | None = None, data_dir: str | None = None,
                    thresholds: str | None = None, seed: int = 0, progress: bool = True, **options: Any) -> ClipResult:
    """Load a checkpoint, find thresholds with ``method`` (or take them from ``thresholds``: a
    clipped checkpoint or a spec file), and save the clipped model to ``out`` (its clipping spec
    in ``extra["clipping"]``, so ``sysarray run`` and ``campaign`` load it unchanged)."""
    from accel_models.checkpoint import load_checkpoint, save_checkpoint
    from accel_models.data import load_dataset

    model, meta = load_checkpoint(checkpoint)
    if clipped_modules(model):
        raise ValueError(f"The model in {checkpoint} is already clipped ({meta['extra']['clipping'].get('method')}); "
                         "clip the unclipped checkpoint it came from.")
    data = load_dataset(dataset or meta["dataset"], data_dir)
    if thresholds is not None:
        t0 = time.perf_counter()
        spec = read_spec(thresholds)
        clipped = apply_clipping(copy.deepcopy(model), spec).eval()
        result = ClipResult(method=spec.get("method", "file"), model=clipped, spec=spec, seconds=time.perf_counter() - t0,
                            thresholds=threshold_count(spec), model_parameters=base_parameter_count(model))
    else:
        result = find_thresholds(model, data, method, seed=seed, progress=progress, **options)
    extra = dict(meta.get("extra") or {})
    extra["clipping"] = result.spec
    accuracy = float_accuracy(result.model, data.test_x, data.test_y)
    result.history["float_test_accuracy"] = accuracy
    result.history["unclipped_float_test_accuracy"] = meta.get("test_accuracy")
    save_checkpoint(out, result.model, dataset=data, preprocessing=meta.get("preprocessing"), history=meta.get("training"),
                    extra=extra, test_accuracy=accuracy)
    return result


def read_spec(path: str) -> dict:
    """A clipping spec from a clipped checkpoint (its ``extra["clipping"]``) or a spec file."""
    import os

    from accel_models.checkpoint import read_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(2, "Thresholds file not found", str(path))
    try:
        ckpt = read_checkpoint(path)
    except ValueError:
        ckpt = None
    if ckpt is not None:
        spec = (ckpt.get("extra") or {}).get("clipping")
        if spec is None:
            raise ValueError(f"The checkpoint {path} holds no clipping thresholds (it was not written by `sysarray clip`).")
        return spec
    try:
        spec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file
        raise ValueError(f"{path} is neither a clipped checkpoint nor a clipping spec file ({type(exc).__name__}).") from None
    from accel_models.clipact import check_spec

    return check_spec(spec)


__all__ = [
    "CLIP_METHODS", "ClipResult", "FaultSetting", "base_parameter_count", "calibration_subset", "clip_checkpoint",
    "find_thresholds", "fitact", "ftclipact", "lower_clipped", "method_names", "proact", "profile_maxima", "ranger",
    "read_spec", "register_clip_method",
]
