"""The int8 kernels (sysarray.engines.int8) are exact, alone and inside the fast engine.

The fast engine computes its fault-free products on whichever exact kernel measured faster; here
each kernel is pinned (``int8.FORCE``) and compared with int64 references and the cycle engine.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysarray as sa
from sysarray.engines import int8
from sysarray.engines.conv.weights import ConvWeights
from tests.strategies import cases

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.skipif(not int8.AVAILABLE, reason="torch has no int8 GEMM here")


def _codes(rng, shape, unsigned: bool, extreme: bool) -> np.ndarray:
    lo, hi = (0, 255) if unsigned else (-128, 127)
    if extreme:
        return rng.choice(np.array([lo, hi, 0, hi - 1]), size=shape)
    return rng.integers(lo, hi + 1, size=shape)


@settings(max_examples=150, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), which=st.sampled_from(["s", "w", "none"]), extreme=st.booleans(),
       as_float=st.booleans())
def test_bmm_int8_equals_the_int64_product(seed, which, extreme, as_float):
    rng = np.random.default_rng(seed)
    G, T, K, N = (int(rng.integers(1, n)) for n in (4, 40, 70, 30))
    s = _codes(rng, (G, T, K), which == "s", extreme)
    w = _codes(rng, (G, K, N), which == "w", extreme)
    st_, wt = torch.from_numpy(s), torch.from_numpy(w)
    if as_float:
        st_, wt = st_.float(), wt.float()
    else:
        st_, wt = st_.to(torch.uint8 if which == "s" else torch.int8), wt.to(torch.uint8 if which == "w" else torch.int8)
    got = int8.bmm_int8(st_, wt, which == "s", which == "w")
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.numpy(), np.matmul(s.astype(np.int64), w.astype(np.int64)))


@settings(max_examples=150, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), signed=st.booleans(), extreme=st.booleans(), channels_last=st.booleans(),
       as_uint8=st.booleans())
def test_conv_int8_equals_the_int64_convolution(seed, signed, extreme, channels_last, as_uint8):
    rng = np.random.default_rng(seed)
    B, C, N = int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    H, W = int(rng.integers(kh, 9)), int(rng.integers(kw, 9))
    x = torch.from_numpy(_codes(rng, (B, C, H, W), not signed, extreme))
    w = torch.from_numpy(_codes(rng, (N, C, kh, kw), False, extreme)).float()
    want = torch.nn.functional.conv2d(x.double(), w.double(), stride=(sh, sw), padding=(ph, pw)).to(torch.int64)
    x = x.to(torch.uint8) if as_uint8 and not signed else x.float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = int8.conv_int8(x, ConvWeights.of(w), (sh, sw), (ph, pw), signed)
    assert got.dtype == torch.int32 and got.shape == want.shape
    np.testing.assert_array_equal(got.to(torch.int64).numpy(), want.numpy())


@settings(max_examples=400, **SETTINGS)
@given(cases(dataflows=("ws", "os", "is")), st.sampled_from(["int8", "float32", None]))
def test_fast_engine_on_either_product_kernel_equals_cycle(case, kernel):
    """WS, OS and IS (where the stationary operand is the activations, unsigned or not) with the
    fault-free product pinned to each kernel, or measured."""
    int8.FORCE = kernel
    try:
        fast = sa.simulate_gemm(case.a, case.w, case.cfg, faults=case.faults, engine="fast")[0]
    finally:
        int8.FORCE = None
    cycle = sa.simulate_gemm(case.a, case.w, case.cfg, faults=case.faults, engine="cycle")[0]
    np.testing.assert_array_equal(fast, cycle)
