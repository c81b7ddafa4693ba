"""FitAct (Ghavami, Sadati, Fang, Shannon, DATE 2022): neuron-wise bounded activations whose
bounds are post-trained with every weight frozen (docs/clipping.md, "FitAct").

Steps and the function of each:

1. profile every activation's per-neuron maximum on the training part
   (:func:`mitigation.clipping.profile_maxima`) and start the bounds there (:func:`fitact`);
2. train the bounds only, all layers at once, with the smooth bounded ReLU (cross-entropy + L2 on
   the bounds, Adam, cosine schedule; :func:`mitigation.clipping.train_epoch`);
3. after every epoch, the validation loss of the deployed (hard zero) model
   (:func:`validation_loss`); stop when it has not improved for ``patience`` epochs or after
   ``epochs``, and keep the bounds of the best epoch (:func:`fitact`).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from accel_models.clipact import apply_clipping, clipping_spec, make_spec
from mitigation.clipping import (
    CALIBRATION_IMAGES, _granularities, end_threshold_training, profile_maxima, register_clip_method,
    split_for_selection, start_threshold_training, threshold_params, train_epoch, warmup_cosine,
)
from sysarray.validation import check_positive_int, is_number


@torch.no_grad()
def validation_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Cross-entropy of the model as deployed (eval mode: hard zero policy) on ``(x, y)``; the
    training/eval modes are left as they were."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        total = sum(float(F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum"))
                    for i in range(0, len(x), batch_size))
    finally:
        for m, t in modes.items():
            m.train(t)
    return total / len(x)


@register_clip_method("fitact")
def fitact(model: nn.Module, dataset, *, seed: int = 0, progress: bool = True, profile_images: int = CALIBRATION_IMAGES,
           granularity: str = "neuron", epochs: int = 100, lr: float = 1e-3, l2: float = 1e-4, batch_size: int = 64,
           val_fraction: float = 0.2, patience: int = 10) -> tuple[dict, dict]:
    """FitAct: bounds (neuron-wise by default) start at the maxima profiled on the first
    ``profile_images`` images of the training part and are trained on the training part with
    every weight, bias and BatchNorm statistic frozen: smooth bounded ReLU, cross-entropy + ``l2``
    on the bounds (Adam's L2), Adam at ``lr`` with a cosine schedule over ``epochs`` (the authors'
    code: 100 epochs at 1e-3). After every epoch the deployed model's cross-entropy on the
    validation part (``val_fraction`` of the training split, seeded) is measured; training stops
    once it has not improved for ``patience`` epochs (the thresholds have converged), and the bounds
    of the epoch with the lowest validation loss are kept. ``history["epochs"]`` lists each
    epoch's training and validation loss; ``history["best_epoch"]`` (0: the profiled maxima) and
    ``history["stopped"]`` ("patience" or "epochs") say how it ended.
    """
    epochs = check_positive_int(epochs, "epochs", "fitact")
    patience = check_positive_int(patience, "patience", "fitact")
    batch_size = check_positive_int(batch_size, "batch_size", "fitact")
    profile_images = check_positive_int(profile_images, "profile_images", "fitact")
    if not is_number(lr) or not lr > 0:
        raise ValueError(f"The 'lr' argument of fitact must be a positive number. Got {lr!r} instead.")
    if not is_number(l2) or not l2 >= 0:
        raise ValueError(f"The 'l2' argument of fitact must be a number >= 0. Got {l2!r} instead.")
    tx, ty, vx, vy = split_for_selection(dataset, val_fraction, seed, "fitact")
    grans = _granularities(model, granularity, "fitact")
    maxima = profile_maxima(model, tx[:profile_images], grans)
    clipped = apply_clipping(copy.deepcopy(model), make_spec(model, maxima, policy="zero", granularity=granularity))
    params = threshold_params(clipped)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=l2, foreach=True)
    steps = -(-len(tx) // batch_size)
    lr_at = warmup_cosine(lr, 0, epochs * steps)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    best_loss = validation_loss(clipped, vx, vy)
    best_state = [p.detach().clone() for p in params]
    history: dict[str, Any] = {"initial_val_loss": best_loss, "epochs": [], "best_epoch": 0, "stopped": "epochs"}
    since, step = 0, 0
    start_threshold_training(clipped, params)
    for epoch in tqdm(range(1, epochs + 1), desc="fitact", unit="epoch", disable=not progress, leave=False):
        loss, step = train_epoch(clipped, params, opt, lr_at, step, tx, ty, batch_size=batch_size, gen=gen)
        val = validation_loss(clipped, vx, vy)
        history["epochs"].append({"epoch": epoch, "train_loss": loss, "val_loss": val})
        if val < best_loss:
            best_loss, best_state, since = val, [p.detach().clone() for p in params], 0
            history["best_epoch"] = epoch
        else:
            since += 1
            if since >= patience:
                history["stopped"] = "patience"
                break
    with torch.no_grad():
        for p, s in zip(params, best_state):
            p.copy_(s)
    end_threshold_training(clipped)
    history["best_val_loss"] = best_loss
    spec = clipping_spec(clipped, method="fitact", settings={
        "profile_images": profile_images, "epochs": epochs, "lr": lr, "l2": l2, "batch_size": batch_size,
        "val_fraction": val_fraction, "patience": patience})
    spec["granularity"] = granularity
    return spec, history


__all__ = ["fitact", "validation_loss"]
