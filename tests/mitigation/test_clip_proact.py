"""ProAct's algorithmic steps (mitigation.clip_proact) and FitAct's stopping rule
(mitigation.clip_fitact): rollback of a violating epoch, every decay visited, the hybrid split
and its learning rates, the distillation loss, the schedule; FitAct's early stop."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import mitigation.clip_fitact as fa
import mitigation.clip_proact as pa
from accel_models.checkpoint import load_checkpoint
from accel_models.clipact import apply_clipping, clipped_modules, make_spec
from mitigation.clipping import find_thresholds, profile_maxima, soft_target_cross_entropy, warmup_cosine


@pytest.fixture(scope="module")
def lenet(lenet_ckpt):
    return load_checkpoint(lenet_ckpt)[0].eval()


def _scripted(monkeypatch, module, name, values, param_of):
    """Replace ``module.name`` (a validation measure) by one returning ``values`` in turn and
    recording, at each call, a copy of the thresholds ``param_of(model)`` it saw."""
    seen = []
    it = iter(values)

    def fake(model, x, y):
        seen.append([p.detach().clone() for p in param_of(model)])
        return next(it)

    monkeypatch.setattr(module, name, fake)
    return seen


def test_proact_rolls_back_a_violating_epoch_and_visits_every_decay(lenet, digits, monkeypatch):
    """Scripted validation accuracies (reference 0.9, tolerance 0.2 points): decay 1 accepts two
    epochs and violates the third; decay 2 accepts one and violates the next; decay 3 violates at
    once. After a violation the thresholds are those of the last accepted epoch, the next decay
    starts from them, and all three decays run."""
    maxima = profile_maxima(lenet, digits.train_x[:256], {"features.1": "layer", "features.4": "layer",
                                                            "classifier.2": "layer", "classifier.4": "layer"})
    model = apply_clipping(copy.deepcopy(lenet), make_spec(lenet, maxima, granularity="layer"))
    name = "classifier.2"
    param = clipped_modules(model)[name].threshold
    start = param.detach().clone()
    accs = [0.9, 0.899, 0.5,  0.9, 0.1,  0.0]
    seen = _scripted(monkeypatch, pa, "deployed_accuracy", accs, lambda m: [clipped_modules(m)[name].threshold])
    record = pa.train_layer(model, name, copy.deepcopy(lenet), digits.train_x[:256], digits.train_y[:256],
                            digits.train_x[:8], digits.train_y[:8], reference=0.9, tolerance=0.2,
                            weight_decays=(4e-5, 4e-6, 4e-7), epochs=5, warmup_epochs=0, lr=0.05, batch_size=64,
                            seed=0, layer_index=0)
    runs = record["decays"]
    assert [r["weight_decay"] for r in runs] == [4e-5, 4e-6, 4e-7]
    assert [[e["accepted"] for e in r["epochs"]] for r in runs] == [[True, True, False], [True, False], [False]]
    assert [r["violated"] for r in runs] == [True, True, True]
    after = [s[0] for s in seen]  # the thresholds after each epoch, before the accept/rollback decision
    assert not torch.equal(after[1], start) and not torch.equal(after[2], after[1])  # training moved them
    # decay 2 started from epoch 2's state (the rollback), decay 3 from decay 2's first epoch
    assert runs[0]["epochs"][-1]["mean_threshold"] == pytest.approx(float(after[1]))
    assert runs[1]["epochs"][-1]["mean_threshold"] == pytest.approx(float(after[3]))
    assert torch.equal(param.detach(), after[3])  # the final state: the last accepted epoch
    assert not param.requires_grad and not model.training


def test_proact_with_no_accepted_epoch_keeps_the_profiled_maxima(lenet, digits, monkeypatch):
    seen = _scripted(monkeypatch, pa, "deployed_accuracy", [0.9] + [0.0] * 100,
                     lambda m: [c.threshold for c in clipped_modules(m).values()])
    res = find_thresholds(lenet, digits, "proact", progress=False, epochs=3, warmup_epochs=1,
                          weight_decays=(4e-5, 4e-9), profile_images=300)
    start = {n: t for n, t in zip(clipped_modules(res.model), seen[0])}
    for layer in res.spec["layers"]:
        assert torch.equal(layer["threshold"], start[layer["module"]])
    for rec in res.history["layers"].values():
        assert [len(r["epochs"]) for r in rec["decays"]] == [1, 1]  # each decay: one epoch, rolled back


def test_proact_hybrid_split_order_and_learning_rates(lenet, digits):
    res = find_thresholds(lenet, digits, "proact", progress=False, epochs=1, warmup_epochs=1, weight_decays=(4e-5,),
                          lr=0.02, neuron_lr=0.003, profile_images=300)
    names = [l["module"] for l in res.spec["layers"]]
    assert [l["granularity"] for l in res.spec["layers"]] == ["layer"] * (len(names) - 1) + ["neuron"]
    assert list(res.spec["layers"][-1]["threshold"].shape) == [84]
    assert res.history["order"] == names[::-1]  # the last activation first
    lrs = {n: rec["lr"] for n, rec in res.history["layers"].items()}
    assert lrs == {**{n: 0.02 for n in names[:-1]}, names[-1]: 0.003}
    assert all(len(r["epochs"]) <= 2 for rec in res.history["layers"].values() for r in rec["decays"])
    # the defaults follow the authors' code: 5 + 100 epochs per decay, 11 decays 4e-5 ... 4e-15, lr 1e-2 / 1e-3
    import inspect
    d = inspect.signature(pa.proact).parameters
    assert (d["epochs"].default, d["warmup_epochs"].default, d["lr"].default, d["neuron_lr"].default) == (100, 5, 1e-2, 1e-3)
    assert len(pa.PROACT_WEIGHT_DECAYS) == 11 and pa.PROACT_WEIGHT_DECAYS[0] == 4e-5
    assert pa.PROACT_WEIGHT_DECAYS[-1] == pytest.approx(4e-15)


def test_distillation_loss_is_cross_entropy_against_the_teachers_softmax():
    torch.manual_seed(0)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    p = F.softmax(t, dim=1)
    want = F.kl_div(F.log_softmax(s, dim=1), p, reduction="batchmean") - (p * p.log()).sum(1).mean()
    torch.testing.assert_close(soft_target_cross_entropy(s, t), want)


def test_warmup_then_cosine():
    at = warmup_cosine(0.1, 10, 20)
    assert [at(i) for i in (0, 5, 9)] == [0.1, 0.1, 0.1]
    assert at(10) == pytest.approx(0.1) and at(20) == pytest.approx(0.05) and at(30) == pytest.approx(0.0)
    assert at(40) == pytest.approx(0.0)  # stays at the end of the cosine


def test_fitact_stops_when_the_validation_loss_stops_improving(lenet, digits, monkeypatch):
    """Scripted validation losses (initial 1.0): best at epoch 2, then 3 epochs without
    improvement: with patience 3 it stops after epoch 5 and keeps epoch 2's bounds."""
    seen = _scripted(monkeypatch, fa, "validation_loss", [1.0, 0.9, 0.8, 0.85, 0.81, 0.82, 0.1],
                     lambda m: [c.threshold for c in clipped_modules(m).values()])
    res = find_thresholds(lenet, digits, "fitact", progress=False, epochs=50, patience=3, lr=0.01, profile_images=300)
    h = res.history
    assert (h["best_epoch"], h["stopped"], len(h["epochs"])) == (2, "patience", 5)
    for layer, want in zip(res.spec["layers"], seen[2]):
        assert torch.equal(layer["threshold"], want)
    assert not torch.equal(seen[2][0], seen[5][0])  # training went on past the kept epoch


