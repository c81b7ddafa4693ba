"""The weight-memory fault site (mitigation.weightfaults)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from accel_models.clipact import ClippedReLU, apply_clipping, make_spec
from accel_models.lowering import lower
from accel_models.zoo import build_model
from mitigation.weightfaults import (
    corrupt_model, corrupt_program, corrupt_words, float_accuracy, float_tensors, predictions,
)


@pytest.fixture(scope="module")
def program(digits):
    torch.manual_seed(0)
    model = build_model("lenet5", digits.input_shape, 10).eval()
    spec = make_spec(model, {"features.1": torch.tensor(1.0), "classifier.4": torch.full((84,), 0.5)}, granularity="hybrid")
    return lower(apply_clipping(model, spec), digits.train_x[:128])


def _popcount(x: np.ndarray) -> int:
    return int(np.unpackbits(x.astype(np.uint8)).sum())


def test_flip_count_is_binomial_per_tensor_and_flips_distinct_bits():
    words = np.random.default_rng(0).integers(0, 256, size=5000).astype(np.uint8)
    ber = 1e-3
    counts = []
    for s in range(200):
        bad, n = corrupt_words(words, ber, np.random.default_rng(s))
        assert _popcount(bad ^ words) == n  # every faulty bit is a distinct flipped bit
        counts.append(n)
    n_bits = words.size * 8
    mean, var = np.mean(counts), np.var(counts)
    assert abs(mean - n_bits * ber) < 4 * np.sqrt(n_bits * ber * (1 - ber) / 200)
    assert 0.6 < var / (n_bits * ber * (1 - ber)) < 1.5  # Binomial variance, not a fixed count


def test_small_tensors_are_not_truncated_to_zero():
    words = np.zeros(1, dtype=np.uint8)  # 8 bits at BER 0.05: hit in ~34% of draws
    hits = sum(corrupt_words(words, 0.05, np.random.default_rng(s))[1] > 0 for s in range(400))
    assert 0.25 * 400 < hits < 0.45 * 400


def test_stuck_bits_only_set_or_clear():
    words = np.array([0b1010_1010] * 2000, dtype=np.uint8)
    one, n1 = corrupt_words(words, 0.05, np.random.default_rng(1), mode="stuck1")
    zero, n0 = corrupt_words(words, 0.05, np.random.default_rng(1), mode="stuck0")
    assert n1 > 0 and n0 > 0
    assert np.all((one & words) == words) and np.all((zero | words) == words)
    only7, _ = corrupt_words(words, 0.2, np.random.default_rng(2), bits=np.array([7]))
    assert np.all((only7 ^ words) & 0x7F == 0) and np.any(only7 != words)


def test_corrupt_program_is_seeded_and_leaves_the_original(program):
    before = [op.weight.clone() for op in program.gemms]
    a, rep = corrupt_program(program, 1e-3, seed=3, report=True)
    b = corrupt_program(program, 1e-3, seed=3)
    c = corrupt_program(program, 1e-3, seed=4)
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(a.gemms, b.gemms))
    assert any(not torch.equal(x.weight, y.weight) for x, y in zip(a.gemms, c.gemms))
    assert all(torch.equal(w, op.weight) for w, op in zip(before, program.gemms))
    flipped = sum(_popcount((x.weight.numpy().view(np.uint8) ^ y.weight.numpy().view(np.uint8)).ravel())
                  for x, y in zip(a.gemms, program.gemms))
    assert flipped == sum(v for k, v in rep.bits.items() if k.endswith(".weight")) > 0
    assert all(op.weight.dtype == torch.int8 for op in a.gemms)
    assert corrupt_program(program, 0.0, seed=0).gemms[0].weight.equal(program.gemms[0].weight)


def test_thresholds_are_stored_and_faulted_too(program):
    hit = weights_only = None
    for s in range(50):
        bad, rep = corrupt_program(program, 0.05, seed=s, report=True)
        if any(k.endswith("clip_codes") and v for k, v in rep.bits.items()):
            hit = bad
            weights_only = corrupt_program(program, 0.05, seed=s, thresholds=False)
            break
    assert hit is not None
    changed = [not torch.equal(x.clip_codes, y.clip_codes) for x, y in zip(hit.gemms, program.gemms) if y.clip_codes is not None]
    assert any(changed)
    # the weight faults do not depend on whether thresholds are faulted too
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(hit.gemms, weights_only.gemms))
    assert all(torch.equal(x.clip_codes, y.clip_codes) for x, y in zip(weights_only.gemms, program.gemms)
               if y.clip_codes is not None)


def test_bad_arguments(program):
    with pytest.raises(ValueError, match=r"'ber' argument of corrupt_program must be a finite number within \[0, 1\]"):
        corrupt_program(program, 1.5, seed=0)
    with pytest.raises(ValueError, match="mode"):
        corrupt_program(program, 1e-3, seed=0, mode="melt")
    with pytest.raises(ValueError, match="0..7"):
        corrupt_program(program, 1e-3, seed=0, bits=[8])
    with pytest.raises(ValueError, match="seed"):
        corrupt_program(program, 1e-3, seed=-1)
    with pytest.raises(TypeError, match="Program"):
        corrupt_program(copy.deepcopy(program.ops), 1e-3, seed=0)


# --------------------------------------------------------------------------- float32 weights
@pytest.fixture(scope="module")
def float_model(digits):
    """LeNet-5 with hybrid thresholds: 3 layer-wise thresholds and 84 neuron-wise ones."""
    torch.manual_seed(0)
    model = build_model("lenet5", digits.input_shape, 10).eval()
    spec = make_spec(model, {"features.1": torch.tensor(1.0), "features.4": torch.tensor(2.0),
                             "classifier.2": torch.tensor(3.0), "classifier.4": torch.full((84,), 0.5)},
                     granularity="hybrid")
    return apply_clipping(model, spec)


def _words(t: torch.Tensor) -> np.ndarray:
    """The stored IEEE-754 words of a float32 tensor, as uint32 (NaN-safe comparisons)."""
    return t.detach().contiguous().view(torch.int32).numpy().view(np.uint32).ravel()


def _state_words(model) -> dict:
    return {k: _words(v.float()).copy() for k, v in model.state_dict().items() if v.is_floating_point()}


def _expected_flips(tensor: torch.Tensor, ber: float, child: np.random.SeedSequence, bits=None) -> tuple[int, np.ndarray]:
    """An independent re-draw of one tensor's faults from its spawned seed: Binomial count, then
    distinct sites (word, bit) drawn without replacement; returns the count and the XOR pattern."""
    rng = np.random.default_rng(child)
    allowed = np.arange(32) if bits is None else np.asarray(bits)
    n_sites = tensor.numel() * allowed.size
    count = int(rng.binomial(n_sites, ber))
    xor = np.zeros(tensor.numel(), dtype=np.uint64)
    if count:
        for site in rng.choice(n_sites, size=count, replace=False):
            xor[site // allowed.size] |= np.uint64(1) << np.uint64(allowed[site % allowed.size])
    return count, xor.astype(np.uint32)


@pytest.mark.parametrize("seed,bits", [(0, None), (7, None), (3, [23, 24, 25, 26, 27, 28, 29, 30])])
def test_float_flips_are_the_binomial_draw_of_each_tensors_seed(float_model, seed, bits):
    ber = 2e-3
    bad, rep = corrupt_model(float_model, ber, seed=seed, bits=bits, report=True)
    tensors = float_tensors(float_model)
    assert [n for n, _, _ in tensors] == ["features.0.weight", "features.1.threshold", "features.3.weight",
                                          "features.4.threshold", "classifier.1.weight", "classifier.2.threshold",
                                          "classifier.3.weight", "classifier.4.threshold", "classifier.5.weight"]
    children = np.random.SeedSequence(seed).spawn(len(tensors))
    after = {n: q for n, _, q in float_tensors(bad)}
    hit = 0
    for (name, _, p), child in zip(tensors, children):
        q = after[name]
        count, xor = _expected_flips(p, ber, child, bits)
        assert rep.bits[name] == count, name
        np.testing.assert_array_equal(_words(p) ^ _words(q), xor, err_msg=name)
        hit += count
    assert hit == rep.faulty_bits > 0
    width = 32 if bits is None else len(bits)
    assert rep.total_bits == width * sum(p.numel() for _, _, p in tensors)


def test_float_stuck_modes_and_bit_restriction(float_model):
    before = {n: _words(p) for n, _, p in float_tensors(float_model)}
    for mode, check in (("stuck1", lambda a, b: np.all(b & a == a)), ("stuck0", lambda a, b: np.all(b | a == a))):
        bad, rep = corrupt_model(float_model, 0.02, seed=1, mode=mode, report=True)
        assert rep.faulty_bits > 0
        for name, _, q in float_tensors(bad):
            assert check(before[name], _words(q)), (mode, name)  # stuck-at only sets (clears) bits
    # "stuck": each faulty bit takes a random value, so some bits are set and some cleared
    bad = corrupt_model(float_model, 0.02, seed=1, mode="stuck")
    diff = {n: (before[n], _words(q)) for n, _, q in float_tensors(bad)}
    assert any(np.any(~a & b) for a, b in diff.values()) and any(np.any(a & ~b) for a, b in diff.values())
    # only bit 30 (the exponent's top bit): weights below 2 in magnitude become ~1e38
    bad = corrupt_model(float_model, 0.01, seed=2, bits=[30], weights=True, thresholds=False)
    w0, w1 = float_model.features[0].weight, bad.features[0].weight
    x = _words(w0) ^ _words(w1)
    assert np.all((x == 0) | (x == 1 << 30)) and np.any(x)
    assert float(w1.detach().abs().max()) > 1e37


def test_float_model_is_seeded_and_leaves_the_original(float_model):
    original = _state_words(float_model)
    a = _state_words(corrupt_model(float_model, 1e-3, seed=3))
    b = _state_words(corrupt_model(float_model, 1e-3, seed=np.random.SeedSequence(3)))
    c = _state_words(corrupt_model(float_model, 1e-3, seed=4))
    assert a.keys() == b.keys() == original.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same seed, same bytes (NaN included)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert all(np.array_equal(original[k], v) for k, v in _state_words(float_model).items())
    assert all(np.array_equal(original[k], v) for k, v in _state_words(corrupt_model(float_model, 0.0, seed=0)).items())
    # biases are post-processing registers, not weight memory
    hit = _state_words(corrupt_model(float_model, 0.05, seed=5))
    assert all(np.array_equal(hit[k], original[k]) for k in original if k.endswith(".bias"))
    assert all(not np.array_equal(hit[k], original[k]) for k in original if k.endswith(".weight"))


def test_float_thresholds_switch_leaves_weight_faults_unchanged(float_model):
    original = _state_words(float_model)
    both = _state_words(corrupt_model(float_model, 0.01, seed=6))
    weights_only = _state_words(corrupt_model(float_model, 0.01, seed=6, thresholds=False))
    thresholds_only = _state_words(corrupt_model(float_model, 0.01, seed=6, weights=False))
    for k in original:
        if k.endswith(".threshold"):
            assert np.array_equal(weights_only[k], original[k]) and np.array_equal(thresholds_only[k], both[k]), k
        elif k.endswith(".weight"):
            assert np.array_equal(weights_only[k], both[k]) and np.array_equal(thresholds_only[k], original[k]), k
    assert any(not np.array_equal(both[k], original[k]) for k in original if k.endswith(".threshold"))


def test_float_batchnorm_stays_healthy(digits):
    torch.manual_seed(0)
    model = build_model("vgg11", digits.input_shape, 10, width=0.125, hidden=32).eval()
    original = _state_words(model)
    bad = _state_words(corrupt_model(model, 0.05, seed=0))
    bn = [k for k in original if ".running_" in k or k in {n + ".weight" for n, m in model.named_modules()
                                                            if isinstance(m, torch.nn.BatchNorm2d)}]
    assert bn and all(np.array_equal(bad[k], original[k]) for k in bn)
    conv = [n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv and all(not np.array_equal(bad[k], original[k]) for k in conv)


def test_faulty_float_models_evaluate_deterministically():
    relu = ClippedReLU(1.0, (6,))
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), -1.0, 0.5, 2.0]])
    # the zero policy maps NaN and +-inf to 0: x if 0 <= x <= T else 0, and NaN fails the comparison
    assert torch.equal(relu(x), torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, 0.0]]))
    logits = torch.tensor([[0.0, float("nan"), 1.0], [float("inf"), 0.0, 1.0], [0.0, 2.0, 1.0],
                           [-float("inf"), float("nan"), float("inf")]])
    assert predictions(logits).tolist() == [-1, 0, 1, -1]  # a row with a NaN is no prediction
    model = torch.nn.Sequential(torch.nn.Identity())
    assert float_accuracy(model, logits, torch.tensor([1, 0, 1, 2])) == 0.5


def test_float_bad_arguments(float_model):
    with pytest.raises(ValueError, match=r"'ber' argument of corrupt_model must be a finite number within \[0, 1\]"):
        corrupt_model(float_model, -0.1, seed=0)
    with pytest.raises(ValueError, match="mode"):
        corrupt_model(float_model, 1e-3, seed=0, mode="melt")
    with pytest.raises(ValueError, match="0..31"):
        corrupt_model(float_model, 1e-3, seed=0, bits=[32])
    with pytest.raises(ValueError, match="seed"):
        corrupt_model(float_model, 1e-3, seed=-1)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        corrupt_model(float_model.state_dict(), 1e-3, seed=0)
    with pytest.raises(TypeError, match="float32"):
        corrupt_model(copy.deepcopy(float_model).double(), 1e-3, seed=0)
