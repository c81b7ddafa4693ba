"""Spare rows and columns (``sysarray.repair``): the allocator against brute force, the logical map,
the repaired chip on both engines, plan files, the config fields and ``sysarray repair``."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysarray as sa
from sysarray.cli import main
from sysarray.repair import RepairPlan, allocate_repair, apply_repair, logical_map, must_repair
from tests.strategies import fault_maps

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
REGISTERS = ("weight", "act", "psum")


@st.composite
def physical_problems(draw, max_rc: int = 4, max_spares: int = 2):
    """A small config with spares and a physical map: faulty PEs at any density, one random stuck
    bit each in a random register."""
    cfg = sa.ArrayConfig(draw(st.integers(1, max_rc)), draw(st.integers(1, max_rc)),
                         spare_rows=draw(st.integers(0, max_spares)), spare_cols=draw(st.integers(0, max_spares)))
    pr, pc = cfg.physical_shape
    bad = np.array(draw(st.lists(st.booleans(), min_size=pr * pc, max_size=pr * pc)), dtype=bool).reshape(pr, pc)
    recs = [(r, c, draw(st.integers(0, 2)), draw(st.integers(0, 7)), draw(st.integers(0, 1)))
            for r, c in zip(*np.nonzero(bad))]
    return cfg, sa.FaultMap.from_records(pr, pc, np.array(recs, dtype=np.int64).reshape(-1, 5))


def _pad(lines, n, size):
    """The allocator's stated padding: unused spares fuse out the highest-index other lines."""
    out = set(lines)
    out.update(sorted(set(range(n)) - out, reverse=True)[:size - len(out)])
    return tuple(sorted(out))


def brute_force(bad: np.ndarray, a: int, b: int):
    """The smallest (faulty PEs left, lines used, rows, cols) over every set of <= a rows and <= b cols."""
    pr, pc = bad.shape
    best = None
    for ka, kb in itertools.product(range(a + 1), range(b + 1)):
        for rows in itertools.combinations(range(pr), ka):
            for cols in itertools.combinations(range(pc), kb):
                left = int(np.delete(np.delete(bad, rows, axis=0), cols, axis=1).sum())
                key = (left, ka + kb, rows, cols)
                best = key if best is None or key < best else best
    return best


# ------------------------------------------------------------------------------------ allocator
@settings(max_examples=150, **SETTINGS)
@given(physical_problems(), st.sampled_from([None, ("psum",), ("weight", "act")]))
def test_allocator_is_the_brute_force_optimum(problem, registers):
    cfg, fm = problem
    plan = allocate_repair(cfg, fm, registers=registers)
    bad = fm.faulty_pes() if registers is None else np.logical_or.reduce([fm.faulty_pes(r) for r in registers])
    left, _, rows, cols = brute_force(bad, cfg.spare_rows, cfg.spare_cols)
    pr, pc = cfg.physical_shape
    assert plan.faulty_pes_left == left and plan.optimal
    assert (plan.fused_rows, plan.fused_cols) == (_pad(rows, pr, cfg.spare_rows), _pad(cols, pc, cfg.spare_cols))


@settings(max_examples=150, **SETTINGS)
@given(physical_problems(max_rc=6, max_spares=3))
def test_plan_properties(problem):
    cfg, fm = problem
    plan = allocate_repair(cfg, fm)
    plan.check_fits(cfg)  # exactly the spares are fused out: the logical array is rows x cols
    assert (len(plan.fused_rows), len(plan.fused_cols)) == (cfg.spare_rows, cfg.spare_cols)
    assert (len(plan.kept_rows), len(plan.kept_cols)) == cfg.shape
    logical = logical_map(cfg, fm, plan)
    assert logical.shape == cfg.shape and logical.n_faulty_pes == plan.faulty_pes_left
    must = must_repair(cfg, fm)
    if plan.complete:
        assert logical.is_empty
        assert set(must.rows) <= set(plan.fused_rows) and set(must.cols) <= set(plan.fused_cols)
    if not must.fits:
        assert not plan.complete


