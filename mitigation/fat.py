"""Fault-aware training for one chip (docs/design.md §6.4).

Four methods, all producing a normal zoo-model checkpoint that ``sysarray run`` evaluates unchanged:

- **FAP** (Zhang et al., "Analyzing and mitigating the impact of permanent faults on a systolic
  array based neural network accelerator", VTS 2018): on bypass hardware, prune every weight
  mapped to a faulty PE (docs/design.md §2.1); no training. WS only: in IS bypass zeroes stationary
  *inputs* and in OS it zeroes *outputs*, which no weight pruning reproduces.
- **FAP+T** (same paper): retrain with that pruning mask fixed. Gradients are masked by a tensor
  hook, so masked weights stay exactly 0 under SGD, momentum, weight decay and Adam alike.
- **Stuck-at-aware FAT**: the forward pass runs the fake-quant twin
  (:class:`accel_models.fakequant.FakeQuantProgram`) with a ``gemm_hook`` that substitutes the
  chip's exact accumulators (:class:`sysarray.Chip` with this chip's stuck bits);
  the backward pass is the straight-through gradient of the fault-free GEMM.
- **Random-error FAT** (Zahid et al., "FAT: training neural networks for reliable inference under
  hardware faults", ITC 2020): after every chip layer but the classifier, a Bernoulli(p) mask
  redrawn every batch replaces outputs by uniform values of the layer's quantized range; the
  gradient is zero at the replaced positions.

How trained weights get back into a checkpoint: every method trains the
*float zoo model* itself (its conv/linear weights and BatchNorm affine parameters). FAP/FAP+T mask
the unfolded conv/linear weight, which is exact for pruning because a folded BatchNorm scales each
output channel (``0 * s = 0``). Stuck-at FAT runs the twin on weights folded on the fly from the
model (BatchNorm in eval mode, its running statistics frozen), so its gradients land on the model's
own parameters. Saving is then ``save_checkpoint(model)`` and ``sysarray run`` re-lowers (and
re-calibrates activations on the same training images) exactly as for any trained model.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from accel_models.fakequant import FakeQuantProgram
from accel_models.matmul import MatMul, chip_total
from accel_models.program import Gemm, Program, layer_accumulators
from sysarray import ArrayConfig, Chip, Dataflow, FaultMap, mapping
from sysarray.tensor_memo import transient
from sysarray.validation import (
    check_choice, check_device, check_float, check_fraction, check_instance, check_int, check_seed,
)

METHODS = ("fap", "fapt", "stuckat", "random")
DEFAULT_EPOCHS = 10.0
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("sgd", "adam")
# (optimizer, learning rate) per method; every schedule is cosine to 0 by default.
# Adam for the chip-forward methods: a stuck high psum bit saturates whole channels, and the large
# constant inputs that follow can make SGD with momentum diverge.
METHOD_DEFAULTS = {"fapt": ("sgd", 0.02), "stuckat": ("adam", 1e-3), "random": ("adam", 1e-3)}
DEFAULT_LR = METHOD_DEFAULTS["fapt"][1]
DEFAULT_BATCH = 64
DEFAULT_RANDOM_P = 0.01


# ----------------------------------------------------------------------------------- checks
def check_chip_geometry(cfg: ArrayConfig, faults: FaultMap, where: str) -> None:
    """Raise ValueError unless ``faults`` is a map of ``cfg``'s array (rows, cols, psum bits)."""
    check_instance(faults, FaultMap, "faults", where)
    try:
        faults.check_fits(cfg.rows, cfg.cols, cfg.psum_bits)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} Give the chip's own array size (--array RxC).") from None


def check_ws(cfg: ArrayConfig, where: str) -> None:
    """FAP is weight pruning, which equals bypass only in the WS dataflow (docs/design.md §2.7)."""
    if cfg.dataflow is not Dataflow.WS:
        raise ValueError(
            f"{where} prunes weights, which is what bypass hardware does only in the weight-stationary "
            f"dataflow; in IS bypass zeroes stationary inputs and in OS the outputs of faulty PEs. "
            f"Use dataflow 'ws'. Got '{cfg.dataflow.value}' instead."
        )


