"""sysarray.parallel: the measured choice between interchangeable computations, and the threaded
kernels that use it."""
from __future__ import annotations

import time

import numba
import numpy as np
import pytest
from numba import prange

from sysarray.parallel import TRIALS, MeasuredChoice, threaded


def test_a_measured_choice_keeps_the_faster_option_per_key_after_its_trials():
    choice = MeasuredChoice(max_keys=2)
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.003)
        return 1

    def fast():
        calls.append("fast")
        return 1

    for _ in range(2 * (TRIALS + 1)):
        assert choice("a", (slow, fast)) == 1
    assert calls.count("slow") == calls.count("fast") == TRIALS + 1  # taken in turn while measured
    assert choice.chosen("a") == 1
    calls.clear()
    for _ in range(5):
        choice("a", (slow, fast))
    assert calls == ["fast"] * 5
    assert choice.chosen("b") is None  # each key is measured on its own
    for key in ("b", "c"):
        for _ in range(2 * (TRIALS + 1)):
            choice(key, (fast, slow))
    assert choice.chosen("c") == 0 and choice.chosen("a") is None  # the oldest decided key is dropped


def test_a_choice_with_sync_times_the_queued_work_and_stops_syncing_once_decided():
    """Options that only queue their work (a GPU's kernels) are timed to the end of it: ``sync``
    runs around each timed call, and not after the decision."""
    choice = MeasuredChoice()
    pending, syncs = [], []

    def sync():
        syncs.append(1)
        while pending:
            time.sleep(pending.pop())

    def queues_much():  # returns at once, its work still queued
        pending.append(0.004)
        return 1

    def works_a_little():
        time.sleep(0.001)
        return 1

    calls = 0
    while choice.chosen("k") is None and calls < 4 * (TRIALS + 1):
        assert choice("k", {"queued": queues_much, "direct": works_a_little}, sync=sync) == 1
        calls += 1
    assert choice.chosen("k") == "direct"  # untimed queued work would have made "queued" win
    assert len(syncs) == 2 * calls  # before and after every measuring call
    syncs.clear()
    choice("k", {"queued": queues_much, "direct": works_a_little}, sync=sync)
    assert syncs == []


@threaded(1 << 10)
def _double(x, out):
    for i in prange(x.shape[0]):
        out[i] = 2 * x[i]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads (one core here)")
def test_a_threaded_kernel_measures_above_its_floor_and_forced_runs_take_one_compilation():
    x = np.arange(1 << 12, dtype=np.float64)
    out = np.empty_like(x)
    for _ in range(2 * (TRIALS + 1)):
        _double(x, out, work=x.size)
        np.testing.assert_array_equal(out, 2 * x)
    assert set(_double.choices()) == {(x.size.bit_length(), numba.get_num_threads())}
    _double(x[:10], out[:10], work=10)  # below the floor: serial, nothing measured
    assert len(_double.choices()) == 1
    _double.force = "parallel"
    try:
        _double(x, out, work=1)
    finally:
        _double.force = None
    assert _double.parallel.signatures and _double.serial.signatures


class _Clock:
    """Stands in for the ``time`` module of :mod:`sysarray.parallel`: its clock moves only by what
    an option says it took, so a test of the choice's bookkeeping does not depend on the host."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_watch_choices_collects_the_keys_called_and_settled_says_when_their_decisions_are_final(monkeypatch):
    import sysarray.parallel
    from sysarray.parallel import RECHECK_AFTER, settled, watch_choices

    clock = _Clock()
    monkeypatch.setattr(sysarray.parallel, "time", clock)
    choice = MeasuredChoice(trials=1)
    options = (lambda: clock.spend(0.004), lambda: clock.spend(0.002))  # within DOMINATED: confirmed by a recheck
    choice("outside", options)
    with watch_choices() as seen:
        assert settled(seen)  # nothing called yet
        choice("k", options)
        calls = 1
        while not settled(seen):
            choice("k", options)
            calls += 1
    assert seen == {(choice, "k")} and choice.chosen("k") == 1 and choice.confirmed("k")
    assert calls == 2 * 2 * 2 + RECHECK_AFTER  # two measurements of two options (a warm-up and one trial each)
    choice.force = 0
    with watch_choices() as seen:
        choice("forced", options)
    assert seen == set()  # a pinned choice measures nothing


def test_an_outer_choice_does_not_time_the_calls_in_which_an_inner_choice_measured():
    """Option ``a`` runs an inner choice; while that one measures, ``a`` also runs the inner
    losing option and looks slow. Those calls are not timed, so the outer choice keeps ``a``,
    faster than ``b`` once the inner choice is made."""
    inner, outer = MeasuredChoice(trials=1), MeasuredChoice(trials=1)
    options = (lambda: time.sleep(0.02), lambda: None)

    def a():
        inner("k", options)

    def b():
        time.sleep(0.005)
    while outer.chosen("o") is None:
        outer("o", (a, b))
    assert inner.chosen("k") == 1 and outer.chosen("o") == 0


def test_an_option_far_slower_than_a_measured_one_loses_after_one_timed_call_and_at_once():
    from sysarray.parallel import DOMINATED

    choice, ran = MeasuredChoice(trials=3), []

    def option(label, seconds):
        def call():
            ran.append(label)
            time.sleep(seconds)
        return call
    fast, slow = option("fast", 0.001), option("slow", 0.001 * 4 * DOMINATED)
    while choice.chosen("k") is None:
        choice("k", (fast, slow))
    assert ran == ["fast"] * (TRIALS + 1) + ["slow"] * 2  # its warm-up and one timed call
    assert choice.chosen("k") == 0 and choice.confirmed("k")  # no second measurement needed
    # an option measured first is measured in full: nothing complete yet to compare it with
    ran.clear()
    while choice.chosen("j") is None:
        choice("j", (slow, fast))
    assert ran == ["slow"] * (TRIALS + 1) + ["fast"] * (TRIALS + 1) and choice.confirmed("j")
