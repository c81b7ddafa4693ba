"""Exact integer-arithmetic repairs of stuck bits (mitigation.arith_repair)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sysarray as sa
from accel_models.program import layer_accumulators, postprocess
from mitigation.arith_repair import nearest_fixed_table, repair_program, without
from mitigation.remap import remap_program
from sysarray import ArrayConfig, FaultMap
from tests.mitigation.remap_models import tiny_program


@pytest.fixture(scope="module")
def tiny(digits):
    return tiny_program(digits)


@pytest.mark.parametrize("stuck", [0, 1, 0x80, 0x81, 0xFF, 0x3C])
def test_nearest_fixed_code_is_a_fixed_point_and_nearest(stuck):
    for ones in {0, stuck, stuck & 0x55, stuck & 0xAA}:
        table = nearest_fixed_table(stuck, ones)
        codes = np.arange(-128, 128)
        fixed = codes[((codes & 0xFF) & stuck) == ones]
        fixed = fixed[fixed >= -127] if (fixed >= -127).any() else fixed
        assert np.all((table & 0xFF & stuck) == ones)
        assert np.array_equal(np.abs(table - codes), np.abs(codes[:, None] - fixed[None, :]).min(axis=1))


def _layer_inputs(program, cfg, x):
    seen = {}
    program.execute(x, sa.Chip(cfg), on_layer=lambda op, xin, acc, st: seen.setdefault(op.name, xin))
    return seen


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), flow=st.sampled_from(["ws", "os", "is"]), psum_bits=st.sampled_from([20, 32]),
       rate=st.sampled_from([0.1, 0.3]), remap=st.booleans())
@example(seed=215, flow="ws", psum_bits=20, rate=0.1, remap=False)  # a padding row's forced zero meets an act fault
@example(seed=9228, flow="is", psum_bits=32, rate=0.3, remap=False)  # likewise, the stationary input in IS
def test_repaired_layer_on_faulty_chip_equals_reference_without_neutralised_faults(tiny, digits, seed, flow, psum_bits,
                                                                                   rate, remap):
    """Each layer: the repaired op on the faulty chip gives the codes the re-rounded op gives on the
    chip without the faults the report calls neutralised (the psum corrections are exact)."""
    cfg = ArrayConfig(4, 4, flow, psum_bits=psum_bits)
    rng = np.random.default_rng(seed)
    fm = FaultMap.random(cfg, rate, seed=seed, registers=("weight", "act", "psum"), psum_bits=psum_bits)
    extra = [(0, int(rng.integers(4)), "psum", int(rng.integers(psum_bits - 4, psum_bits)), int(rng.integers(2)))
             for _ in range(3)]  # top rows with high bits: where the psum proofs apply
    for f in extra + [(0, int(rng.integers(4)), "weight", 7, int(rng.integers(2)))]:
        if not any(g.row == f[0] and g.col == f[1] and g.register.value == f[2] and g.bit == f[3] for g in fm):
            fm = fm.add(*f)
    program = remap_program(tiny, cfg, fm, "magnitude")[0] if remap else tiny
    repaired, reports, reference = repair_program(program, cfg, fm, return_reference=True)
    inputs = _layer_inputs(reference, cfg, digits.test_x[:8])
    psum_pes = [(int(r), int(c), "psum") for r, c in np.argwhere(fm.faulty_pes("psum"))]
    for op_r, op_f, rep in zip(repaired.gemms, reference.gemms, reports):
        x = inputs[op_r.name]
        got = postprocess(layer_accumulators(x, op_r, sa.Chip(cfg, fm), saturate=False)[0], op_r)
        left = sa.Chip(cfg, without(fm, rep.neutralised))
        want = postprocess(layer_accumulators(x, op_f, left, saturate=False)[0], op_f)
        proven = torch.tensor(rep.proven_channels, dtype=torch.long)
        free = sa.Chip(cfg, without(fm, rep.neutralised + psum_pes))
        want[:, proven] = postprocess(layer_accumulators(x, op_f, free, saturate=False)[0], op_f)[:, proven]
        assert torch.equal(got, want), rep


def _nonnegative_top_rows(program, R: int, col: int, C: int):
    """The program with every weight of array row 0 in column ``col`` made non-negative (so the
    partial sums at the top PE of that column never change sign on uint8 codes)."""
    out = copy.deepcopy(program)
    for op in out.gemms:
        w = op.weight.reshape(op.out_channels, -1)
        w[col::C, 0::R] = w[col::C, 0::R].abs()
    return out


@pytest.mark.parametrize("psum_bits", [20, 32])
def test_proven_psum_faults_are_corrected_bit_for_bit(tiny, digits, psum_bits):
    cfg = ArrayConfig(4, 4, "ws", psum_bits=psum_bits)
    program = _nonnegative_top_rows(tiny, 4, 1, 4)
    fm = FaultMap(4, 4).add(0, 1, "psum", psum_bits - 1, 1).add(0, 1, "psum", 17, 1).add(0, 1, "psum", 2, 0)
    fm = fm.add(0, 1, "psum", 16, 0)  # already 0 on the non-negative sums: harmless
    fm_proven = FaultMap(4, 4).add(0, 1, "psum", psum_bits - 1, 1).add(0, 1, "psum", 17, 1).add(0, 1, "psum", 16, 0)
    x = digits.test_x[:32]
    clean = program.execute(x, sa.Chip(cfg))
    assert not torch.equal(program.execute(x, sa.Chip(cfg, fm_proven)), clean)
    repaired, reports = repair_program(program, cfg, fm_proven)
    assert all(r.psum_neutralised == 1 and r.psum_left == 0 and r.weights_rerounded == 0 for r in reports)
    assert all(r.bias_corrected > 0 for r in reports)
    assert torch.equal(repaired.execute(x, sa.Chip(cfg, fm_proven)), clean)
    assert torch.equal(repaired.execute(x, sa.Chip(cfg, fm_proven, "cycle")), clean)
    # a low bit is data-dependent: refused, reported as left, nothing corrected
    _, reports = repair_program(program, cfg, fm)
    assert all(r.psum_left == 1 and r.bias_corrected == 0 for r in reports)


@pytest.mark.parametrize("flow", ["ws", "os", "is"])
def test_weight_register_faults_are_neutralised_up_to_the_rerounding(tiny, digits, flow):
    cfg = ArrayConfig(4, 4, flow)
    fm = FaultMap(4, 4).add(0, 0, "weight", 6, 1).add(0, 0, "weight", 0, 0).add(2, 3, "weight", 7, 0)
    fm = fm.add(0, 2, "weight", 1, 1)
    repaired, reports, reference = repair_program(tiny, cfg, fm, weights="always", return_reference=True)
    x = digits.test_x[:16]
    assert torch.equal(repaired.execute(x, sa.Chip(cfg, fm)), reference.execute(x, sa.Chip(cfg)))
    assert all(r.weight_left == 0 and r.weights_rerounded > 0 for r in reports)
    for op, ref in zip(tiny.gemms, repaired.gemms):  # never worse than the fault's own change per weight
        assert int((ref.weight - op.weight).abs().max()) <= 127


def test_conflicting_streamed_weight_faults_are_left(tiny):
    cfg = ArrayConfig(4, 4, "os")
    fm = FaultMap(4, 4).add(0, 1, "weight", 3, 1).add(2, 1, "weight", 3, 0)
    _, reports = repair_program(tiny, cfg, fm)
    assert all(r.weight_left == 2 and r.weight_neutralised == 0 for r in reports)


def test_bypass_fault_free_and_bad_input(tiny):
    cfg = ArrayConfig(4, 4, bypass=True)
    fm = FaultMap(4, 4).add(0, 0, "weight", 6, 1)
    repaired, reports = repair_program(tiny, cfg, fm)
    assert all("bypass" in r.notes[0] for r in reports)
    assert all(a is b for a, b in zip(repaired.gemms, tiny.gemms))
    with pytest.raises(ValueError, match="4x4"):
        repair_program(tiny, ArrayConfig(4, 4), FaultMap(5, 5))
    with pytest.raises(ValueError, match="weights"):
        repair_program(tiny, ArrayConfig(4, 4), fm, weights="never")
    with pytest.raises(TypeError):
        repair_program("program", ArrayConfig(4, 4), fm)
