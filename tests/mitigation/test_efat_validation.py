"""eFAT's accounting (mitigation/efat.py): amounts chosen on a held-out validation split and claims
on the test split, the break-even chip count, and the repair rule shared by eFAT's groups and Reduce."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import mitigation.efat as efat
from mitigation.efat import EfatSettings, break_even_chips, repair_alone, reduce_chip, run_efat, split_indices
from sysarray import ArrayConfig, FaultMap

WS = ArrayConfig(16, 16, "ws")


def tiny_settings(**kw) -> EfatSettings:
    base = dict(max_drop=0.1, bypass=True, rates=[0.0, 0.05, 0.1], amounts=[0, 2], maps_per_rate=1, seed=0,
                train_limit=600, limit=100)
    base.update(kw)
    return EfatSettings(**base)


def write_chips(folder, rates=(0.02, 0.04, 0.08)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rates):
        FaultMap.random((16, 16), pe_rate=r, seed=i).save(folder / f"chip-{i}.npz")
    return folder


# ------------------------------------------------------------------------------ the split
def test_split_is_disjoint_seeded_and_within_the_training_images():
    tr, va = split_indices(1000, 0.2, seed=3)
    assert len(va) == 200 and len(tr) == 800
    assert not set(tr) & set(va) and sorted(np.concatenate([tr, va])) == list(range(1000))
    tr2, va2 = split_indices(1000, 0.2, seed=3)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(va, split_indices(1000, 0.2, seed=4)[1])
    assert not np.array_equal(va, np.arange(800, 1000))  # a permutation, not the tail of the file
    with pytest.raises(ValueError, match="fewer than 2 to train on"):
        split_indices(3, 0.5, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        EfatSettings(max_drop=0.1, val_fraction=1.0).check()


def test_amounts_are_chosen_without_reading_the_test_split(lenet_ckpt, tmp_path, monkeypatch):
    """Every accuracy that chooses something (map cells, validation, repairs) is taken on the validation
    images; the test images are read only for the final claims, so scrambling the test labels changes
    the reported accuracies and nothing that was chosen."""
    chips = write_chips(tmp_path / "chips")
    seen = []
    real = efat.split_accuracy

    def spy(program, images, labels, cfg, faults, device=None):
        seen.append((images.data_ptr(), len(images), faults is None))
        return real(program, images, labels, cfg, faults, device)

    monkeypatch.setattr(efat, "split_accuracy", spy)
    a = run_efat(lenet_ckpt, str(chips), WS, tiny_settings(), str(tmp_path / "a"))
    n_val, n_test = a.cost["validation"]["images"], a.cost["test_images"]
    assert (n_val, a.cost["validation"]["train_images"], n_test) == (120, 480, 100)
    accepted = a.cost["chips_accepted"]
    assert accepted >= 2
    val_ptr = {p for p, n, clean in seen if n == n_val}
    test_ptr = {p for p, n, clean in seen if n == n_test}
    assert len(test_ptr) == 1 and not val_ptr & test_ptr, seen
    test_reads = [(p, clean) for p, n, clean in seen if p in test_ptr]
    # the test split: the fault-free chip once, then one claim per accepted chip for eFAT and one for Reduce
    assert len(val_ptr) == 1 and sum(clean for _, clean in test_reads) == 1
    assert len(test_reads) == 1 + 2 * accepted, seen
    assert sum(1 for p, n, clean in seen if p in val_ptr and not clean) > len(test_reads)  # the choices

    import accel_models.evaluation as ev
    real_prepare = ev.prepare

    def scrambled(*args, **kw):
        task = real_prepare(*args, **kw)
        task.labels = torch.roll(task.labels, 1)  # other test labels, same training data
        return task

    monkeypatch.setattr(ev, "prepare", scrambled)
    b = run_efat(lenet_ckpt, str(chips), WS, tiny_settings(), str(tmp_path / "b"))
    assert (tmp_path / "a" / "resilience.csv").read_text() == (tmp_path / "b" / "resilience.csv").read_text()
    ga, gb = (json.loads((tmp_path / d / "groups.json").read_text()) for d in ("a", "b"))
    assert ga["groups"] == gb["groups"] and ga["validation_target_accuracy"] == gb["validation_target_accuracy"]
    assert [r["val_accuracy"] for r in a.chips] == [r["val_accuracy"] for r in b.chips]
    assert a.cost["repaired"] == b.cost["repaired"] and a.cost["efat_epochs"] == b.cost["efat_epochs"]
    assert [r["accuracy"] for r in a.chips] != [r["accuracy"] for r in b.chips]  # the claims did read the test split


# ------------------------------------------------------------------------------ break-even
def test_break_even_follows_from_the_costs():
    # map 24 epochs, eFAT 1.3 epochs per chip, conventional 4: 24 / 2.7 = 8.9 -> 9 chips
    n = break_even_chips(24.0, 1.3, 0.0, 4.0)
    assert n == math.ceil(24 / (4 - 1.3)) == 9
    assert 24 + 1.3 * n <= 4 * n and 24 + 1.3 * (n - 1) > 4 * (n - 1)
    assert break_even_chips(24.0, 4.0, 0.0, 4.0) is None  # no per-chip saving: never
    assert break_even_chips(24.0, 1.0, 24.0, 1.5) == 1  # same map: from the first chip
    assert break_even_chips(24.0, 1.5, 24.0, 1.0) is None
    assert break_even_chips(10.0, 2.0, 10.0, 2.0) == 1


# ------------------------------------------------------------------------------ the repair rule
class StubTrainer:
    """Accuracy on the validation split = meets[epochs]; the test split gives ``test``."""

    def __init__(self, meets_from: float, test: float = 0.5):
        self.meets_from, self.test, self.runs = meets_from, test, []

    def train(self, maps, epochs):
        self.runs.append(epochs)
        return {"epochs": epochs}, float(epochs), 0.01

    def accuracies(self, model, maps, split="val"):
        if split == "test":
            return [self.test] * len(maps)
        return [0.9 if model["epochs"] >= self.meets_from else 0.1] * len(maps)


def test_reduce_chip_is_validated_and_repaired_by_the_grid_rule():
    fm = FaultMap(16, 16).add(0, 0, "psum", 3, 1)
    s = EfatSettings(max_drop=0.1, amounts=[0, 1, 2, 4, 8])
    t = StubTrainer(meets_from=4)
    rec = reduce_chip(t, "c", fm, 1.0, target_val=0.5, target=0.6, settings=s)
    assert t.runs == [1.0, 2.0, 4.0]  # own amount, then the grid upwards until validation passes
    assert rec["first_pass_violation"] and rec["repaired"] and rec["final_amount"] == 4.0
    assert rec["epochs_spent"] == 7.0 and rec["repair_epochs"] == 6.0
    assert rec["accuracy"] == 0.5 and not rec["meets"]  # the claim is the test split's
    t2 = StubTrainer(meets_from=100)
    rec2 = reduce_chip(t2, "c", fm, 2.0, target_val=0.5, target=0.6, settings=s)
    assert t2.runs == [2.0, 4.0, 8.0] and rec2["rejected"] and rec2["accuracy"] is None
    t3 = StubTrainer(meets_from=0)
    rec3 = reduce_chip(t3, "c", fm, 2.0, target_val=0.5, target=0.4, settings=s)
    assert t3.runs == [2.0] and not rec3["repaired"] and rec3["meets"] and rec3["repair_epochs"] == 0


def test_group_member_repair_starts_at_its_own_amount_and_singletons_skip_what_ran():
    fm = FaultMap(16, 16).add(0, 0, "psum", 3, 1)
    t = StubTrainer(meets_from=2)
    fix = repair_alone(t, fm, [0, 1, 2, 4], start=1.0, tried=None, target_val=0.5)  # member of a larger group
    assert t.runs == [1.0, 2.0] and fix["amount"] == 2.0 and fix["epochs"] == 3.0
    t = StubTrainer(meets_from=2)
    fix = repair_alone(t, fm, [0, 1, 2, 4], start=1.0, tried=1.0, target_val=0.5)  # alone: 1 already ran
    assert t.runs == [2.0] and fix["amount"] == 2.0
