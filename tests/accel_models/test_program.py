"""The integer program (accel_models.program) and its fake-quant twin, on fault-free and faulty chips.

The reference for every exact check is :func:`tests.accel_models.numpy_program.numpy_run`, a plain
numpy int64 interpreter written from the op docstrings, independent of the torch kernels.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn as nn
import torch.nn.functional as F

import sysarray as sa
from accel_models.fakequant import FakeQuantProgram
from accel_models.lowering import gemm_op, lower
from accel_models.program import Add, Program, QuantizeInput
from accel_models.quant import QParams
from sysarray import ArrayConfig, FaultMap
from sysarray.timing import gemm_timing
from tests.accel_models.conftest import MODEL_NAMES
from tests.accel_models.numpy_program import numpy_run

CYCLE_IMAGES = 40  # the cycle engine runs on a subset to keep the suite fast

# Fault-free chips: WS with Gemmini's 20-bit psum (16 rows x int8 x uint8 never wraps at 20 bits),
# and small OS/IS arrays with 32-bit psums so that every layer folds several times.
CLEAN_CHIPS = {
    "gemmini16-ws20": ArrayConfig(16, 16, "ws", psum_bits=20),
    "8x8-os32": ArrayConfig(8, 8, "os"),
    "6x10-is32": ArrayConfig(6, 10, "is"),
}


def accumulators(program, images, cfg, engine="fast", faults=None) -> np.ndarray:
    return program.execute(images, sa.Chip(cfg, faults, engine)).numpy()


@pytest.fixture(scope="module")
def references(zoo, digits):
    """numpy reference accumulators and values of every fixture model on the test split."""
    return {name: numpy_run(f.program, digits.test_x, return_env=True) for name, f in zoo.items()}


# --------------------------------------------------------------------------- exact against numpy
@pytest.mark.parametrize("chip_name", list(CLEAN_CHIPS))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fast_engine_equals_numpy_reference(zoo, digits, references, name, chip_name):
    acc = accumulators(zoo[name].program, digits.test_x, CLEAN_CHIPS[chip_name], "fast")
    assert acc.dtype == np.int64 and acc.shape == (digits.test_x.shape[0], 10)
    np.testing.assert_array_equal(acc, references[name][0])


@pytest.mark.parametrize("chip_name", list(CLEAN_CHIPS))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cycle_engine_equals_numpy_reference(zoo, digits, references, name, chip_name):
    acc = accumulators(zoo[name].program, digits.test_x[:CYCLE_IMAGES], CLEAN_CHIPS[chip_name], "cycle")
    np.testing.assert_array_equal(acc, references[name][0][:CYCLE_IMAGES])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_run_logits_are_the_dequantized_accumulators(zoo, digits, references, name):
    program = zoo[name].program
    res = program.run(digits.test_x, ArrayConfig(16, 16), batch_size=100)  # several batches
    expected = torch.from_numpy(references[name][0]).double() * program.gemms[-1].acc_scale
    assert res.logits.dtype == torch.float64
    torch.testing.assert_close(res.logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(res.predictions, expected.argmax(1), rtol=0, atol=0)


def test_numpy_reference_pieces_by_hand():
    """The reference's own building blocks on numbers worked out by hand."""
    from tests.accel_models import numpy_program as ref

    x = np.arange(16, dtype=np.int64).reshape(1, 1, 4, 4)
    cols, oh, ow = ref.im2col(x, 2, 2, (2, 2), (0, 0), 0)
    assert (oh, ow) == (2, 2)
    np.testing.assert_array_equal(cols, [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])
    cols, oh, ow = ref.im2col(x, 3, 3, (1, 1), (1, 1), 7)
    assert (oh, ow) == (4, 4)
    np.testing.assert_array_equal(cols[0], [7, 7, 7, 7, 0, 1, 7, 4, 5])
    # Round half up, also for negative sums: -3/2 = -1.5 -> -1, 5/2 -> 3, -5/2 -> -2.
    pool = dataclasses.make_dataclass("P", ["kernel", "stride", "padding", "zero_point"])
    s = np.array([[[[-1, -2], [0, 0]]]])
    assert ref.avg_pool(s, pool((1, 2), (1, 2), (0, 0), 0)).ravel().tolist() == [-1, 0]
    assert ref.avg_pool(np.array([[[[2, 3]]]]), pool((1, 2), (1, 2), (0, 0), 0)).item() == 3
    assert ref.avg_pool(np.array([[[[-2, -3]]]]), pool((1, 2), (1, 2), (0, 0), 0)).item() == -2
    mp = dataclasses.make_dataclass("M", ["kernel", "stride", "padding"])
    neg = -np.ones((1, 1, 2, 2), dtype=np.int64) * 100
    np.testing.assert_array_equal(ref.max_pool(neg, mp((3, 3), (2, 2), (1, 1))), [[[[-100]]]])


