"""Fault-aware channel mapping (mitigation.remap) and the Gemm.out_order / in_order fields it sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysarray as sa
from accel_models.fakequant import FakeQuantProgram
from mitigation.remap import SALIENCIES, channel_costs, in_channels, input_costs, permute_inputs, permute_op, remap_program
from sysarray import ArrayConfig, FaultMap
from tests.mitigation.remap_models import tiny_program


@pytest.fixture(scope="module")
def tiny(digits):
    return tiny_program(digits)


def _group_perm(rng: np.random.Generator, n: int, groups: int) -> np.ndarray:
    ng = n // groups
    return np.concatenate([g * ng + rng.permutation(ng) for g in range(groups)])


def _every_register(cfg: ArrayConfig, seed: int) -> FaultMap:
    fm = FaultMap.random(cfg, 0.3, seed=seed, registers=("weight", "act", "psum"), psum_bits=cfg.psum_bits)
    for r, c, reg, bit, v in [(0, 1, "weight", 7, 1), (1, 0, "act", 6, 1), (2, 2, "psum", cfg.psum_bits - 3, 1)]:
        fm = fm.add(r, c, reg, bit, v)
    return fm


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), flow=st.sampled_from(["ws", "os", "is"]), rows=st.integers(2, 5),
       cols=st.integers(2, 5))
def test_remapped_program_on_fault_free_chip_equals_original(tiny, digits, seed, flow, rows, cols):
    rng = np.random.default_rng(seed)
    ops = []
    for op in tiny.ops:
        if hasattr(op, "out_order"):
            groups = op.groups if op.kind == "conv" else 1
            op = permute_op(op, _group_perm(rng, op.out_channels, groups))
            op = permute_inputs(op, _group_perm(rng, in_channels(op), groups))
            op = permute_op(op, _group_perm(rng, op.out_channels, groups))  # composes
            op = permute_inputs(op, _group_perm(rng, in_channels(op), groups))
        ops.append(op)
    remapped = type(tiny)(**{**tiny.__dict__, "ops": ops})
    cfg, x = ArrayConfig(rows, cols, flow, psum_bits=20), digits.test_x[:16]
    assert torch.equal(remapped.execute(x, sa.Chip(cfg)), tiny.execute(x, sa.Chip(cfg)))


def test_permute_inputs_refuses_bad_permutations(tiny):
    c2 = tiny.gemms[1]
    with pytest.raises(ValueError, match="permutation of range"):
        permute_inputs(c2, np.zeros(in_channels(c2), dtype=int))
    with pytest.raises(ValueError, match="within itself"):
        permute_inputs(c2, np.roll(np.arange(in_channels(c2)), 1))


def test_permute_op_refuses_bad_permutations(tiny):
    c2 = tiny.gemms[1]
    with pytest.raises(ValueError, match="permutation of range"):
        permute_op(c2, np.zeros(c2.out_channels, dtype=int))
    with pytest.raises(ValueError, match="within itself"):
        permute_op(c2, np.roll(np.arange(c2.out_channels), 1))


@pytest.mark.parametrize("flow", ["ws", "os"])
def test_remapped_program_cycle_equals_fast_with_faults_in_every_register(tiny, digits, flow):
    cfg = ArrayConfig(4, 3, flow, psum_bits=20)
    faults = _every_register(cfg, seed=5)
    remapped, reports = remap_program(tiny, cfg, faults, "magnitude")
    assert any(r.moved for r in reports)
    x = digits.test_x[:6]
    fast = remapped.run(x, cfg, faults, engine="fast")
    cycle = remapped.run(x, cfg, faults, engine="cycle")
    torch.testing.assert_close(fast.logits, cycle.logits, rtol=0, atol=0)


@pytest.mark.parametrize("flow,channels", [("ws", "both"), ("is", "in")])
def test_input_remapped_program_cycle_equals_fast_with_faults_in_every_register(tiny, digits, flow, channels):
    cfg = ArrayConfig(4, 3, flow, psum_bits=20)
    faults = _every_register(cfg, seed=5)
    remapped, reports = remap_program(tiny, cfg, faults, "magnitude", channels=channels)
    assert any(r.moved_in for r in reports) and any(op.in_order is not None for op in remapped.gemms)
    x = digits.test_x[:6]
    fast = remapped.run(x, cfg, faults, engine="fast")
    cycle = remapped.run(x, cfg, faults, engine="cycle")
    torch.testing.assert_close(fast.logits, cycle.logits, rtol=0, atol=0)


@pytest.mark.parametrize("saliency", SALIENCIES)
@pytest.mark.parametrize("flow", ["ws", "is"])
def test_chosen_input_mapping_never_costs_more_than_the_plain_one(tiny, digits, saliency, flow):
    cfg = ArrayConfig(4, 4, flow, psum_bits=20)
    faults = _every_register(cfg, seed=11)
    cal = digits.train_x[:48]
    outs, _ = remap_program(tiny, cfg, faults, saliency, cal, channels="out")
    costs = input_costs(outs, cfg, faults, saliency, cal)
    remapped, reports = remap_program(tiny, cfg, faults, saliency, cal, channels="both")
    assert any(r.moved_in for r in reports)
    for op, rep in zip(remapped.gemms, reports):
        assert rep.cost_in_chosen <= rep.cost_in_identity
        # identity: the plain input order under the chosen output mapping
        plain = sum(c[np.arange(len(c)), np.arange(len(c))].sum() for c in costs[op.name])
        assert plain == pytest.approx(rep.cost_in_identity)
        # the reported cost is the cost of the input mapping the program carries
        order = np.arange(in_channels(op)) if op.in_order is None else op.in_order.numpy()
        cg = len(costs[op.name][0])
        total = sum(costs[op.name][q // cg][order[q] - (q // cg) * cg, q % cg] for q in range(len(order)))
        assert total == pytest.approx(rep.cost_in_chosen)


def test_output_stationary_leaves_inputs_alone(tiny):
    cfg = ArrayConfig(4, 4, "os")
    remapped, reports = remap_program(tiny, cfg, _every_register(cfg, 0), "magnitude", channels="both")
    assert all(op.in_order is None for op in remapped.gemms)
    assert all(any("OS" in n for n in r.notes) for r in reports)
    with pytest.raises(ValueError, match="WS or IS"):
        input_costs(tiny, cfg, _every_register(cfg, 0), "magnitude")


@pytest.mark.parametrize("saliency", SALIENCIES)
@pytest.mark.parametrize("flow", ["ws", "os"])
def test_chosen_mapping_never_costs_more_than_the_plain_one(tiny, digits, saliency, flow):
    cfg = ArrayConfig(4, 4, flow, psum_bits=20)
    faults = _every_register(cfg, seed=11)
    cal = digits.train_x[:48]
    costs = channel_costs(tiny, cfg, faults, saliency, cal)
    remapped, reports = remap_program(tiny, cfg, faults, saliency, cal)
    for op, rep in zip(remapped.gemms, reports):
        assert rep.cost_chosen <= rep.cost_identity
        # the reported cost is the cost of the mapping the program carries
        pos = np.arange(op.out_channels) if op.out_order is None else op.out_order.numpy()
        groups = len(costs[op.name])
        ng = op.out_channels // groups
        total = sum(costs[op.name][n // ng][n % ng, (pos[n] - (n // ng) * ng) % cfg.cols] for n in range(op.out_channels))
        assert total == pytest.approx(rep.cost_chosen)


def test_effect_mapping_with_repair_reduces_damage_on_faulty_chip(tiny, digits):
    cfg = ArrayConfig(4, 4, "ws", psum_bits=20)
    faults = _every_register(cfg, seed=2)
    _, plain = remap_program(tiny, cfg, faults, "effect", digits.train_x[:48])
    _, repaired = remap_program(tiny, cfg, faults, "effect", digits.train_x[:48], repair=True)
    assert sum(r.cost_chosen for r in repaired) <= sum(r.cost_identity for r in plain)


def test_input_stationary_is_left_alone(tiny):
    cfg = ArrayConfig(4, 4, "is")
    remapped, reports = remap_program(tiny, cfg, _every_register(cfg, 0), "magnitude")
    assert all(op.out_order is None for op in remapped.gemms)
    assert all("IS" in r.notes[0] for r in reports)


def test_twin_follows_out_order(tiny, digits):
    cfg = ArrayConfig(4, 4, "ws", psum_bits=20)
    faults = _every_register(cfg, 3)
    remapped, _ = remap_program(tiny, cfg, faults, "magnitude")
    x = digits.test_x[:8]
    torch.testing.assert_close(FakeQuantProgram(remapped)(x), FakeQuantProgram(tiny)(x), rtol=0, atol=0)
    # a chip hook sees the array order: the twin's forward equals the remapped program on the faulty chip
    from mitigation.fat import chip_hook

    twin_acc = FakeQuantProgram(remapped)(x, gemm_hook=chip_hook(cfg, faults))
    torch.testing.assert_close(twin_acc, remapped.run(x, cfg, faults).logits, rtol=0, atol=1e-6)
    again = FakeQuantProgram(remapped).to_program()
    assert all(torch.equal(a.out_order, b.out_order) for a, b in zip(again.gemms, remapped.gemms) if a.out_order is not None)
    assert torch.equal(again.execute(x, sa.Chip(cfg, faults)), remapped.execute(x, sa.Chip(cfg, faults)))


@pytest.mark.parametrize("flow", ["ws", "is"])
def test_twin_follows_in_order(tiny, digits, flow):
    cfg = ArrayConfig(4, 4, flow, psum_bits=20)
    faults = _every_register(cfg, 3)
    remapped, reports = remap_program(tiny, cfg, faults, "magnitude", channels="both")
    assert any(op.in_order is not None for op in remapped.gemms)
    x = digits.test_x[:8]
    torch.testing.assert_close(FakeQuantProgram(remapped)(x), FakeQuantProgram(tiny)(x), rtol=0, atol=0)
    # a chip hook sees the array-order operands: the twin's forward equals the remapped program on the faulty chip
    from mitigation.fat import chip_hook

    twin_acc = FakeQuantProgram(remapped)(x, gemm_hook=chip_hook(cfg, faults))
    torch.testing.assert_close(twin_acc, remapped.run(x, cfg, faults).logits, rtol=0, atol=1e-6)
    assert not torch.equal(twin_acc, FakeQuantProgram(tiny)(x, gemm_hook=chip_hook(cfg, faults)))
    again = FakeQuantProgram(remapped).to_program()
    for a, b in zip(again.gemms, remapped.gemms):
        assert (a.in_order is None) == (b.in_order is None)
        assert a.in_order is None or torch.equal(a.in_order, b.in_order)
    assert torch.equal(again.execute(x, sa.Chip(cfg, faults)), remapped.execute(x, sa.Chip(cfg, faults)))


def test_bad_input_is_refused(tiny, digits):
    cfg = ArrayConfig(4, 4)
    with pytest.raises(ValueError, match="saliency"):
        remap_program(tiny, cfg, _every_register(cfg, 0), "random")
    with pytest.raises(ValueError, match="needs calibration"):
        remap_program(tiny, cfg, _every_register(cfg, 0), "effect")
    with pytest.raises(ValueError, match="4x4"):
        remap_program(tiny, cfg, FaultMap(3, 3).add(0, 0, "psum", 3, 1), "magnitude")
    with pytest.raises(ValueError, match="repair"):
        remap_program(tiny, cfg, _every_register(cfg, 0), "magnitude", repair=True)
    with pytest.raises(ValueError, match="channels"):
        remap_program(tiny, cfg, _every_register(cfg, 0), "magnitude", channels="rows")
