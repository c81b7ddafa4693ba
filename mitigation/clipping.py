"""Clipped-activation hardening (docs/design.md §6.3): four ways to find the thresholds.

- ``ranger`` (Chen et al., DSN 2021): ``T`` = the activation's maximum over a calibration subset
  (default 1,024 training images), no training.
- ``ftclipact`` (Hoang, Hanif, Shafique, DATE 2020; :mod:`mitigation.clip_ftclipact`): layer-wise;
  each layer in forward order gets an interval search on ``[0, max]`` scored by the area under the
  accuracy-vs-fault-rate curve (fault injection on the chip or in the weight memory,
  :class:`FaultSetting`), the maxima profiled again after each layer is clipped.
- ``fitact`` (Ghavami et al., DATE 2022; :mod:`mitigation.clip_fitact`): neuron-wise thresholds
  from the profiled maxima, trained with everything else frozen until the validation loss stops
  improving.
- ``proact`` (Mousavi et al. 2024; :mod:`mitigation.clip_proact`): hybrid thresholds (layer-wise,
  the last activation neuron-wise) trained one layer at a time from the last toward the input,
  with distillation from the unclipped model, a warm-up + cosine run per weight decay from strong
  to weak, validation after every epoch and rollback of an epoch that breaks the accuracy
  tolerance.

Every method takes a float model (not changed) and a :class:`~accel_models.data.Dataset` and
uses only its training split: Ranger profiles its first images; FT-ClipAct, FitAct and ProAct cut
it (seeded, stratified, :func:`split_for_selection`) into a part they profile and train on and a
validation part they choose thresholds on. The test split is never used. Each returns a
:class:`ClipResult` with the clipped model, its spec (:mod:`accel_models.clipact`), the threshold
count and the time the search or training took. Methods are registered in :data:`CLIP_METHODS`
(``@register_clip_method``).
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

from accel_models.clipact import (
    SPEC_GRANULARITIES, apply_clipping, clippable_activations, clipped_modules, hybrid_granularities,
    make_spec, set_policy, threshold_count,
)
from mitigation.weightfaults import WEIGHT_FORMATS, corrupt_model, corrupt_program, float_accuracy
from sysarray.validation import check_choice, check_instance, check_positive_int, check_seed, is_number

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
        """FT-ClipAct's score: the area under the mean accuracy-vs-rate curve with the rates placed
        at equal spacing (the i-th rate at ``x = i``; trapezoid), divided by the span, in accuracy
        points (a single rate gives that rate's accuracy). Equal spacing, as the authors' code
        places its five rates at 0.2 ... 1, gives every rate the same weight; over the raw rates
        the widest gap (1e-5 to 3e-5 of the default grid) would carry most of the area."""
        return grid_auc(self.curve(target, images, labels).mean(axis=1) * 100)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def grid_auc(accuracy: Sequence[float]) -> float:
    """Trapezoid area under ``accuracy`` (one value per rate) at unit spacing, divided by the
    span: the end points weigh half, the inner points one (a single value is returned as is)."""
    a = np.asarray(accuracy, dtype=float)
    if a.ndim != 1 or not len(a):
        raise ValueError(f"The 'accuracy' argument of grid_auc must be a non-empty list of numbers. Got {accuracy!r} instead.")
    if len(a) == 1:
        return float(a[0])
    return float(np.trapezoid(a, dx=1.0) / (len(a) - 1))


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


# --------------------------------------------------------------------------- training helpers (FitAct, ProAct)
def split_for_selection(dataset, val_fraction: float, seed: int, where: str):
    """``(train_x, train_y, val_x, val_y)``: the training split cut (seeded, stratified) into a
    part the thresholds are profiled and trained on and a validation part they are chosen on;
    the test split is never touched."""
    if not is_number(val_fraction) or not 0 < val_fraction < 1:
        raise ValueError(f"The 'val_fraction' argument of {where} must be a number in (0, 1). Got {val_fraction!r} instead.")
    return dataset.validation_split(fraction=float(val_fraction), seed=seed)


def threshold_params(model: nn.Module, names: Sequence[str] | None = None) -> list[nn.Parameter]:
    """The threshold parameters of the named clipped activations (all of them by default)."""
    mods = clipped_modules(model)
    return [mods[n].threshold for n in (names if names is not None else mods)]


def freeze_all_but(model: nn.Module, trainable: Sequence[nn.Parameter]) -> None:
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def start_threshold_training(model: nn.Module, params: Sequence[nn.Parameter]) -> None:
    """Only ``params`` trainable; the model in eval mode (BatchNorm statistics and dropout frozen:
    the weights are not being trained) and its clipped activations in training mode with the
    smooth-zero policy (the hard zero policy has no gradient with respect to ``T``)."""
    freeze_all_but(model, params)
    model.eval()
    set_policy(model, "smooth")
    for m in clipped_modules(model).values():
        m.train()


def end_threshold_training(model: nn.Module) -> None:
    """Back to the deployed model: hard zero policy, eval mode, nothing trainable."""
    set_policy(model, "zero")
    model.eval()
    freeze_all_but(model, [])


@torch.no_grad()
def deployed_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy (fraction) of the model as deployed (clipped activations in eval mode: hard zero),
    leaving the training/eval modes as they were."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return float_accuracy(model, x, y)
    finally:
        for m, t in modes.items():
            m.train(t)


def soft_target_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Distillation term of ProAct's loss: cross-entropy of the student's log-softmax against the
    teacher's softmax (temperature 1), batch mean."""
    return -(F.softmax(teacher_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def train_epoch(model: nn.Module, params: Sequence[nn.Parameter], opt: torch.optim.Optimizer, lr_at: Callable[[int], float],
                step: int, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, gen: torch.Generator,
                teacher: nn.Module | None = None) -> tuple[float, int]:
    """One pass over ``(x, y)`` in a seeded order: cross-entropy (plus
    :func:`soft_target_cross_entropy` from ``teacher``), an optimizer step at ``lr_at(step)`` per
    batch, thresholds kept >= 0 (a negative threshold would zero every output). Returns the mean
    loss and the next step index."""
    order = torch.randperm(len(x), generator=gen)
    total = 0.0
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        if teacher is not None:
            with torch.no_grad():
                target = teacher(x[idx])
            loss = loss + soft_target_cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            for p in params:
                p.clamp_(min=0.0)
        total += float(loss.detach()) * len(idx)
    return total / len(x), step


def warmup_cosine(lr: float, warmup_steps: int, decay_steps: int) -> Callable[[int], float]:
    """The learning rate at a step: ``lr`` for the first ``warmup_steps`` (a warm-up at the base
    rate, as the authors' scheduler whose warm-up starts at the base rate), then a cosine from
    ``lr`` to 0 over ``decay_steps``."""
    def at(step: int) -> float:
        if step < warmup_steps:
            return lr
        t = min(step - warmup_steps, decay_steps)
        return 0.5 * lr * (1 + math.cos(math.pi * t / max(1, decay_steps)))
    return at


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


# The methods register themselves in CLIP_METHODS when their modules load; plain module imports
# (no ``from``) so that importing one of those modules first does not fail on this circle.
import mitigation.clip_fitact  # noqa: E402
import mitigation.clip_ftclipact  # noqa: E402
import mitigation.clip_proact  # noqa: E402

_METHOD_MODULES = {"ftclipact": "clip_ftclipact", "fitact": "clip_fitact", "proact": "clip_proact",
                   "PROACT_WEIGHT_DECAYS": "clip_proact"}


def __getattr__(name: str):
    if name in _METHOD_MODULES:
        import importlib

        return getattr(importlib.import_module(f"mitigation.{_METHOD_MODULES[name]}"), name)
    raise AttributeError(f"module 'mitigation.clipping' has no attribute {name!r}")

__all__ = [
    "CLIP_METHODS", "PROACT_WEIGHT_DECAYS", "ClipResult", "FaultSetting", "base_parameter_count", "calibration_subset", "clip_checkpoint",
    "find_thresholds", "fitact", "ftclipact", "grid_auc", "lower_clipped", "method_names", "proact", "profile_maxima", "ranger",
    "read_spec", "register_clip_method",
]
