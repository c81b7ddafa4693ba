"""The weight-memory fault site (mitigation.weightfaults)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from accel_models.clipact import apply_clipping, make_spec
from accel_models.lowering import lower
from accel_models.zoo import build_model
from mitigation.weightfaults import corrupt_program, corrupt_words


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
    with pytest.raises(ValueError, match="bit error rate"):
        corrupt_program(program, 1.5, seed=0)
    with pytest.raises(ValueError, match="mode"):
        corrupt_program(program, 1e-3, seed=0, mode="melt")
    with pytest.raises(ValueError, match="0..7"):
        corrupt_program(program, 1e-3, seed=0, bits=[8])
    with pytest.raises(TypeError, match="seed"):
        corrupt_program(program, 1e-3, seed=-1)
    with pytest.raises(TypeError, match="Program"):
        corrupt_program(copy.deepcopy(program.ops), 1e-3, seed=0)
