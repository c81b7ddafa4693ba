"""The post-processing unit's fused CPU kernels equal its torch formulas (the twin's and CUDA's)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from accel_models.ppu import Div, Mul
from sysarray.parallel import KERNELS

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
    kernel.force = "parallel" if parallel else "serial"
    try:
        got = op.run([a, b], None)
    finally:
        kernel.force = None
    want = op._integer(a.to(torch.int64), b.to(torch.int64)).to(torch.float32)
    assert got.shape == want.shape
    assert torch.equal(got, want)