# ----------------------------------------------------------------------------------- FAP masks
def keep_mask(weight_shape: Sequence[int], groups: int, faulty: np.ndarray) -> torch.Tensor:
    """Bool tensor of ``weight_shape``: False where the weight sits on a faulty PE in WS.

    ``weight_shape`` is torch's (N, C/groups, kh, kw) or (N, K); group ``g`` runs its own GEMM with
    ``W[k, n] = weight[g*ng + n].reshape(-1)[k]``, held by PE ``(k % R, n % C)`` (docs/design.md §2.1,
    K order (c, kh, kw)). ``faulty`` is the (R, C) bool faulty-PE view of a map.
    """
    n_out = int(weight_shape[0])
    k = int(np.prod(weight_shape[1:]))
    ng = n_out // groups
    bad = np.tile(mapping.per_element(faulty, (k, ng)).T, (groups, 1))  # (N, K): every group folds alike
    return torch.from_numpy(~bad).reshape(tuple(int(s) for s in weight_shape))


def fap_masks(program: Program, faults: FaultMap) -> dict[str, torch.Tensor]:
    """Keep masks of every chip layer (keyed by the layer's module name) for ``faults``."""
    faulty = faults.faulty_pes()
    return {op.name: keep_mask(tuple(op.weight.shape), op.groups, faulty) for op in program.gemms}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero, in place, the conv/linear weights of ``model`` that the masks drop."""
    for name, keep in masks.items():
        w = model.get_submodule(name).weight
        w.mul_(keep.to(w.device, w.dtype))


def fap(model: nn.Module, program: Program, cfg: ArrayConfig, faults: FaultMap) -> nn.Module:
    """FAP: a pruned copy of the float ``model`` (weights on faulty PEs of ``faults`` set to 0).

    ``program`` is ``model`` lowered (it names the chip layers). WS only.
    """
    check_ws(cfg, "FAP")
    check_chip_geometry(cfg, faults, "FAP")
    out = copy.deepcopy(model)
    apply_masks(out, fap_masks(program, faults))
    return out


def prune_program(program: Program, cfg: ArrayConfig, faults: FaultMap) -> Program:
    """The integer program with the weight codes on faulty PEs set to 0 and nothing else changed.

    Same scales, requantization and bias as ``program`` (the bias keeps the full zero-point term,
    as the bypass chip's post-processing unit does), so on a fault-free chip it gives exactly what
    ``program`` gives on the bypass chip with ``faults`` (WS).
    """
    check_ws(cfg, "prune_program")
    check_chip_geometry(cfg, faults, "prune_program")
    masks = fap_masks(program, faults)
    ops = []
    for op in program.ops:
        if isinstance(op, Gemm):
            op = copy.copy(op)
            op.weight = op.weight * masks[op.name].to(op.weight.dtype)
        ops.append(op)
    return replace(program, ops=ops, meta=dict(program.meta))  # head_shape, output_qp and the rest carried over


# ----------------------------------------------------------------------------------- the twin on a zoo model
def batchnorm_after(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Map each conv/linear module name in ``names`` to the BatchNorm that directly follows it (if any)."""
    gm = fx.symbolic_trace(model)
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            src = node.args[0]
            if isinstance(src, fx.Node) and src.op == "call_module" and src.target in names:
                out[str(src.target)] = str(node.target)
    return out


class ZooTwin(FakeQuantProgram):
    """The fake-quant twin of ``program`` whose weights are ``model``'s, BatchNorm folded on every
    forward (eval statistics), so gradients reach the zoo model's own parameters.

    ``program`` must be ``model`` lowered; activation quantization stays the program's.
    """

    def __init__(self, program: Program, model: nn.Module):
        super().__init__(program)
        del self.weights, self.biases  # replaced by tensors folded from the model on every forward
        self.weights: dict[str, torch.Tensor] = {}
        self.biases: dict[str, torch.Tensor] = {}
        self._model = [model]  # a list: not registered as a submodule (the model owns its parameters)
        self._bn = batchnorm_after(model, [op.name for op in program.gemms])

    def _fold(self) -> None:
        model = self._model[0]
        for op in self.program.gemms:
            m = model.get_submodule(op.name)
            w = m.weight
            b = m.bias if m.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            bn_name = self._bn.get(op.name)
            if bn_name is not None:
                bn = model.get_submodule(bn_name)
                scale = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
                shift = bn.bias if bn.affine else 0.0
                w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
                b = (b - bn.running_mean) * scale + shift
            self.weights[self.key(op)] = w
            self.biases[self.key(op)] = b

    def forward(self, images: torch.Tensor, gemm_hook=None) -> torch.Tensor:
        self._fold()
        return super().forward(images, gemm_hook)


def chip_hook(cfg: ArrayConfig, faults: FaultMap | None):
    """A ``gemm_hook`` that returns each layer's accumulators as the chip computes them, exact
    (the twin's forward value; the gradient stays the fault-free one). The twin's accumulators
    are the fault-free ones, so the chip starts from them (:class:`sysarray.ConvHints` ``clean``)
    and computes only the outputs its faults change, on the device the twin runs on."""
    chip = Chip(cfg, faults)

    def hook(op: Gemm | MatMul, a: torch.Tensor, wq: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        # the weights change every step: nothing derived from them is worth keeping (no autograd
        # either: every operand is detached)
        with transient():
            if isinstance(op, MatMul):  # attention's activation products: the chip's zero-point-free sums
                return chip_total(a.detach(), wq.detach(), op, chip)
            clean = acc.detach().reshape(-1, acc.shape[-1]) if op.kind == "linear" else acc.detach()
            y, _ = layer_accumulators(a.detach(), op, chip, saturate=False, clean=clean, weight=wq.detach())
        return acc if y is clean else y.reshape(acc.shape)  # the same object: the faults change no sum

    return hook


# ----------------------------------------------------------------------------------- the retraining loop
@dataclass
class RetrainResult:
    """What one retraining did: optimizer steps, epochs (steps / steps per epoch) and seconds."""

    steps: int
    epochs: float
    seconds: float


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def steps_for(epochs: float, n_images: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` epochs (fractions allowed) over ``n_images``."""
    return int(round(float(epochs) * math.ceil(n_images / batch_size)))


def retrain(model: nn.Module, forward: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor,
            y: torch.Tensor, epochs: float, *, optimizer: str = "sgd", lr: float = DEFAULT_LR,
            momentum: float = 0.9, schedule: str = "cosine", batch_size: int = DEFAULT_BATCH, seed: int = 0,
            grad_masks: dict[str, torch.Tensor] | None = None, bn_train: bool = True,
            on_epoch: Callable[[int], None] | None = None, progress: bool = False,
            desc: str = "retrain") -> RetrainResult:
    """Retrain ``model`` in place with SGD (momentum 0.9) or Adam and cross-entropy on images ``x``
    (N, C, H, W) and labels ``y`` (N,) for ``epochs`` epochs (fractions allowed: the number of
    steps is rounded), and leave it in eval mode.

    ``forward(xb, step) -> logits``. ``schedule``: "cosine" (``lr`` to 0 over the run, stepped per
    batch) or "constant". ``grad_masks`` (module name -> keep mask) zero the gradients of pruned
    weights, which therefore stay exactly 0. ``bn_train=False`` keeps BatchNorm (and dropout) in eval
    mode. ``on_epoch(step)`` runs before every pass over the data. Shuffling and any torch
    randomness in ``forward`` are seeded by ``seed``. Training runs where ``model`` is (CPU or
    CUDA); each batch of ``x``, ``y`` is moved there.
    """
    epochs = check_float(epochs, "epochs", "retrain", lo=0.0)
    lr = check_float(lr, "lr", "retrain", lo=0.0, lo_open=True)
    check_choice(optimizer, "optimizer", "retrain", OPTIMIZERS)
    check_choice(schedule, "schedule", "retrain", SCHEDULES)
    batch_size = check_int(batch_size, "batch_size", "retrain", lo=2)
    seed = check_seed(seed, "retrain")
    dev = model_device(model)
    n = len(x)
    total = steps_for(epochs, n, batch_size)
    per_epoch = math.ceil(n / batch_size)
    handles = []
    if grad_masks:
        for name, keep in grad_masks.items():
            w = model.get_submodule(name).weight
            k = keep.to(w.device, w.dtype)
            handles.append(w.register_hook(lambda g, k=k: g * k))
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: the same values as the per-tensor loop torch takes on CPU by default, in fewer calls
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=True) if optimizer == "sgd" else \
        torch.optim.Adam(params, lr=lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total)) if schedule == "cosine" else None
    gen = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()
    step = 0
    try:
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            torch.manual_seed(int(seed))
            bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
            while step < total:
                order = torch.randperm(n, generator=gen)
                if on_epoch is not None:
                    on_epoch(step)
                for i in range(0, n, batch_size):
                    idx = order[i:i + batch_size]
                    if step >= total or len(idx) < 2:  # a batch of one breaks BatchNorm statistics
                        continue
                    model.train(bn_train)
                    logits = forward(x[idx].to(dev), step)
                    loss = F.cross_entropy(logits, y[idx].to(dev))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    step += 1
                    bar.update(1)
            bar.close()
    finally:
        for h in handles:
            h.remove()
        model.eval()
    return RetrainResult(steps=total, epochs=total / per_epoch, seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------------- the four methods
def fap_t(model: nn.Module, program: Program, cfg: ArrayConfig, faults: FaultMap, x: torch.Tensor, y: torch.Tensor,
          epochs: float, **kw) -> tuple[nn.Module, RetrainResult]:
    """FAP+T: prune for ``faults`` then retrain ``epochs`` with the mask fixed. Returns the new model
    (a copy) and the retraining record. ``kw`` go to :func:`retrain`."""
    pruned = fap(model, program, cfg, faults)
    masks = fap_masks(program, faults)
    res = retrain(pruned, lambda xb, step: pruned(xb), x, y, epochs, grad_masks=masks, **kw)
    return pruned, res


def stuckat_fat(model: nn.Module, program: Program, cfg: ArrayConfig, maps: FaultMap | Sequence[FaultMap],
                x: torch.Tensor, y: torch.Tensor, epochs: float, *,
                relower: Callable[[nn.Module], Program] | None = None, **kw) -> tuple[nn.Module, RetrainResult]:
    """Stuck-at-aware FAT: the forward pass is the twin on the chip's exact fast engine with its
    stuck bits; gradients are straight-through. With several maps, batches alternate between them
    (multi-map training for a group, docs/design.md §6.5). BatchNorm statistics are frozen.

    ``relower(model) -> Program`` (e.g. ``lambda m: lower_like(m, task)``) re-lowers the model
    before every epoch, so the twin's activation quantization follows the re-calibration that
    ``sysarray run`` applies to the saved model (without it the twin keeps ``program``'s).
    The twin, and the chip's corrections with it, run where ``model`` is (CPU or CUDA)."""
    maps = [maps] if isinstance(maps, FaultMap) else list(maps)
    if not maps:
        raise ValueError("stuckat_fat needs at least one fault map. Got none.")
    for fm in maps:
        check_chip_geometry(cfg, fm, "stuck-at FAT")
    out = copy.deepcopy(model)
    twin = [ZooTwin(program, out)]
    hooks = [chip_hook(cfg, fm) for fm in maps]
    kw.setdefault("bn_train", False)
    kw.setdefault("optimizer", METHOD_DEFAULTS["stuckat"][0])
    kw.setdefault("lr", METHOD_DEFAULTS["stuckat"][1])

    def new_epoch(step: int) -> None:
        if relower is not None and step > 0:
            twin[0] = ZooTwin(relower(out), out)

    res = retrain(out, lambda xb, step: twin[0](xb, gemm_hook=hooks[step % len(hooks)]).float(), x, y, epochs,
                  on_epoch=new_epoch, **kw)
    return out, res


def random_fat(model: nn.Module, program: Program, x: torch.Tensor, y: torch.Tensor, epochs: float, *,
               p: float = DEFAULT_RANDOM_P, **kw) -> tuple[nn.Module, RetrainResult]:
    """Random-error FAT (chip-agnostic): after every chip layer but the classifier (after its
    BatchNorm when one follows), each output is replaced with probability ``p`` by a uniform value
    of that layer's quantized output range (``program``'s calibration); the mask is redrawn every
    batch from the seeded torch RNG, and the gradient is 0 at replaced positions."""
    kw.setdefault("optimizer", METHOD_DEFAULTS["random"][0])
    kw.setdefault("lr", METHOD_DEFAULTS["random"][1])
    p = check_fraction(p, "p", "random_fat")
    out = copy.deepcopy(model)
    gemms = program.gemms
    bns = batchnorm_after(out, [op.name for op in gemms])
    handles = []

    def inject(lo: float, hi: float):
        def hook(module, inputs, value):
            if not module.training:
                return value
            hit = torch.rand(value.shape, device=value.device) < p
            noise = lo + (hi - lo) * torch.rand(value.shape, device=value.device)
            return torch.where(hit, noise, value)
        return hook

    for op in gemms:
        if op.out_qp is None:
            continue
        qp = op.out_qp
        lo, hi = qp.scale * (qp.qmin - qp.zero_point), qp.scale * (qp.qmax - qp.zero_point)
        target = out.get_submodule(bns.get(op.name, op.name))
        handles.append(target.register_forward_hook(inject(lo, hi)))
    try:
        res = retrain(out, lambda xb, step: out(xb), x, y, epochs, **kw)
    finally:
        for h in handles:
            h.remove()
    return out, res


# ----------------------------------------------------------------------------------- evaluation on the chip
def lower_like(model: nn.Module, task) -> Program:
    """``model`` lowered as :func:`accel_models.evaluation.prepare` lowers a checkpoint of it (same
    calibration images and percentile, from ``task``'s checkpoint meta), so the accuracy measured
    here is what ``sysarray run`` gives on the saved file."""
    from accel_models.evaluation import DEFAULT_CALIBRATION_IMAGES, calibration_images
    from accel_models.lowering import lower

    extra = task.meta.get("extra") if isinstance(task.meta.get("extra"), dict) else {}
    calib = extra.get("calibration", {}) or {}
    n_cal = int(calib.get("images", DEFAULT_CALIBRATION_IMAGES))
    if model_device(model).type != "cpu":  # calibration runs on the CPU, where the program's tensors live
        model = copy.deepcopy(model).cpu()
    return lower(model, calibration_images(task.dataset, n_cal), percentile=calib.get("percentile"))


def chip_accuracy(program: Program, task, cfg: ArrayConfig, faults: FaultMap | None, device=None) -> float:
    """Test accuracy (fraction) of ``program`` on ``task``'s images on the chip ``cfg`` + ``faults``,
    the fast engine on ``device`` (None: the CPU)."""
    res = program.run(task.images, cfg, faults=faults, engine="fast", count_changes=False, device=device)
    return res.accuracy(task.labels)


@dataclass
class FatReport:
    """One chip's fault-aware training: accuracies (fractions) on the chip before/after, cost."""

    method: str
    accuracy_before: float
    accuracy_after: float
    clean_accuracy: float
    epochs: float
    seconds: float
    steps: int
    eval_cfg: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def eval_config(method: str, cfg: ArrayConfig) -> ArrayConfig:
    """The chip a method's model is judged on: FAP and FAP+T are bypass-hardware methods."""
    return cfg.replace(bypass=True) if method in ("fap", "fapt") else cfg


def fault_aware_train(task, cfg: ArrayConfig, faults: FaultMap, method: str, epochs: float = DEFAULT_EPOCHS, *,
                      optimizer: str | None = None, lr: float | None = None, batch_size: int = DEFAULT_BATCH,
                      seed: int = 0,
                      schedule: str = "cosine", p: float = DEFAULT_RANDOM_P,
                      progress: bool = False, device=None) -> tuple[nn.Module, FatReport]:
    """Run ``method`` (fap, fapt, stuckat, random) for the chip ``cfg`` + ``faults`` on a prepared
    task (:func:`accel_models.evaluation.prepare`); returns the new float model and the report,
    accuracies measured on the chip with the test images of ``task``. ``optimizer``/``lr``
    default to :data:`METHOD_DEFAULTS`; FAP and FAP+T are judged on the bypass chip.

    ``device``: where the training and the chip runs compute (None or "cpu": the CPU; "cuda": the
    GPU, the returned model left there). The chip's values are the same on either; the trained
    weights follow the device's float arithmetic, as any training does."""
    check_choice(method, "method", "fault_aware_train", METHODS)
    dev = check_device(device, "device", "fault_aware_train", cpu_as_none=True)
    check_chip_geometry(cfg, faults, f"sysarray fat --method {method}")
    if method in ("fap", "fapt"):
        check_ws(cfg, f"--method {method}")
    epochs = check_float(epochs, "epochs", "fault_aware_train", lo=0.0)
    ecfg = eval_config(method, cfg)
    program = task.program
    before = chip_accuracy(program, task, ecfg, faults, dev)
    clean = chip_accuracy(program, task, ecfg.replace(bypass=False), None, dev)
    x, y = task.dataset.train_x, task.dataset.train_y
    source = task.model
    if dev is not None:  # the images move once, the model is copied there
        x, y, source = x.to(dev), y.to(dev), copy.deepcopy(source).to(dev)
    kw = dict(batch_size=batch_size, schedule=schedule, seed=seed, progress=progress, desc=f"fat {method}")
    if method != "fap":
        kw["optimizer"] = optimizer or METHOD_DEFAULTS[method][0]
        kw["lr"] = lr if lr is not None else METHOD_DEFAULTS[method][1]
    if method == "fap":
        model, res = fap(source, program, cfg, faults), RetrainResult(0, 0.0, 0.0)
    elif method == "fapt":
        model, res = fap_t(source, program, cfg, faults, x, y, epochs, **kw)
    elif method == "stuckat":
        model, res = stuckat_fat(source, program, cfg, faults, x, y, epochs,
                                 relower=lambda m: lower_like(m, task), **kw)
    else:
        model, res = random_fat(source, program, x, y, epochs, p=p, **kw)
    after = chip_accuracy(lower_like(model, task), task, ecfg, faults, dev)
    return model, FatReport(method=method, accuracy_before=before, accuracy_after=after, clean_accuracy=clean,
                            epochs=res.epochs, seconds=res.seconds, steps=res.steps, eval_cfg=ecfg.to_dict())


def save_fat_checkpoint(path, model: nn.Module, task, record: dict) -> None:
    """Save ``model`` as a normal checkpoint of ``task``'s dataset, keeping the original training
    record and calibration settings; ``record`` (JSON-ready) goes to ``extra['fat']``."""
    from accel_models.checkpoint import save_checkpoint
    from accel_models.train import evaluate

    extra = dict(task.meta.get("extra") or {})
    extra["fat"] = record
    save_checkpoint(path, model, dataset=task.dataset, preprocessing=task.meta.get("preprocessing"),
                    history=task.meta.get("training") or {}, extra=extra,
                    test_accuracy=evaluate(model, task.dataset.test_x, task.dataset.test_y))


__all__ = [
    "METHODS", "FatReport", "RetrainResult", "ZooTwin", "apply_masks", "batchnorm_after", "chip_accuracy",
    "chip_hook", "check_chip_geometry", "check_ws", "eval_config", "fap", "fap_masks", "fap_t",
    "fault_aware_train", "keep_mask", "lower_like", "model_device", "prune_program", "random_fat", "retrain",
    "save_fat_checkpoint", "steps_for", "stuckat_fat",
]
