"""Measured kernel choices kept on disk per machine (sysarray.kernel_cache)."""
from __future__ import annotations

import json

import pytest

from sysarray import kernel_cache
from sysarray.parallel import MeasuredChoice


@pytest.fixture
def cache(tmp_path):
    kernel_cache.configure(tmp_path)
    yield tmp_path
    kernel_cache.configure(False)


def _decide(choice: MeasuredChoice, key, fast: str, labels=("a", "b")) -> list[str]:
    """Run ``choice`` until it decides among options ``labels``; options report their label, the
    one named ``fast`` wins by sleeping less."""
    import time

    ran = []

    def option(label):
        def call():
            ran.append(label)
            # twice as long: far beyond scheduling noise, within DOMINATED (rechecks happen as usual)
            time.sleep(0.01 if label == fast else 0.02)
            return label
        return call
    while choice.chosen(key) is None:
        choice(key, {label: option(label) for label in labels})
    return ran


def test_a_decision_is_kept_on_disk_and_read_by_a_new_choice(cache):
    _decide(MeasuredChoice(trials=2, name="test.choice"), (3, 64, True), fast="b")
    file = kernel_cache.path()
    assert file.parent == cache and file.exists()
    data = json.loads(file.read_text())
    assert data["machine"] == kernel_cache.machine_signature()
    assert data["choices"]["test.choice"]["[3, 64, true]"]["option"] == "b"
    fresh = MeasuredChoice(trials=2, name="test.choice")
    assert fresh((3, 64, True), {"a": lambda: "a", "b": lambda: "b"}) == "b"  # no measuring: the file says b
    assert fresh.chosen((3, 64, True)) == "b"


def test_unnamed_choices_and_object_keys_stay_in_memory(cache):
    _decide(MeasuredChoice(trials=1), "k", fast="a")
    _decide(MeasuredChoice(trials=1, name="test.objects"), (object(), 1), fast="a")
    assert kernel_cache.recorded() == {}


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": kernel_cache.FORMAT, "version": kernel_cache.VERSION,
                                                 "machine": {"cpu": "another"}, "choices": {}})])
def test_a_file_of_another_format_or_machine_is_ignored_and_replaced(cache, content):
    file = kernel_cache.path()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(content)
    kernel_cache.configure(cache)
    assert kernel_cache.lookup("test.choice", [1]) is None
    _decide(MeasuredChoice(trials=1, name="test.choice"), (1,), fast="a")
    assert kernel_cache.recorded()["test.choice"]["[1]"]["option"] == "a"


def test_memory_only_and_clear(cache):
    _decide(MeasuredChoice(trials=1, name="test.clear"), (2,), fast="a")
    assert kernel_cache.clear() == kernel_cache.path() and not kernel_cache.path().exists()
    kernel_cache.configure(False)
    assert kernel_cache.path() is None
    _decide(MeasuredChoice(trials=1, name="test.clear"), (2,), fast="a")
    assert not any(cache.iterdir())


def test_force_takes_an_index_or_a_label():
    choice = MeasuredChoice(name="test.force")
    choice.force = "b"
    assert choice("k", {"a": lambda: 1, "b": lambda: 2}) == 2
    choice.force = 0
    assert choice("k", [lambda: 1, lambda: 2]) == 1
    choice.force = "c"  # not among these options: the first
    assert choice("k", {"a": lambda: 1, "b": lambda: 2}) == 1


def test_a_decision_among_other_options_is_measured_again(cache):
    """A new candidate for a choice (or one gone) invalidates what the file recorded for it."""
    _decide(MeasuredChoice(trials=1, name="test.options"), (4,), fast="a")
    assert kernel_cache.lookup("test.options", (4,), ["a", "b"]) == ("a", 1)
    assert kernel_cache.lookup("test.options", (4,), ["a", "b", "c"]) is None
    ran = _decide(MeasuredChoice(trials=1, name="test.options"), (4,), fast="c", labels=("a", "b", "c"))
    assert set(ran) == {"a", "b", "c"} and kernel_cache.lookup("test.options", (4,), ["a", "b", "c"]) == ("c", 1)


