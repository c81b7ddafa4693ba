"""Importance sampling of critical faults: the PE mapping of sensitivities, the sampling
distribution, the unbiased estimator, and (on LeNet-5 / digits / 16x16 WS) a higher precision than
uniform sampling with an estimate that agrees with the exhaustive sweep.

The exhaustive sweep is restricted to activation-register stuck-at-1 faults on bits 4 and 7 (512
faults, 64 images; a one-fault run of the act register costs about a third of a psum one on this
CPU): bit 7 is critical at about half of the PEs, bit 4 almost never, so the critical fraction is
neither 0 nor 1 and the sweep stays affordable. The samplers then draw from the exhaustive table.
"""
from __future__ import annotations

import numpy as np
import pytest

import sysarray as sa
from mitigation.campaign import CheckpointTask
from mitigation.campaign.store import read_results
from mitigation.importance import (FaultSpace, compare_samplers, estimate_fraction, fold_to_array,
                                   importance_distribution, pe_sensitivity, site_weights)
from mitigation.sweep import run_sweep

CFG = sa.ArrayConfig(16, 16, "ws")


@pytest.mark.parametrize("flow", ["ws", "is", "os"])
def test_fold_to_array_matches_the_dataflow_mapping(flow):
    cfg = sa.ArrayConfig(3, 4, flow)
    s = np.random.default_rng(0).random((7, 10))
    got = fold_to_array(s, cfg)
    per_pe = np.zeros((3, 4))
    for k in range(7):
        for n in range(10):
            per_pe[k % 3, n % 4] += s[k, n]
    if flow == "is":
        per_pe = np.repeat(per_pe.sum(1, keepdims=True) / 4, 4, axis=1)
    elif flow == "os":
        per_pe = np.repeat(per_pe.sum(0, keepdims=True) / 3, 3, axis=0)
    np.testing.assert_allclose(got, per_pe)
    assert got.sum() == pytest.approx(s.sum())


def test_site_weights_and_distribution():
    space = FaultSpace.build(sa.ArrayConfig(2, 2), ["weight", "psum"], None, (0, 1))
    w = site_weights(space, "exponential")
    assert w.sum() == pytest.approx(1.0)
    assert w[space.sites[:, 0] == 0].sum() == pytest.approx(0.5)  # each register the same share
    psum = space.sites[:, 0] == 2
    assert w[psum & (space.sites[:, 1] == 31)].sum() == pytest.approx(0.5 * 2**31 / (2**32 - 1))
    sens = np.array([[4.0, 0.0], [1.0, 0.0]])
    q = importance_distribution(sens, space, "uniform", 0.1)
    assert q.sum() == pytest.approx(1.0) and q.min() == pytest.approx(0.1 / space.size)
    per_pe = q.reshape(4, -1).sum(1)
    np.testing.assert_allclose(per_pe, 0.9 * np.array([0.8, 0, 0.2, 0]) + 0.1 / 4)
    uniform = importance_distribution(np.zeros((2, 2)), space, "uniform", 0.0)
    np.testing.assert_allclose(uniform.reshape(4, -1).sum(1), 0.25)
    assert np.array_equal(space.index_of(space.records(np.arange(space.size))), np.arange(space.size))
    with pytest.raises(ValueError, match="uniform mix"):
        importance_distribution(sens, space, "uniform", 1.5)
    with pytest.raises(ValueError, match="bit weighting"):
        site_weights(space, "cubic")


def test_importance_estimate_is_unbiased_and_covers():
    rng = np.random.default_rng(1)
    size = 2000
    q = rng.gamma(0.5, size=size)
    q /= q.sum()
    critical = rng.random(size) < np.clip(q * size * 0.1, 0, 1)  # criticals where q is large
    truth = critical.mean()
    estimates, covered = [], 0
    for seed in range(300):
        res = compare_samplers(q, lambda idx: critical[idx], 60, seed, confidence=0.95)["importance"]
        estimates.append(res["estimate"])
        covered += res["estimate_lo"] <= truth <= res["estimate_hi"]
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - truth) < 4 * se
    assert covered / 300 > 0.85
    est, lo, hi = estimate_fraction(np.array([1, 0, 0, 1]), np.ones(4))
    assert est == 0.5 and lo < 0.5 < hi  # a uniform sample: plain fraction, Wilson interval


def test_pe_sensitivity_conserves_the_weight_scores(lenet_ckpt, digits):
    import torch.nn.functional as F

    from accel_models.fakequant import FakeQuantProgram

    task = CheckpointTask(lenet_ckpt, limit=32)
    program, _, _ = task.load()
    x, y = task.calibration(128)
    sens = pe_sensitivity(program, x, y, CFG)
    assert sens.shape == (16, 16) and (sens >= 0).all() and sens.max() > 0
    twin = FakeQuantProgram(program)
    F.cross_entropy(twin(x).float(), y).backward()
    total = sum(float((w * w.grad).abs().sum().detach()) for w in twin.weights.values())
    assert sens.sum() == pytest.approx(total, rel=1e-6)
    assert sens[:, 6:].sum() > 0 and sens[:, :6].sum() > sens[:, 6:12].sum()  # conv1 uses columns 0..5 only


@pytest.fixture(scope="module")
def exhaustive_psum(tmp_path_factory, lenet_ckpt):
    out = str(tmp_path_factory.mktemp("imp") / "exhaustive")
    task = CheckpointTask(lenet_ckpt, limit=64)
    run_sweep(task, CFG, out, ["act"], [4, 7], (1,), workers=1)
    _, rows = read_results(out)
    space = FaultSpace.build(CFG, ["act"], [4, 7], (1,))
    rec = np.array([(r["pe_row"], r["pe_col"], 1, r["bit"], r["value"]) for r in rows])
    critical = np.zeros(space.size, dtype=bool)
    critical[space.index_of(rec)] = [bool(r["critical"]) for r in rows]
    return task, space, critical


def test_importance_beats_uniform_and_estimates_the_exhaustive_fraction(exhaustive_psum):
    task, space, critical = exhaustive_psum
    truth = critical.mean()
    assert 0.05 < truth < 0.45
    program, _, _ = task.load()
    x, y = task.calibration(256)
    q = importance_distribution(pe_sensitivity(program, x, y, CFG), space, "exponential", 0.1)
    res = compare_samplers(q, lambda idx: critical[idx], 300, seed=0, confidence=0.99)
    imp, uni = res["importance"], res["uniform"]
    assert imp["precision"] > uni["precision"] + 0.1
    assert imp["distinct_critical"] > uni["distinct_critical"]
    assert imp["estimate_lo"] <= truth <= imp["estimate_hi"]
    assert uni["estimate_lo"] <= truth <= uni["estimate_hi"]