@settings(max_examples=60, deadline=None)
@given(kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3),
       pad=st.booleans(), h=st.integers(3, 9), w=st.integers(3, 9), seed=st.integers(0, 2**31 - 1),
       channels_last=st.booleans())
def test_max_pool_equals_torch(kh, kw, sh, sw, pad, h, w, seed, channels_last):
    """The program's max pool gives exactly F.max_pool2d (negative codes too) and keeps the
    input's layout."""
    from accel_models.program import MaxPool, max_pool

    ph, pw = (kh // 2, kw // 2) if pad else (0, 0)
    x = torch.from_numpy(np.random.default_rng(seed).integers(-128, 128, size=(2, 3, h, w)).astype(np.float32))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    op = MaxPool("x", "y", (kh, kw), (sh, sw), (ph, pw))
    y = max_pool(x, op)
    assert torch.equal(y, F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw)))
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# --------------------------------------------------------------------------- float vs int
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_quantized_top1_agrees_with_float(zoo, digits, references, name):
    f = zoo[name]
    pred = torch.from_numpy(references[name][0]).argmax(1)
    agree = float((pred == f.float_pred).double().mean())
    int_acc = float((pred == digits.test_y).double().mean())
    assert agree >= 0.99, f"{name}: int and float top-1 agree on {agree:.4f}"
    assert abs(int_acc - f.float_acc) <= 0.01, f"{name}: float {f.float_acc:.4f} int {int_acc:.4f}"


# --------------------------------------------------------------------------- the fake-quant twin
def twin_gemm_inputs(twin, images):
    """Run the twin; return its logits and, per Gemm, the codes that entered it."""
    seen = {}

    def hook(op, x, wq, acc):
        seen[op.name] = x.detach().clone()
        return acc

    logits = twin(images, gemm_hook=hook)
    return logits, seen


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_twin_within_one_lsb_of_program(zoo, digits, references, name):
    program = zoo[name].program
    acc, env = references[name]
    twin = FakeQuantProgram(program)
    with torch.no_grad():
        logits, seen = twin_gemm_inputs(twin, digits.test_x)
    # Every intermediate layer's codes (what enters each chip layer) within one code of the program's.
    assert set(seen) == {op.name for op in program.gemms}
    for op in program.gemms:
        codes = seen[op.name].numpy()
        expected = env[op.input]
        assert codes.shape == expected.shape
        np.testing.assert_array_equal(codes, np.round(codes))  # integers carried as floats
        diff = np.abs(codes.astype(np.int64) - expected)
        assert diff.max() <= 1, f"{name} layer {op.name}: {(diff > 0).sum()} codes differ, by up to {diff.max()}"
    # The logits, in accumulator units, within one LSB of the program's accumulators.
    in_acc_units = logits.double() / program.gemms[-1].acc_scale
    assert float((in_acc_units - torch.from_numpy(acc).double()).abs().max()) <= 1.0
    assert torch.equal(logits.argmax(1), program.logits_from(torch.from_numpy(acc)).argmax(1))


