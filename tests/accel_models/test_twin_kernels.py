"""The fake-quant twin's numba kernels against the torch arithmetic they replace."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from accel_models.quant import WEIGHT_QMAX, quantize_multiplier, quantize_weight
from accel_models.twin_kernels import clamped_grad_planes, clamped_grad_rows, layer_codes, model_codes, model_codes_grad


@st.composite
def weight_rows(draw):
    """(N, K) float32 weights: random values, rows of exact ties (``w / scale`` a half-integer
    for a power-of-two scale), rows near ties for another scale, and all-zero rows."""
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 40))
    rows = []
    for _ in range(n):
        kind = draw(st.sampled_from(["random", "ties", "near", "zero"]))
        if kind == "random":
            row = draw(st.lists(st.floats(-4, 4, width=32), min_size=k, max_size=k))
        elif kind == "zero":
            row = [0.0] * k
        else:
            s = 2.0 ** draw(st.integers(-12, 2)) if kind == "ties" else draw(st.floats(1e-4, 0.1))
            halves = draw(st.lists(st.integers(-254, 254), min_size=k, max_size=k))
            row = [127 * s] + [h / 2 * s for h in halves[1:]]
        rows.append(row)
    return np.asarray(rows, dtype=np.float32)


@settings(max_examples=300, deadline=None)
@given(w=weight_rows(), data=st.data())
def test_layer_codes_equal_the_torch_quantization(w, data):
    n = w.shape[0]
    b = np.asarray(data.draw(st.lists(st.floats(-3, 3), min_size=n, max_size=n)))
    s_in, z_in = data.draw(st.floats(1e-3, 0.1)), data.draw(st.integers(-128, 127))
    out_scale = data.draw(st.sampled_from([0.0, 0.05, 1e-3]))
    codes, bq = np.empty_like(w), np.empty(n, np.float32)
    acc_scale, mult, scale = np.empty(n), np.empty(n), np.empty(n)
    m0, shift = np.empty(n, np.int64), np.empty(n, np.int64)
    layer_codes(w, b, s_in, float(z_in), out_scale, float(WEIGHT_QMAX), codes, bq, acc_scale, mult, m0, shift, scale)
    q, ref_scale = quantize_weight(torch.from_numpy(w))
    np.testing.assert_array_equal(codes, q.numpy().astype(np.float32))
    np.testing.assert_array_equal(scale, ref_scale.numpy())
    ref_acc = s_in * ref_scale.numpy()
    np.testing.assert_array_equal(acc_scale, ref_acc)
    ref_bq = np.round(b / ref_acc).astype(np.float32) - np.float32(z_in) * q.numpy().astype(np.float32).sum(1)
    np.testing.assert_array_equal(bq, ref_bq)
    ref_mult = ref_acc if out_scale == 0.0 else ref_acc / out_scale
    np.testing.assert_array_equal(mult, ref_mult)
    assert [(int(a), int(c)) for a, c in zip(m0, shift)] == [quantize_multiplier(float(m)) for m in ref_mult]


@settings(max_examples=100, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 30)), lo=st.integers(-128, 0),
       width=st.integers(0, 255), seed=st.integers(0, 2**31 - 1))
def test_clamped_grad_is_the_gradient_of_a_clamp(shape, lo, width, seed):
    gen = torch.Generator().manual_seed(seed)
    hi = lo + width
    grad = torch.randn(shape, generator=gen)
    raw = torch.randint(lo - 3, hi + 4, shape, generator=gen).float()  # the bounds themselves included
    mult = torch.rand(shape[1], generator=gen, dtype=torch.float64).float()
    x = raw.clone().requires_grad_()
    (torch.clamp(x, lo, hi) * 1.0).backward(grad)
    expected = x.grad * mult.view(1, -1, 1)
    out, sums = torch.empty_like(grad), np.empty(shape[:2], dtype=np.float32)
    clamped_grad_planes(grad.numpy(), raw.numpy(), mult.numpy(), np.float32(lo), np.float32(hi), out.numpy(), sums,
                        work=grad.numel())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.from_numpy(sums), expected.sum(dim=2), rtol=1e-5, atol=1e-5)
    rows = shape[0] * shape[2]
    g2, r2 = grad.permute(0, 2, 1).reshape(rows, -1).contiguous(), raw.permute(0, 2, 1).reshape(rows, -1).contiguous()
    out2 = torch.empty_like(g2)
    clamped_grad_rows(g2.numpy(), r2.numpy(), mult.numpy(), np.float32(lo), np.float32(hi), out2.numpy(),
                      work=g2.numel())
    torch.testing.assert_close(out2, expected.permute(0, 2, 1).reshape(rows, -1), rtol=0, atol=0)


def test_layer_codes_fixed_point_at_powers_of_two():
    # scale 1 (max |w| = 127): mult = s_in exactly, a power of two (mantissa 0.5) and a value whose
    # mantissa rounds up to 2**31 (M0 carries into the shift)
    w = np.array([[127.0, -3.0]], dtype=np.float32)
    for s_in in (2.0**-7, 2.0**-7 * (1 - 2.0**-40)):
        out = [np.empty_like(w), np.empty(1, np.float32), np.empty(1), np.empty(1), np.empty(1, np.int64),
               np.empty(1, np.int64), np.empty(1)]
        layer_codes(w, np.zeros(1), s_in, 0.0, 0.0, float(WEIGHT_QMAX), *out)
        assert (int(out[4][0]), int(out[5][0])) == quantize_multiplier(s_in) == (1 << 30, 37)


@settings(max_examples=100, deadline=None)
@given(layers=st.lists(weight_rows(), min_size=1, max_size=4), data=st.data())
def test_model_codes_are_each_layers_codes(layers, data):
    # one call over every layer gives each layer's layer_codes, and the gradients the formula of one layer
    L = len(layers)
    rows = np.array([w.shape[0] for w in layers], dtype=np.int64)
    cols = np.array([w.shape[1] for w in layers], dtype=np.int64)
    n = int(rows.sum())
    b = np.asarray(data.draw(st.lists(st.floats(-3, 3), min_size=n, max_size=n)))
    s_in = np.array(data.draw(st.lists(st.floats(1e-3, 0.1), min_size=L, max_size=L)))
    z_in = np.array(data.draw(st.lists(st.integers(-128, 127), min_size=L, max_size=L)), dtype=np.float64)
    out_scale = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.05, 1e-3]), min_size=L, max_size=L)))
    w = np.concatenate([x.reshape(-1) for x in layers])
    got = [np.empty_like(w), np.empty(n, np.float32), np.empty(n), np.empty(n), np.empty(n, np.int64),
           np.empty(n, np.int64), np.empty(n)]
    l1 = np.empty(L)
    model_codes(w, b, rows, cols, s_in, z_in, out_scale, float(WEIGHT_QMAX), *got, l1)
    g_codes = np.asarray(data.draw(st.lists(st.floats(-2, 2, width=32), min_size=len(w), max_size=len(w))),
                         dtype=np.float32)
    g_bq = np.asarray(data.draw(st.lists(st.floats(-2, 2, width=32), min_size=n, max_size=n)), dtype=np.float32)
    scale32, acc32 = got[6].astype(np.float32), got[2].astype(np.float32)
    g_w, g_b = np.empty_like(g_codes), np.empty_like(g_bq)
    model_codes_grad(g_codes, g_bq, rows, cols, z_in, scale32, acc32, g_w, g_b)
    wo = no = 0
    for i, x in enumerate(layers):
        k, r = x.shape[1], x.shape[0]
        ref = [np.empty_like(x), np.empty(r, np.float32), np.empty(r), np.empty(r), np.empty(r, np.int64),
               np.empty(r, np.int64), np.empty(r)]
        layer_codes(x, b[no:no + r], s_in[i], z_in[i], out_scale[i], float(WEIGHT_QMAX), *ref)
        np.testing.assert_array_equal(got[0][wo:wo + r * k].reshape(r, k), ref[0])
        for a, e in zip(got[1:], ref[1:]):
            np.testing.assert_array_equal(a[no:no + r], e)
        assert l1[i] == np.abs(ref[0].astype(np.float64)).sum(axis=1).max()
        # the straight-through gradients as torch computes them in float32
        gc = torch.from_numpy(g_codes[wo:wo + r * k].reshape(r, k))
        gb = torch.from_numpy(g_bq[no:no + r])
        expected = (gc - float(z_in[i]) * gb[:, None]) / torch.from_numpy(scale32[no:no + r])[:, None]
        np.testing.assert_array_equal(g_w[wo:wo + r * k].reshape(r, k), expected.numpy())
        np.testing.assert_array_equal(g_b[no:no + r], (gb / torch.from_numpy(acc32[no:no + r])).numpy())
        wo, no = wo + r * k, no + r
