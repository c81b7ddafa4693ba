"""``sysarray.Chip``: the workload interface, the same bits on both engines, hints that change nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysarray as sa
from sysarray.mapping import im2col
from sysarray.timing import gemm_timing
from tests.strategies import fault_maps

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_problems(draw):
    """A small convolution (groups 1 or 2) on a small faulty chip of any dataflow."""
    R, C = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    cfg = sa.ArrayConfig(R, C, draw(st.sampled_from(["ws", "os", "is"])), psum_bits=draw(st.sampled_from([32, 20])),
                         bypass=draw(st.booleans()))
    groups = draw(st.sampled_from([1, 2]))
    cin, n = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    signed = draw(st.booleans())
    lo, hi = (-128, 127) if signed else (0, 255)
    x = torch.from_numpy(rng.integers(lo, hi + 1, size=(2, cin, k + 2, k + 3)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-128, 128, size=(n, cin // groups, k, k)).astype(np.int8))
    faults = draw(fault_maps(cfg))
    return cfg, faults, x, w, groups, signed, (draw(st.integers(1, 2)), 1), (draw(st.integers(0, 1)), 1)


@settings(max_examples=60, **SETTINGS)
@given(conv_problems())
def test_conv2d_is_the_im2col_gemm_on_both_engines(problem):
    cfg, faults, x, w, groups, signed, stride, padding = problem
    fast, fast_stats = sa.Chip(cfg, faults).conv2d(x, w, stride=stride, padding=padding, pad_value=1, groups=groups,
                                                   act_signed=signed)
    cycle, cycle_stats = sa.Chip(cfg, faults, "cycle").conv2d(x, w, stride=stride, padding=padding, pad_value=1,
                                                              groups=groups, act_signed=signed)
    np.testing.assert_array_equal(fast.to(torch.int64).numpy(), cycle.to(torch.int64).numpy())
    cols = im2col(x, tuple(w.shape[2:]), stride, padding, 1.0)
    assert fast_stats == cycle_stats == [gemm_timing(cols.shape[0], cols.shape[1] // groups, w.shape[0] // groups,
                                                     cfg)] * groups
    ng, kg = w.shape[0] // groups, cols.shape[1] // groups
    dtype = np.int8 if signed else np.uint8
    for g in range(groups):
        y, _ = sa.simulate_gemm(cols[:, g * kg:(g + 1) * kg].numpy().astype(dtype),
                                w[g * ng:(g + 1) * ng].reshape(ng, -1).t().numpy(), cfg, faults)
        got = fast[:, g * ng:(g + 1) * ng].permute(0, 2, 3, 1).reshape(-1, ng)
        np.testing.assert_array_equal(got.to(torch.int64).numpy(), y)


@settings(max_examples=40, **SETTINGS)
@given(conv_problems())
def test_gemm_and_linear_agree_with_simulate_gemm(problem):
    cfg, faults, x, w, _, signed, _, _ = problem
    a = x.reshape(x.shape[0] * x.shape[1], -1)  # (M, K) codes
    weight = torch.from_numpy(np.random.default_rng(1).integers(-128, 128, size=(3, a.shape[1])).astype(np.int8))
    want, stats = sa.simulate_gemm(a.numpy().astype(np.int8 if signed else np.uint8), weight.t().numpy(), cfg, faults)
    for engine in ("fast", "cycle"):
        chip = sa.Chip(cfg, faults, engine)
        y, st_ = chip.gemm(a, weight.t(), act_signed=signed)
        np.testing.assert_array_equal(y.numpy(), want)
        assert st_ == stats
        y, st_ = chip.linear(a, weight, act_signed=signed)
        np.testing.assert_array_equal(y.to(torch.int64).numpy(), want)
        assert st_ == stats


def test_hints_change_no_value_and_clean_comes_back_itself():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.integers(0, 256, size=(3, 4, 6, 6)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-128, 128, size=(5, 4, 3, 3)).astype(np.int8))
    cfg = sa.ArrayConfig(8, 8)
    clean, _ = sa.Chip(cfg).conv2d(x, w, padding=1)
    unused = sa.FaultMap(8, 8).add(2, 7, "psum", 30, 1)  # column 7: no output channel there
    y, _ = sa.Chip(cfg, unused).conv2d(x, w, padding=1, hints=sa.ConvHints(x_bound=255, clean=clean))
    assert y is clean
    used = sa.FaultMap(8, 8).add(2, 1, "psum", 30, 1)
    plain, _ = sa.Chip(cfg, used).conv2d(x, w, padding=1)
    hinted, _ = sa.Chip(cfg, used).conv2d(x, w, padding=1, hints=sa.ConvHints(x_bound=255, clean=clean))
    assert hinted is not clean and torch.equal(hinted.to(torch.int64), plain.to(torch.int64))
    y, _ = sa.Chip(cfg, unused).linear(x.reshape(3, -1)[:, :20], w.reshape(5, -1)[:, :20],
                                       hints=sa.ConvHints(clean=(c := sa.Chip(cfg).linear(x.reshape(3, -1)[:, :20],
                                                                                          w.reshape(5, -1)[:, :20])[0])))
    assert y is c


def test_chip_checks_its_parts():
    cfg = sa.ArrayConfig(4, 4)
    with pytest.raises(TypeError, match="'config' argument of Chip must be an ArrayConfig"):
        sa.Chip((4, 4))
    with pytest.raises(TypeError, match="'faults' argument of Chip must be a FaultMap or None"):
        sa.Chip(cfg, "chip.npz")
    with pytest.raises(ValueError, match="4x5 array but the array is 4x4"):
        sa.Chip(cfg, sa.FaultMap(4, 5))
    with pytest.raises(ValueError, match="'engine' argument of Chip must be one of fast, cycle"):
        sa.Chip(cfg, engine="rtl")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            sa.Chip(cfg, device="cuda")
    with pytest.raises(ValueError, match="'device' argument of Chip"):
        sa.Chip(cfg, device="gpu0")
    for other in ("meta", "mps", torch.device("meta")):  # torch devices the engines do not run on
        with pytest.raises(ValueError, match="must be a CPU or CUDA device"):
            sa.Chip(cfg, device=other)
    with pytest.raises(ValueError, match="no CUDA device|CUDA device\\(s\\)"):
        sa.Chip(cfg, device=f"cuda:{torch.cuda.device_count()}")
    chip = sa.Chip(cfg, sa.FaultMap(4, 4).add(0, 0, "psum", 3, 1), "cycle")
    assert chip.engine is sa.Engine.CYCLE and chip.faulty and not chip.fault_free().faulty
    assert chip.fault_free("fast").engine is sa.Engine.FAST
    with pytest.raises(AttributeError):
        chip.faults = None
    with pytest.raises(ValueError, match="act_signed"):
        chip.gemm(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.int8))
    assert "cycle engine" in repr(chip)


def test_bmm_checks_its_operands():
    chip = sa.Chip(sa.ArrayConfig(4, 4))
    a = torch.zeros(3, 2, 5, dtype=torch.uint8)
    w = torch.zeros(3, 5, 4, dtype=torch.int8)
    assert chip.bmm(a, w)[0].shape == (3, 2, 4)
    with pytest.raises(TypeError, match="'a' argument of Chip.bmm must be a torch tensor. Got ndarray"):
        chip.bmm(a.numpy(), w)
    with pytest.raises(TypeError, match="'w' argument of Chip.bmm must be a torch tensor. Got list"):
        chip.bmm(a, [[1]])
    with pytest.raises(ValueError, match=r"'a' argument of Chip.bmm must be a 3-D tensor \(G, M, K\).* \(2, 5\)"):
        chip.bmm(a[0], w)
    with pytest.raises(ValueError, match=r"'w' argument of Chip.bmm must be a 3-D tensor \(G, K, N\).* \(3, 5, 0"):
        chip.bmm(a, w[..., :0])
    with pytest.raises(TypeError, match="'a' argument of Chip.bmm must have dtype int8 or uint8 .* Got int32"):
        chip.bmm(a.int(), w)
    with pytest.raises(TypeError, match="'w' argument of Chip.bmm must have dtype .* Got bool"):
        chip.bmm(a, w.bool())
    with pytest.raises(ValueError, match=r"same G and K. Got a \(3, 2, 5\) and w \(2, 5, 4\)"):
        chip.bmm(a, w[:2])
    with pytest.raises(ValueError, match=r"same G and K. Got a \(3, 2, 5\) and w \(3, 4, 4\)"):
        chip.bmm(a, w[:, :4])
    with pytest.raises(ValueError, match="Chip.bmm needs 'act_signed'"):
        chip.bmm(a.float(), w)
    with pytest.raises(TypeError, match="'act_signed' argument of Chip.bmm must be True or False. Got 1"):
        chip.bmm(a.float(), w, act_signed=1)
    with pytest.raises(ValueError, match=r"'act_signed' argument of Chip.bmm must match the dtype of 'a' \(uint8\)"):
        chip.bmm(a, w, act_signed=True)
    assert chip.bmm(a, w, act_signed=False)[0].shape == (3, 2, 4)  # agreeing with the dtype
    assert chip.bmm(a.to(torch.int8), w, act_signed=True)[0].shape == (3, 2, 4)


@settings(max_examples=40, **SETTINGS)
@given(conv_problems())
def test_bmm_of_conv_operands_agrees_with_gemm_on_both_engines(problem):
    """The batch is its GEMMs run one after another: values and one timing per GEMM, both engines."""
    cfg, faults, x, w, _, signed, _, _ = problem
    a = x.reshape(2, x.shape[1], -1)  # (G, M, K) codes
    rng = np.random.default_rng(2)
    weights = torch.from_numpy(rng.integers(-128, 128, size=(2, a.shape[2], 3)).astype(np.int8))
    for engine in ("fast", "cycle"):
        chip = sa.Chip(cfg, faults, engine)
        y, stats = chip.bmm(a, weights, act_signed=signed)
        for g in range(2):
            want, want_stats = chip.gemm(a[g], weights[g], act_signed=signed)
            np.testing.assert_array_equal(y[g].numpy(), want.numpy())
            assert stats[g] == want_stats


@settings(max_examples=120, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), flow=st.sampled_from(["ws", "os", "is"]), psum_bits=st.sampled_from([32, 24, 18]),
       signed=st.booleans(), kernel=st.sampled_from(["int8", "float32", None]), K=st.integers(1, 300),
       extreme=st.booleans())
def test_linear_on_a_fault_free_chip_with_a_known_bound_is_the_cycle_engines(seed, flow, psum_bits, signed, kernel, K,
                                                                            extreme):
    """The fault-free linear layer's own path (the plain product where no sum can reach the psum
    register's range, else the convolution path) on either kernel: the cycle engine's bits,
    wrapped sums included, and its timing. The prepared product (Chip.clean_linear) exists
    exactly where no sum can wrap and gives the same bits."""
    from sysarray.engines import int8

    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if signed else (0, 255)
    B, N = int(rng.integers(1, 12)), int(rng.integers(1, 12))
    pick = (lambda a, b, size: rng.choice(np.array([a, b]), size=size)) if extreme else \
        (lambda a, b, size: rng.integers(a, b + 1, size=size))
    x = torch.from_numpy(pick(lo, hi, (B, K)).astype(np.float32))
    w = torch.from_numpy(pick(-128, 127, (N, K)).astype(np.int8))
    cfg = sa.ArrayConfig(6, 5, flow, psum_bits=psum_bits)
    hints = sa.ConvHints(x_bound=max(-lo, hi))
    int8.FORCE = kernel
    try:
        y, stats = sa.Chip(cfg).linear(x, w, act_signed=signed, hints=hints)
        product = sa.Chip(cfg).clean_linear(w, act_signed=signed, x_bound=hints.x_bound)
        prepared = None if product is None else product(x)
    finally:
        int8.FORCE = None
    want, want_stats = sa.Chip(cfg, engine="cycle").linear(x, w, act_signed=signed)
    np.testing.assert_array_equal(y.to(torch.int64).numpy(), want.to(torch.int64).numpy())
    assert stats == want_stats == gemm_timing(B, K, N, cfg)
    wraps = K * max(-lo, hi) * 128 >= 1 << (psum_bits - 1)
    assert (product is None) == wraps
    if prepared is not None:  # None only where the pinned kernel cannot compute it exactly
        np.testing.assert_array_equal(prepared.to(torch.int64).numpy(), want.to(torch.int64).numpy())
    elif product is not None:
        assert kernel == "float32"


def test_clean_linear_is_offered_only_where_it_applies():
    """No prepared product on a faulty chip, on the cycle engine, without a bound on the input,
    or for a weight that is not a tensor (a one-line error)."""
    cfg = sa.ArrayConfig(4, 4)
    w = torch.ones(3, 5, dtype=torch.int8)
    assert sa.Chip(cfg).clean_linear(w, x_bound=255) is not None
    assert sa.Chip(cfg, sa.FaultMap.random(cfg, pe_rate=0.5, seed=1)).clean_linear(w, x_bound=255) is None
    assert sa.Chip(cfg, engine="cycle").clean_linear(w, x_bound=255) is None
    assert sa.Chip(cfg).clean_linear(w) is None
    with pytest.raises(TypeError, match="weight"):
        sa.Chip(cfg).clean_linear([[1, 2]], x_bound=255)