@pytest.mark.parametrize("name", ["lenet", "resnet", "dwsep"])
def test_twin_gradients_reach_every_weight(zoo, digits, name):
    twin = FakeQuantProgram(zoo[name].program)
    loss = F.cross_entropy(twin(digits.train_x[:128]), digits.train_y[:128])
    loss.backward()
    for key, p in list(twin.weights.items()) + list(twin.biases.items()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, f"no gradient reaches {key}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_twin_to_program_without_training_is_the_same_program(zoo, digits, references, name):
    program = zoo[name].program
    again = FakeQuantProgram(program).to_program()
    assert [type(op) for op in again.ops] == [type(op) for op in program.ops]
    for old, new in zip(program.gemms, again.gemms):
        for field in ("weight", "bias", "m0", "shift"):
            assert torch.equal(getattr(old, field), getattr(new, field)), (old.name, field)
        assert (old.lo, old.hi, old.in_qp, old.out_qp) == (new.lo, new.hi, new.in_qp, new.out_qp)
    np.testing.assert_array_equal(accumulators(again, digits.test_x, ArrayConfig(16, 16)), references[name][0])


def test_twin_after_training_steps_still_matches_its_program(zoo, digits):
    """Train the twin a little; the program it exports runs what the twin computed."""
    twin = FakeQuantProgram(zoo["resnet"].program)
    opt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    for i in range(3):
        opt.zero_grad()
        F.cross_entropy(twin(digits.train_x[i * 64:(i + 1) * 64]), digits.train_y[i * 64:(i + 1) * 64]).backward()
        opt.step()
    new = twin.to_program()
    assert not torch.equal(new.gemms[0].weight, zoo["resnet"].program.gemms[0].weight) or \
        not torch.equal(new.gemms[-1].bias, zoo["resnet"].program.gemms[-1].bias)
    x = digits.test_x[:100]
    with torch.no_grad():
        logits = twin(x)
    acc = numpy_run(new, x)
    assert float((logits.double() / new.gemms[-1].acc_scale - torch.from_numpy(acc).double()).abs().max()) <= 1.0


def _add_program(ma: int, mb: int, za: int, zb: int) -> Program:
    """x (N, 1) int8 codes -> Add(x, x) with the given rescaling -> Linear(1, 1) logits."""
    qp = QParams(scale=1.0, zero_point=0, signed=True)
    add_op = Add("x", "x", "sum", za=za, zb=zb, ma=ma, mb=mb, zero_point=0, lo=-128, hi=127)
    fc = gemm_op("fc", "linear", "sum", "fc", qp, None, torch.ones(1, 1), None, None, "none")
    return Program(ops=[QuantizeInput("x", qp), add_op, fc], input_name="x", output_name="fc",
                   input_shape=(1,), num_classes=1)


def test_twin_residual_add_rounds_like_the_program():
    # A plausible residual add (multipliers ~1.6 and ~1.0 in 20-bit fixed point): at code 117 the
    # exact sum 77*1683014 - 3*1079557 = 126353407 lies just below the half point 120.5 * 2**20,
    # so the program gives 120; float32 rounds the sum up past it and the twin gives 121. The last
    # layer's weight code 127 then turns that one-code slip into 127 accumulator LSBs.
    program = _add_program(ma=1683014, mb=1079557, za=40, zb=120)
    x = torch.arange(-128, 128, dtype=torch.float32)[:, None]
    acc = numpy_run(program, x)
    with torch.no_grad():
        logits = FakeQuantProgram(program)(x)
    diff = (logits.double() / program.gemms[-1].acc_scale - torch.from_numpy(acc).double()).abs()
    assert float(diff.max()) <= 1.0, f"{int((diff > 1).sum())} outputs off by up to {float(diff.max()):.0f} LSBs"


def test_twin_gemm_exact_for_large_accumulators():
    # A legal model whose accumulators reach ~7e7 (> 2**24): uint8 inputs near the top of their range
    # times positive int8 weights over K = 4096.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4096, 4))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.0)
        model[1].bias.zero_()
    x = torch.rand(32, 1, 64, 64) * 0.5 + 0.5
    program = lower(model, x)
    acc = numpy_run(program, x)
    twin_acc = {}

    def hook(op, a, wq, acc_):
        twin_acc[op.name] = acc_.detach().double()
        return acc_

    with torch.no_grad():
        FakeQuantProgram(program)(x, gemm_hook=hook)
    # The twin's accumulator (before the bias) must be the exact integer A @ W.
    exact = torch.from_numpy(acc).double() - program.gemms[-1].bias.double()
    assert float((twin_acc["1"] - exact).abs().max()) == 0.0


# --------------------------------------------------------------------------- faulty chips
def _every_register_faults(cfg, seed):
    """Random faults in all three registers plus one guaranteed fault of each kind."""
    fm = FaultMap.random(cfg, 0.15, seed=seed, registers=("weight", "act", "psum"), psum_bits=cfg.psum_bits)
    free = np.argwhere(~fm.faulty_pes())  # PEs the random draw left healthy, in row-major order
    picks = [("weight", 6, 1), ("act", 7, 1), ("psum", cfg.psum_bits - 2, 1), ("act", 0, 0), ("psum", 3, 0)]
    for (r, c), (reg, bit, value) in zip(free[::5], picks):
        fm = fm.add(int(r), int(c), reg, bit, value)
    return fm


@pytest.mark.parametrize("bypass", [False, True])
@pytest.mark.parametrize("psum_bits", [32, 20])
@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_cycle_and_fast_engines_identical_on_faulty_chip(zoo, digits, dataflow, psum_bits, bypass):
    cfg = ArrayConfig(8, 8, dataflow, psum_bits=psum_bits, bypass=bypass)
    faults = _every_register_faults(cfg, seed=["ws", "os", "is"].index(dataflow) * 4 + (psum_bits == 20) * 2 + bypass)
    assert {r.value for r in faults.registers()} == {"weight", "act", "psum"}
    program, x = zoo["lenet"].program, digits.test_x[:12]
    fast = program.run(x, cfg, faults, engine="fast")
    cycle = program.run(x, cfg, faults, engine="cycle")
    torch.testing.assert_close(fast.logits, cycle.logits, rtol=0, atol=0)
    assert [l.changed for l in fast.layers] == [l.changed for l in cycle.layers]
    assert [l.cycles for l in fast.layers] == [l.cycles for l in cycle.layers]


@pytest.mark.parametrize("psum_bits", [32, 20])
def test_replayed_outputs_applied_within_the_requantization_equal_the_cycle_engine(psum_bits, monkeypatch):
    """Without counted changes, a faulty layer's replayed outputs reach its output codes inside
    the requantization's pass (Chip.conv2d_deferred) where the convolution's result is
    channels-last (a 3-channel input): the logits equal the cycle engine's, and the fused pass
    ran."""
    from accel_models import quant

    ran = []
    real = quant._requantize_corrected
    monkeypatch.setattr(quant, "_requantize_corrected", lambda *a: ran.append(1) or real(*a))
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 20, 3, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(20 * 3 * 3, 10)).eval()
    x = torch.rand(9, 3, 8, 8)
    program = lower(model, torch.rand(64, 3, 8, 8))
    cfg = ArrayConfig(8, 8, "ws", psum_bits=psum_bits)
    fm = FaultMap.random(cfg, 0.2, registers=("psum",), seed=5, psum_bits=psum_bits)
    fm = fm.add(2, 1, "psum", psum_bits - 2, 1).add(5, 3, "psum", 12, 0)
    fast = program.run(x, cfg, fm, count_changes=False)
    cycle = program.run(x, cfg, fm, engine="cycle", count_changes=False)
    torch.testing.assert_close(fast.logits, cycle.logits, rtol=0, atol=0)
    assert ran