def test_configure_refuses_other_values():
    with pytest.raises(ValueError, match="folder, True"):
        kernel_cache.configure(3)


def test_each_option_is_timed_in_a_run_of_calls(cache):
    """A new key takes one option for its warm-up and timed calls back to back, then the next: a
    program that makes an even number of calls with the key per run times every option at every
    layer, each in the state it leaves itself."""
    ran = _decide(MeasuredChoice(trials=2, name="test.runs"), (5,), fast="b", labels=("a", "b", "c"))
    assert ran == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def _timed_options(ran: list, fast: str, labels=("a", "b")) -> dict:
    """Options that report their label in ``ran``; the one named ``fast`` wins by sleeping less."""
    import time

    def option(label):
        def call():
            ran.append(label)
            time.sleep(0.01 if label == fast else 0.02)  # within DOMINATED, as in _decide
            return label
        return call
    return {label: option(label) for label in labels}


def test_a_decision_is_final_only_once_a_second_measurement_agrees(cache):
    """A busy moment can mislead one measurement: a decision is taken at once but measured again
    after RECHECK_AFTER calls, in this process or (from the file) the next one; two in a row that
    agree make it final, on disk too, and a final one is never measured again."""
    from sysarray.parallel import RECHECK_AFTER

    choice, ran = MeasuredChoice(trials=1, name="test.confirm"), []
    while choice.chosen("k") is None:
        choice("k", _timed_options(ran, fast="a"))
    assert not choice.confirmed("k") and kernel_cache.lookup("test.confirm", "k", ["a", "b"]) == ("a", 1)
    ran.clear()
    for _ in range(RECHECK_AFTER):
        choice("k", _timed_options(ran, fast="a"))
    assert ran == ["a"] * RECHECK_AFTER  # the unconfirmed decision serves until its recheck
    while not choice.confirmed("k"):
        choice("k", _timed_options(ran, fast="a"))
    assert "b" in ran[RECHECK_AFTER:]  # measured again
    assert kernel_cache.lookup("test.confirm", "k", ["a", "b"]) == ("a", 2)
    ran.clear()
    for _ in range(3 * RECHECK_AFTER):
        choice("k", _timed_options(ran, fast="a"))
    assert ran == ["a"] * (3 * RECHECK_AFTER)
    fresh, ran = MeasuredChoice(trials=1, name="test.confirm"), []
    for _ in range(3 * RECHECK_AFTER):
        fresh("k", _timed_options(ran, fast="a"))
    assert ran == ["a"] * (3 * RECHECK_AFTER) and fresh.confirmed("k")  # final on disk: no measuring


def test_a_recheck_that_disagrees_replaces_the_decision_and_a_new_process_rechecks_it(cache):
    from sysarray.parallel import RECHECK_AFTER

    choice, ran = MeasuredChoice(trials=1, name="test.flip"), []
    while choice.chosen("k") is None:
        choice("k", _timed_options(ran, fast="a"))
    for _ in range(RECHECK_AFTER):
        choice("k", _timed_options(ran, fast="b"))  # the machine changed its mind: b is faster now
    while choice.chosen("k") != "b":
        choice("k", _timed_options(ran, fast="b"))
    assert not choice.confirmed("k")
    fresh, ran = MeasuredChoice(trials=1, name="test.flip"), []
    assert fresh("k", _timed_options(ran, fast="b")) == "a"  # the file's first decision, not yet confirmed
    while not fresh.confirmed("k"):
        fresh("k", _timed_options(ran, fast="b"))
    assert fresh.chosen("k") == "b" and kernel_cache.lookup("test.flip", "k", ["a", "b"])[0] == "b"


def test_a_file_without_confirmation_counts_reads_as_measured_once(cache):
    file = kernel_cache.path()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"format": kernel_cache.FORMAT, "version": kernel_cache.VERSION,
                                "machine": kernel_cache.machine_signature(),
                                "choices": {"test.old": {"[1]": {"option": "a", "median_s": {"a": 1.0, "b": 2.0}}}}}))
    kernel_cache.configure(cache)
    assert kernel_cache.lookup("test.old", [1], ["a", "b"]) == ("a", 1)
