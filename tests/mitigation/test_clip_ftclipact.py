"""FT-ClipAct's algorithmic steps (mitigation.clip_ftclipact): the candidate grid, the interval
update, the stopping rule, the AUC over an evenly spaced rate grid, and profiling again after
each layer is clipped."""
from __future__ import annotations

import math

import numpy as np
import pytest

import mitigation.clip_ftclipact as ft
from accel_models.checkpoint import load_checkpoint
from accel_models.clipact import clipped_modules
from mitigation.clipping import FaultSetting, find_thresholds, grid_auc


def test_candidates_include_both_ends():
    assert ft.candidate_thresholds(0.0, 3.0, 4) == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert ft.candidate_thresholds(1.0, 2.0, 3) == pytest.approx([1.0, 1.5, 2.0])


def test_next_interval_is_the_best_candidates_neighbours():
    cands = [0.0, 1.0, 2.0, 3.0]
    assert ft.next_interval(cands, 0) == (0.0, 1.0)
    assert ft.next_interval(cands, 1) == (0.0, 2.0)
    assert ft.next_interval(cands, 2) == (1.0, 3.0)
    assert ft.next_interval(cands, 3) == (2.0, 3.0)


def test_ties_go_to_the_highest_threshold():
    assert ft.best_index([5.0, 7.0, 7.0, 6.0]) == 2
    assert ft.best_index([7.0, 7.0, 7.0, 7.0]) == 3
    assert ft.best_index([-math.inf, 1.0, -math.inf, 0.5]) == 1


def test_stopping_rule_is_every_neighbouring_pair_within_tolerance():
    assert ft.converged([1.0, 1.1, 1.2, 1.3], 0.1 + 1e-9)
    assert not ft.converged([1.0, 1.1, 1.5, 1.3], 0.2)  # one pair 0.4 apart
    assert not ft.converged([-math.inf, 1.0, 1.0, 1.0], 10.0)  # an ineligible candidate never is


def test_interval_search_rounds_and_stop():
    calls = []

    def flat(t):  # every candidate equal: converged from the first round, stops at min_rounds
        calls.append(t)
        return 1.0

    t, s, rounds, done = ft.interval_search(flat, 3.0, candidates=4, min_rounds=2, max_rounds=4, tolerance=0.0)
    assert len(rounds) == 2 and done and t == 3.0 and s == 1.0  # a tie everywhere keeps the interval's top
    assert rounds[1]["candidates"] == pytest.approx([2.0, 2 + 1 / 3, 2 + 2 / 3, 3.0])

    def peak(t):  # steep around 1.2: never within tolerance, runs max_rounds, the best seen kept
        return -10 * abs(t - 1.2)

    t, s, rounds, done = ft.interval_search(peak, 3.0, candidates=4, min_rounds=1, max_rounds=3, tolerance=0.01)
    assert len(rounds) == 3 and not done
    seen = [(sc, c) for r in rounds for c, sc in zip(r["candidates"], r["scores"])]
    assert (s, t) == max(seen)
    assert rounds[1]["candidates"][0] == pytest.approx(0.0) and rounds[1]["candidates"][-1] == pytest.approx(2.0)


def test_auc_uses_the_evenly_spaced_grid(monkeypatch):
    """The same accuracies score the same over any rate values: the trapezoid is over rate
    positions, so 1e-5..3e-5 weighs as much as 1e-7..1e-6."""
    acc = np.array([[0.9, 0.9], [0.8, 0.8], [0.5, 0.5], [0.3, 0.3], [0.1, 0.1]])
    monkeypatch.setattr(FaultSetting, "curve", lambda self, target, images, labels: acc)
    uneven = FaultSetting(rates=(1e-7, 1e-6, 3e-6, 1e-5, 3e-5), repetitions=2)
    even = FaultSetting(rates=(1e-5, 2e-5, 3e-5, 4e-5, 5e-5), repetitions=2)
    want = (90 / 2 + 80 + 50 + 30 + 10 / 2) / 4
    assert uneven.auc(None, None, None) == pytest.approx(want)
    assert even.auc(None, None, None) == pytest.approx(want)
    assert grid_auc([70.0]) == 70.0
    with pytest.raises(ValueError, match="non-empty"):
        grid_auc([])


def test_maxima_are_profiled_again_after_each_layer(lenet_ckpt, digits, monkeypatch):
    """One profile of every layer, then one after each layer but the last is clipped: the model
    profiled has exactly the layers chosen so far clipped at their thresholds, the layers asked
    for are the rest, and each layer's search interval ends at its latest profiled maximum."""
    lenet = load_checkpoint(lenet_ckpt)[0]
    calls = []
    real = ft.profile_maxima

    def spy(model, images, granularities, **kw):
        out = real(model, images, granularities, **kw)
        calls.append(({n: float(m.threshold.detach()) for n, m in clipped_modules(model).items()},
                      list(granularities), {n: float(v) for n, v in out.items()}, images.shape[0]))
        return out

    monkeypatch.setattr(ft, "profile_maxima", spy)

    def scorer(model, program):  # prefers thresholds near half the interval's top: every layer gets tighter
        return -sum(float(m.threshold.detach()) for m in clipped_modules(model).values())

    res = find_thresholds(lenet, digits, "ftclipact", progress=False, scorer=scorer, min_rounds=1, max_rounds=1,
                          clean_drop=math.inf, profile_images=300)
    names = [l["module"] for l in res.spec["layers"]]
    chosen = {l["module"]: float(l["threshold"]) for l in res.spec["layers"]}
    assert len(calls) == len(names)
    for k, (clipped, asked, maxima, n_images) in enumerate(calls):
        assert n_images == 300
        assert clipped == pytest.approx({n: chosen[n] for n in names[:k]})
        assert asked == names[k:]
        assert res.history["layers"][names[k]]["max"] == pytest.approx(maxima[names[k]])
    # clipping the first layer at 0 leaves the next one only its bias: its re-profiled maximum drops
    assert chosen[names[0]] == 0.0 and calls[1][2][names[1]] < calls[0][2][names[1]] / 10


def test_bad_input(lenet_ckpt, digits):
    lenet = load_checkpoint(lenet_ckpt)[0]
    with pytest.raises(ValueError, match="'candidates' argument of ftclipact"):
        find_thresholds(lenet, digits, "ftclipact", progress=False, candidates=2)
    with pytest.raises(ValueError, match="'val_fraction' argument of ftclipact must be a number in \\(0, 1\\)"):
        find_thresholds(lenet, digits, "ftclipact", progress=False, val_fraction=1.5)
    with pytest.raises(ValueError, match="'tolerance' argument of ftclipact"):
        find_thresholds(lenet, digits, "ftclipact", progress=False, tolerance=-1)
