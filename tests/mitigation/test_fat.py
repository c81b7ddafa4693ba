"""Fault-aware training for one chip (mitigation/fat.py): FAP masks, FAP exactness in bypass mode,
FAP+T, the stuck-at twin forward, stuck-at FAT and random-error FAT."""
from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from accel_models.evaluation import prepare, run_on_chip
from mitigation.fat import (
    ZooTwin, chip_accuracy, chip_hook, fap, fap_masks, fault_aware_train, keep_mask, lower_like, prune_program,
    random_fat, save_fat_checkpoint,
)
from sysarray import ArrayConfig, FaultMap

WS = ArrayConfig(16, 16, "ws")
BYPASS = WS.replace(bypass=True)


@pytest.fixture(scope="module")
def task(lenet_ckpt):
    return prepare(lenet_ckpt)


def quarter_faulty(seed: int) -> FaultMap:
    """25% faulty PEs, stuck bits in every register."""
    return FaultMap.random(WS, pe_rate=0.25, registers=("weight", "act", "psum"), seed=seed)


def state_bytes(model) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("shape, groups", [((20, 3, 3, 3), 1), ((8, 2, 3, 3), 4), ((40, 37), 1)])
def test_keep_mask_follows_the_ws_mapping(shape, groups):
    rng = np.random.default_rng(0)
    faulty = rng.random((4, 5)) < 0.3
    keep = keep_mask(shape, groups, faulty)
    n_out = shape[0]
    ng = n_out // groups
    flat = keep.reshape(n_out, -1)
    for n in range(n_out):
        for k in range(flat.shape[1]):
            # group g's GEMM: W[k, n_local] sits at PE (k % R, n_local % C)
            assert bool(flat[n, k]) == (not faulty[k % 4, (n % ng) % 5])


# ------------------------------------------------------------------------------ FAP == bypass chip
def test_fap_equals_the_bypass_chip(task):
    fm = quarter_faulty(3)
    pruned = prune_program(task.program, WS, fm)
    on_clean = pruned.run(task.images, WS, faults=None)
    on_chip = task.program.run(task.images, BYPASS, faults=fm)
    assert torch.equal(on_clean.logits, on_chip.logits)
    assert torch.equal(on_clean.predictions, on_chip.predictions)
    # ... and the faults matter: without bypass the same chip gives other outputs.
    assert not torch.equal(task.program.run(task.images, WS, faults=fm).logits, on_chip.logits)


def test_saved_fap_model_runs_exactly_on_its_bypass_chip(task, tmp_path):
    fm = quarter_faulty(4)
    model = fap(task.model, task.program, WS, fm)
    path = tmp_path / "fap.pt"
    save_fat_checkpoint(path, model, task, {"method": "fap"})
    saved = prepare(str(path))
    for name, keep in fap_masks(saved.program, fm).items():  # every weight on a faulty PE is 0 after lowering
        assert not saved.program.gemms[[op.name for op in saved.program.gemms].index(name)].weight[~keep].any()
    bypass = saved.program.run(saved.images, BYPASS, faults=fm)
    clean = saved.program.run(saved.images, WS, faults=None)
    assert torch.equal(bypass.logits, clean.logits)
    assert run_on_chip(saved, BYPASS, fm)["accuracy"] == clean.accuracy(saved.labels)


@pytest.mark.parametrize("dataflow", ["os", "is"])
def test_fap_refuses_other_dataflows(task, dataflow):
    cfg = ArrayConfig(16, 16, dataflow)
    fm = FaultMap.random(cfg, pe_rate=0.1, registers=("psum",), seed=0)
    with pytest.raises(ValueError, match="weight-stationary.*Use dataflow 'ws'"):
        fap(task.model, task.program, cfg, fm)
    with pytest.raises(ValueError, match="weight-stationary"):
        fault_aware_train(task, cfg, fm, "fapt", 1)


def test_fap_refuses_a_map_of_another_array(task):
    fm = FaultMap.random((8, 8), pe_rate=0.1, registers=("psum",), seed=0)
    with pytest.raises(ValueError, match="8x8 array but the array is 16x16"):
        fap(task.model, task.program, WS, fm)


