"""A plain, seeded trainer for the zoo models: SGD or Adam, a per-step cosine schedule, a tqdm bar.

Determinism: ``train`` seeds torch's RNG (dropout, augmentation) inside ``torch.random.fork_rng``
so the caller's global RNG state is left as it was, and shuffles with its own
``torch.Generator``; the same model, data and seed give bit-identical weights on the same
machine and thread count.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from accel_models.zoo import build_model
from sysarray.validation import check_choice, check_device, check_float, check_positive_int, check_seed

if TYPE_CHECKING:  # accel_models.data is imported lazily by train_zoo_model
    from accel_models.data import Dataset

OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 3e-3, "sgd": 0.05}
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "sgd": 5e-4}
AUGMENTATIONS = ("crop", "flip", "crop+flip")

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _as_images(x: Any, name: str, where: str) -> torch.Tensor:
    """``x`` (array-like, N x C x H x W) as a float32 CPU tensor."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 4:
        raise ValueError(f"The '{name}' argument of {where} must be a 4-d array N x C x H x W. "
                         f"Got shape {tuple(t.shape)} instead.")
    if not t.is_floating_point():
        raise TypeError(f"The '{name}' argument of {where} must hold floats (images in [0, 1]). "
                        f"Got dtype {t.dtype} instead.")
    t = t.detach().to("cpu", torch.float32)
    if t.stride() != torch.empty(t.shape).stride():  # plain NCHW strides (see the note in train)
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def _as_labels(y: Any, n: int, name: str, where: str) -> torch.Tensor:
    """``y`` (array-like, N) as an int64 CPU tensor of non-negative class indices."""
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"The '{name}' argument of {where} must be a 1-d array of {n} labels. "
                         f"Got shape {tuple(t.shape)} instead.")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"The '{name}' argument of {where} must hold integer class indices. "
                        f"Got dtype {t.dtype} instead.")
    t = t.detach().to("cpu", torch.int64)
    if n and int(t.min()) < 0:
        raise ValueError(f"The '{name}' argument of {where} must hold class indices >= 0. Got {int(t.min())} instead.")
    return t