def test_faults_change_outputs_and_fault_free_does_not(zoo, digits):
    program, x = zoo["lenet"].program, digits.test_x[:64]
    cfg = ArrayConfig(8, 8)
    clean = program.run(x, cfg)
    assert all(l.changed == 0 for l in clean.layers)
    empty = program.run(x, cfg, FaultMap(8, 8))
    assert all(l.changed == 0 for l in empty.layers)
    torch.testing.assert_close(empty.logits, clean.logits, rtol=0, atol=0)
    faults = FaultMap.random(cfg, 0.1, seed=3, registers=("weight",), bits=[6, 7], values=(1,))
    faulty = program.run(x, cfg, faults)
    assert all(l.changed > 0 for l in faulty.layers), [l.changed for l in faulty.layers]
    assert all(l.changed <= l.m * l.n for l in faulty.layers)
    assert not torch.equal(faulty.logits, clean.logits)
    # Not counting leaves the logits alone.
    uncounted = program.run(x, cfg, faults, count_changes=False)
    assert all(l.changed is None for l in uncounted.layers)
    torch.testing.assert_close(uncounted.logits, faulty.logits, rtol=0, atol=0)


def test_psum_stuck_at_one_high_bits_drop_accuracy(zoo, digits):
    program = zoo["lenet"].program
    cfg = ArrayConfig(16, 16)
    clean = program.run(digits.test_x, cfg).accuracy(digits.test_y)
    faults = FaultMap.random(cfg, 0.05, seed=0, registers=("psum",), bits=range(24, 31), values=(1,))
    assert faults.n_faulty_pes == round(0.05 * 256)
    faulty = program.run(digits.test_x, cfg, faults).accuracy(digits.test_y)
    assert faulty < clean - 0.3, (clean, faulty)


