"""Single-fault sweeps on LeNet-5 / digits / 16x16 WS: the heatmap (activation register, sign bit
stuck at 1, every PE) is exactly the one-fault runs, and high psum bits matter more than low ones."""
from __future__ import annotations

import numpy as np
import pytest

import sysarray as sa
from mitigation.campaign import CheckpointTask
from mitigation.campaign.store import read_results
from mitigation.sweep import bit_sensitivity, heatmaps, run_sweep

CFG = sa.ArrayConfig(16, 16, "ws")
LIMIT = 64


@pytest.fixture(scope="module")
def exhaustive(tmp_path_factory, lenet_ckpt):
    out = str(tmp_path_factory.mktemp("sweep") / "s")
    task = CheckpointTask(lenet_ckpt, limit=LIMIT)
    run = run_sweep(task, CFG, out, ["act"], [7], (1,), workers=1)
    assert run.evaluated == 256
    return task, out


def test_exhaustive_heatmap_equals_one_fault_runs(exhaustive):
    task, out = exhaustive
    manifest, rows = read_results(out)
    maps = heatmaps(rows, (16, 16))
    assert list(maps) == [("act", 7, 1)]
    grid = maps[("act", 7, 1)]
    assert np.isfinite(grid).all() and grid.max() > 0.05 and grid.min() <= 0.02  # critical at some PEs only
    program, images, labels = task.load()
    clean = program.run(images, CFG).accuracy(labels)
    for r, c in [(0, 0), (5, 11), (15, 3)]:
        fm = sa.FaultMap(16, 16).add(r, c, "act", 7, 1)
        acc = program.run(images, CFG, faults=fm).accuracy(labels)
        assert grid[r, c] == pytest.approx(clean - acc, abs=1e-12)
    assert manifest["info"]["clean_accuracy"] == clean


def test_sampled_sweep_and_bit_sensitivity(tmp_path, lenet_ckpt):
    out = str(tmp_path / "s")
    run_sweep(CheckpointTask(lenet_ckpt, limit=LIMIT), CFG, out, ["psum"], [2, 16, 20], (1,), budget=10, seed=4, workers=1)
    _, rows = read_results(out)
    maps = heatmaps(rows, (16, 16))
    assert [k[1] for k in maps] == [2, 16, 20]
    for grid in maps.values():
        assert np.isfinite(grid).sum() == 10
    sens = {b["bit"]: b for b in bit_sensitivity(rows)}
    assert sens[2]["mean_drop"] <= 0.01
    assert sens[16]["mean_drop"] > 0.1 and sens[20]["mean_drop"] > 0.1
    assert sens[20]["critical_share"] == 1.0
    assert all(b["faults"] == 10 and b["mean_drop_lo"] <= b["mean_drop"] <= b["mean_drop_hi"] for b in sens.values())
