"""The fused post-processing kernels equal the plain int64 arithmetic they replace, bit for bit.

``requantize_clamp`` and ``rescale_add`` run float64 kernels on CPU when their exactness bounds
hold and int64 kernels otherwise (``requantize_clamp`` chooses between them by measurement where
both apply); both must give exactly what the int64 torch formulas give, at the edges of the int32
accumulator range and of every multiplier and shift.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from accel_models import quant

INT32 = (-(1 << 31), (1 << 31) - 1)


def _reference_requantize(acc, bias, m0, shift, zp, lo, hi):
    shape = (1, -1, 1)
    q = quant.requantize(acc.to(torch.int64) + bias.view(shape), m0.view(shape), shift.view(shape))
    return (q + zp).clamp(lo, hi).to(torch.float64)


@st.composite
def requantize_cases(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    b, n, l = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 40))
    style = draw(st.sampled_from(["int32", "extreme", "small"]))
    if style == "extreme":
        acc = rng.choice(np.array([INT32[0], INT32[1], 0, -1, 1, 1 << 24, -(1 << 24)]), size=(b, n, l))
    elif style == "small":
        acc = rng.integers(-1000, 1000, size=(b, n, l))
    else:
        acc = rng.integers(INT32[0], INT32[1], size=(b, n, l), endpoint=True)
    wide = draw(st.booleans())  # bias / shift outside the float64 kernel's bounds: the int64 kernel
    bias = rng.integers(-(1 << 40) if wide else -(1 << 31), (1 << 40) if wide else (1 << 31), size=n)
    m0 = rng.integers(1 << 30, 1 << 31, size=n)
    shift = rng.integers(1 if wide else 16, 63 if wide else 53, size=n)
    dtype = draw(st.sampled_from([torch.int32, torch.int64, torch.float32]))
    acc_t = torch.from_numpy(acc)
    if dtype is torch.float32:
        acc_t = acc_t.clamp(-(1 << 24), 1 << 24)  # float32 holds integers exactly up to 2**24
    zp = draw(st.integers(-128, 255))
    lo, hi = draw(st.sampled_from([(0, 255), (-128, 127), (INT32[0], INT32[1])]))
    return acc_t.to(dtype), torch.from_numpy(bias), torch.from_numpy(m0), torch.from_numpy(shift), zp, lo, hi


@settings(max_examples=300, deadline=None)
@given(requantize_cases(), st.sampled_from(["3d", "nchw", "nhwc", "linear"]), st.sampled_from(["float64", "int64", None]))
def test_requantize_clamp_equals_int64_formula(case, layout, kernel):
    """On (B, N, L) accumulators, on (B, N, H, W) ones stored either way (channels-last data
    keeps its layout: the program runs channels-last on CPU) and on a linear layer's (B, N), with
    either kernel pinned where the float64 one applies, or measured."""
    acc, bias, m0, shift, zp, lo, hi = case
    want = _reference_requantize(acc, bias, m0, shift, zp, lo, hi).to(torch.float32).to(torch.float64)
    if layout in ("nchw", "nhwc"):
        B, N, L = acc.shape
        h = next(d for d in (5, 4, 3, 2, 1) if L % d == 0)
        acc, want = acc.view(B, N, h, L // h), want.view(B, N, h, L // h)
        if layout == "nhwc":
            acc = acc.contiguous(memory_format=torch.channels_last)
    if layout == "linear":
        acc, want = acc[..., 0], want[..., 0]
    quant._REQUANTIZE.force = kernel
    try:
        got = quant.requantize_clamp(acc, bias, m0, shift, zp, lo, hi)
    finally:
        quant._REQUANTIZE.force = None
    if layout == "nhwc":
        assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.to(torch.float64), want)


def _least_saturating(m, sh, zp, lo, hi):
    """The least v >= 0 whose code (int64 formula, Python integers) is >= hi and whose -v's is
    <= lo, by bisection on the two monotone conditions."""
    code = lambda v: ((v * m + (1 << (sh - 1))) >> sh) + zp  # noqa: E731

    def least(ok):
        a, b = 0, 1 << 80
        while a < b:
            mid = (a + b) // 2
            a, b = (a, mid) if ok(mid) else (mid + 1, b)
        return a
    return 0 if m == 0 else max(least(lambda v: code(v) >= hi), least(lambda v: code(-v) <= lo))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(-128, 255), st.sampled_from([(0, 255), (-128, 127), (0, 6), INT32]),
       st.integers(16, 52), st.booleans())
def test_short_kernels_equal_int64_formula_around_their_bound(seed, zp, clamp, top_shift, channels_last):
    """The one-product float64 kernels' bound is the least sum whose codes saturate both ways
    (found here by bisection), they apply exactly where it times M0 plus the rounding term stays
    below 2**53, and then they give the int64 formula's codes at the bound, one inside and one
    past it, at the int32 extremes (far past it, where the product is no longer exact) and at
    random."""
    rng = np.random.default_rng(seed)
    n = 5
    bias = rng.integers(-(1 << 31), 1 << 31, size=n)
    m0 = rng.integers(0, 1 << 31, size=n)
    m0[0] = 0 if seed % 5 == 0 else m0[0]
    shift = rng.integers(16, top_shift + 1, size=n)
    lo, hi = clamp
    c = quant._short_constants(bias, m0, shift, zp, lo, hi)
    least = [_least_saturating(int(m), int(sh), zp, lo, hi) for m, sh in zip(m0, shift)]
    exact = all(b * int(m) + (1 << (int(sh) - 1)) < 1 << 53 for b, m, sh in zip(least, m0, shift))
    assert (c.shape[1] == n) == exact
    if not exact:
        return
    assert c[1].astype(np.int64).tolist() == least
    edges = np.array([[b, b - 1, b + 1, -b, 1 - b, -b - 1] for b in least])  # sums acc + bias
    acc = np.concatenate([edges - bias[:, None], np.tile(INT32, (n, 1)), rng.integers(*INT32, size=(n, 20))], axis=1)
    acc = np.clip(acc, *INT32)[None]
    want = _reference_requantize(torch.from_numpy(acc), torch.from_numpy(bias), torch.from_numpy(m0),
                                 torch.from_numpy(shift), zp, lo, hi).numpy().astype(np.float32)  # codes as float32
    out = np.empty(acc.shape, dtype=np.float32)
    if channels_last:
        quant._requantize_clamp_short_nlast_kernel.serial(np.ascontiguousarray(acc.transpose(0, 2, 1)), c, zp, lo, hi,
                                                        out.transpose(0, 2, 1))
    else:
        quant._requantize_clamp_short_kernel.serial(acc, c, zp, lo, hi, out)
    np.testing.assert_array_equal(out, want)


def test_requantize_clamp_uses_both_kernels():
    """The bounds check picks the float64 kernel for real layers and the int64 one beyond them."""
    acc = torch.zeros(1, 2, 3, dtype=torch.int32)
    m0 = torch.tensor([1 << 30, (1 << 31) - 1])
    assert quant._float64_requantize_ok(acc, torch.tensor([5, -7]), m0, torch.tensor([16, 52]))
    assert not quant._float64_requantize_ok(acc, torch.tensor([1 << 32, 0]), m0, torch.tensor([20, 20]))
    assert not quant._float64_requantize_ok(acc, torch.tensor([0, 0]), m0, torch.tensor([15, 20]))
    assert not quant._float64_requantize_ok(torch.full((1, 2, 3), 1 << 33), torch.tensor([0, 0]), m0,
                                            torch.tensor([20, 20]))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(-128, 255), st.integers(-128, 255),
       st.sampled_from([1, 2**10, 2**20, 2**30, 2**41 - 1, 2**45]), st.sampled_from([1, 2**19, 2**21 + 3, 2**40]),
       st.sampled_from([1, 20, 31, 52, 60]), st.integers(-128, 255), st.booleans(),
       st.sampled_from(["nchw", "nhwc", "mixed"]))
def test_rescale_add_equals_int64_formula(seed, za, zb, ma, mb, shift, zp, negative, layout):
    """Any pair of layouts (channels-last, plain, one of each) gives the same values."""
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(rng.integers(-128, 256, size=(2, 3, 5, 4))).float()
    b = torch.from_numpy(rng.integers(-128, 256, size=(2, 3, 5, 4))).float()
    if negative:
        ma = -ma
    t = (a.to(torch.int64) - za) * ma + (b.to(torch.int64) - zb) * mb
    want = (torch.bitwise_right_shift(t + (1 << (shift - 1)), shift) + zp).clamp(-128, 255).to(torch.float32)
    if layout != "nchw":
        a = a.contiguous(memory_format=torch.channels_last)
    if layout == "nhwc":
        b = b.contiguous(memory_format=torch.channels_last)
    got = quant.rescale_add(a, b, za, ma, zb, mb, shift, zp, -128, 255)
    assert torch.equal(got, want)



@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(-128, 255), st.sampled_from([(0, 255), (-128, 127), (0, 6)]),
       st.booleans())
def test_requantize_saturates_means_one_code_beyond_the_bound(seed, zp, clamp, zero_multiplier):
    """Where ``requantize_saturates`` says so, every int32 accumulator at or beyond the bound gets
    the code of the bound (the fast engine then writes faulty accumulators clamped there); the
    draws cover both answers (multipliers from far below to far above saturation)."""
    rng = np.random.default_rng(seed)
    n, bound = 4, 1 << 24
    bias = torch.from_numpy(rng.integers(-(1 << 31), 1 << 31, size=n))
    shift = torch.from_numpy(rng.integers(16, 53, size=n))
    m0 = torch.from_numpy(rng.integers(0, 1 << 31, size=n))
    if zero_multiplier:
        m0[0] = 0
    lo, hi = clamp
    if not quant.requantize_saturates(bias, m0, shift, zp, lo, hi, bound):
        # then some channel's code moves beyond the bound, or the parameters leave the float64 kernel
        edge = torch.tensor([[bound], [-bound]], dtype=torch.int64).expand(2, n).reshape(2, n, 1)
        q = _reference_requantize(edge, bias, m0, shift, zp, lo, hi)[:, :, 0]
        flat = m0 == 0
        assert not (((q[0] == hi) | flat).all() and ((q[1] == lo) | flat).all())
        return
    acc = np.concatenate([rng.integers(bound, 1 << 31, size=(1, n, 30)), rng.integers(-(1 << 31), -bound + 1, size=(1, n, 30)),
                          np.array([INT32[1], INT32[0]] * n).reshape(1, n, 2)], axis=2)
    got = _reference_requantize(torch.from_numpy(acc), bias, m0, shift, zp, lo, hi)
    at = _reference_requantize(torch.from_numpy(np.sign(acc) * bound), bias, m0, shift, zp, lo, hi)
    assert torch.equal(got, at)


def test_requantize_saturates_on_a_real_layer_only_past_its_clamp():
    m0, shift, bias = torch.tensor([1 << 30, 1 << 30]), torch.tensor([39, 39]), torch.tensor([5, -5])
    assert quant.requantize_saturates(bias, m0, shift, 0, 0, 255, 1 << 24)  # 2**24 / 2**9 >> 255
    assert not quant.requantize_saturates(bias, m0, torch.tensor([39, 52]), 0, 0, 255, 1 << 24)  # 2**24 / 2**22 = 4


def test_requantize_clamp_takes_the_int64_formula_where_its_product_wraps():
    """(acc + bias) * M0 past 2**63 with |acc + bias| < 2**33: the float64 kernel would give the
    unwrapped value, so the int64 kernel runs and both paths keep requantize's int64 semantics."""
    acc = torch.tensor([[[1681942171, -704178231, 5]]], dtype=torch.int32)
    bias, m0, shift = torch.tensor([3279327780]), torch.tensor([1940271679]), torch.tensor([49])
    assert not quant._float64_requantize_ok(acc, bias, m0, shift)
    got = quant.requantize_clamp(acc, bias, m0, shift, 0, 0, 255).to(torch.float64)
    assert torch.equal(got, _reference_requantize(acc, bias, m0, shift, 0, 0, 255))
    assert quant._float64_requantize_ok(acc, torch.tensor([1 << 20]), m0, shift)  # real layers' range


