"""Chip populations (mitigation/campaign/populations.py): single-fault orders, argument checks, fault groups."""
from __future__ import annotations

import numpy as np
import pytest

import sysarray as sa
from mitigation.campaign import FaultGroup, RateGrid, SingleFaults

CFG = sa.ArrayConfig(16, 16, "ws")


def test_single_fault_population_orders_and_validates():
    pop = SingleFaults.exhaustive(CFG, ["psum"], [3, 30], [1])
    assert pop.size == 2 * 256
    fm, desc = pop.chip(256 + 17, CFG)
    assert list(fm) == [sa.Fault(1, 1, sa.Register.PSUM, 30, 1)]
    assert (desc["pe_row"], desc["pe_col"], desc["bit"], desc["group"]) == (1, 1, 30, "psum:30:1")
    sampled = SingleFaults.sampled(CFG, ["weight"], [7], [0, 1], budget=10, seed=3)
    assert sampled.size == 20 and len({tuple(r[:2]) for r in sampled.records[:10]}) == 10
    assert np.array_equal(sampled.records, SingleFaults.sampled(CFG, ["weight"], [7], [0, 1], 10, 3).records)
    with pytest.raises(ValueError, match="within 0..7 for register 'weight'"):
        SingleFaults.exhaustive(CFG, ["weight"], [8], [1])
    with pytest.raises(ValueError, match="'budget' argument of SingleFaults.sampled must be a positive integer. Got 0"):
        SingleFaults.sampled(CFG, ["weight"], [7], [1], budget=0, seed=3)
    with pytest.raises(ValueError, match="'seed' argument of SingleFaults.sampled must be a non-negative integer"):
        SingleFaults.sampled(CFG, ["weight"], [7], [1], budget=2, seed=-1)


@pytest.mark.parametrize("bad, match", [
    (dict(rates=[0.1, 1.5]), r"'rates\[1\]' argument of RateGrid must be a finite number within \[0, 1\]. Got 1.5"),
    (dict(rates=[-0.1]), r"'rates\[0\]' argument of RateGrid must be a finite number within \[0, 1\]"),
    (dict(rates=[]), "'rates' argument of RateGrid must be a non-empty sequence"),
    (dict(rates=[0.1, 0.1]), "'rates' argument of RateGrid must be a sequence of distinct values"),
    (dict(chips_per_rate=0), "'chips_per_rate' argument of RateGrid must be a positive integer. Got 0"),
    (dict(seed=-1), "'seed' argument of RateGrid must be a non-negative integer"),
    (dict(groups=[]), "'groups' argument of RateGrid must be a non-empty sequence"),
    (dict(groups=[FaultGroup.parse("psum"), FaultGroup.parse("psum:all")]), "'groups' argument of RateGrid must be "
                                                                            "a sequence of distinct values"),
    (dict(method="nope"), "'method' argument of RateGrid must be one of"),
    (dict(faults_per_pe=0), "'faults_per_pe' argument of RateGrid must be a positive integer"),
])
def test_rate_grid_rejects_bad_input(bad, match):
    args = {**dict(rates=[0.1], chips_per_rate=2, seed=0, groups=[FaultGroup.parse("psum")]), **bad}
    with pytest.raises(ValueError, match=match):
        RateGrid(**args)


@pytest.mark.parametrize("bad, match", [
    (dict(rates=["0.1"]), r"'rates\[0\]' argument of RateGrid must be a finite number"),
    (dict(chips_per_rate=True), "'chips_per_rate' argument of RateGrid must be a positive integer. Got True"),
    (dict(seed=0.5), "'seed' argument of RateGrid must be a non-negative integer"),
    (dict(groups=["psum"]), r"'groups\[0\]' argument of RateGrid must be a FaultGroup. Got str"),
])
def test_rate_grid_rejects_arguments_of_the_wrong_type(bad, match):
    args = {**dict(rates=[0.1], chips_per_rate=2, seed=0, groups=[FaultGroup.parse("psum")]), **bad}
    with pytest.raises(TypeError, match=match):
        RateGrid(**args)


def test_fault_group_parse_and_check():
    g = FaultGroup.parse("weight+act:0-3,7:0")
    assert (g.registers, g.bits, g.values, g.label) == (("weight", "act"), (0, 1, 2, 3, 7), (0,), "weight+act:0-3,7:0")
    with pytest.raises(ValueError, match="must be one of weight, act, psum"):
        FaultGroup.parse("psun:0-3")
    with pytest.raises(ValueError, match="within 0..19 for register 'psum'"):
        FaultGroup.parse("psum:0-25").check(20)