def _zero_faulty_pe_weights(program: Program, faults: FaultMap, cfg: ArrayConfig) -> Program:
    """The program with every weight a faulty PE would hold (WS mapping) set to 0, bias unchanged."""
    faulty = np.zeros((cfg.rows, cfg.cols), dtype=bool)
    for f in faults:
        faulty[f.row, f.col] = True
    out = copy.deepcopy(program)
    for op in out.gemms:
        n = op.out_channels
        g = op.groups if op.kind == "conv" else 1
        ng = n // g
        w = op.weight.reshape(n, -1).clone()  # row n_global, column k (K order (c, kh, kw))
        k_idx = np.arange(w.shape[1])
        for gi in range(g):
            for nl in range(ng):
                hit = faulty[k_idx % cfg.rows, nl % cfg.cols]  # PE (k % R, n % C) holds W[k, n]
                w[gi * ng + nl, torch.from_numpy(hit)] = 0
        op.weight = w.reshape(op.weight.shape)
    return out


@pytest.mark.parametrize("name", ["lenet", "dwsep"])
def test_bypass_equals_program_with_faulty_pe_weights_zeroed(zoo, digits, name):
    program, x = zoo[name].program, digits.test_x[:100]
    cfg = ArrayConfig(8, 8, "ws", bypass=True)
    faults = FaultMap.random(cfg, 0.1, seed=7, registers=("weight", "act", "psum"))
    bypassed = program.run(x, cfg, faults)
    zeroed = _zero_faulty_pe_weights(program, faults, cfg)
    assert sum(int((a.weight != b.weight).sum()) for a, b in zip(program.gemms, zeroed.gemms)) > 0
    torch.testing.assert_close(bypassed.logits, zeroed.run(x, cfg.replace(bypass=False)).logits, rtol=0, atol=0)
    np.testing.assert_array_equal(program.logits_from(torch.from_numpy(numpy_run(zeroed, x))).numpy(),
                                  bypassed.logits.numpy())


# --------------------------------------------------------------------------- per-layer statistics
@pytest.mark.parametrize("cfg", [ArrayConfig(8, 8, "ws"), ArrayConfig(8, 4, "os"), ArrayConfig(4, 8, "is")], ids=str)
@pytest.mark.parametrize("name", ["lenet", "dwsep", "resnet", "mlp"])
def test_layer_statistics_follow_the_timing_formulas(zoo, digits, references, name, cfg):
    program = zoo[name].program
    env = references[name][1]
    batch = 100
    n_images = digits.test_x.shape[0]
    sizes = [min(batch, n_images - i) for i in range(0, n_images, batch)]
    res = program.run(digits.test_x, cfg, batch_size=batch)
    assert [l.name for l in res.layers] == [op.name for op in program.gemms]
    for op, st in zip(program.gemms, res.layers):
        out = env[op.output]
        pixels = out.shape[2] * out.shape[3] if op.kind == "conv" else 1
        groups = op.groups if op.kind == "conv" else 1
        k = op.weight[0].numel()  # per group: (C / groups) * kh * kw
        n_per_group = op.out_channels // groups
        assert (st.m, st.k, st.n) == (n_images * pixels, k, op.out_channels)
        assert st.macs == st.m * st.k * st.n
        expected = sum(groups * gemm_timing(b * pixels, k, n_per_group, cfg).cycles for b in sizes)
        assert st.cycles == expected, op.name
        assert 0 < st.compute_util <= 100 and 0 < st.mapping_efficiency <= 100
    assert res.cycles == sum(l.cycles for l in res.layers)
    assert res.macs == sum(l.macs for l in res.layers)