def test_must_repair_lines_can_be_left_in_by_the_best_partial_plan():
    """Must-repair lines are in every complete repair, but when none exists the fewest faulty PEs
    left may need the spares elsewhere (found by the brute-force comparison)."""
    bad = np.array([[0, 0, 0, 0, 0, 1, 0, 0],
                    [0, 0, 1, 0, 0, 0, 0, 0],
                    [1, 0, 0, 0, 1, 0, 0, 0],
                    [0, 0, 0, 1, 1, 0, 0, 0],
                    [1, 0, 0, 0, 0, 1, 1, 0],
                    [0, 1, 0, 0, 1, 0, 0, 0],
                    [1, 0, 1, 0, 0, 0, 0, 0]], dtype=bool)
    cfg = sa.ArrayConfig(4, 6, spare_rows=3, spare_cols=2)
    fm = sa.FaultMap.from_records(7, 8, [(r, c, 2, 0, 1) for r, c in zip(*np.nonzero(bad))])
    must = must_repair(cfg, fm)
    assert must == ((4, 6), (4,), True)
    plan = allocate_repair(cfg, fm)
    assert plan.faulty_pes_left == brute_force(bad, 3, 2)[0] == 2
    assert 6 not in plan.fused_rows


def test_allocator_examples_and_budget():
    cfg = sa.ArrayConfig(4, 4, spare_rows=1, spare_cols=1)
    # no faults: the spares themselves (last row, last column) are fused out
    assert allocate_repair(cfg, sa.FaultMap(5, 5)) == RepairPlan(4, 4, (4,), (4,), 0, True)
    assert RepairPlan.spares_unused(cfg) == RepairPlan(4, 4, (4,), (4,))
    # a row with two faults needs the spare row; no spare row is left, so column 2 needs the spare column
    fm = sa.FaultMap(5, 5).add(1, 0, "psum", 3, 1).add(1, 3, "act", 0, 0).add(3, 2, "weight", 7, 1)
    assert must_repair(cfg, fm) == ((1,), (2,), True)
    plan = allocate_repair(cfg, fm)
    assert (plan.fused_rows, plan.fused_cols, plan.complete) == ((1,), (2,), True)
    assert plan.kept_rows == (0, 2, 3, 4) and plan.kept_cols == (0, 1, 3, 4)
    # a search budget of one node returns a plan marked not proven optimal
    big = sa.ArrayConfig(30, 30, spare_rows=3, spare_cols=3)
    many = sa.FaultMap.random(big.physical_shape, 0.05, seed=1)
    rough = allocate_repair(big, many, max_nodes=1)
    assert rough.optimal is False and rough.faulty_pes_left >= allocate_repair(big, many).faulty_pes_left
    with pytest.raises(ValueError, match="needs the physical fault map of a 5x5 array"):
        allocate_repair(cfg, sa.FaultMap(4, 4))
    with pytest.raises(ValueError, match="'max_nodes' argument of allocate_repair must be a positive integer"):
        allocate_repair(cfg, fm, max_nodes=0)


def test_logical_map_reindexes_kept_pes():
    cfg = sa.ArrayConfig(2, 3, spare_rows=1, spare_cols=1)
    fm = (sa.FaultMap(3, 4).add(0, 1, "psum", 30, 1).add(1, 2, "weight", 2, 0).add(2, 3, "act", 7, 1)
          .add(2, 0, "act", 1, 1))
    plan = RepairPlan(2, 3, fused_rows=(1,), fused_cols=(2,))
    want = sa.FaultMap(2, 3).add(0, 1, "psum", 30, 1).add(1, 2, "act", 7, 1).add(1, 0, "act", 1, 1)
    assert logical_map(cfg, fm, plan) == want
    with pytest.raises(ValueError, match="fuses 1 row"):
        logical_map(cfg.replace(spare_rows=0, rows=3), fm, plan)