def random_crop(x: torch.Tensor, generator: torch.Generator, padding: int | None = None) -> torch.Tensor:
    """Zero-pad ``x`` (N x C x H x W) by ``padding`` (default ``max(1, H // 8)``: 4 for 32x32) and
    crop each image back to H x W at a random offset drawn from ``generator``."""
    n, c, h, w = x.shape
    p = max(1, h // 8) if padding is None else padding
    padded = F.pad(x, (p, p, p, p))
    oy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # n x 1 x h x 1
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # n x 1 x 1 x w
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of ``x`` (N x C x H x W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _resolve_augment(augment: str | Augment | None) -> Augment | None:
    if augment is None or callable(augment):
        return augment
    if augment == "crop":
        return random_crop
    if augment == "flip":
        return random_flip
    if augment == "crop+flip":
        return lambda x, g: random_flip(random_crop(x, g), g)
    raise ValueError(
        f"The 'augment' argument of train must be None, a callable (x, generator) -> x, or one of "
        f"{', '.join(AUGMENTATIONS)}. Got {augment!r} instead."
    )


@torch.no_grad()
def predict(model: nn.Module, x: Any, *, batch_size: int = 512, device: str | torch.device | None = None) -> torch.Tensor:
    """Float logits (N x classes, CPU) of ``model`` in eval mode on images ``x`` (N x C x H x W).

    The model's train/eval mode is restored afterwards.
    """
    x = _as_images(x, "x", "predict")
    batch_size = check_positive_int(batch_size, "batch_size", "predict")
    dev = check_device(device, "device", "predict") or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outs = [model(x[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, 0)


def evaluate(model: nn.Module, x: Any, y: Any, batch_size: int = 512, *, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on images ``x`` (N x C x H x W), labels ``y`` (N)."""
    x = _as_images(x, "x", "evaluate")
    y = _as_labels(y, len(x), "y", "evaluate")
    if len(x) == 0:
        raise ValueError("The 'x' argument of evaluate must hold at least one image. Got 0 instead.")
    logits = predict(model, x, batch_size=batch_size, device=device)
    return float((logits.argmax(1) == y).double().mean())


def train(
    model: nn.Module,
    train_x: Any,
    train_y: Any,
    *,
    epochs: int,
    batch_size: int = 64,
    optimizer: str = "adam",
    lr: float | None = None,
    weight_decay: float | None = None,
    momentum: float = 0.9,
    seed: int = 0,
    progress: bool = True,
    val: tuple[Any, Any] | None = None,
    augment: str | Augment | None = None,
    device: str | torch.device | None = None,
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """Train ``model`` in place with cross-entropy on images ``train_x`` (N x C x H x W, float in
    [0, 1]) and labels ``train_y`` (N, int).

    - ``optimizer``: "adam" (default lr 3e-3, weight decay 0) or "sgd" (Nesterov momentum
      ``momentum``, default lr 0.05, weight decay 5e-4); ``lr`` and ``weight_decay`` override.
    - The learning rate follows a cosine from ``lr`` to 0 over all steps (Loshchilov & Hutter 2017,
      without restarts), stepped once per batch.
    - ``val``: optional ``(x, y)`` evaluated after every epoch.
    - ``augment``: None, "crop", "flip", "crop+flip", or a callable ``(x, generator) -> x``.
    - ``device``: where to train (default: CPU); the model is left on that device.

    Returns the history, a dict of plain types: ``settings`` (the arguments above, resolved),
    per-epoch ``train_loss``, ``train_accuracy``, ``lr`` (at the epoch's end) and ``val_accuracy``
    (when ``val`` is given), ``train_time_s``, and ``final_val_accuracy`` (or None).
    """
    x = _as_images(train_x, "train_x", "train")
    y = _as_labels(train_y, len(x), "train_y", "train")
    if len(x) < 2:
        raise ValueError(f"The 'train_x' argument of train must hold at least 2 images. Got {len(x)} instead.")
    epochs = check_positive_int(epochs, "epochs", "train")
    batch_size = check_positive_int(batch_size, "batch_size", "train")
    check_choice(optimizer, "optimizer", "train", OPTIMIZERS)
    lr = DEFAULT_LR[optimizer] if lr is None else check_float(lr, "lr", "train", lo=0.0, lo_open=True)
    weight_decay = DEFAULT_WEIGHT_DECAY[optimizer] if weight_decay is None else \
        check_float(weight_decay, "weight_decay", "train", lo=0.0)
    seed = check_seed(seed, "train")
    aug = _resolve_augment(augment)
    if val is not None:
        val_x = _as_images(val[0], "val[0]", "train")
        val_y = _as_labels(val[1], len(val_x), "val[1]", "train")
    dev = check_device("cpu" if device is None else device, "device", "train")

    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": float(momentum) if optimizer == "sgd" else None,
        "schedule": "cosine",
        "seed": int(seed),
        "augment": augment if augment is None or isinstance(augment, str) else getattr(augment, "__name__", "callable"),
        "label_smoothing": float(label_smoothing),
        "train_size": len(x),
    }
    history: dict[str, Any] = {"settings": settings, "train_loss": [], "train_accuracy": [], "lr": []}
    if val is not None:
        history["val_accuracy"] = []

    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: the same values as the per-tensor loop torch takes on CPU by default, in fewer calls
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay,
                              foreach=True)
    steps_per_epoch = len(x) // batch_size + (len(x) % batch_size >= 2)  # a last batch of one is skipped
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)

    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(int(seed))
        bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False)
        for _ in bar:
            model.train()
            order = torch.randperm(len(x), generator=gen)
            loss_sum, correct, seen = 0.0, 0, 0
            for i in range(0, len(x), batch_size):
                idx = order[i : i + batch_size]
                if len(idx) < 2:  # a batch of one breaks BatchNorm's batch statistics
                    continue
                xb, yb = x[idx], y[idx]
                if aug is not None:
                    # plain NCHW strides: a 1-channel batch with channels-last strides counts as
                    # contiguous, a layout torch's CPU backward can crash on
                    xb = aug(xb, gen).clone(memory_format=torch.contiguous_format)
                xb, yb = xb.to(dev), yb.to(dev)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += len(idx)
            history["train_loss"].append(loss_sum / seen)
            history["train_accuracy"].append(correct / seen)
            history["lr"].append(float(opt.param_groups[0]["lr"]))
            postfix = {"loss": f"{loss_sum / seen:.4f}", "acc": f"{correct / seen:.4f}"}
            if val is not None:
                acc = evaluate(model, val_x, val_y, device=dev)
                history["val_accuracy"].append(acc)
                postfix["val"] = f"{acc:.4f}"
            bar.set_postfix(postfix)
        bar.close()
    model.eval()
    history["train_time_s"] = time.perf_counter() - start
    history["final_val_accuracy"] = history["val_accuracy"][-1] if val is not None else None
    return history


def train_zoo_model(
    name: str,
    dataset: Dataset | str,
    epochs: int,
    seed: int = 0,
    *,
    model_kwargs: dict[str, Any] | None = None,
    val_fraction: float = 0.0,
    data_dir: str | None = None,
    **train_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build zoo model ``name`` for ``dataset`` (a ``Dataset`` or a dataset name), train it with
    ``train`` and evaluate it on the test split.

    ``seed`` seeds the initial weights (built under ``torch.manual_seed(seed)``, the caller's RNG
    state is restored), the validation split and the training. ``val_fraction > 0`` holds out that
    fraction of the training set for per-epoch validation (``Dataset.validation_split``).
    ``train_kwargs`` go to ``train`` (batch_size, optimizer, lr, augment, progress, device, ...).

    Returns ``(model, history)``: the model in eval mode on its training device; the history of
    ``train`` plus ``dataset`` (the name), ``model`` (the ``arch`` dict) and ``test_accuracy``.
    """
    if isinstance(dataset, str):
        from accel_models.data import load_dataset  # lazy: only this convenience needs the loaders

        dataset = load_dataset(dataset, data_dir)
    val_fraction = check_float(val_fraction, "val_fraction", "train_zoo_model", lo=0.0, hi=1.0, hi_open=True)
    seed = check_seed(seed, "train_zoo_model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, dataset.input_shape, dataset.num_classes, **(model_kwargs or {}))
    if val_fraction > 0:
        tx, ty, vx, vy = dataset.validation_split(fraction=val_fraction, seed=seed)
        val = (vx, vy)
    else:
        tx, ty, val = dataset.train_x, dataset.train_y, None
    history = train(model, tx, ty, epochs=epochs, seed=seed, val=val, **train_kwargs)
    history["dataset"] = dataset.name
    history["model"] = model.arch
    history["settings"]["val_fraction"] = float(val_fraction)
    history["test_accuracy"] = evaluate(model, dataset.test_x, dataset.test_y, device=train_kwargs.get("device"))
    return model, history
