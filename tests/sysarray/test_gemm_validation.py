"""simulate_gemm refuses bad input with a clear error that names the problem."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sysarray as sa

A = np.ones((4, 5), dtype=np.int8)
W = np.ones((5, 3), dtype=np.int8)
CFG = sa.ArrayConfig(4, 4, "ws")


@pytest.mark.parametrize("engine", ["fast", "cycle"])
@pytest.mark.parametrize(
    "a, w, match",
    [
        (A.astype(np.int16), W, "'a' argument of simulate_gemm must have dtype int8 or uint8. Got int16"),
        (A.astype(np.float32), W, "dtype int8 or uint8. Got float32"),
        (A, W.astype(np.uint8), "'w' argument of simulate_gemm must have dtype int8. Got uint8"),
        (A, np.ones((6, 3), np.int8), r"same K. Got a \(4, 5\) and w \(6, 3\)"),
        (A[0], W, r"must be 2-D. Got shape \(5,\)"),
        (np.ones((0, 5), np.int8), W, "must not be empty"),
        (A.tolist(), W, "numpy array or torch tensor. Got list"),
        (torch.from_numpy(A), W, "must both be numpy arrays or both torch tensors"),
    ],
)
def test_bad_operands(engine, a, w, match):
    with pytest.raises((TypeError, ValueError), match=match):
        sa.simulate_gemm(a, w, CFG, engine=engine)


def test_fault_map_of_another_array_size():
    fm = sa.FaultMap(8, 8).add(0, 0, "psum", 3, 1)
    with pytest.raises(ValueError, match="fault map is for a 8x8 array but the array is 4x4"):
        sa.simulate_gemm(A, W, CFG, faults=fm)


def test_psum_bit_outside_a_narrow_register():
    fm = sa.FaultMap(4, 4).add(1, 1, "psum", 25, 1)
    with pytest.raises(ValueError, match=r"bit 25, outside the 20-bit psum register \(bits 0..19\)"):
        sa.simulate_gemm(A, W, CFG.replace(psum_bits=20), faults=fm)


def test_unknown_engine_and_bad_config_types():
    with pytest.raises(ValueError, match="'engine' argument of simulate_gemm must be one of fast, cycle. Got 'gpu'"):
        sa.simulate_gemm(A, W, CFG, engine="gpu")
    with pytest.raises(TypeError, match="'cfg' argument of simulate_gemm must be an ArrayConfig. Got dict"):
        sa.simulate_gemm(A, W, {"rows": 4})
    with pytest.raises(TypeError, match="'faults' argument of simulate_gemm must be a FaultMap or None. Got str"):
        sa.simulate_gemm(A, W, CFG, faults="chip.npz")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rows=0, cols=4), "'rows' argument of ArrayConfig must be a positive integer. Got 0"),
        (dict(rows=4, cols=2.5), "'cols' argument of ArrayConfig must be a positive integer. Got 2.5"),
        (dict(rows=4, cols=4, dataflow="rs"), "'dataflow' argument of ArrayConfig must be one of ws, os, is. Got 'rs'"),
        (dict(rows=4, cols=4, psum_bits=40), r"'psum_bits' argument of ArrayConfig must be an integer within 17..32. Got 40"),
        (dict(rows=4, cols=4, bypass="yes"), "'bypass' argument of ArrayConfig must be True or False"),
    ],
)
def test_bad_array_config(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        sa.ArrayConfig(**kwargs)


def test_config_round_trip_and_presets():
    for name, cfg in sa.PRESETS.items():
        assert sa.ArrayConfig.from_dict(cfg.to_dict()) == cfg
        assert sa.ArrayConfig.preset(name) == cfg
    assert sa.ArrayConfig.preset("gemmini16") == sa.ArrayConfig(16, 16, "ws", psum_bits=20)
    assert sa.ArrayConfig.preset("tpu256").shape == (256, 256)
    with pytest.raises(ValueError, match="Unknown array preset 'tpu9'. Known presets: gemmini16"):
        sa.ArrayConfig.preset("tpu9")
    with pytest.raises(ValueError, match="version 2 is not supported"):
        sa.ArrayConfig.from_dict({**sa.PRESETS["scale32"].to_dict(), "version": 2})
    assert sa.parse_array("16x32") == (16, 32)
    with pytest.raises(ValueError, match="ROWSxCOLS"):
        sa.parse_array("16by32")


def test_results_are_reproducible_bytes():
    """Same inputs, same bytes out, for both engines."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (40, 70)).astype(np.uint8)
    w = rng.integers(-128, 128, (70, 30)).astype(np.int8)
    cfg = sa.ArrayConfig(8, 8, "ws")
    fm = sa.FaultMap.random(cfg, pe_rate=0.1, seed=3)
    for engine in ("fast", "cycle"):
        y1, s1 = sa.simulate_gemm(a, w, cfg, faults=fm, engine=engine)
        y2, s2 = sa.simulate_gemm(a, w, cfg, faults=fm, engine=engine)
        assert y1.tobytes() == y2.tobytes() and s1 == s2
