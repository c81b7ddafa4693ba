"""``sysarray.mapping``: the one rule of which PE holds which element, against explicit loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sysarray import ArrayConfig, Dataflow, Register, mapping

shapes = st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 30), st.integers(1, 30))


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**32 - 1))
def test_per_element_is_the_value_of_the_holding_pe(shape, seed):
    R, C, I, J = shape
    per_pe = np.random.default_rng(seed).integers(-5, 5, size=(R, C))
    want = np.array([[per_pe[i % R, j % C] for j in range(J)] for i in range(I)])
    np.testing.assert_array_equal(mapping.per_element(per_pe, (I, J)), want)
    np.testing.assert_array_equal(mapping.per_element(torch.from_numpy(per_pe), (I, J)).numpy(), want)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**32 - 1))
def test_per_pe_sum_adds_the_elements_each_pe_holds(shape, seed):
    R, C, I, J = shape
    values = np.random.default_rng(seed).random((I, J))
    want = np.zeros((R, C))
    for i in range(I):
        for j in range(J):
            r, c = mapping.pe_of(i, j, R, C)
            want[r, c] += values[i, j]
    np.testing.assert_allclose(mapping.per_pe_sum(values, R, C), want, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_pe_elements_and_element_of_are_the_inverse_of_pe_of(shape):
    R, C, I, J = shape
    grid = np.arange(I * J).reshape(I, J)
    for r in range(R):
        for c in range(C):
            held = grid[mapping.pe_elements(r, c, R, C)].ravel().tolist()
            assert held == [i * J + j for i in range(I) for j in range(J) if (i % R, j % C) == (r, c)]
    for i in range(I):
        for j in range(J):
            r, c = mapping.pe_of(i, j, R, C)
            assert mapping.element_of(i // R, j // C, r, c, R, C) == (i, j)


@pytest.mark.parametrize("flow", ["ws", "os", "is"])
def test_weight_pe_totals_follow_each_dataflows_weight_path(flow):
    """WS: the score stays with the PE holding the weight; IS: spread over the row k mod R the
    weight streams along; OS: over the column n mod C it streams down. Totals are conserved."""
    R, C, K, N = 3, 4, 7, 9
    s = np.random.default_rng(0).random((K, N))
    cfg = ArrayConfig(R, C, flow)
    want = np.zeros((R, C))
    for k in range(K):
        for n in range(N):
            if flow == "ws":
                want[k % R, n % C] += s[k, n]
            elif flow == "is":
                want[k % R, :] += s[k, n] / C
            else:
                want[:, n % C] += s[k, n] / R
    got = mapping.weight_pe_totals(s, cfg)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.sum() == pytest.approx(s.sum())


def test_layouts_name_the_dimensions_and_the_stationary_register():
    M, K, N = 5, 6, 7
    for flow, layout in mapping.LAYOUTS.items():
        dims = {"M": M, "K": K, "N": N}
        assert mapping.spatial_dims(M, K, N, flow) == (dims[layout.rows], dims[layout.cols], dims[layout.streamed])
    assert mapping.LAYOUTS[Dataflow.WS].stationary is Register.WEIGHT
    assert mapping.LAYOUTS[Dataflow.IS].stationary is Register.ACT
    assert mapping.LAYOUTS[Dataflow.OS].stationary is Register.PSUM
    assert mapping.spatial_dims(M, K, N, "WS") == (K, N, M)
    with pytest.raises(ValueError, match="'dataflow' argument of spatial_dims must be one of ws, os, is"):
        mapping.spatial_dims(M, K, N, "xs")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 1),
       st.integers(1, 2), st.integers(0, 2**32 - 1))
def test_im2col_is_the_convolutions_gemm_in_pytorch_k_order(cin, n, kh, kw, pad, stride, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 9, size=(2, cin, 5, 6)).astype(np.float64))
    w = torch.from_numpy(rng.integers(-4, 5, size=(n, cin, kh, kw)).astype(np.float64))
    a = mapping.im2col(x, (kh, kw), (stride, stride), (pad, pad), 3.0)
    y = a @ w.reshape(n, -1).t()  # (B*oh*ow, N), K in (c, kh, kw) order
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (pad,) * 4, value=3.0), w, stride=stride)
    assert torch.equal(y.reshape(2, -1, n).transpose(1, 2).reshape(ref.shape), ref)
