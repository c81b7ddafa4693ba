"""Stuck-at FAT's chip forward covers attention's activation products: the twin with the chip
hook gives exactly the faulty chip's logits on a vision transformer."""
from __future__ import annotations

import torch

import sysarray as sa
from accel_models import FakeQuantProgram, lower
from mitigation.fat import chip_hook
from tests.accel_models.test_operator_set import TinyViT, _randomize


def test_twin_with_the_chip_hook_equals_the_faulty_chip_on_a_vit():
    torch.manual_seed(0)
    model = _randomize(TinyViT())
    x = torch.randn(40, 1, 8, 8)
    program = lower(model, x[:32])
    cfg = sa.ArrayConfig(4, 4)
    faults = sa.FaultMap(4, 4).add(1, 2, "psum", 9, 1).add(3, 0, "weight", 5, 0).add(0, 3, "act", 2, 1)
    chip = program.run(x[32:], cfg, faults, count_changes=False)
    with torch.no_grad():
        twin = FakeQuantProgram(program)(x[32:], gemm_hook=chip_hook(cfg, faults))
    torch.testing.assert_close(twin, chip.logits, rtol=0, atol=0)
    assert not torch.equal(chip.logits, program.run(x[32:], cfg).logits)


def test_the_hook_trains_through_the_products():
    torch.manual_seed(0)
    model = _randomize(TinyViT())
    x = torch.randn(16, 1, 8, 8)
    twin = FakeQuantProgram(lower(model, x))
    cfg = sa.ArrayConfig(4, 4)
    out = twin(x, gemm_hook=chip_hook(cfg, sa.FaultMap(4, 4).add(0, 0, "psum", 12, 1)))
    out.float().sum().backward()
    grads = [p.grad for p in twin.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_pruning_keeps_a_program_whose_output_is_codes():
    """FAP's pruned program keeps how the program's output becomes logits (here dequantized codes:
    the model ends in the average of two heads)."""
    from mitigation.fat import prune_program
    from tests.accel_models.test_operator_set import TwoHeads

    torch.manual_seed(0)
    x = torch.randn(24, 1, 8, 8)
    program = lower(TwoHeads().eval(), x[:16])
    assert program.output_qp is not None
    cfg = sa.ArrayConfig(4, 4)
    pruned = prune_program(program, cfg, sa.FaultMap(4, 4))
    torch.testing.assert_close(pruned.run(x[16:], cfg).logits, program.run(x[16:], cfg).logits, rtol=0, atol=0)
