"""Closed-form SCALE-Sim v2 timing: fold layout, cycles and the three utilizations."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysarray.config import ArrayConfig
from sysarray.stats import summarize
from sysarray.mapping import Fold, fold_grid, fold_layout, spatial_dims
from sysarray.timing import conv_gemm_dims, fold_cycles, gemm_timing

# A small array and a GEMM with partial row and column folds in every dataflow:
# R=4, C=3; M=5, K=10, N=7 (MACs = 350).
R, C = 4, 3
M, K, N = 5, 10, 7


def cfg(flow: str, rows: int = R, cols: int = C) -> ArrayConfig:
    return ArrayConfig(rows, cols, flow)


# ------------------------------------------------------------------------------------ fold layout


def test_spatial_dims_follow_scalesim_mapping():
    assert spatial_dims(M, K, N, "ws") == (K, N, M)
    assert spatial_dims(M, K, N, "os") == (M, N, K)
    assert spatial_dims(M, K, N, "is") == (K, M, N)


def test_fold_layout_ws_partial_folds_column_fold_outer():
    # Sr=K=10 -> rows 4,4,2; Sc=N=7 -> cols 3,3,1; T=M=5; column fold outer, row fold inner.
    expected = [(4, 3, 5), (4, 3, 5), (2, 3, 5), (4, 3, 5), (4, 3, 5), (2, 3, 5), (4, 1, 5), (4, 1, 5), (2, 1, 5)]
    folds = fold_layout(M, K, N, cfg("ws"))
    assert folds == expected
    assert all(isinstance(f, Fold) for f in folds)
    assert fold_grid(M, K, N, cfg("ws")) == (3, 3)


def test_fold_layout_os_partial_folds():
    # Sr=M=5 -> rows 4,1; Sc=N=7 -> cols 3,3,1; T=K=10.
    expected = [(4, 3, 10), (1, 3, 10), (4, 3, 10), (1, 3, 10), (4, 1, 10), (1, 1, 10)]
    assert fold_layout(M, K, N, cfg("os")) == expected
    assert fold_grid(M, K, N, cfg("os")) == (2, 3)


def test_fold_layout_is_partial_folds():
    # Sr=K=10 -> rows 4,4,2; Sc=M=5 -> cols 3,2; T=N=7.
    expected = [(4, 3, 7), (4, 3, 7), (2, 3, 7), (4, 2, 7), (4, 2, 7), (2, 2, 7)]
    assert fold_layout(M, K, N, cfg("is")) == expected
    assert fold_grid(M, K, N, cfg("is")) == (3, 2)


def test_fold_index_is_fc_times_row_folds_plus_fr():
    c = ArrayConfig(8, 8, "ws")
    folds = fold_layout(3, 20, 30, c)  # rows 8,8,4; cols 8,8,8,6
    row_folds, col_folds = fold_grid(3, 20, 30, c)
    for fc in range(col_folds):
        for fr in range(row_folds):
            f = folds[fc * row_folds + fr]
            assert f.rows_used == min(8, 20 - 8 * fr)
            assert f.cols_used == min(8, 30 - 8 * fc)


def test_one_fold_when_everything_fits():
    assert fold_layout(1, 1, 1, ArrayConfig(16, 16, "ws")) == [(1, 1, 1)]


# ----------------------------------------------------------------------------------------- cycles


@pytest.mark.parametrize(
    "flow, per_fold, folds",
    [
        ("ws", 2 * 4 + 3 + 5 - 2, 9),  # 2R + C + T - 2 with T = M = 5
        ("os", 4 + 3 + 10 - 2, 6),  # R + C + T - 2 with T = K = 10
        ("is", 2 * 4 + 3 + 7 - 2, 6),  # 2R + C + T - 2 with T = N = 7
    ],
)
def test_cycles_are_folds_times_per_fold(flow, per_fold, folds):
    s = gemm_timing(M, K, N, cfg(flow))
    assert fold_cycles(fold_layout(M, K, N, cfg(flow))[0].T, cfg(flow)) == per_fold
    assert s.folds == folds
    assert s.cycles == folds * per_fold
    assert s.scalesim_total_cycles == folds * per_fold - 1
    np.testing.assert_array_equal(s.fold_cycles, np.full(folds, per_fold))
    assert s.macs == 350


def test_partial_folds_cost_as_much_as_full_ones():
    full = gemm_timing(8, 8, 8, ArrayConfig(8, 8, "ws"))
    partial = gemm_timing(8, 1, 1, ArrayConfig(8, 8, "ws"))
    assert full.cycles == partial.cycles == 2 * 8 + 8 + 8 - 2


# ----------------------------------------------------------------------------------- utilization
# Hand-computed: sums of mapped PEs over folds are WS 70, OS 35, IS 50 (of R*C = 12 each).


def test_ws_utilization_hand_computed():
    s = gemm_timing(M, K, N, cfg("ws"))
    assert s.cycles - 1 == 125
    assert s.overall_util == 35000 / 1500  # 100 * 350 / (125 * 12)
    assert s.mapping_efficiency == pytest.approx(100 * 70 / (12 * 9), rel=1e-15)
    # compute util per fold: mapped * T / (R*C * (per_fold + C - 1)) = mapped * 5 / (12 * 16)
    assert s.compute_util == pytest.approx(100 * 70 * 5 / (12 * 16 * 9), rel=1e-15)


def test_os_utilization_hand_computed():
    s = gemm_timing(M, K, N, cfg("os"))
    assert s.cycles - 1 == 89
    assert s.overall_util == 35000 / 1068
    assert s.mapping_efficiency == pytest.approx(100 * 35 / (12 * 6), rel=1e-15)
    # OS: SCALE-Sim divides by the fold's own cycles (15), not by 15 + C - 1.
    assert s.compute_util == pytest.approx(100 * 35 * 10 / (12 * 15 * 6), rel=1e-15)


def test_is_utilization_hand_computed():
    s = gemm_timing(M, K, N, cfg("is"))
    assert s.cycles - 1 == 95
    assert s.overall_util == 35000 / 1140
    assert s.mapping_efficiency == pytest.approx(100 * 50 / (12 * 6), rel=1e-15)
    assert s.compute_util == pytest.approx(100 * 50 * 7 / (12 * 18 * 6), rel=1e-15)


def test_alexnet_conv1_golden_row():
    # SCALE-Sim v2, AlexNet conv1 on a 32x32 WS array (test/golden_trace in SCALE-Sim's repo).
    m, k, n = conv_gemm_dims(224, 224, 11, 11, 3, 96, 4)
    assert (m, k, n) == (3025, 363, 96)
    s = gemm_timing(m, k, n, ArrayConfig(32, 32, "ws"))
    assert s.scalesim_total_cycles == 112283
    assert s.overall_util == 91.68309650614964
    assert s.mapping_efficiency == 94.53125
    assert s.compute_util == 90.78000992063492


@pytest.mark.parametrize(
    "flow, compute_util",
    [("ws", 67.19160104986877), ("os", 80.50314465408806), ("is", 50.59288537549407)],
)
def test_scalesim_gemm_golden_compute_util(flow, compute_util):
    # SCALE-Sim v2's golden traces for test_mnk_input.csv (M=256, N=128, K=256) on 32x32; only
    # the compute and mapping columns are stall-independent, so only those are compared.
    s = gemm_timing(256, 256, 128, ArrayConfig(32, 32, flow))
    assert s.mapping_efficiency == 100.0
    assert s.compute_util == compute_util


# --------------------------------------------------------------- bit-exact against SCALE-Sim's loop


def _cpython312_sum(values):
    total, comp = 0.0, 0.0
    for x in values:
        t = total + x
        comp += (total - t) + x if abs(total) >= abs(x) else (x - t) + total
        total = t
    return total + comp if comp else total


def _scalesim_replica(m, k, n, rows, cols, flow):
    """SCALE-Sim v2's compute modules, reduced to their arithmetic (demand-matrix lengths)."""
    sr, sc, t = {"ws": (k, n, m), "os": (m, n, k), "is": (k, m, n)}[flow]
    row_fold, col_fold = -(-sr // rows), -(-sc // cols)
    mapping, compute, total = [], [], 0
    for fc in range(col_fold):
        for fr in range(row_fold):
            used = min(rows, sr - fr * rows) * min(cols, sc - fc * cols)
            if flow == "os":
                demand_rows = (t - 1) + rows  # ofmap demand: prefix T-1, then R rows
                fold_len = t + cols - 1 + rows - 1  # ifmap demand T + C-1, skewed by R-1
            else:
                demand_rows = rows + (rows + cols + t - 2)  # stationary load + stream/drain gap
                fold_len = rows + t + cols - 1 + rows - 1  # streamed demand, skewed by R-1
            mapping.append(used / (rows * cols))
            compute.append(used * t / (rows * cols * (demand_rows + cols - 1)))
            total += fold_len
    total_cycles = total - 1
    overall = (m * k * n * 100) / (total_cycles * rows * cols) if total_cycles > 0 else None
    return (
        total_cycles,
        overall,
        _cpython312_sum(mapping) / len(mapping) * 100,
        _cpython312_sum(compute) / len(compute) * 100,
    )


@settings(max_examples=150, deadline=None)
@given(
    m=st.integers(1, 300), k=st.integers(1, 300), n=st.integers(1, 300),
    rows=st.integers(1, 40), cols=st.integers(1, 40), flow=st.sampled_from(["ws", "os", "is"]),
)
def test_equals_scalesim_arithmetic_bit_for_bit(m, k, n, rows, cols, flow):
    s = gemm_timing(m, k, n, ArrayConfig(rows, cols, flow))
    total, overall, mapping, compute = _scalesim_replica(m, k, n, rows, cols, flow)
    assert s.scalesim_total_cycles == total
    # A 1x1 OS array with K=1 runs one cycle: SCALE-Sim would divide by zero, we report 0.0.
    assert s.overall_util == (overall if overall is not None else 0.0)
    assert s.mapping_efficiency == mapping
    assert s.compute_util == compute


def test_summary_does_not_depend_on_the_interpreters_sum():
    # SCALE-Sim's mean is builtin sum(); CPython <= 3.11 folds left to right and gets
    # 90.78000992063485 for AlexNet conv1, CPython >= 3.12 compensates and gets ...492.
    folds = fold_layout(3025, 363, 96, ArrayConfig(32, 32, "ws"))
    fracs = [f.rows_used * f.cols_used * f.T / (1024 * (3119 + 31)) for f in folds]
    plain = 0.0
    for x in fracs:
        plain += x
    assert plain / len(fracs) * 100 == 90.78000992063485
    assert _cpython312_sum(fracs) / len(fracs) * 100 == 90.78000992063492
    if sys.version_info >= (3, 12):
        assert sum(fracs) == _cpython312_sum(fracs)


# ---------------------------------------------------------------------------------- summarize API


def test_summarize_default_is_ws_rule_and_os_drops_the_drain():
    cycles, mapped, useful = np.array([15]), np.array([12]), np.array([120])
    ws = summarize(4, 3, 120, cycles, mapped, useful)
    os_ = summarize(4, 3, 120, cycles, mapped, useful, dataflow="os")
    assert ws.compute_util == 120 / (12 * (15 + 3 - 1)) * 100  # SCALE-Sim: fraction first, then * 100
    assert os_.compute_util == 120 / (12 * 15) * 100


def test_summarize_rejects_unknown_dataflow():
    with pytest.raises(ValueError, match="'dataflow' argument of summarize"):
        summarize(4, 4, 1, np.array([5]), np.array([1]), np.array([1]), dataflow="xs")


# ------------------------------------------------------------------------------------- conv dims


def test_conv_gemm_dims_scalesim_output_size():
    # ceil((H - F + S) / S): 10x10, 3x3, stride 2 -> ceil(9 / 2) = 5 per side.
    assert conv_gemm_dims(10, 10, 3, 3, 4, 8, 2) == (25, 36, 8)
    # Non-square: 12x7, 5x3, stride 3 -> ceil(10/3)=4 by ceil(7/3)=3.
    assert conv_gemm_dims(12, 7, 5, 3, 2, 6, 3) == (12, 30, 6)
    assert conv_gemm_dims(10, 10, 3, 3, 4, 8, 2, batch=3) == (75, 36, 8)
    # Filter as large as the ifmap: one output pixel (a fully connected layer).
    assert conv_gemm_dims(1, 1, 1, 1, 1024, 1000, 1) == (1, 1024, 1000)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((5, 5, 6, 3, 1, 1, 1), ValueError, "'filt_h' argument of conv_gemm_dims must be at most ifmap_h=5"),
        ((5, 5, 3, 6, 1, 1, 1), ValueError, "'filt_w'"),
        ((5, 5, 3, 3, 1, 1, 0), ValueError, "'stride' argument of conv_gemm_dims must be a positive integer"),
        ((5, 5, 3, 3, 1.0, 1, 1), TypeError, "'channels'"),
    ],
)
def test_conv_gemm_dims_rejects_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        conv_gemm_dims(*args)


