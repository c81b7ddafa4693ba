"""Importance sampling of critical faults: the PE mapping of sensitivities, the sampling
distribution, the self-normalised estimator and its interval, and (on LeNet-5 / digits / 16x16 WS) a higher precision than
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
    uniform = importance_distribution(sens, space, "uniform", 1.0)
    np.testing.assert_allclose(uniform, 1.0 / space.size)
    flat = importance_distribution(np.zeros((2, 2)), space, "uniform", 0.5)  # no sensitivity: PEs equally likely
    np.testing.assert_allclose(flat.reshape(4, -1).sum(1), 0.25)
    assert np.array_equal(space.index_of(space.records(np.arange(space.size))), np.arange(space.size))
    for bad in (1.5, 0, 0.0, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match=r"uniform mix must be within \(0, 1\]"):
            importance_distribution(sens, space, "uniform", bad)
    with pytest.raises(ValueError, match="bit weighting"):
        site_weights(space, "cubic")


def _gamma_scenario(size=2000):
    rng = np.random.default_rng(1)
    q = rng.gamma(0.5, size=size)
    q /= q.sum()
    critical = rng.random(size) < np.clip(q * size * 0.1, 0, 1)  # criticals where q is large
    return q, critical


def _psum_like_scenario():
    """64 PEs x 32 psum bits, exponential bit weighting, mix 0.1, criticals on the bits >= 18: many
    critical faults have q near mix / |F|, i.e. weights near 10 (what made `sysarray importance`
    report fractions above 1)."""
    rng = np.random.default_rng(1)
    pes = rng.gamma(0.3, size=64)
    bits = np.exp2(np.arange(32))
    p_imp = np.outer(pes / pes.sum(), bits / bits.sum()).ravel()
    q = 0.9 * p_imp + 0.1 / p_imp.size
    critical = np.tile(np.arange(32) >= 18, 64) & (rng.random(p_imp.size) < 0.9)
    return q / q.sum(), critical


@pytest.mark.parametrize("scenario, budget", [(_gamma_scenario, 60), (_psum_like_scenario, 40),
                                              (_psum_like_scenario, 120)])
def test_importance_estimate_is_a_fraction_inside_its_interval_and_covers(scenario, budget):
    q, critical = scenario()
    truth = critical.mean()
    estimates, covered = [], 0
    for seed in range(300):
        res = compare_samplers(q, lambda idx: critical[idx], budget, seed, confidence=0.95)["importance"]
        assert 0.0 <= res["estimate_lo"] <= res["estimate"] <= res["estimate_hi"] <= 1.0, (seed, res)
        estimates.append(res["estimate"])
        covered += res["estimate_lo"] <= truth <= res["estimate_hi"]
    assert abs(np.mean(estimates) - truth) < 0.25 * truth  # consistent; its O(1/n) bias stays small
    assert covered / 300 > 0.88


def test_estimate_fraction_is_self_normalised():
    est, lo, hi = estimate_fraction(np.array([1, 0, 0, 1]), np.ones(4))
    assert est == 0.5 and lo < 0.5 < hi  # a uniform sample: plain fraction, Wilson interval
    from mitigation.campaign.stats import wilson_interval

    assert (lo, hi) == wilson_interval(2, 4)
    # weights 10 on the two critical draws: the plain mean (20 / 4 = 5) is no fraction
    est, lo, hi = estimate_fraction(np.array([True, True, False, False]), np.array([10.0, 10.0, 0.5, 0.5]))
    assert est == pytest.approx(20 / 21) and 0 <= lo <= est <= hi <= 1
    # the weights' scale does not matter, only their ratios
    assert estimate_fraction(np.array([1, 0, 1]), np.array([2.0, 1.0, 3.0])) == \
        pytest.approx(estimate_fraction(np.array([1, 0, 1]), np.array([2e-9, 1e-9, 3e-9])))
    for c in ([0, 0, 0], [1, 1, 1]):  # all draws agree: a one-sided interval of positive width
        est, lo, hi = estimate_fraction(np.array(c), np.array([1.0, 2.0, 4.0]))
        assert est == c[0] and lo <= est <= hi and hi - lo > 0.2
    assert all(np.isnan(estimate_fraction(np.array([]), np.array([]))))
    with pytest.raises(ValueError, match="same length"):
        estimate_fraction(np.array([1, 0]), np.array([1.0]))
    with pytest.raises(ValueError, match="0/1"):
        estimate_fraction(np.array([2, 0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="positive importance weights"):
        estimate_fraction(np.array([1, 0]), np.array([1.0, 0.0]))


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