def test_float64_check_settles_products_near_2_63_exactly():
    # (2**31 + 2**31) * (2**31 - 1) + 2**15 = 2**63 - 2**32 + 2**15: below 2**63, though float64
    # cannot tell it from 2**63
    acc = torch.zeros(1, 1, 1, dtype=torch.int32)
    m0, shift = torch.tensor([(1 << 31) - 1]), torch.tensor([16])
    assert quant._float64_requantize_ok(acc, torch.tensor([1 << 31]), m0, shift)
    assert not quant._float64_requantize_ok(acc, torch.tensor([(1 << 31) + 3]), m0, shift)  # 2**63 + 2**31 - 3


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), as_float=st.booleans(), mode=st.sampled_from(["add", "replace", "read back"]),
       order=st.sampled_from(["planes", "padded planes", "pixels"]), parallel=st.booleans(),
       kernel=st.sampled_from(["float64", "int64"]))
def test_requantize_with_a_correction_equals_correcting_first(seed, as_float, mode, order, parallel, kernel):
    """requantize_clamp(acc, ..., correction=c) on a channels-last acc equals requantizing the
    sums sysarray's apply_fix corrects, for every kind of correction (totals added or replacing,
    plane or pixel order, or the sums read back through a register), float32 or int32 sums, one
    tile of pixels or several (and several tasks of tiles per image), on both kernels and threaded or not."""
    from sysarray.corrections import Correction
    from sysarray.engines.conv.fix import apply_fix

    rng = np.random.default_rng(seed)
    B, N = int(rng.integers(1, 4)), int(rng.integers(1, 9))
    # one tile of pixels, several, or several parallel tasks of tiles per image (corrections.task_pixels)
    H, W = (int(rng.integers(1, 5)), int(rng.integers(1, 5))) if seed % 2 else (9, 15) if seed % 4 else (24, 23)
    H, W = (H, W + 1) if H * W == 1 else (H, W)  # 1x1 images are no channels-last layout of their own
    top = (1 << 24) if as_float else (1 << 31)
    y = torch.from_numpy(rng.integers(-top, top, size=(B, N, H, W), dtype=np.int64))
    y = (y.to(torch.float32) if as_float else y.to(torch.int32)).contiguous(memory_format=torch.channels_last)
    O = int(rng.integers(1, N + 1))
    n_idx = np.sort(rng.choice(N, size=O, replace=False)).astype(np.int64)
    tot = rng.integers(-(1 << 31), 1 << 31, size=(B, O, H * W), dtype=np.int64).astype(np.int32)
    if mode == "read back":
        stuck = rng.integers(0, 1 << 32, size=O) & rng.integers(0, 1 << 32, size=O)
        keep, ones = (~stuck & 0xFFFFFFFF).astype(np.uint32).view(np.int32), (stuck & rng.integers(0, 1 << 32, size=O))
        c = Correction(n_idx, None, True, keep=keep, ones=ones.astype(np.uint32).view(np.int32))
    elif order == "pixels":
        c = Correction(n_idx, np.ascontiguousarray(tot.transpose(0, 2, 1)), mode == "add", pixel_major=True)
    else:
        pad = 3 if order == "padded planes" else 0
        padded = np.zeros((B, O, H * W + pad), dtype=np.int32)
        padded[..., :H * W] = tot
        c = Correction(n_idx, padded, mode == "add")
    bias = torch.from_numpy(rng.integers(-1000, 1000, size=N))
    m0 = torch.from_numpy(rng.integers(1 << 30, 1 << 31, size=N))
    shift = torch.from_numpy(rng.integers(20, 45, size=N))
    zp, lo, hi = int(rng.integers(-128, 128)), -128, 127
    kernels = (quant._requantize_corrected_kernel, quant._requantize_corrected_f64_kernel)
    quant._REQUANTIZE.force = kernel
    for k in kernels:
        k.force = "parallel" if parallel else "serial"
    try:
        got = quant.requantize_clamp(y, bias, m0, shift, zp, lo, hi, correction=c)
    finally:
        quant._REQUANTIZE.force = None
        for k in kernels:
            k.force = None
    fixed = y.to(torch.int32).contiguous(memory_format=torch.channels_last)
    apply_fix(fixed, c)
    want = _reference_requantize(fixed.reshape(B, N, -1), bias, m0, shift, zp, lo, hi).reshape(B, N, H, W)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.to(torch.float64), want, rtol=0, atol=0)
