"""The naive reference itself, checked against the plain GEMM and the bypass identities of docs/design.md §2.7."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysarray import ArrayConfig, FaultMap
from tests.naive import force, naive_gemm, naive_plain_gemm, wrap

DATAFLOWS = ("ws", "os", "is")
REG_WIDTH = {"weight": 8, "act": 8, "psum": 32}


def _random_operands(rng, m, k, n, act_dtype):
    if act_dtype == np.uint8:
        a = rng.integers(0, 256, size=(m, k)).astype(np.uint8)
    else:
        a = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
    w = rng.integers(-128, 128, size=(k, n)).astype(np.int8)
    return a, w


def _random_faults(rng, rows, cols, count, psum_bits=32):
    fm = FaultMap(rows, cols)
    seen = set()
    for _ in range(count):
        reg = ("weight", "act", "psum")[rng.integers(3)]
        width = 8 if reg != "psum" else psum_bits
        r, c, b = int(rng.integers(rows)), int(rng.integers(cols)), int(rng.integers(width))
        if (r, c, reg, b) in seen:
            continue
        seen.add((r, c, reg, b))
        fm = fm.add(r, c, reg, b, int(rng.integers(2)))
    return fm


# ---------------------------------------------------------------------------- helpers
def test_force_examples():
    assert force(5, 0, 0, 8) == 5
    assert force(5, 1 << 7, 1 << 7, 8) == 5 - 128  # sign bit stuck at 1: 0b1000_0101 = -123
    assert force(5, 1 << 7, 1 << 7, 8, signed=False) == 133
    assert force(-1, 1, 0, 8) == -2  # 0xff with bit 0 stuck at 0 -> 0xfe
    assert force(0, 1 << 31, 1 << 31, 32) == -(1 << 31)
    assert force(7, 1 << 19, 1 << 19, 20) == 7 - (1 << 19)
    assert force(-3, 0, 0, 8, signed=False) == 253


def test_wrap_examples():
    assert wrap(1 << 19, 20) == -(1 << 19)
    assert wrap((1 << 19) - 1, 20) == (1 << 19) - 1
    assert wrap(-(1 << 31) - 1, 32) == (1 << 31) - 1
    assert wrap(5, 32) == 5


def test_plain_gemm_wraps_int32():
    a = np.full((1, 200_000), -128, dtype=np.int8)
    w = np.full((200_000, 1), -128, dtype=np.int8)
    # 200000 * 16384 = 3_276_800_000 = 2^32 - 1_018_167_296
    assert naive_plain_gemm(a, w)[0, 0] == 3_276_800_000 - (1 << 32)


# ---------------------------------------------------------------------------- fault-free
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("act_dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (4, 4, 4), (9, 13, 6), (10, 40, 20)])
def test_fault_free_equals_plain_gemm(dataflow, act_dtype, shape):
    rng = np.random.default_rng(sum(shape))
    a, w = _random_operands(rng, *shape, act_dtype)
    cfg = ArrayConfig(4, 4, dataflow)
    np.testing.assert_array_equal(naive_gemm(a, w, cfg), naive_plain_gemm(a, w))
    np.testing.assert_array_equal(naive_gemm(a, w, cfg, FaultMap(4, 4)), naive_plain_gemm(a, w))


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_fault_free_20_bit_equals_plain_gemm_without_wrap(dataflow):
    # 4 rows (WS/IS) or K = 8 steps (OS) of at most 128*128 stay far below 2^19.
    rng = np.random.default_rng(3)
    a, w = _random_operands(rng, 6, 8, 5, np.int8)
    cfg = ArrayConfig(4, 4, dataflow, psum_bits=20)
    np.testing.assert_array_equal(naive_gemm(a, w, cfg), naive_plain_gemm(a, w))


# ---------------------------------------------------------------------------- bypass identities
def _bypass_expected(a, w, cfg, faulty):
    """docs/design.md §2.7: what bypass must equal, built from fault-free runs."""
    R, C = cfg.rows, cfg.cols
    M, K = a.shape
    N = w.shape[1]
    clean = cfg.replace(bypass=False)
    if cfg.dataflow.value == "ws":
        w2 = w.copy()
        for k in range(K):
            for n in range(N):
                if faulty[k % R, n % C]:
                    w2[k, n] = 0
        return naive_gemm(a, w2, clean)
    if cfg.dataflow.value == "is":
        a2 = a.copy()
        for m in range(M):
            for k in range(K):
                if faulty[k % R, m % C]:
                    a2[m, k] = 0
        return naive_gemm(a2, w, clean)
    y = naive_gemm(a, w, clean)
    for m in range(M):
        for n in range(N):
            if faulty[m % R, n % C]:
                y[m, n] = 0
    return y


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("psum_bits", [20, 32])
@pytest.mark.parametrize("seed", range(4))
def test_bypass_identities(dataflow, psum_bits, seed):
    rng = np.random.default_rng(seed)
    a, w = _random_operands(rng, 7, 11, 6, (np.int8, np.uint8)[seed % 2])
    fm = _random_faults(rng, 3, 4, 5, psum_bits)
    cfg = ArrayConfig(3, 4, dataflow, psum_bits=psum_bits, bypass=True)
    np.testing.assert_array_equal(naive_gemm(a, w, cfg, fm), _bypass_expected(a, w, cfg, fm.faulty_pes()))


# ---------------------------------------------------------------------------- structural identities
@pytest.mark.parametrize("seed", range(4))
def test_ws_weight_faults_equal_forced_weight_matrix(seed):
    # docs/design.md §2.4: by default a weight fault changes only the weights held in that PE, w' = force(w).
    rng = np.random.default_rng(seed)
    a, w = _random_operands(rng, 5, 9, 7, np.int8)
    R, C = 3, 2
    fm = FaultMap(R, C).add(1, 0, "weight", 7, 1).add(2, 1, "weight", 0, 0).add(2, 1, "weight", 3, 1)
    stuck, ones = fm.masks("weight")
    w2 = w.copy()
    for k in range(w.shape[0]):
        for n in range(w.shape[1]):
            r, c = k % R, n % C
            w2[k, n] = force(int(w[k, n]), int(stuck[r, c]), int(ones[r, c]), 8)
    np.testing.assert_array_equal(naive_gemm(a, w, ArrayConfig(R, C, "ws"), fm), naive_plain_gemm(a, w2))


@pytest.mark.parametrize("seed", range(6))
def test_is_equals_ws_on_transposed_problem(seed):
    # design.md: IS is WS run on Y^T = W^T @ A^T with the act and weight registers swapped.
    rng = np.random.default_rng(seed)
    a, w = _random_operands(rng, 6, 7, 5, np.int8)
    fm = _random_faults(rng, 3, 2, 6, 20 if seed % 2 else 32)
    swapped = FaultMap.from_records(3, 2, [(r, c, {0: 1, 1: 0, 2: 2}[g], b, v) for r, c, g, b, v in fm.records])
    pb = 20 if seed % 2 else 32
    y_is = naive_gemm(a, w, ArrayConfig(3, 2, "is", psum_bits=pb), fm)
    y_ws = naive_gemm(np.ascontiguousarray(w.T), np.ascontiguousarray(a.T), ArrayConfig(3, 2, "ws", psum_bits=pb), swapped)
    np.testing.assert_array_equal(y_is, y_ws.T)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_faults_in_unused_columns_are_harmless(dataflow):
    # One column fold uses columns 0..used-1 only; stuck bits in the others reach no output.
    rng = np.random.default_rng(7)
    R, C = 3, 4
    if dataflow == "is":  # columns hold M
        a, w = _random_operands(rng, 2, 8, 5, np.int8)
    else:  # columns hold N
        a, w = _random_operands(rng, 2 if dataflow == "os" else 5, 8, 2, np.int8)
    fm = FaultMap(R, C)
    for r in range(R):
        for c in (2, 3):
            fm = fm.add(r, c, "weight", 7, 1).add(r, c, "act", 0, 1).add(r, c, "psum", 31, 1)
    cfg = ArrayConfig(R, C, dataflow)
    np.testing.assert_array_equal(naive_gemm(a, w, cfg, fm), naive_plain_gemm(a, w))


@pytest.mark.parametrize("seed", range(4))
def test_ws_act_fault_leaves_columns_west_of_it(seed):
    rng = np.random.default_rng(seed)
    a, w = _random_operands(rng, 4, 6, 8, np.int8)
    R, C, c0 = 3, 4, 2
    fm = FaultMap(R, C).add(1, c0, "act", 6, 1).add(1, c0, "act", 1, 0)
    y = naive_gemm(a, w, ArrayConfig(R, C, "ws"), fm)
    plain = naive_plain_gemm(a, w)
    west = [n for n in range(w.shape[1]) if n % C < c0]
    np.testing.assert_array_equal(y[:, west], plain[:, west])


@pytest.mark.parametrize("seed", range(4))
def test_os_weight_fault_reaches_only_its_column_at_and_below(seed):
    rng = np.random.default_rng(seed)
    a, w = _random_operands(rng, 6, 5, 6, np.int8)
    R, C, r0, c0 = 3, 3, 1, 2
    fm = FaultMap(R, C).add(r0, c0, "weight", 7, 1).add(r0, c0, "weight", 2, 0)
    y = naive_gemm(a, w, ArrayConfig(R, C, "os"), fm)
    plain = naive_plain_gemm(a, w)
    touched = np.zeros(y.shape, dtype=bool)
    for m in range(y.shape[0]):
        for n in range(y.shape[1]):
            touched[m, n] = m % R >= r0 and n % C == c0
    np.testing.assert_array_equal(y[~touched], plain[~touched])
    assert (y[touched] != plain[touched]).any()


# ---------------------------------------------------------------------------- hypothesis
@st.composite
def _problems(draw, bypass=False):
    rows = draw(st.integers(1, 4))
    cols = draw(st.integers(1, 4))
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 7))
    dataflow = draw(st.sampled_from(DATAFLOWS))
    psum_bits = draw(st.sampled_from([20, 32]))
    uint8 = draw(st.booleans())
    lo, hi = (0, 255) if uint8 else (-128, 127)
    a = np.array(draw(st.lists(st.integers(lo, hi), min_size=m * k, max_size=m * k)), dtype=np.int64)
    a = a.reshape(m, k).astype(np.uint8 if uint8 else np.int8)
    w = np.array(draw(st.lists(st.integers(-128, 127), min_size=k * n, max_size=k * n)), dtype=np.int64)
    w = w.reshape(k, n).astype(np.int8)
    faults = {}
    for _ in range(draw(st.integers(0, 5))):
        reg = draw(st.sampled_from(("weight", "act", "psum")))
        width = psum_bits if reg == "psum" else 8
        key = (draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1)), reg, draw(st.integers(0, width - 1)))
        faults[key] = draw(st.integers(0, 1))
    fm = FaultMap(rows, cols)
    for (r, c, reg, b), v in faults.items():
        fm = fm.add(r, c, reg, b, v)
    return a, w, ArrayConfig(rows, cols, dataflow, psum_bits=psum_bits, bypass=bypass), fm


@settings(max_examples=60, deadline=None)
@given(_problems())
def test_hypothesis_fault_free_matches_plain_at_32_bits(problem):
    a, w, cfg, _ = problem
    cfg = cfg.replace(psum_bits=32)
    np.testing.assert_array_equal(naive_gemm(a, w, cfg), naive_plain_gemm(a, w))


@settings(max_examples=60, deadline=None)
@given(_problems(bypass=True))
def test_hypothesis_bypass_identities(problem):
    a, w, cfg, fm = problem
    np.testing.assert_array_equal(naive_gemm(a, w, cfg, fm), _bypass_expected(a, w, cfg, fm.faulty_pes()))


@settings(max_examples=60, deadline=None)
@given(_problems())
def test_hypothesis_outputs_of_healthy_paths_are_exact(problem):
    # An output whose whole data path avoids every faulty PE equals the fault-free array.
    a, w, cfg, fm = problem
    y = naive_gemm(a, w, cfg, fm)
    clean = naive_gemm(a, w, cfg)
    faulty = fm.faulty_pes()
    R, C = cfg.rows, cfg.cols
    M, N = y.shape
    for m in range(M):
        for n in range(N):
            if cfg.dataflow.value == "ws":
                # Column n % C (psum path and stationary weights) and every PE west of it (acts).
                hit = faulty[:, : n % C + 1].any()
            elif cfg.dataflow.value == "is":
                hit = faulty[:, : m % C + 1].any()
            else:
                r, c = m % R, n % C
                hit = faulty[r, : c + 1].any() or faulty[: r + 1, c].any()
            if not hit:
                assert y[m, n] == clean[m, n]


def test_naive_refuses_bad_inputs():
    cfg = ArrayConfig(2, 2)
    a = np.zeros((2, 3), dtype=np.int8)
    with pytest.raises(TypeError):
        naive_gemm(a.astype(np.int16), np.zeros((3, 2), dtype=np.int8), cfg)
    with pytest.raises(ValueError):
        naive_gemm(a, np.zeros((4, 2), dtype=np.int8), cfg)
    with pytest.raises(ValueError):
        naive_gemm(a, np.zeros((3, 2), dtype=np.int8), ArrayConfig(2, 2, psum_bits=20), FaultMap(2, 2).add(0, 0, "psum", 25, 1))
    with pytest.raises(ValueError):
        naive_gemm(a, np.zeros((3, 2), dtype=np.int8), cfg, FaultMap(3, 2))
