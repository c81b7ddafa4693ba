"""The fast engine equals the cycle-level reference bit for bit; both equal the plain GEMM fault-free;
the cycle engine's two WS clock loops (vector and scalar) give the same bits."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysarray as sa
from sysarray.engines import cycle
from sysarray.engines.simd import LANES
from sysarray.timing import gemm_timing
from tests.naive import naive_gemm, naive_plain_gemm
from tests.strategies import cases

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPO = Path(__file__).resolve().parents[3]


def run(case, engine):
    y, stats = sa.simulate_gemm(case.a, case.w, case.cfg, faults=case.faults, engine=engine)
    return y, stats


@settings(max_examples=1500, **SETTINGS)
@given(cases())
def test_fast_equals_cycle(case):
    y_cycle, _ = run(case, "cycle")
    y_fast, _ = run(case, "fast")
    assert y_fast.dtype == np.int32 and y_cycle.dtype == np.int32
    np.testing.assert_array_equal(y_fast, y_cycle)


@settings(max_examples=400, **SETTINGS)
@given(cases(max_rc=8, max_m=20, max_faults=24, bypass=False))
def test_fast_equals_cycle_dense_faults(case):
    np.testing.assert_array_equal(run(case, "fast")[0], run(case, "cycle")[0])


@settings(max_examples=300, **SETTINGS)
@given(cases(max_rc=4, max_m=6, max_folds=3))
def test_cycle_equals_naive_reference(case):
    np.testing.assert_array_equal(run(case, "cycle")[0], naive_gemm(case.a, case.w, case.cfg, case.faults))


@settings(max_examples=300, **SETTINGS)
@given(cases(faulty=False, psum_bits=(32,)))
def test_fault_free_equals_plain_gemm(case):
    expected = naive_plain_gemm(case.a, case.w)
    for engine in ("cycle", "fast"):
        np.testing.assert_array_equal(run(case, engine)[0], expected)
        y, _ = sa.simulate_gemm(case.a, case.w, case.cfg, faults=None, engine=engine)
        np.testing.assert_array_equal(y, expected)


@settings(max_examples=300, **SETTINGS)
@given(cases(bypass=True, psum_bits=(32,)))
def test_bypass_equals_pruning(case):
    """docs/design.md §2.7: bypass == the fault-free array with the faulty PEs' operands zeroed."""
    cfg, fm = case.cfg, case.faults
    R, C = cfg.rows, cfg.cols
    bad = fm.faulty_pes()
    a = case.a.astype(np.int64)
    w = case.w.astype(np.int64)
    M, K = a.shape
    N = w.shape[1]
    if cfg.dataflow == sa.Dataflow.WS:
        w = w * ~bad[np.arange(K)[:, None] % R, np.arange(N)[None, :] % C]
        expected = naive_plain_gemm_i64(a, w)
    elif cfg.dataflow == sa.Dataflow.IS:
        a = a * ~bad[np.arange(K)[None, :] % R, np.arange(M)[:, None] % C]
        expected = naive_plain_gemm_i64(a, w)
    else:
        expected = naive_plain_gemm_i64(a, w) * ~bad[np.arange(M)[:, None] % R, np.arange(N)[None, :] % C]
    for engine in ("cycle", "fast"):
        np.testing.assert_array_equal(run(case, engine)[0], expected)


def naive_plain_gemm_i64(a, w):
    return ((a @ w + 2**31) % 2**32 - 2**31).astype(np.int32)


@settings(max_examples=200, **SETTINGS)
@given(cases(max_faults=3))
def test_cycle_clock_counts_equal_formulas(case):
    """The statistics the cycle engine counts from its clock equal the closed forms."""
    _, counted = run(case, "cycle")
    _, fast_stats = run(case, "fast")
    M, K = case.a.shape
    N = case.w.shape[1]
    expected = gemm_timing(M, K, N, case.cfg)
    assert counted == expected
    assert fast_stats == expected


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_torch_inputs_give_torch_outputs(dataflow):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (9, 13)).astype(np.uint8)
    w = rng.integers(-128, 128, (13, 7)).astype(np.int8)
    cfg = sa.ArrayConfig(4, 3, dataflow)
    fm = sa.FaultMap(4, 3).add(1, 2, "psum", 30, 1).add(0, 1, "act", 7, 0).add(2, 0, "weight", 6, 1)
    y_np, _ = sa.simulate_gemm(a, w, cfg, faults=fm)
    for engine in ("fast", "cycle"):
        y_t, _ = sa.simulate_gemm(torch.from_numpy(a), torch.from_numpy(w), cfg, faults=fm, engine=engine)
        assert isinstance(y_t, torch.Tensor) and y_t.dtype == torch.int32
        np.testing.assert_array_equal(y_t.numpy(), y_np)


@pytest.mark.gpu
@settings(max_examples=300, **SETTINGS)
@given(cases(max_rc=8, max_m=16, max_faults=12))
def test_fast_on_cuda_equals_cycle(case):
    y_gpu, _ = sa.simulate_gemm(case.a, case.w, case.cfg, faults=case.faults, engine="fast", device="cuda")
    np.testing.assert_array_equal(y_gpu, run(case, "cycle")[0])


@settings(max_examples=int(os.environ.get("SYSARRAY_STRIP_EXAMPLES", 300)), **SETTINGS)
@given(cases(max_rc=40, max_m=70, max_folds=2, max_faults=40, dataflows=("ws", "is"), psum_bits=(17, 20, 24, 31, 32)),
       st.sampled_from([1, 3, 4, 5, 8, 13, 32]), st.integers(1, 3), st.sampled_from([None, 1, 2, 3]))
def test_strip_kernel_equals_scalar_kernel(case, span, step_spans, parts):
    """The vector clock loop (lanes across PE columns, L1 tiles, four cycles per pass, pipelined
    folds) gives the scalar loop's bits and clock counts, at any span and any number of pipeline
    stages; shapes reach past one strip, one tile and one span."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cycle, "SPAN", span)
        mp.setattr(cycle, "STEP_SPANS", step_spans)
        y_s, st_s = cycle.cycle_gemm(case.a, case.w, case.cfg, case.faults, kernel="strips", parts=parts)
    y_r, st_r = cycle.cycle_gemm(case.a, case.w, case.cfg, case.faults, kernel="scalar")
    np.testing.assert_array_equal(y_s, y_r)
    assert st_s == st_r


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_cycle_gemm_rejects_bad_parts(bad):
    a = np.zeros((2, 2), np.int8)
    with pytest.raises(ValueError, match="'parts'"):
        cycle.cycle_gemm(a, a, sa.ArrayConfig(2, 2), None, parts=bad)


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_strip_kernel_at_other_lane_widths(lanes):
    """Other machines pick other widths (8 lanes with AVX2, 4 where the product is a plain
    multiply), so their bits are checked here too, in a child process with its own numba cache."""
    if lanes == LANES:
        pytest.skip("this machine's own width runs in the tests above")
    env = {**os.environ, "SYSARRAY_SIMD_LANES": str(lanes), "SYSARRAY_STRIP_EXAMPLES": "60",
           "NUMBA_CACHE_DIR": str(REPO / ".cache" / f"numba-lanes{lanes}")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "strip_kernel_equals",
                        "tests/sysarray/engines/test_engines.py"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout, r.stdout[-2000:]
