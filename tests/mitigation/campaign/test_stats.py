"""Confidence intervals, the Leveugle sample size and the aggregate table."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mitigation.campaign.stats import aggregate, bootstrap_interval, leveugle_sample_size, wilson_interval


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (17, 250), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
    lo, hi = wilson_interval(k, n, 0.9)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    assert lo <= k / n <= hi


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(5, 3)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_bootstrap_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(0).normal(0.7, 0.1, size=50)
    a = bootstrap_interval(x, "mean", 0.95, seed=(1, 2))
    assert a == bootstrap_interval(list(x), "mean", 0.95, seed=(1, 2))
    assert a != bootstrap_interval(x, "mean", 0.95, seed=(1, 3))
    assert a[0] < x.mean() < a[1]
    # about 1.96 standard errors each side
    assert (a[1] - a[0]) / 2 == pytest.approx(1.96 * x.std(ddof=1) / math.sqrt(50), rel=0.2)
    lo, hi = bootstrap_interval(x, "median", 0.95, seed=0)
    assert lo <= np.median(x) <= hi
    assert bootstrap_interval([0.5], "q1") == (0.5, 0.5)
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_interval(x, "mode")


def test_leveugle_sample_size():
    # infinite population: t^2 p (1-p) / e^2
    assert leveugle_sample_size(0.05, 0.95) == 385
    assert leveugle_sample_size(0.01, 0.99) == math.ceil(stats.norm.ppf(0.995) ** 2 * 0.25 / 1e-4)
    # Leveugle et al. eq. 3 with a finite population N = 1000 -> 278; never more than N
    assert leveugle_sample_size(0.05, 0.95, population=1000) == 278
    assert leveugle_sample_size(0.001, 0.95, population=50) == 50
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="margin"):
            leveugle_sample_size(bad)
    with pytest.raises(ValueError, match="confidence"):
        leveugle_sample_size(0.05, 1.0)


def test_aggregate_groups_and_counts():
    rows = [{"group": "g", "rate": r, "accuracy": a, "drop": 0.9 - a, "sdc_rate": 0.1, "critical": int(0.9 - a > 0.05)}
            for r, a in [(0.0, 0.9), (0.0, 0.9), (0.1, 0.5), (0.1, 0.7), (0.1, 0.88)]]
    agg = aggregate(rows, seed=3)
    assert [(a["rate"], a["chips"]) for a in agg] == [(0.0, 2), (0.1, 3)]
    b = agg[1]
    assert b["mean_accuracy"] == pytest.approx((0.5 + 0.7 + 0.88) / 3)
    assert (b["median_accuracy"], b["worst_accuracy"], b["critical_chips"]) == (0.7, 0.5, 2)
    assert b["critical_share_lo"] < 2 / 3 < b["critical_share_hi"]
    assert b["mean_accuracy_lo"] <= b["mean_accuracy"] <= b["mean_accuracy_hi"]
    assert agg == aggregate(rows, seed=3)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1 / 3, 0.7, 0.9, 1.0]) | st.floats(0, 1), min_size=1, max_size=40),
       resamples=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_resampled_order_statistics_equal_numpy(values, resamples, seed):
    """Medians and quartiles of the resamples from counts equal numpy's on the resampled matrix, bit for bit."""
    from mitigation.campaign.stats import _STATISTICS, _resample_indices, _resampled

    x = np.array(values)
    idx = _resample_indices(x.size, resamples, seed)
    for stat in ("mean", "median", "q1", "q3"):
        assert np.array_equal(_resampled(x, idx, stat), _STATISTICS[stat](x[idx])), stat
