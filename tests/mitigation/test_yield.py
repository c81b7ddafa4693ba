"""The yield model: defect populations against their closed forms, the per-die flow (first step that
meets the constraint, cumulative yields, the diagnosed map behind every decision) and resume."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest

from mitigation.yield_model import (
    EFAT_JSON, DefectPopulation, FlowSettings, GroupSettings, YieldEvaluator, YieldTask, acted_map, defect_pmf,
    no_defect_yield, run_yield, spare_yield_bound, suspect_pes, with_pes, without_pes, yield_table,
)
from sysarray import ArrayConfig, FaultMap


# ------------------------------------------------------------------------------ closed forms
def test_pmfs_sum_to_one_and_give_the_no_defect_yield():
    for model, alpha in (("poisson", None), ("negbin", 0.5), ("negbin", 4.0)):
        total = sum(defect_pmf(k, 3.0, model, alpha) for k in range(400))
        assert total == pytest.approx(1.0, abs=1e-9)
        assert defect_pmf(0, 3.0, model, alpha) == pytest.approx(no_defect_yield(3.0, model, alpha), rel=1e-12)
    assert no_defect_yield(2.0) == pytest.approx(math.exp(-2.0))
    assert no_defect_yield(2.0, "negbin", 0.5) == pytest.approx((1 + 2.0 / 0.5) ** -0.5)
    # clustering raises the no-defect yield at the same mean; alpha -> inf is Poisson
    assert no_defect_yield(2.0, "negbin", 1.0) > no_defect_yield(2.0)
    assert no_defect_yield(2.0, "negbin", 1e7) == pytest.approx(no_defect_yield(2.0), rel=1e-5)
    assert spare_yield_bound(1.5, 1, 1) == pytest.approx(sum(defect_pmf(k, 1.5) for k in range(3)))
    with pytest.raises(TypeError, match="alpha"):
        no_defect_yield(1.0, "negbin", None)


@pytest.mark.parametrize("model, alpha", [("poisson", None), ("negbin", 1.5)])
def test_simulated_defect_counts_follow_the_model(model, alpha):
    cfg = ArrayConfig(16, 16, "ws")
    density = 1.2 / 256  # lambda = 1.2
    pop = DefectPopulation([density], 3000, seed=7, model=model, alpha=alpha)
    counts = np.array([pop.draw(density, j, cfg)[1] for j in range(pop.chips)])
    lam = pop.mean_defects(density, cfg)
    y0 = no_defect_yield(lam, model, alpha)
    se = math.sqrt(y0 * (1 - y0) / len(counts))
    assert abs((counts == 0).mean() - y0) < 4 * se
    var = lam + (lam * lam / alpha if alpha else 0.0)
    assert abs(counts.mean() - lam) < 4 * math.sqrt(var / len(counts))
    assert counts.var() == pytest.approx(var, rel=0.15)
    for k in (1, 2):
        p = defect_pmf(k, lam, model, alpha)
        assert abs((counts == k).mean() - p) < 4 * math.sqrt(p * (1 - p) / len(counts))


def test_dies_have_the_drawn_defective_pes_and_are_seeded():
    cfg = ArrayConfig(8, 8, "ws", spare_rows=1, spare_cols=2)
    pop = DefectPopulation([0.05, 0.2], 6, seed=3, registers="weight=1,psum=1", values=(1,), faults_per_pe=2)
    assert pop.size == 12
    for i in range(pop.size):
        fm, desc = pop.chip(i, cfg)
        assert fm.shape == cfg.physical_shape
        assert fm.n_faulty_pes == desc["defects"] and len(fm) == 2 * desc["defects"]
        assert {r.value for r in fm.registers()} <= {"weight", "psum"} and set(fm.records[:, 4]) <= {1}
        again, desc2 = DefectPopulation([0.05, 0.2], 30, seed=3, registers="weight=1,psum=1", values=(1,),
                                        faults_per_pe=2).chip(desc["replica"] + 30 * (i // 6), cfg)
        assert again == fm and desc2["defects"] == desc["defects"]  # a die does not depend on the population size


def test_dies_with_at_most_a_plus_b_defects_are_repaired_completely():
    from sysarray.repair import allocate_repair

    cfg = ArrayConfig(8, 8, "ws", spare_rows=1, spare_cols=1)
    pop = DefectPopulation([0.03], 150, seed=0)
    repaired = 0
    for i in range(pop.size):
        fm, desc = pop.chip(i, cfg)
        plan = allocate_repair(cfg, fm)
        if desc["defects"] <= 2:
            assert plan.complete
        repaired += bool(plan.complete)
    lam = pop.mean_defects(0.03, cfg)
    bound = spare_yield_bound(lam, 1, 1)
    assert repaired / pop.size >= bound - 4 * math.sqrt(bound * (1 - bound) / pop.size)


# ------------------------------------------------------------------------------ diagnosis-driven decisions
def test_an_unconfirmed_diagnosis_falls_back_to_its_hypothesis_and_suspects_the_region():
    from sysarray import Chip
    from sysarray.diagnosis import diagnose

    cfg = ArrayConfig(6, 6, "ws")
    fm = FaultMap(6, 6).add(1, 2, "weight", 3, 1).add(4, 4, "psum", 20, 0)
    d = diagnose(Chip(cfg, fm), cfg, seed=0)
    assert d.confirmed and acted_map(d) == fm
    assert (suspect_pes(d) == fm.faulty_pes()).all()
    bad = dataclasses.replace(d, confirmed=False, unexplained=("column 0", "PE (5, 1)"),
                              faults=FaultMap(6, 6).add(1, 2, "weight", 3, 1))
    assert acted_map(bad) == d.hypothesis
    s = suspect_pes(bad)
    assert s[:, 0].all() and s[5, 1] and s[1, 2] and s[4, 4] and s.sum() == 6 + 3


def test_bypass_of_a_diagnosed_set_equals_the_bypass_chip(lenet_ckpt):
    """The flow simulates bypassing the diagnosed PEs as pruned weights on the chip without their
    stuck bits; with the true set that is the bypass chip, prediction for prediction."""
    from accel_models.evaluation import prepare
    from mitigation.fat import prune_program

    task = prepare(lenet_ckpt, limit=120)
    cfg = ArrayConfig(16, 16, "ws")
    fm = FaultMap.random(cfg, pe_rate=0.05, seed=1, registers=("weight", "act", "psum"))
    keep = fm.faulty_pes()
    ours = prune_program(task.program, cfg, fm).run(task.images, cfg, without_pes(fm, keep)).predictions
    chip = task.program.run(task.images, cfg.replace(bypass=True), fm).predictions
    assert (ours == chip).all()
    assert with_pes(FaultMap(16, 16), keep).faulty_pes().tolist() == keep.tolist()


# ------------------------------------------------------------------------------ the flow
def _evaluator(ckpt, cfg, steps, max_drop, limit=150):
    from accel_models.evaluation import prepare

    settings = FlowSettings(steps=steps, max_drop=max_drop, epochs=0.5, calibration_images=64)
    return YieldEvaluator.build(prepare(ckpt, limit=limit), cfg, settings, max_drop)


def _check_first_step(row, steps, ev):
    n = ev.images_count
    meets = {s: row[f"acc_{s}"] is not None and (ev.clean_correct - round(row[f"acc_{s}"] * n)) <= ev.settings.max_drop * n + 1e-9
             for s in steps}
    tried = [s for s in steps if row[f"acc_{s}"] is not None]
    assert tried == list(steps[:len(tried)]) and row["steps_tried"] == len(tried)
    if row["shipped_step"] == "rejected":
        assert len(tried) == len(steps) and not any(meets.values()) and row["critical"] == 1
    else:
        k = steps.index(row["shipped_step"])
        assert tried == list(steps[:k + 1]) and meets[steps[k]] and not any(meets[s] for s in steps[:k])
        assert row["accuracy"] == row[f"acc_{steps[k]}"] and row["critical"] == 0


def test_a_die_is_reported_at_the_first_step_that_meets_the_constraint(lenet_ckpt):
    cfg = ArrayConfig(16, 16, "ws", bypass=True)
    steps = ("none", "remap", "arith", "bypass", "fapt")
    ev = _evaluator(lenet_ckpt, cfg, steps, 0.02)
    # two top psum bits stuck at 1 in busy columns: no remap or repair saves it; bypass does
    fm = FaultMap(16, 16).add(0, 0, "psum", 30, 1).add(0, 1, "psum", 29, 1)
    row = ev.outcome(fm)
    _check_first_step(row, steps, ev)
    assert row["acc_none"] < 0.5 and row["shipped_step"] == "bypass"
    assert row["pes_bypassed"] == 2 and row["diag_exact"] == 1 and row["retrain_epochs"] == 0
    clean = ev.outcome(FaultMap(16, 16))
    assert clean["shipped_step"] == "none" and clean["acc_none"] == ev.clean_accuracy
    assert clean["diag_cycles"] > 0 and set(clean["step_seconds"]) == {"diagnosis", "none"}
    # an impossible constraint runs every step, retraining included, and rejects
    strict = _evaluator(lenet_ckpt, cfg, steps, 0.0)
    worst = strict.outcome(FaultMap(16, 16).add(0, 2, "psum", 30, 1).add(5, 3, "weight", 7, 0).add(2, 4, "act", 6, 1))
    _check_first_step(worst, steps, strict)
    if worst["shipped_step"] == "rejected":
        assert worst["retrain_epochs"] > 0


def test_yield_run_is_cumulative_deterministic_and_resumes(lenet_ckpt, tmp_path):
    cfg = ArrayConfig(8, 8, "ws", bypass=True, spare_rows=1, spare_cols=1)
    steps = ("none", "remap", "arith", "spares", "bypass")
    pop = DefectPopulation([0.02, 0.08], 4, seed=0)
    task = lambda: YieldTask(lenet_ckpt, limit=150, settings=FlowSettings(steps=steps, max_drop=0.01,  # noqa: E731
                                                                           calibration_images=64))
    a = tmp_path / "a"
    table = run_yield(task(), pop, str(a), cfg, workers=1)
    for r in table["rows"]:
        ys = [r[f"yield_{s}"] for s in steps]
        assert ys == sorted(ys) and r["chips"] == 4 and r["shipped"] == round(ys[-1] * 4)
    from mitigation.campaign.store import read_results

    ev = YieldTask(lenet_ckpt, limit=150, settings=task().settings)
    program, images, labels = ev.load()
    evaluator = ev.build_evaluator(program, images, labels, cfg, "fast", 0.01, None)
    for row in read_results(str(a))[1]:
        _check_first_step(row, steps, evaluator)
    first = (a / "results.csv").read_bytes()
    # resume: keep two finished dies and half a line, as a kill would leave them
    b = tmp_path / "b"
    shutil.copytree(a, b)
    lines = (b / "chips.jsonl").read_text().splitlines(keepends=True)
    (b / "chips.jsonl").write_text("".join(lines[:2]) + lines[2][:17])
    for name in ("results.csv", "timings.csv", "aggregates.csv", "yield.json", "yield.md", "yield.png"):
        os.remove(b / name)
    again = run_yield(task(), pop, str(b), cfg, workers=1)
    assert again["run"]["already_done"] == 2 and again["run"]["evaluated"] == 6
    assert (b / "results.csv").read_bytes() == first
    timed = ("seconds", "seconds_per_shipped")  # wall times: the only entries that differ between runs
    assert [{k: v for k, v in r.items() if k not in timed} for r in again["rows"]] == \
        [{k: v for k, v in r.items() if k not in timed} for r in yield_table(str(a), pop, cfg)["rows"]]
    assert (a / "yield.png").stat().st_size > 0


# ------------------------------------------------------------------------------ the eFAT groups step
def test_group_members_are_judged_on_their_own_chips(lenet_ckpt):
    """One model per group; each member runs it on its own true chip: a fault its diagnosis missed
    stays on that member alone (bypass mode), and in stuck-at mode each member keeps its own bits."""
    from accel_models.evaluation import prepare
    from mitigation.fat import fap, lower_like, prune_program

    cfg = ArrayConfig(8, 8, "ws", bypass=True)
    ev = YieldEvaluator.build(prepare(lenet_ckpt, limit=150), cfg, FlowSettings(steps=("none", "efat")), 0.01)
    a = ev.group_maps(FaultMap(8, 8).add(0, 1, "weight", 6, 1).add(2, 3, "act", 5, 0))
    b = ev.group_maps(FaultMap(8, 8).add(4, 0, "psum", 12, 1))
    assert a["true"] == a["diag"] and a["suspects"].sum() == 2 and b["suspects"].sum() == 1
    b_missed = dict(b, true=b["true"].add(0, 2, "psum", 30, 1))  # a top psum bit the diagnosis did not see
    labels, images, lcfg = ev.prepared.labels.cpu(), ev.prepared.images, ev.lcfg

    def correct(program, fm, on=lcfg):
        return int((program.run(images, on, faults=fm).predictions.cpu() == labels).sum())

    got, epochs = ev.group_outcome([a, b_missed], "bypass", 0.0)
    fused = with_pes(FaultMap(8, 8), a["suspects"] | b["suspects"])
    prog = prune_program(lower_like(fap(ev.prepared.model, ev.prepared.program, lcfg, fused), ev.prepared), lcfg, fused)
    assert epochs == 0.0 and got == [correct(prog, without_pes(m["true"], m["suspects"])) for m in (a, b_missed)]
    assert got[0] == correct(prog, a["true"], cfg)  # the bypass chip itself for the exactly diagnosed member
    assert got[1] < got[0] - 50
    got, _ = ev.group_outcome([a, b], "stuck-at", 0.0)
    assert got == [correct(ev.prepared.program, m["true"]) for m in (a, b)] and got[0] != got[1]


def test_efat_step_ships_only_rejected_dies_resumes_and_reruns_to_the_same_bytes(lenet_ckpt, tmp_path, monkeypatch):
    from mitigation.campaign.store import read_results
    from sysarray.lifecycle import Interrupted

    cfg = ArrayConfig(8, 8, "ws", bypass=True)
    pop = DefectPopulation([0.05], 3, seed=0)
    groups = GroupSettings(epochs=1.0, max_rate=0.5)

    def task(*steps):
        return YieldTask(lenet_ckpt, limit=150, settings=FlowSettings(steps=steps, max_drop=0.01, calibration_images=64,
                                                                      groups=groups))

    out = tmp_path / "y"
    run_yield(task("none", "bypass"), pop, str(out), cfg, workers=1)
    results, manifest = (out / "results.csv").read_bytes(), (out / "manifest.json").read_bytes()
    assert not (out / EFAT_JSON).exists()
    # adding the step keeps the campaign: no die is redone, only the groups run
    table = run_yield(task("none", "bypass", "efat"), pop, str(out), cfg, workers=1)
    assert table["run"]["evaluated"] == 0 and table["run"]["efat_groups_trained"] >= 1
    assert (out / "results.csv").read_bytes() == results and (out / "manifest.json").read_bytes() == manifest
    efat = json.loads((out / EFAT_JSON).read_text())
    _, rows = read_results(str(out))
    by_chip = {int(r["chip"]): r for r in rows}
    rejected = sorted(c for c, r in by_chip.items() if r["shipped_step"] == "rejected")
    assert sorted(d["chip"] for d in efat["dies"]) == rejected
    shipped = [d for d in efat["dies"] if d["shipped_step"] == "efat"]
    assert shipped, "the fixture's seed gives a die that only the group retraining ships"
    ev = task("none", "bypass")
    evaluator = ev.build_evaluator(*ev.load(), cfg, "fast", 0.01, None)
    for d in shipped:
        _check_first_step(by_chip[d["chip"]], ("none", "bypass"), evaluator)  # every earlier step failed
        assert d["drop"] <= 0.01 + 1e-9
    for g in efat["groups"]:
        assert set(g["shipped"]) <= set(g["members"]) and g["epochs"] == 1.0
    row = table["rows"][0]
    assert row["yield_efat"] == row["yield_bypass"] + len(shipped) / 3 and row["efat_groups"] == len(efat["groups"])
    assert row["efat_epochs_per_shipped"] == pytest.approx(row["efat_epochs"] / len(shipped))
    # a finished step is not redone: the same bytes
    first = (out / EFAT_JSON).read_bytes()
    again = run_yield(task("none", "bypass", "efat"), pop, str(out), cfg, workers=1)
    assert again["run"]["efat_groups_trained"] == 0 and (out / EFAT_JSON).read_bytes() == first
    # other group settings in the same directory are refused
    with pytest.raises(ValueError, match="another configuration"):
        run_yield(YieldTask(lenet_ckpt, limit=150, settings=FlowSettings(
            steps=("none", "bypass", "efat"), max_drop=0.01, calibration_images=64,
            groups=GroupSettings(epochs=2.0))), pop, str(out), cfg, workers=1)
    # interrupted: nothing written; the step missing is redone alone, to the same results
    os.remove(out / EFAT_JSON)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(YieldEvaluator, "group_outcome", stop)
        with pytest.raises(Interrupted, match="efat step at 0/"):
            run_yield(task("none", "bypass", "efat"), pop, str(out), cfg, workers=1)
    assert not (out / EFAT_JSON).exists()
    redone = run_yield(task("none", "bypass", "efat"), pop, str(out), cfg, workers=1)
    assert redone["run"]["evaluated"] == 0 and redone["run"]["efat_groups_trained"] == len(efat["groups"])
    timed = lambda e: {**e, "groups": [{**g, "seconds": None} for g in e["groups"]]}  # noqa: E731
    assert timed(json.loads((out / EFAT_JSON).read_text())) == timed(efat)
