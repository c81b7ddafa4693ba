"""ProAct (Mousavi, Ahmadilivani, Raik, Jenihhin, Daneshtalab, 2024, arXiv 2406.06313):
progressive, layer-by-layer training of hybrid clipping thresholds (docs/clipping.md, "ProAct").

Steps and the function of each:

1. HyReLU: layer-wise thresholds everywhere but the last activation, which is neuron-wise,
   started at the maxima profiled on the training part (:func:`accel_models.clipact.hybrid_granularities`,
   :func:`mitigation.clipping.profile_maxima`);
2. the reference: the validation accuracy of that clipped-at-maximum model (:func:`proact`);
3. for each activation from the last to the first, only its thresholds trainable
   (:func:`train_layer`): for every weight decay from strong to weak, a run of ``warmup_epochs``
   at the base rate then ``epochs`` of cosine decay (Adam, cross-entropy + distillation from the
   unclipped model, :func:`mitigation.clipping.train_epoch`); after every epoch the validation
   accuracy; an epoch within ``tolerance`` of the reference is accepted (its state saved), one
   outside it is rolled back to the last accepted state and ends that decay's run; the next
   decay continues from the last accepted state; after all decays the layer keeps it and is frozen.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from accel_models.clipact import apply_clipping, clipped_modules, clipping_spec, make_spec
from mitigation.clipping import (
    CALIBRATION_IMAGES, _granularities, deployed_accuracy, end_threshold_training, profile_maxima,
    register_clip_method, split_for_selection, start_threshold_training, train_epoch, warmup_cosine,
)
from sysarray.validation import check_int, check_positive_int, is_number

PROACT_WEIGHT_DECAYS = tuple(4.0 * 10.0 ** -e for e in range(5, 16))  # 4e-5 ... 4e-15, the authors' list


def train_layer(model: nn.Module, name: str, teacher: nn.Module, tx: torch.Tensor, ty: torch.Tensor, vx: torch.Tensor,
                vy: torch.Tensor, *, reference: float, tolerance: float, weight_decays: Sequence[float], epochs: int,
                warmup_epochs: int, lr: float, batch_size: int, seed: int, layer_index: int) -> dict:
    """Step 3 for one activation ``name`` of the clipped ``model`` (its thresholds change in
    place; every other parameter stays frozen). ``reference`` and the validation accuracies are
    fractions, ``tolerance`` in points. Returns the layer's record: per decay, per epoch the
    validation accuracy (%), whether it was accepted and the mean threshold after it."""
    param = clipped_modules(model)[name].threshold
    accepted = param.detach().clone()
    steps = -(-len(tx) // batch_size)
    record: dict[str, Any] = {"lr": lr, "threshold_count": int(param.numel()), "start_mean": float(accepted.mean()),
                              "decays": []}
    start_threshold_training(model, [param])
    for di, wd in enumerate(weight_decays):
        opt = torch.optim.Adam([param], lr=lr, weight_decay=wd)
        lr_at = warmup_cosine(lr, warmup_epochs * steps, epochs * steps)
        # every (layer, decay) run draws its own batch order from the seed
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed, spawn_key=(layer_index, di)).generate_state(1)[0]))
        run: dict[str, Any] = {"weight_decay": wd, "epochs": [], "violated": False}
        step = 0
        for epoch in range(1, warmup_epochs + epochs + 1):
            _, step = train_epoch(model, [param], opt, lr_at, step, tx, ty, batch_size=batch_size, gen=gen, teacher=teacher)
            acc = deployed_accuracy(model, vx, vy)
            ok = 100 * acc >= 100 * reference - tolerance
            if ok:
                accepted = param.detach().clone()
            else:
                with torch.no_grad():
                    param.copy_(accepted)
            run["epochs"].append({"epoch": epoch, "val_accuracy": 100 * acc, "accepted": ok,
                                  "mean_threshold": float(param.detach().mean())})
            if not ok:
                run["violated"] = True
                break
        record["decays"].append(run)
    end_threshold_training(model)
    record["end_mean"] = float(param.detach().mean())
    return record


@register_clip_method("proact")
def proact(model: nn.Module, dataset, *, seed: int = 0, progress: bool = True, profile_images: int = CALIBRATION_IMAGES,
           granularity: str = "hybrid", epochs: int = 100, warmup_epochs: int = 5, lr: float = 1e-2,
           neuron_lr: float = 1e-3, weight_decays: Sequence[float] = PROACT_WEIGHT_DECAYS, tolerance: float = 0.2,
           val_fraction: float = 0.2, batch_size: int = 64) -> tuple[dict, dict]:
    """ProAct: progressive layer-by-layer threshold training, the last activation first.

    The training split is cut (``val_fraction``, ``seed``; stratified) into a training part and
    a validation part. Thresholds at ``granularity`` (hybrid: HyReLU) start at the maxima of the
    first ``profile_images`` training-part images. The reference is the validation accuracy of
    that model. Each activation in turn, from the last to the first, is trained by
    :func:`train_layer` through every decay of ``weight_decays`` (strong to weak; the authors' 11),
    ``warmup_epochs`` + ``epochs`` per decay (the authors' 5 + 100), Adam at ``lr`` for an
    activation with one threshold and ``neuron_lr`` for one with several (the authors' 1e-2 and
    1e-3), batches of ``batch_size``; an epoch whose validation accuracy falls more than
    ``tolerance`` points below the reference is rolled back and ends that decay. The loss is
    cross-entropy plus the cross-entropy against the unclipped model's softmax (distillation).
    ``history["layers"][name]`` holds each layer's record (:func:`train_layer`).
    """
    if not weight_decays or list(weight_decays) != sorted(weight_decays, reverse=True) or \
            not all(is_number(w) and w >= 0 for w in weight_decays):
        raise ValueError(f"The 'weight_decays' argument of proact must be numbers >= 0 from strong to weak. "
                         f"Got {weight_decays!r} instead.")
    epochs = check_positive_int(epochs, "epochs", "proact")
    warmup_epochs = check_int(warmup_epochs, "warmup_epochs", "proact", lo=0)
    batch_size = check_positive_int(batch_size, "batch_size", "proact")
    profile_images = check_positive_int(profile_images, "profile_images", "proact")
    for key, value in (("lr", lr), ("neuron_lr", neuron_lr)):
        if not is_number(value) or not value > 0:
            raise ValueError(f"The '{key}' argument of proact must be a positive number. Got {value!r} instead.")
    if not is_number(tolerance) or not tolerance >= 0:
        raise ValueError(f"The 'tolerance' argument of proact must be a number of accuracy points >= 0. "
                         f"Got {tolerance!r} instead.")
    tx, ty, vx, vy = split_for_selection(dataset, val_fraction, seed, "proact")
    grans = _granularities(model, granularity, "proact")
    maxima = profile_maxima(model, tx[:profile_images], grans)
    clipped = apply_clipping(copy.deepcopy(model), make_spec(model, maxima, policy="zero", granularity=granularity))
    teacher = copy.deepcopy(model).eval()
    reference = deployed_accuracy(clipped, vx, vy)
    history: dict[str, Any] = {"reference_val_accuracy": 100 * reference, "order": [], "layers": {}}
    order = list(grans)[::-1]
    for li, name in enumerate(tqdm(order, desc="proact", unit="layer", disable=not progress, leave=False)):
        n = int(clipped_modules(clipped)[name].threshold.numel())
        history["order"].append(name)
        history["layers"][name] = train_layer(
            clipped, name, teacher, tx, ty, vx, vy, reference=reference, tolerance=float(tolerance),
            weight_decays=tuple(float(w) for w in weight_decays), epochs=epochs, warmup_epochs=warmup_epochs,
            lr=float(lr if n == 1 else neuron_lr), batch_size=batch_size, seed=seed, layer_index=li)
    history["final_val_accuracy"] = 100 * deployed_accuracy(clipped, vx, vy)
    spec = clipping_spec(clipped, method="proact", settings={
        "profile_images": profile_images, "epochs": epochs, "warmup_epochs": warmup_epochs, "lr": lr,
        "neuron_lr": neuron_lr, "weight_decays": list(weight_decays), "tolerance": tolerance,
        "val_fraction": val_fraction, "batch_size": batch_size})
    spec["granularity"] = granularity
    return spec, history


__all__ = ["PROACT_WEIGHT_DECAYS", "proact", "train_layer"]