def test_one_batch_is_one_gemm_per_layer(zoo, digits):
    program, x = zoo["lenet"].program, digits.test_x[:50]
    cfg = ArrayConfig(8, 8)
    one = program.run(x, cfg, batch_size=50)
    conv = program.gemms[0]
    assert one.layers[0].cycles == gemm_timing(50 * 64, conv.weight[0].numel(), conv.out_channels, cfg).cycles
    split = program.run(x, cfg, batch_size=7)
    torch.testing.assert_close(split.logits, one.logits, rtol=0, atol=0)
    assert split.layers[0].cycles > one.layers[0].cycles  # more, smaller GEMMs pay the fill/drain again


# --------------------------------------------------------------------------- input checks
def test_wrong_image_shape_names_the_expected_shape(zoo):
    program = zoo["lenet"].program
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        program.run(torch.zeros(2, 1, 9, 9), ArrayConfig(8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        program.run(torch.zeros(2, 8, 8, dtype=torch.float32).unsqueeze(0).unsqueeze(0), ArrayConfig(8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        program.run(torch.zeros(2, 1, 8, 8, dtype=torch.int64), ArrayConfig(8, 8))
    with pytest.raises(TypeError, match="torch tensor"):
        program.run(np.zeros((2, 1, 8, 8), dtype=np.float32), ArrayConfig(8, 8))
    # A single image without the batch dimension is accepted.
    assert program.run(torch.zeros(1, 8, 8), ArrayConfig(8, 8)).logits.shape == (1, 10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_are_refused(zoo, digits, bad):
    program = zoo["lenet"].program
    images = digits.test_x[:5].clone()
    images[3, 0, 4, 2] = bad
    with pytest.raises(ValueError, match="finite images"):
        program.run(images, ArrayConfig(8, 8))
    assert program.run(images[:3], ArrayConfig(8, 8)).logits.shape == (3, 10)


def test_fault_map_for_another_array_is_refused(zoo, digits):
    program = zoo["sequential"].program
    with pytest.raises(ValueError, match=r"8x8 array but the array is 16x16"):
        program.run(digits.test_x[:4], ArrayConfig(16, 16), FaultMap(8, 8).add(0, 0, "weight", 1, 1))
    with pytest.raises(ValueError, match=r"bit 25.*20-bit psum"):
        program.run(digits.test_x[:4], ArrayConfig(8, 8, psum_bits=20), FaultMap(8, 8).add(0, 0, "psum", 25, 1))
    with pytest.raises(TypeError, match="ArrayConfig"):
        program.run(digits.test_x[:4], (8, 8))


@contextlib.contextmanager
def _kernels(parallel: bool):
    """Every threaded numba kernel (sysarray.parallel) forced to its parallel compilation
    on all of numba's threads, or to its serial one."""
    from sysarray.parallel import KERNELS

    threads = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS if parallel else 1)
    for k in KERNELS:
        k.force = "parallel" if parallel else "serial"
    try:
        yield
    finally:
        numba.set_num_threads(threads)
        for k in KERNELS:
            k.force = None


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads (one core here)")
@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_threaded_kernels_parallel_equals_serial(zoo, digits, name, dataflow):
    """The kernels compiled with and without threads give the same logits, on every path: the
    direct psum replay (WS, psum faults), im2col + fast_gemm (act faults, OS), requantization,
    residual adds and input quantization."""
    program, x = zoo[name].program, digits.test_x[:40]
    cfg = ArrayConfig(8, 8, dataflow)
    for faults in (FaultMap.random(cfg, 0.2, seed=5, registers=("psum",)), _every_register_faults(cfg, seed=9)):
        with _kernels(parallel=False):
            serial = program.run(x, cfg, faults, count_changes=False).logits
        with _kernels(parallel=True):
            parallel = program.run(x, cfg, faults, count_changes=False).logits
        torch.testing.assert_close(parallel, serial, rtol=0, atol=0)
    if dataflow == "ws":  # the parallel compilations really ran
        from sysarray.engines.conv import fix
        from sysarray.engines.conv.replay_passes import direct_chains
        from sysarray.engines.conv.replay_simd import direct_chains_simd

        replay = direct_chains.parallel.signatures or direct_chains_simd.parallel.signatures
        # which fix kernel runs depends on the layout of the product (planes, or pixels from int8)
        fixes = (fix._apply_fix, fix._apply_fix_pixels, fix._apply_fix_rows)
        assert replay and any(k.parallel.signatures for k in fixes)


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_saturated_faulty_accumulators_give_the_exact_logits(zoo, digits, name, monkeypatch):
    """Hidden layers take faulty accumulators clamped to 2**24 in float32 (their requantization
    has saturated by then) unless changes are counted: psum bits 30 and 31 stuck make replayed
    outputs far beyond it, and the logits equal the int32 path's bit for bit. (Float32 products:
    the int8 kernels return int32 accumulators, which are corrected in int32.)"""
    from accel_models.program import saturation
    from sysarray.engines import int8
    from sysarray.engines.conv import conv2d as fc

    monkeypatch.setattr(int8, "FORCE", "float32")

    program, x = zoo[name].program, digits.test_x[:40]
    hidden = [op for op in program.gemms if op.out_qp is not None]
    assert hidden and all(saturation(op) == 1 << 24 for op in hidden)
    assert saturation(program.gemms[-1]) is None
    cfg = ArrayConfig(8, 8, "ws")
    fm = FaultMap(8, 8).add(1, 2, "psum", 30, 1).add(6, 2, "psum", 29, 1).add(4, 0, "psum", 31, 1).add(3, 5, "psum", 30, 0)
    clamped = []
    real = fc.apply_fix

    def spy(y, fix, saturate=1 << 31):
        real(y, fix, saturate)
        clamped.append(saturate < 1 << 31 and bool((y.abs() == saturate).any()))
    monkeypatch.setattr(fc, "apply_fix", spy)
    fast = program.run(x, cfg, fm, count_changes=False)
    assert any(clamped)  # the saturated path ran and clamped values
    clamped.clear()
    exact = program.run(x, cfg, fm, count_changes=True)
    assert not any(clamped)
    torch.testing.assert_close(fast.logits, exact.logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_runs_reusing_a_fault_free_trace_equal_runs_without(zoo, digits, name):
    """``run(reference=program.trace(...))`` gives the same logits and layer statistics on every
    kind of chip (no faults, psum faults in one column or many, weight faults, bypass, act
    faults, OS dataflow) and every model (residual adds, depthwise convolutions), with every op
    kept and with only a prefix kept; and it reuses: a chip whose faults sit in columns no layer
    uses leaves all of the first layer's accumulators and outputs the kept ones."""
    program, x = zoo[name].program, digits.test_x[:37]
    for cfg in (ArrayConfig(8, 8, "ws"), ArrayConfig(8, 8, "ws", bypass=True), ArrayConfig(8, 8, "os")):
        full = program.trace(x, cfg, batch_size=16)
        prefix = program.trace(x, cfg, batch_size=16, max_bytes=3 * 16 * 64 * 4 * 4)
        assert len(prefix.batches[0].outputs) < len(full.batches[0].outputs) and prefix.batches[0].outputs
        chips = [None, FaultMap(8, 8), FaultMap(8, 8).add(2, 3, "psum", 30, 1),
                 FaultMap.random(cfg, 0.1, seed=4, registers=("psum",)),
                 FaultMap.random(cfg, 0.1, seed=5, registers=("weight",)), _every_register_faults(cfg, seed=6)]
        for faults in chips:
            want = program.run(x, cfg, faults, batch_size=16, count_changes=False)
            for trace in (full, prefix):
                got = program.run(x, cfg, faults, batch_size=16, count_changes=False, reference=trace)
                torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
                assert [l.to_dict() for l in got.layers] == [l.to_dict() for l in want.layers]
        torch.testing.assert_close(full.result.logits, program.run(x, cfg, batch_size=16).logits, rtol=0, atol=0)


def test_a_trace_reuses_what_the_chip_leaves_unchanged(zoo, digits, monkeypatch):
    """A psum fault in a column beyond every layer's outputs changes nothing: the run then
    convolves nothing; a fault in the first layer's columns replays only (its fault-free
    convolution is the kept one)."""
    from sysarray.engines.conv import conv2d as fc

    program, x = zoo["lenet"].program, digits.test_x[:20]
    cfg = ArrayConfig(8, 128, "ws")
    trace = program.trace(x, cfg)
    assert max(op.out_channels for op in program.gemms) < 127
    calls = []
    real, real_pointwise = fc._conv_product, fc.pointwise_gemm

    def pointwise(*a, **k):
        y = real_pointwise(*a, **k)
        if y is not None:  # a linear layer's GEMM (else the convolution below counts)
            calls.append(1)
        return y
    monkeypatch.setattr(fc, "_conv_product", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(fc, "pointwise_gemm", pointwise)
    unused = FaultMap(8, 128).add(3, 127, "psum", 30, 1)
    got = program.run(x, cfg, unused, count_changes=False, reference=trace)
    assert calls == []
    torch.testing.assert_close(got.logits, trace.result.logits, rtol=0, atol=0)
    first_layer = FaultMap(8, 128).add(3, 0, "psum", 30, 1)
    got = program.run(x, cfg, first_layer, count_changes=False, reference=trace)
    assert len(calls) == len(program.gemms) - 1  # every layer but the first convolves
    want = program.run(x, cfg, first_layer, count_changes=False)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    assert not torch.equal(got.logits, trace.result.logits)


def test_a_trace_of_other_images_or_another_chip_is_refused(zoo, digits):
    program, x = zoo["lenet"].program, digits.test_x[:20]
    cfg = ArrayConfig(8, 8)
    trace = program.trace(x, cfg)
    for kwargs in (dict(images=x.clone()), dict(cfg=ArrayConfig(8, 8, "os")), dict(batch_size=7), dict(engine="cycle")):
        args = dict(images=x, cfg=cfg, faults=None, reference=trace) | kwargs
        with pytest.raises(ValueError, match="same images"):
            program.run(**args)
    with pytest.raises(TypeError, match="CleanTrace"):
        program.run(x, cfg, reference=object())
    with pytest.raises(ValueError, match="max_bytes"):
        program.trace(x, cfg, max_bytes=-1)
    empty = program.trace(x, cfg, max_bytes=0)  # keeps nothing: runs compute everything, same results
    fm = FaultMap(8, 8).add(1, 1, "psum", 28, 1)
    torch.testing.assert_close(program.run(x, cfg, fm, reference=empty, count_changes=False).logits,
                               program.run(x, cfg, fm, count_changes=False).logits, rtol=0, atol=0)
    assert empty.nbytes == 0


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 20), h=st.integers(2, 9), w=st.integers(2, 9),
       seed=st.integers(0, 2**31 - 1), channels_last=st.booleans(), parallel=st.booleans())
def test_max_pool_2x2_stride_2_equals_torch(b, c, h, w, seed, channels_last, parallel):
    """The one-pass 2x2 stride-2 pool (accel_models/pool_kernels.py), serial and threaded: exactly
    F.max_pool2d on either layout (odd sides, negative codes), layout kept."""
    from accel_models.program import MaxPool, max_pool

    x = torch.from_numpy(np.random.default_rng(seed).integers(-128, 128, size=(b, c, h, w)).astype(np.float32))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with _kernels(parallel):
        y = max_pool(x, MaxPool("x", "y", (2, 2), (2, 2), (0, 0)))
    assert torch.equal(y, F.max_pool2d(x, 2, 2))
    fmt = torch.channels_last if channels_last and c > 1 and (h // 2) * (w // 2) > 1 else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


def test_runs_choose_their_thread_count_by_measurement_and_give_the_same_logits(zoo, digits):
    """Program runs on CPU time torch's threads against one thread per program, batch shape and
    chip kind, then keep the faster (accel_models.program._measured_threads); the logits never
    depend on it."""
    import accel_models.program as prog
    from sysarray.parallel import TRIALS
    from sysarray.runtime import threads

    program, x = zoo["lenet"].program, digits.test_x[:24]
    cfg = ArrayConfig(8, 8)
    faults = FaultMap.random(cfg, 0.1, seed=3, registers=("psum",))
    key = (id(program), (8, *x.shape[1:]), cfg, True, False)
    with threads(2):
        if torch.get_num_threads() < 2:
            pytest.skip("torch has one thread here")
        first = program.run(x, cfg, faults, count_changes=False, batch_size=8).logits
        # each run is three batches; calls in which the layers' own choices measured are not timed
        for _ in range(20 * (TRIALS + 1)):
            again = program.run(x, cfg, faults, count_changes=False, batch_size=8).logits
            torch.testing.assert_close(again, first, rtol=0, atol=0)
            if prog._THREADS.chosen(key) is not None:
                break
        assert torch.get_num_threads() == 2  # restored after every one-thread run
    assert prog._THREADS.chosen(key) in (0, 1)