def test_fitact_runs_all_epochs_while_it_improves(lenet, digits, monkeypatch):
    _scripted(monkeypatch, fa, "validation_loss", [1.0, 0.9, 0.8, 0.7], lambda m: [])
    res = find_thresholds(lenet, digits, "fitact", progress=False, epochs=3, patience=1, profile_images=300)
    assert (res.history["best_epoch"], res.history["stopped"], len(res.history["epochs"])) == (3, "epochs", 3)
    import inspect
    d = inspect.signature(fa.fitact).parameters
    assert (d["epochs"].default, d["lr"].default) == (100, 1e-3)


def test_bad_input(lenet, digits):
    with pytest.raises(ValueError, match="'weight_decays' argument of proact must be numbers >= 0 from strong to weak"):
        find_thresholds(lenet, digits, "proact", progress=False, weight_decays=(4e-9, 4e-5))
    with pytest.raises(ValueError, match="'neuron_lr' argument of proact must be a positive number"):
        find_thresholds(lenet, digits, "proact", progress=False, neuron_lr=0)
    with pytest.raises(ValueError, match="'warmup_epochs' argument of proact"):
        find_thresholds(lenet, digits, "proact", progress=False, warmup_epochs=-1)
    with pytest.raises(ValueError, match="'patience' argument of fitact"):
        find_thresholds(lenet, digits, "fitact", progress=False, patience=0)
    with pytest.raises(ValueError, match="'val_fraction' argument of fitact"):
        find_thresholds(lenet, digits, "fitact", progress=False, val_fraction=0)
