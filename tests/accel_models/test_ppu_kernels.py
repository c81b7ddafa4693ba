"""The post-processing unit's fused CPU kernels equal its torch formulas (the twin's and CUDA's)."""
from __future__ import annotations

import contextlib

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from accel_models.ppu import Div, Mul
from sysarray.parallel import KERNELS


@contextlib.contextmanager
def compiled(parallel: bool, *kernels):
    """Run ``kernels`` on their parallel or serial compilation for the duration."""
    for kernel in kernels:
        kernel.force = "parallel" if parallel else "serial"
    try:
        yield
    finally:
        for kernel in kernels:
            kernel.force = None

SHAPES = st.sampled_from([
    ((2, 3, 4, 5), (2, 3, 1, 1)),  # a squeeze-excite gate
    ((2, 3, 1, 1), (2, 3, 4, 5)),
    ((2, 3, 4, 5), (2, 3, 4, 5)),
    ((6, 7), (6, 1)),
    ((5,), ()),
    ((1, 3, 4, 5), (2, 1, 4, 1)),  # both broadcast
])


@settings(max_examples=60, deadline=None)
@given(shapes=SHAPES, unit=st.sampled_from([Mul, Div]), seed=st.integers(0, 2**31 - 1),
       za=st.integers(-128, 255), zb=st.integers(-128, 255), m0=st.integers(0, (1 << 31) - 1),
       shift=st.integers(1, 40), zp=st.integers(-128, 255), channels_last=st.booleans(),
       parallel=st.booleans())
def test_binary_kernels_equal_the_integer_formula(shapes, unit, seed, za, zb, m0, shift, zp, channels_last, parallel):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 256, shapes[0], generator=g).float()
    b = torch.randint(-128, 256, shapes[1], generator=g).float()
    if channels_last and a.dim() == 4:
        a = a.contiguous(memory_format=torch.channels_last)
    lo, hi = (0, 255) if zp >= 0 else (-128, 127)
    op = unit("a", "b", "out", za, zb, m0, shift, zp, lo, hi, 1.0)
    kernel = type(op)._kernel
    assert kernel in KERNELS
    with compiled(parallel, kernel):
        got = op.run([a, b], None)
    want = op._integer(a.to(torch.int64), b.to(torch.int64)).to(torch.float32)
    assert got.shape == want.shape
    assert torch.equal(got, want)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 200), size=st.integers(1, 300),
       scale=st.sampled_from([1e-4, 0.02, 0.3, 5.0]), zero_point=st.integers(-128, 255), parallel=st.booleans())
def test_softmax_kernel_equals_the_integer_formula(seed, rows, size, scale, zero_point, parallel):
    """Rows of any length (one value, the width of the vector lanes, wider), ties and the extreme
    codes, on either compilation: the kernel's integer maximum and sum and one float64 quotient
    give the torch formula's codes."""
    from accel_models.ppu import Softmax, softmax_table
    from accel_models.ppu_kernels import softmax_rows

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (rows, size), generator=g).float()
    q[0] = q[0, 0]  # a row of ties
    q[-1, ::2] = -128.0  # the whole range of differences in one row
    q[-1, 0] = 127.0
    op = Softmax("x", "y", -1, softmax_table(scale), scale, zero_point)
    with compiled(parallel, softmax_rows):
        got = op.run([q], None)
    assert torch.equal(got, op._integer(q).to(torch.float32))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(3, 5), (2, 4, 3, 3), (40_000,), (2, 16, 9, 9)]),
       per_channel=st.booleans(), signed=st.booleans(), channels_last=st.booleans(), parallel=st.booleans())
def test_lookup_table_kernels_equal_the_table_index(seed, shape, per_channel, signed, channels_last, parallel):
    """One table or one per channel, channels-first or -last, on either compilation: every code
    of the input's range reads its own entry."""
    from accel_models.ppu import Lut
    from accel_models.ppu_kernels import lut_codes, lut_flat

    g = torch.Generator().manual_seed(seed)
    qmin = -128 if signed else 0
    q = torch.randint(qmin, qmin + 256, shape, generator=g).float()
    if channels_last and q.dim() == 4:
        q = q.contiguous(memory_format=torch.channels_last)
    channels = q.shape[1] if per_channel and q.dim() > 1 else 1
    table = torch.randint(-128, 256, (channels, 256), generator=g)
    op = Lut("x", "y", table, torch.ones(channels, 256), qmin)
    with compiled(parallel, lut_codes, lut_flat):
        got = op.run([q], None)
    want = table.reshape(-1)[op._index(q.to(torch.int64))].to(torch.float32)
    assert torch.equal(got, want)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 150), size=st.integers(1, 400),
       eps_codes=st.sampled_from([0, 1, 37, 1 << 20]), zero_point=st.integers(-128, 127), signed=st.booleans(),
       parallel=st.booleans())
def test_layer_norm_kernel_equals_the_integer_formula(seed, rows, size, eps_codes, zero_point, signed, parallel):
    """Constant rows (a zero root without epsilon), the extreme codes, gains and offsets of
    either sign, on either compilation: the kernel's hoisted float64 quotient gives the torch
    formula's codes."""
    from accel_models.ppu import LN_FRACTION_BITS, LN_GAIN_BITS, LayerNorm
    from accel_models.ppu_kernels import layer_norm_rows

    g = torch.Generator().manual_seed(seed)
    qmin = -128 if signed else 0
    q = torch.randint(qmin, qmin + 256, (rows, size), generator=g).float()
    q[0] = float(qmin + 255)  # a constant row
    q[-1, ::2] = float(qmin)  # the widest spread
    gain = torch.randint(-(1 << LN_GAIN_BITS), 1 << LN_GAIN_BITS, (size,), generator=g)
    offset = torch.randint(-(1 << (LN_FRACTION_BITS + LN_GAIN_BITS + 3)), 1 << (LN_FRACTION_BITS + LN_GAIN_BITS + 3),
                           (size,), generator=g)
    lo, hi = (-128, 127) if zero_point < 0 else (0, 255)
    op = LayerNorm("x", "y", eps_codes, gain, offset, zero_point, lo, hi, 0.1, 0, 0.05, 1e-5)
    with compiled(parallel, layer_norm_rows):
        got = op.run([q], None)
    assert torch.equal(got, op._integer(q).to(torch.float32))
