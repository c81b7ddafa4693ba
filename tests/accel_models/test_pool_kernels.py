"""The 2x2, stride-2 max pool kernels and the twin's pool step against ``F.max_pool2d``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from accel_models import pool_kernels
from accel_models.fakequant import _MaxPool2x2
from tests.accel_models.test_ppu_kernels import compiled


@settings(max_examples=80, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(2, 11), st.integers(2, 11)),
       levels=st.integers(1, 256), seed=st.integers(0, 2**31 - 1), parallel=st.booleans())
def test_twin_pool_and_its_gradient_equal_torchs(shape, levels, seed, parallel):
    # few levels: many tied maxima, whose gradient goes to the first in row-major order, as torch's
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, shape, generator=gen).float()
    grad = torch.randn(*shape[:2], shape[2] // 2, shape[3] // 2, generator=gen)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    with compiled(parallel, pool_kernels._max_pool_2x2_planes, pool_kernels._max_pool_2x2_grad_planes):
        out = _MaxPool2x2.apply(ours)
        out.backward(grad)
    expected = F.max_pool2d(ref, 2, 2)
    expected.backward(grad)
    assert torch.equal(out, expected)
    assert torch.equal(ours.grad, ref.grad)
