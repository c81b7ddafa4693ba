"""eFAT (mitigation/efat.py, mitigation/resilience.py): the resilience map, a 20-chip population end
to end, fused-map exactness, resuming an interrupted run, and bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import mitigation.efat as efat
from accel_models.evaluation import prepare
from mitigation.efat import EfatSettings, run_efat
from mitigation.resilience import ResilienceMap
from sysarray import ArrayConfig, FaultMap

WS = ArrayConfig(16, 16, "ws")
BYPASS = WS.replace(bypass=True)
RATES = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14)


def write_chips(folder, n: int, rates=RATES, size=(16, 16), seed0: int = 0, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        FaultMap.random(size, pe_rate=rates[i % len(rates)], seed=seed0 + i, **kw).save(folder / f"chip-{i:02d}.npz")
    return folder


def small_settings(**kw) -> EfatSettings:
    base = dict(max_drop=0.05, bypass=True, rates=[0.0, 0.05, 0.1, 0.15, 0.2], amounts=[0, 1, 2],
                maps_per_rate=2, seed=0)
    base.update(kw)
    return EfatSettings(**base)


@pytest.fixture(scope="module")
def population_run(lenet_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("efat")
    chips = write_chips(root / "chips", 20)
    result = run_efat(lenet_ckpt, str(chips), WS, small_settings(), str(root / "out"))
    return root, result


# ------------------------------------------------------------------------------ the resilience map
def test_least_amounts_are_monotone_and_stop_beyond_resilience():
    acc = np.array([
        [0.98, 0.98, 0.98],
        [0.90, 0.96, 0.97],  # needs 1
        [0.95, 0.96, 0.97],  # meets at 0, but a lower rate needed 1: stays 1
        [0.80, 0.90, 0.955],  # needs 2
        [0.70, 0.80, 0.90],  # beyond
        [0.99, 0.99, 0.99],  # beyond too: a higher rate than a beyond one
    ])
    samples = np.stack([acc, acc + 0.01], axis=1)  # min over the two maps = acc
    m = ResilienceMap(rates=[0, 0.1, 0.2, 0.3, 0.4, 0.5], amounts=[0, 1, 2], samples=samples)
    assert m.least_amounts(0.95) == [0, 1, 1, 2, None, None]
    assert m.amount_for(0.0, 0.95) == 0
    assert m.amount_for(0.05, 0.95) == 1  # the smallest grid rate at or above 0.05 is 0.1
    assert m.amount_for(0.25, 0.95) == 2
    assert m.amount_for(0.35, 0.95) is None
    assert m.amount_for(0.6, 0.95) is None  # above the grid
    q = ResilienceMap(rates=m.rates, amounts=m.amounts, samples=samples, aggregate="q1.0")
    assert np.allclose(q.accuracy, acc + 0.01)


def test_resilience_csv_round_trip():
    rng = np.random.default_rng(0)
    m = ResilienceMap(rates=[0.0, 0.05, 0.1], amounts=[0, 0.5, 2], samples=rng.random((3, 2, 3)))
    back = ResilienceMap.from_csv(m.to_csv())
    assert back.rates == m.rates and back.amounts == m.amounts
    assert np.array_equal(back.samples, m.samples)


# ------------------------------------------------------------------------------ a population
def test_population_meets_the_constraint_with_fewer_epochs(population_run):
    root, res = population_run
    c = res.cost
    red = c["reduce"]
    print(f"\n20 chips: conventional {c['conventional_epochs']:g} epochs, per-chip {c['per_chip_epochs']:g} "
          f"(incl. {red['repair_epochs']:g} repair), eFAT {c['efat_epochs']:g} ({c['groups']} groups), map "
          f"{c['map_epochs']:g}; rejected {len(c['rejected'])}, repaired {len(c['repaired'])}, test violations "
          f"eFAT {len(c['violations'])} / Reduce {len(red['violations'])}")
    # validated (and repaired) on the validation split: every accepted chip meets it there
    assert c["val_violations"] == []
    assert all(r["val_accuracy"] >= c["validation"]["target_accuracy"] for r in red["chips"] if not r["rejected"])
    assert c["efat_epochs"] < c["conventional_epochs"]
    assert c["efat_total_epochs"] == c["map_epochs"] + c["efat_epochs"]
    assert c["per_chip_total_epochs"] == c["map_epochs"] + c["per_chip_epochs"]
    assert c["per_chip_epochs"] == red["planned_epochs"] + red["repair_epochs"]
    assert len(c["rejected"]) <= 3
    on_disk = json.loads((root / "out" / "cost.json").read_text())
    for key in ("conventional_epochs", "per_chip_epochs", "efat_epochs", "chips", "rejected", "violations",
                "break_even"):
        assert on_disk[key] == c[key]
    assert (root / "out" / "resilience.png").stat().st_size > 0
    assert "rate,map,epochs,accuracy" in (root / "out" / "resilience.csv").read_text()
    # Every accepted chip, judged again on its own map (test split) from the saved checkpoint its group got:
    # the reported accuracy is the test accuracy, and a violation is exactly a miss on the test split.
    target = c["target_accuracy"]
    tasks = {}
    for row in res.chips:
        if row["rejected"]:
            continue
        path = str(root / "out" / row["model"])
        task = tasks.setdefault(path, prepare(path))
        fm = FaultMap.load(root / "chips" / f"{row['chip']}.npz")
        acc = task.program.run(task.images, BYPASS, faults=fm).accuracy(task.labels)
        assert acc == row["accuracy"]
        assert (acc < target) == (row["chip"] in c["violations"])


def test_group_model_is_exact_on_every_member(population_run):
    root, res = population_run
    groups = [g for g in res.groups if len(g["members"]) >= 2]
    assert groups, "the population should have at least one multi-chip group"
    g = groups[0]
    task = prepare(str(root / "out" / g["model"]))
    maps = [FaultMap.load(root / "chips" / f"{m}.npz") for m in g["members"]]
    union = efat.fused_map(maps)
    assert np.array_equal(union.faulty_pes(), np.logical_or.reduce([fm.faulty_pes() for fm in maps]))
    fused = task.program.run(task.images, BYPASS, faults=union)
    for fm in maps:
        member = task.program.run(task.images, BYPASS, faults=fm)
        assert torch.equal(member.logits, fused.logits)
        assert member.accuracy(task.labels) == fused.accuracy(task.labels)


def test_fused_map_takes_members_with_opposite_stuck_values():
    a = FaultMap(4, 4).add(1, 1, "act", 7, 0).add(2, 2, "psum", 3, 1)
    b = FaultMap(4, 4).add(1, 1, "act", 7, 1).add(0, 3, "weight", 0, 1)
    with pytest.raises(ValueError, match="both 0 and 1"):
        a.union(b)
    f = efat.fused_map([a, b])
    assert np.array_equal(f.faulty_pes(), a.faulty_pes() | b.faulty_pes())
    assert sorted(map(tuple, f.records.tolist())) == [(0, 3, 0, 0, 1), (1, 1, 1, 7, 0), (2, 2, 2, 3, 1)]


# ------------------------------------------------------------------------------ resuming
def test_interrupted_run_resumes_without_redoing_groups(lenet_ckpt, tmp_path, monkeypatch):
    chips = write_chips(tmp_path / "chips", 6, rates=(0.06, 0.08, 0.1))
    out = tmp_path / "out"
    settings = small_settings(rates=[0.0, 0.1, 0.2], amounts=[0, 1], maps_per_rate=1)
    real = efat._retrain_group
    calls = []

    def crash_on_second(*args, **kw):
        calls.append(args[0]["group"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(efat, "_retrain_group", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_efat(lenet_ckpt, str(chips), WS, settings, str(out))
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in journal] == ["map", "group"]
    first = out / journal[1]["model"]
    stamp = (first.stat().st_mtime_ns, first.read_bytes())

    def no_map(*a, **k):
        raise AssertionError("the resilience map was rebuilt")

    calls.clear()
    monkeypatch.setattr(efat, "_retrain_group", lambda *a, **k: calls.append(a[0]["group"]) or real(*a, **k))
    monkeypatch.setattr(efat, "build_resilience_map", no_map)
    res = run_efat(lenet_ckpt, str(chips), WS, settings, str(out))
    assert journal[1]["group"] not in calls
    assert sorted(calls + [journal[1]["group"]]) == [g["group"] for g in res.groups]
    assert (first.stat().st_mtime_ns, first.read_bytes()) == stamp
    # A finished run does nothing more.
    calls.clear()
    again = run_efat(lenet_ckpt, str(chips), WS, settings, str(out))
    assert calls == [] and again.cost["efat_epochs"] == res.cost["efat_epochs"]
    # Another configuration in the same OUTDIR is refused.
    with pytest.raises(ValueError, match="different configuration.*settings"):
        run_efat(lenet_ckpt, str(chips), WS, small_settings(rates=[0.0, 0.1, 0.2], amounts=[0, 2], maps_per_rate=1),
                 str(out))


def test_a_journal_line_cut_by_a_kill_is_redone_and_a_corrupt_middle_line_refused(lenet_ckpt, tmp_path, monkeypatch):
    chips = write_chips(tmp_path / "chips", 4, rates=(0.02, 0.04))
    out = tmp_path / "out"
    settings = small_settings(max_drop=0.5, rates=[0.0, 0.1], amounts=[0], maps_per_rate=1)  # no retraining: quick
    real = efat._retrain_group

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(efat, "_retrain_group", killed)
    with pytest.raises(KeyboardInterrupt):
        run_efat(lenet_ckpt, str(chips), WS, settings, str(out))
    journal = out / "journal.jsonl"
    assert [json.loads(line)["kind"] for line in journal.read_text().splitlines()] == ["map"]
    journal.write_bytes(journal.read_bytes() + b'{"group": 0, "kind": "gro')  # killed while writing a group's line

    def no_map(*a, **k):
        raise AssertionError("the resilience map was rebuilt")

    monkeypatch.setattr(efat, "_retrain_group", real)
    monkeypatch.setattr(efat, "build_resilience_map", no_map)
    res = run_efat(lenet_ckpt, str(chips), WS, settings, str(out))
    assert res.groups
    lines = journal.read_text().splitlines()
    n_reduce = res.cost["chips_accepted"]  # Reduce journals each chip after the groups
    assert [json.loads(line)["kind"] for line in lines] == ["map"] + ["group"] * len(res.groups) + ["reduce"] * n_reduce
    # the cut line is gone
    # A corrupt line before the last is no write cut by a kill: refused, naming the file and the line.
    journal.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    before = journal.read_bytes()
    with pytest.raises(ValueError, match=re.escape(f"The eFAT journal '{journal}' has a corrupt line 2 (not the last one")):
        run_efat(lenet_ckpt, str(chips), WS, settings, str(out))
    assert journal.read_bytes() == before


# ------------------------------------------------------------------------------ stuck-at mode
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_stuckat_mode_runs_multi_map_groups(lenet_ckpt, tmp_path, device):
    chips = write_chips(tmp_path / "chips", 4, rates=(0.02,), registers=("psum",), bits=range(0, 10))
    # one amount (no 0): every group retrains, and groups of several chips alternate their maps
    settings = EfatSettings(min_accuracy=0.5, bypass=False, rates=[0.0, 0.05, 0.1], amounts=[0.25],
                            maps_per_rate=1, bits=list(range(0, 10)), train_limit=256, limit=120)
    res = run_efat(lenet_ckpt, str(chips), WS, settings, str(tmp_path / "out"), device=device)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("device") == (None if device == "cpu" else "cuda")  # a CPU run's config as before
    assert res.cost["mode"] == "stuck-at"
    assert res.cost["violations"] == []
    assert max(len(g["members"]) for g in res.groups) >= 2
    assert res.cost["efat_epochs"] > 0
    for row in res.chips:
        if not row["rejected"]:
            task = prepare(str(tmp_path / "out" / row["model"]), limit=120)
            fm = FaultMap.load(tmp_path / "chips" / f"{row['chip']}.npz")
            assert task.program.run(task.images, WS, faults=fm).accuracy(task.labels) == row["accuracy"]


# ------------------------------------------------------------------------------ bad input
def test_chips_of_another_array_size(lenet_ckpt, tmp_path):
    chips = write_chips(tmp_path / "chips", 2, size=(8, 8))
    with pytest.raises(ValueError, match="is a 8x8 array but the model runs on 16x16"):
        run_efat(lenet_ckpt, str(chips), WS, small_settings(), str(tmp_path / "out"))


def test_impossible_constraint(lenet_ckpt, tmp_path):
    chips = write_chips(tmp_path / "chips", 2)
    with pytest.raises(ValueError, match="above the fault-free accuracy"):
        run_efat(lenet_ckpt, str(chips), WS, small_settings(max_drop=None, min_accuracy=0.999), str(tmp_path / "out"))


def test_empty_or_missing_chips_directory(lenet_ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no fault-map files"):
        run_efat(lenet_ckpt, str(tmp_path / "empty"), WS, small_settings(), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="does not exist"):
        run_efat(lenet_ckpt, str(tmp_path / "nope"), WS, small_settings(), str(tmp_path / "out"))


@pytest.mark.parametrize("kw, message", [
    (dict(max_drop=0.02, min_accuracy=0.9), "exactly one accuracy constraint"),
    (dict(max_drop=None), "exactly one accuracy constraint"),
    (dict(max_drop=1.5), r"'max_drop' argument of EfatSettings must be a finite number within \[0, 1\] or None"),
    (dict(maps_per_rate=0), "'maps_per_rate' argument of EfatSettings must be a positive integer. Got 0"),
    (dict(map_faults="stripes"), "'map_faults' argument of EfatSettings must be one of uniform, clustered"),
    (dict(conventional_epochs=-1.0), "'conventional_epochs' argument of EfatSettings must be a finite number >= 0"),
    (dict(limit=1), "'limit' argument of EfatSettings must be an integer >= 2 or None. Got 1"),
    (dict(amounts=[-1, 2]), "retraining-amount grid"),
    (dict(rates=[0.1, 1.5]), "fault-rate grid"),
    (dict(grouping="kmeans"), "grouping policy must be one of"),
    (dict(aggregate="mean"), "'min' or a quantile"),
])
def test_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        small_settings(**kw).check()