@pytest.mark.parametrize(
    "m, k, n, c, exc",
    [
        (0, 1, 1, ArrayConfig(4, 4), ValueError),
        (1, -3, 1, ArrayConfig(4, 4), ValueError),
        (1, 1, 2.5, ArrayConfig(4, 4), TypeError),
        (True, 1, 1, ArrayConfig(4, 4), TypeError),
        (1, 1, 1, "4x4", TypeError),
    ],
)
def test_gemm_timing_validates(m, k, n, c, exc):
    with pytest.raises(exc, match="argument of gemm_timing must be"):
        gemm_timing(m, k, n, c)


def test_numpy_integers_accepted():
    assert gemm_timing(np.int64(5), np.int32(10), np.uint8(7), cfg("ws")) == gemm_timing(5, 10, 7, cfg("ws"))


def test_one_cycle_gemm_reports_zero_overall_util():
    # 1x1 OS, K=1: R + C + T - 2 = 1 cycle, SCALE-Sim's Total Cycles 0 (it would divide by zero).
    s = gemm_timing(1, 1, 1, ArrayConfig(1, 1, "os"))
    assert (s.cycles, s.scalesim_total_cycles, s.overall_util) == (1, 0, 0.0)
    assert s.mapping_efficiency == 100.0 and s.compute_util == 100.0