# ------------------------------------------------------------------------------ FAP+T
def test_fapt_recovers_25_percent_faulty_pes(task):
    fm = quarter_faulty(1)
    model, rep = fault_aware_train(task, WS, fm, "fapt", 10)
    fap_model, fap_rep = fault_aware_train(task, WS, fm, "fap")
    print(f"fault-free {rep.clean_accuracy:.4f}  FAP {fap_rep.accuracy_after:.4f}  FAP+T {rep.accuracy_after:.4f} "
          f"({rep.epochs:g} epochs, {rep.seconds:.2f} s)")
    # FAP alone is the unpruned model on the bypass chip up to the re-calibration of the saved model
    assert abs(fap_rep.accuracy_after - rep.accuracy_before) <= 0.01
    assert rep.accuracy_after >= rep.clean_accuracy - 0.02
    assert fap_rep.accuracy_after <= rep.clean_accuracy - 0.10
    # pruned weights stayed exactly 0 through training
    masks = fap_masks(task.program, fm)
    for name, keep in masks.items():
        assert not model.get_submodule(name).weight.detach()[~keep].any()


def test_fapt_is_reproducible(task):
    fm = quarter_faulty(2)
    a, _ = fault_aware_train(task, WS, fm, "fapt", 0.5, seed=5)
    b, _ = fault_aware_train(task, WS, fm, "fapt", 0.5, seed=5)
    c, _ = fault_aware_train(task, WS, fm, "fapt", 0.5, seed=6)
    assert state_bytes(a) == state_bytes(b)
    assert state_bytes(a) != state_bytes(c)


# ------------------------------------------------------------------------------ stuck-at FAT
def hidden_psum_faults() -> FaultMap:
    """psum stuck-at-1 bits in columns 10..15: hidden channels saturate, the 10 logits stay clean."""
    fm = FaultMap(16, 16)
    for r, c, b in [(3, 10, 20), (7, 12, 22), (11, 14, 21)]:
        fm = fm.add(r, c, "psum", b, 1)
    return fm


@pytest.mark.parametrize("cfg", [WS, ArrayConfig(16, 16, "os"), ArrayConfig(16, 16, "is")], ids=["ws", "os", "is"])
def test_twin_with_chip_hook_equals_the_integer_program(task, cfg):
    fm = FaultMap.random(cfg, pe_rate=0.05, registers=("weight", "act", "psum"), seed=7)
    fm = fm.union(hidden_psum_faults())
    twin = ZooTwin(task.program, task.model)
    with torch.no_grad():
        logits = twin(task.images, gemm_hook=chip_hook(cfg, fm))
    ref = task.program.run(task.images, cfg, faults=fm)
    assert torch.equal(logits, ref.logits)
    assert not torch.equal(ref.logits, task.program.run(task.images, cfg, faults=None).logits)


@pytest.mark.parametrize("device", [None, pytest.param("cuda", marks=pytest.mark.gpu)])
def test_stuckat_fat_improves_the_chip(task, tmp_path, device):
    fm = hidden_psum_faults()
    model, rep = fault_aware_train(task, WS, fm, "stuckat", 2, device=device)
    assert next(model.parameters()).device.type == (device or "cpu")
    print(f"stuck-at FAT: {rep.accuracy_before:.4f} -> {rep.accuracy_after:.4f} (fault-free {rep.clean_accuracy:.4f}, "
          f"{rep.seconds:.1f} s)")
    assert rep.clean_accuracy - rep.accuracy_before >= 0.10  # the faults cost at least 10 points
    # measured again on the integer program of the saved checkpoint, as `sysarray run` does
    path = tmp_path / "stuckat.pt"
    save_fat_checkpoint(path, model, task, rep.to_dict())
    after = run_on_chip(prepare(str(path)), WS, fm)["accuracy"]
    assert after == rep.accuracy_after
    assert after >= rep.accuracy_before + 0.30


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [WS, ArrayConfig(16, 16, "os")], ids=["ws", "os"])
def test_twin_with_chip_hook_on_cuda_equals_the_integer_program(task, cfg):
    fm = FaultMap.random(cfg, pe_rate=0.05, registers=("weight", "act", "psum"), seed=7).union(hidden_psum_faults())
    twin = ZooTwin(task.program, copy.deepcopy(task.model).cuda())
    with torch.no_grad():
        logits = twin(task.images.cuda(), gemm_hook=chip_hook(cfg, fm))
    assert logits.is_cuda and torch.equal(logits.cpu(), task.program.run(task.images, cfg, faults=fm).logits)


