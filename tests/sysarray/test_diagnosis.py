"""Fault diagnosis from GEMM outputs (sysarray.diagnosis): the search model equals the engine,
every located stuck bit is real, single faults are located exactly in every dataflow, and every
"undetectable" verdict is true."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysarray as sa
from sysarray.diagnosis import diagnose, masked_sites
from sysarray.diagnosis.model import model_for
from sysarray.diagnosis.patterns import fixed_tests, random_test
from sysarray.diagnosis.procedure import engine_outputs
from tests.strategies import fault_maps

FLOWS = ("ws", "os", "is")
FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw, lo: int = 3, hi: int = 6) -> sa.ArrayConfig:
    return sa.ArrayConfig(draw(st.integers(lo, hi)), draw(st.integers(lo, hi)), draw(st.sampled_from(FLOWS)),
                          psum_bits=draw(st.sampled_from((32, 20))))


@st.composite
def single_faults(draw):
    cfg = draw(configs())
    reg = draw(st.sampled_from(("weight", "act", "psum")))
    width = cfg.psum_bits if reg == "psum" else 8
    fm = sa.FaultMap(cfg.rows, cfg.cols).add(draw(st.integers(0, cfg.rows - 1)), draw(st.integers(0, cfg.cols - 1)),
                                             reg, draw(st.integers(0, width - 1)), draw(st.integers(0, 1)))
    return cfg, fm


@st.composite
def multi_faults(draw, max_faults: int = 6):
    cfg = draw(configs())
    return cfg, draw(fault_maps(cfg, max_faults))


@given(multi_faults(), st.integers(0, 2**16))
@FAST
def test_model_predicts_what_the_engine_computes(case, seed):
    cfg, fm = case
    tests = fixed_tests(cfg, seed) + [random_test(cfg, seed, 0)]
    for t, pred, y in zip(tests, model_for(cfg).predict(fm, tests), engine_outputs(cfg, fm, tests)):
        np.testing.assert_array_equal(pred, t.normalise(y, cfg).astype(np.int64))


@given(single_faults(), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_single_fault_is_located_exactly(case, seed):
    cfg, fm = case
    d = diagnose(sa.Chip(cfg, fm), cfg, seed=seed)
    assert d.faults == fm and d.confirmed and not d.aliased
    assert d.score(fm)["all"].located == 1


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("psum_bits", (32, 20))
def test_fixed_tests_detect_every_single_stuck_bit(flow, psum_bits):
    """Exhaustively on a 3x4 array: each stuck bit alone changes an output of the fixed tests."""
    cfg = sa.ArrayConfig(3, 4, flow, psum_bits=psum_bits)
    tests = fixed_tests(cfg, 0)
    clean = [y for y in engine_outputs(cfg, sa.FaultMap(3, 4), tests)]
    for r in range(3):
        for c in range(4):
            for reg, width in (("weight", 8), ("act", 8), ("psum", psum_bits)):
                for b in range(width):
                    for v in (0, 1):
                        fm = sa.FaultMap(3, 4).add(r, c, reg, b, v)
                        ys = engine_outputs(cfg, fm, tests)
                        assert any(not np.array_equal(y, y0) for y, y0 in zip(ys, clean)), (r, c, reg, b, v)


@given(multi_faults(), st.integers(0, 2**16))
@FAST
def test_located_faults_are_real_and_reproduce_the_outputs(case, seed):
    cfg, fm = case
    d = diagnose(sa.Chip(cfg, fm), cfg, seed=seed)
    assert set(d.faults) <= set(fm), f"false alarm: {sorted(set(d.faults) - set(fm))} on {list(fm)}"
    score = d.score(fm)["all"]
    assert score.false_alarms == 0
    assert score.located + score.missed + score.aliased + score.undetectable == len(fm)
    if d.confirmed:  # the engine reproduces every test output from the hypothesis
        assert not d.unexplained


def _random_gemm_outputs(cfg, fm, rng, n=6):
    chip = sa.Chip(cfg, fm)
    out = []
    for i in range(n):
        M, K, N = (int(x) for x in rng.integers(1, 2 * max(cfg.rows, cfg.cols) + 2, size=3))
        signed = i % 2 == 0
        a = torch.from_numpy(rng.integers(-128 if signed else 0, 128 if signed else 256, size=(M, K)).astype(
            np.int8 if signed else np.uint8))
        w = torch.from_numpy(rng.integers(-128, 128, size=(K, N)).astype(np.int8))
        out.append(chip.gemm(a, w)[0].numpy())
    return out


@given(multi_faults(max_faults=8), st.integers(0, 2**16))
@FAST
def test_undetectable_verdicts_change_no_output(case, seed):
    """Adding a site the rule calls masked changes no output of random GEMMs (both act types,
    several folds)."""
    cfg, fm = case
    sites = masked_sites(fm, cfg)
    rng = np.random.default_rng(seed)
    for f, why in [sites[i] for i in rng.permutation(len(sites))[:4]]:
        assert why
        base = _random_gemm_outputs(cfg, fm, np.random.default_rng(seed))
        more = _random_gemm_outputs(cfg, fm.add(*f), np.random.default_rng(seed))
        for y0, y1 in zip(base, more):
            np.testing.assert_array_equal(y0, y1)


def test_masked_site_is_reported_and_scored_undetectable():
    cfg = sa.ArrayConfig(4, 4, "ws")
    fm = sa.FaultMap(4, 4).add(1, 0, "act", 3, 1).add(1, 2, "act", 3, 1)  # the second sees bit 3 already at 1
    d = diagnose(sa.Chip(cfg, fm), cfg, seed=0)
    assert list(d.faults) == [sa.Fault(1, 0, sa.Register.ACT, 3, 1)]
    assert any(f == sa.Fault(1, 2, sa.Register.ACT, 3, 1) for f, _ in d.undetectable)
    score = d.score(fm)
    assert (score["act"].located, score["act"].undetectable, score["all"].false_alarms) == (1, 1, 0)


def test_report_cost_and_json():
    cfg = sa.ArrayConfig(4, 5, "os", psum_bits=20)
    fm = sa.FaultMap(4, 5).add(2, 3, "psum", 19, 0)
    d = diagnose(sa.Chip(cfg, fm), cfg, seed=3, refinements=0)
    assert d.refinement_tests == 0 and d.tests == 5
    assert d.cycles == sum(sa.Chip(cfg).timing(4, k, 5).cycles for k in (8, 8, 8, 8, 9))
    assert d.tile_cycles == 4 + 5 + 3136 - 2
    text = json.dumps(d.to_dict(fm))
    assert json.loads(text)["score"]["psum"]["located"] == 1


def test_same_inputs_same_result():
    cfg = sa.ArrayConfig(5, 4, "is")
    fm = sa.FaultMap.random(cfg, 0.3, seed=1, registers=("weight", "act", "psum"))
    a, b = (diagnose(sa.Chip(cfg, fm), cfg, seed=7) for _ in range(2))
    assert a.to_dict(fm) == b.to_dict(fm)


def test_bad_input():
    cfg = sa.ArrayConfig(4, 4, "ws")
    chip = sa.Chip(cfg)
    with pytest.raises(ValueError, match="bypass"):
        diagnose(chip, cfg.replace(bypass=True))
    with pytest.raises(ValueError, match="seed"):
        diagnose(chip, cfg, seed=-1)
    with pytest.raises(TypeError, match="oracle"):
        diagnose(42, cfg)
    with pytest.raises(ValueError, match="oracle must return"):
        diagnose(lambda a, w: np.zeros((1, 1), dtype=np.int32), cfg)
    with pytest.raises(ValueError, match="refinements"):
        diagnose(chip, cfg, refinements=-1)