def test_plan_validation_and_files(tmp_path):
    plan = RepairPlan(3, 2, [4, 1], (0,), 2, False)
    assert plan.fused_rows == (1, 4) and plan.physical_shape == (5, 3) and plan.complete is False
    path = tmp_path / "plan.json"
    plan.save(path)
    assert RepairPlan.load(path) == plan
    for bad, match in [(dict(fused_rows=(1, 1)), "must not repeat"), (dict(fused_rows=(9,)), "within 0..3"),
                       (dict(rows=0), "positive integer"), (dict(faulty_pes_left=-1), ">= 0")]:
        with pytest.raises(ValueError, match=match):
            RepairPlan(**{**dict(rows=3, cols=2, fused_rows=(1, 4), fused_cols=(0,)), **bad})
    d = plan.to_dict()
    for broken, match in [({**d, "version": 2}, "version 2 is not supported"), ({**d, "extra": 1}, "unknown"),
                          ({**d, "fused_cols": "0"}, "sequence of indices")]:
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"Repair plan file '{path}' is not usable: .*{match}"):
            RepairPlan.load(path)


# ------------------------------------------------------------------------------------ the chip
@st.composite
def repaired_gemms(draw):
    """A GEMM on a small chip with spares, its physical map (faults often on lines a plan fuses)."""
    cfg = sa.ArrayConfig(draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.sampled_from(["ws", "os", "is"])),
                         psum_bits=draw(st.sampled_from([20, 32])), bypass=draw(st.booleans()),
                         spare_rows=draw(st.integers(0, 2)), spare_cols=draw(st.integers(0, 2)))
    pr, pc = cfg.physical_shape
    fm = draw(fault_maps(sa.ArrayConfig(pr, pc, psum_bits=cfg.psum_bits), max_faults=6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 3 * cfg.rows + 1)), draw(st.integers(1, 3 * cfg.cols + 1))
    a_dtype = draw(st.sampled_from([torch.int8, torch.uint8]))
    lo, hi = (-128, 127) if a_dtype == torch.int8 else (0, 255)
    a = torch.from_numpy(rng.integers(lo, hi + 1, (m, k))).to(a_dtype)
    w = torch.from_numpy(rng.integers(-128, 128, (k, n))).to(torch.int8)
    return cfg, fm, a, w


@settings(max_examples=60, **SETTINGS)
@given(repaired_gemms())
def test_repaired_chip_is_the_logical_chip_on_both_engines(problem):
    cfg, fm, a, w = problem
    fast = sa.Chip(cfg, fm)
    cycle = sa.Chip(cfg, fm, "cycle", repair="auto")
    assert fast.repair == cycle.repair and fast.physical_faults is fm
    assert (fast.repair is None) == (not cfg.has_spares)
    assert fast.faults == logical_map(cfg, fm, fast.repair or RepairPlan(cfg.rows, cfg.cols))
    y_fast, s_fast = fast.gemm(a, w)
    y_cycle, s_cycle = cycle.gemm(a, w)
    np.testing.assert_array_equal(y_fast.numpy(), y_cycle.numpy())
    # the logical chip: the same array without spares, running the logical map
    plain = cfg.replace(spare_rows=0, spare_cols=0)
    y_plain, s_plain = sa.Chip(plain, fast.faults).gemm(a, w)
    np.testing.assert_array_equal(y_fast.numpy(), y_plain.numpy())
    assert s_fast == s_cycle == s_plain
    # an explicit plan gives that plan's logical chip
    other = RepairPlan(cfg.rows, cfg.cols, fused_rows=range(cfg.spare_rows), fused_cols=range(cfg.spare_cols))
    y_other, _ = sa.Chip(cfg, fm, "cycle", repair=other).gemm(a, w)
    y_want, _ = sa.Chip(plain, logical_map(cfg, fm, other)).gemm(a, w)
    np.testing.assert_array_equal(y_other.numpy(), y_want.numpy())