def test_training_on_the_cpu_by_name_is_the_default(task):
    fm = hidden_psum_faults()
    a, rep_a = fault_aware_train(task, WS, fm, "stuckat", 0.25, seed=1)
    b, rep_b = fault_aware_train(task, WS, fm, "stuckat", 0.25, seed=1, device="cpu")
    assert state_bytes(a) == state_bytes(b)
    assert (rep_a.accuracy_before, rep_a.accuracy_after) == (rep_b.accuracy_before, rep_b.accuracy_after)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_training_on_cuda_without_cuda_is_a_clear_error(task):
    with pytest.raises(ValueError, match="'device' argument of fault_aware_train is 'cuda', but this torch"):
        fault_aware_train(task, WS, hidden_psum_faults(), "stuckat", 1, device="cuda")


def test_stuckat_fat_keeps_nothing_of_the_weights_it_trained_through(task):
    """Every step's weights are new tensors: the engine's weight memos must not fill with them."""
    from mitigation.fat import stuckat_fat
    from sysarray.engines.conv import replay_direct, weights

    memos = (weights._CLEAN_WEIGHTS, replay_direct._DIRECT_PLANS)
    before = [len(m._entries) for m in memos]
    stuckat_fat(task.model, task.program, WS, hidden_psum_faults(), task.dataset.train_x[:640],
                task.dataset.train_y[:640], 1)
    assert [len(m._entries) for m in memos] == before


# ------------------------------------------------------------------------------ random FAT
def test_random_fat_zero_gradient_where_errors_replace_outputs(task):
    x, y = task.dataset.train_x[:256], task.dataset.train_y[:256]
    # p = 1: every hidden layer's output is replaced, so only the classifier can learn
    model, _ = random_fat(task.model, task.program, x, y, 1, p=1.0)
    first, last = task.program.gemms[0].name, task.program.gemms[-1].name
    assert torch.equal(model.get_submodule(first).weight, task.model.get_submodule(first).weight)
    assert not torch.equal(model.get_submodule(last).weight, task.model.get_submodule(last).weight)
    # hooks are gone: the model is deterministic in eval mode and again in train mode
    model.train()
    assert torch.equal(model(x[:8]), model(x[:8]))


def test_random_fat_is_seeded_and_keeps_accuracy(task):
    fm = FaultMap.random(WS, pe_rate=0.02, registers=("psum",), bits=range(0, 12), seed=0)
    a, rep = fault_aware_train(task, WS, fm, "random", 1, p=0.01, seed=3)
    b, _ = fault_aware_train(task, WS, fm, "random", 1, p=0.01, seed=3)
    assert state_bytes(a) == state_bytes(b)
    assert rep.accuracy_after >= rep.clean_accuracy - 0.10
    assert chip_accuracy(lower_like(a, task), task, WS, fm) == rep.accuracy_after


def test_bad_arguments(task):
    fm = quarter_faulty(0)
    with pytest.raises(ValueError, match="must be one of fap, fapt, stuckat, random"):
        fault_aware_train(task, WS, fm, "magic")
    with pytest.raises(ValueError, match="'epochs' argument of fault_aware_train must be a finite number >= 0"):
        fault_aware_train(task, WS, fm, "fapt", -1)
    with pytest.raises(ValueError, match=r"'p' argument of random_fat must be a finite number within \[0, 1\]"):
        fault_aware_train(task, WS, fm, "random", 1, p=2.0)
