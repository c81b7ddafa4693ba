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


@settings(max_examples=150, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), M=st.integers(1, 40), K=st.integers(1, 40), N=st.integers(1, 40),
       transposed_a=st.booleans())
def test_imma_operands_take_the_cuda_gemm_shape_and_keep_the_product(seed, M, K, N, transposed_a):
    """CUDA's int8 GEMM takes more than 16 rows and inner and output sizes that are multiples of 8:
    the padded operands have those shapes and layouts, and their product's first M rows and N
    columns are the product (checked on the CPU's int8 GEMM, which takes any shape)."""
    rng = np.random.default_rng(seed)
    a = _codes(rng, (M, K), False, False).astype(np.int8)
    w = _codes(rng, (K, N), False, False).astype(np.int8)
    a8 = torch.from_numpy(np.ascontiguousarray(a.T)).t() if transposed_a else torch.from_numpy(a)
    pa, pw = int8.imma_operands(a8, torch.from_numpy(w))
    Mp, Kp, Np = pa.shape[0], pa.shape[1], pw.shape[1]
    assert Mp > 16 and Kp % 8 == 0 and Np % 8 == 0 and pw.shape[0] == Kp
    assert (Mp, Kp, Np) == int8.imma_shape(M, K, N) and Mp - M < 17 and Kp - K < 8 and Np - N < 8
    assert pa.is_contiguous() and pw.t().is_contiguous()  # row-major by column-major
    got = torch._int_mm(pa, pw)[:M, :N]
    np.testing.assert_array_equal(got.numpy(), a.astype(np.int64) @ w.astype(np.int64))


def test_int8_gemm_is_usable_on_the_cpu_only_here():
    assert int8.usable(torch.device("cpu"))
    assert not int8.usable(torch.device("meta"))


@pytest.mark.gpu
@pytest.mark.parametrize("M, K, N", [(1, 3, 5), (16, 8, 8), (17, 27, 10), (300, 576, 64)])
def test_int8_kernels_on_cuda_equal_the_cpus(M, K, N):
    """On a GPU with int8 tensor cores the padded GEMM, the batched GEMM of unsigned codes and the
    im2col convolution give the CPU's int32 values."""
    if not int8.usable(torch.device("cuda")):
        pytest.skip("this GPU has no int8 tensor cores")
    rng = np.random.default_rng(M + K + N)
    a = torch.from_numpy(_codes(rng, (M, K), False, False).astype(np.int8))
    w = torch.from_numpy(_codes(rng, (K, N), False, False).astype(np.int8))
    np.testing.assert_array_equal(int8.int_mm(a.cuda(), w.cuda()).cpu().numpy(), int8.int_mm(a, w).numpy())
    s = torch.from_numpy(_codes(rng, (2, M, K), True, False)).float()
    np.testing.assert_array_equal(int8.bmm_int8(s.cuda(), w.float().cuda().expand(2, K, N), True, False).cpu().numpy(),
                                  int8.bmm_int8(s, w.float().expand(2, K, N), True, False).numpy())
    x = torch.from_numpy(_codes(rng, (3, 5, 9, 9), True, False)).float()
    cw = torch.from_numpy(_codes(rng, (N, 5, 3, 3), False, False)).float()
    np.testing.assert_array_equal(
        int8.conv_int8(x.cuda(), ConvWeights.of(cw.cuda()), (1, 1), (1, 1), False).cpu().numpy(),
        int8.conv_int8(x, ConvWeights.of(cw), (1, 1), (1, 1), False).numpy())


def test_a_gpu_choice_is_keyed_by_the_card_timed_to_its_end_and_reported(monkeypatch):
    """On a CUDA device ``choose`` keys its decision by the GPU's name apart from the CPU's, times
    each option to the end of the GPU's queued work, and ``cuda_decisions`` reports it (the CUDA
    calls are stood in for here: this runs without a GPU)."""
    from sysarray.parallel import TRIALS, MeasuredChoice

    syncs: list = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(1))
    choice = MeasuredChoice(name="test.gpu_product")
    gpu = torch.device("cuda", 0)
    calls = 0
    while not choice.choices() and calls < 4 * (TRIALS + 1):
        assert int8.choose(choice, ("shape",), lambda: 1, lambda: 1, True, gpu) == 1
        calls += 1
    assert len(syncs) == 2 * calls  # before and after every measuring call
    assert list(choice.choices()) == [("shape", "cuda", "Test GPU")]
    syncs.clear()
    int8.choose(choice, ("shape",), lambda: 1, lambda: 1, True, gpu)
    assert syncs == []  # decided: no more waiting on the GPU
    assert int8.cuda_decisions()["test.gpu_product"] == choice.choices()
    int8.choose(choice, ("shape",), lambda: 1, lambda: 1, True, torch.device("cpu"))
    assert ("shape",) not in choice.choices()  # the CPU's key is measured on its own