def test_spares_without_faults_change_nothing():
    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.integers(0, 256, (7, 11))).to(torch.uint8)
    w = torch.from_numpy(rng.integers(-128, 128, (11, 9))).to(torch.int8)
    for flow in ("ws", "os", "is"):
        cfg = sa.ArrayConfig(3, 4, flow, psum_bits=20)
        spared = cfg.replace(spare_rows=2, spare_cols=1)
        for engine in ("fast", "cycle"):
            y, stats = sa.Chip(cfg, None, engine).gemm(a, w)
            for chip in (sa.Chip(spared, None, engine), sa.Chip(spared, sa.FaultMap(5, 5), engine)):
                assert chip.repair == RepairPlan(3, 4, (3, 4), (4,), *((0, True) if chip.physical_faults else ()))
                y2, stats2 = chip.gemm(a, w)
                np.testing.assert_array_equal(y.numpy(), y2.numpy())
                assert stats2 == stats
        assert sa.Chip(spared).timing(7, 11, 9) == sa.Chip(cfg).timing(7, 11, 9)


def test_chip_repair_errors():
    cfg = sa.ArrayConfig(4, 4, spare_rows=1)
    with pytest.raises(ValueError, match="Chip needs the physical fault map of a 5x4 array .* Got a 4x4 map"):
        sa.Chip(cfg, sa.FaultMap(4, 4))
    plain = sa.Chip(sa.ArrayConfig(4, 4), sa.FaultMap(4, 4).add(0, 0, "act", 0, 1), repair="auto")
    assert plain.repair is None and plain.faults is plain.physical_faults
    with pytest.raises(ValueError, match="fuses 1 row.* but the array is 3x4 with 0 spare row"):
        sa.Chip(sa.ArrayConfig(3, 4), sa.FaultMap(3, 4), repair=RepairPlan(3, 4, (0,)))
    with pytest.raises(ValueError, match="fuses 2 row.* but the array is 4x4 with 1 spare row"):
        sa.Chip(cfg, sa.FaultMap(5, 4), repair=RepairPlan(3, 4, (0, 1)))
    with pytest.raises(TypeError, match="'repair' argument of Chip must be a RepairPlan, 'auto' or None"):
        sa.Chip(cfg, sa.FaultMap(5, 4), repair="best")
    with pytest.raises(ValueError, match="psum fault on bit 25"):
        apply_repair(cfg.replace(psum_bits=20), sa.FaultMap(5, 4).add(0, 0, "psum", 25, 1))


# ------------------------------------------------------------------------------------ config, CLI
def test_config_spares_round_trip_and_old_dicts():
    cfg = sa.ArrayConfig(8, 16, "os", psum_bits=20, spare_rows=2, spare_cols=1)
    assert cfg.physical_shape == (10, 17) and cfg.has_spares
    assert sa.ArrayConfig.from_dict(cfg.to_dict()) == cfg
    assert "2 spare row(s) and 1 spare column(s)" in str(cfg)
    plain = sa.ArrayConfig(8, 16)
    assert "spare" not in str(plain) and "spare_rows" not in plain.to_dict()  # an old file's dict, unchanged
    assert sa.ArrayConfig.from_dict({"version": 1, "rows": 8, "cols": 16, "dataflow": "ws", "psum_bits": 32,
                                     "bypass": False}) == plain
    for bad, err in [(-1, ValueError), (1.5, TypeError), (True, TypeError)]:
        with pytest.raises(err, match="'spare_rows' argument of ArrayConfig must be an integer >= 0"):
            sa.ArrayConfig(4, 4, spare_rows=bad)


def test_repair_command(tmp_path, capsys):
    chip = tmp_path / "chip.npz"
    sa.FaultMap(6, 5).add(1, 0, "psum", 3, 1).add(1, 3, "act", 0, 0).add(4, 2, "weight", 7, 1).save(chip)
    out = tmp_path / "plan.json"
    assert main(["repair", str(chip), "--spare-rows", "1", "--spare-cols", "1", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "must-repair rows [1], columns [2] (fit the spares)" in text and "complete, optimal" in text
    assert RepairPlan.load(out) == RepairPlan(5, 4, (1,), (2,), 0, True)
    assert main(["repair", str(chip), "--spare-rows", "1", "--spare-cols", "1", "--count-registers", "psum"]) == 0
    assert "fused rows [5], fused columns [0]" in capsys.readouterr().out
    for args, match in [(["--spare-cols", "5"], "leave no logical array"),
                        (["--spare-rows", "-1"], "must be a non-negative integer")]:
        assert main(["repair", str(chip), *args]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1
