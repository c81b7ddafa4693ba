"""The replay kernels' transposed copies equal torch's."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sysarray.engines.transpose import transposed


@settings(max_examples=60, deadline=None)
@given(g=st.integers(0, 3), t=st.integers(0, 70), k=st.integers(0, 40), batched=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.int32]), strided=st.booleans(),
       scratch=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_transposed_equals_torchs_transpose(g, t, k, batched, dtype, strided, scratch, seed):
    """Any number of whole blocks of rows and a partial one, empty matrices, views with odd
    strides (a slice of every other column) and dtypes the kernel leaves to torch, in a new
    tensor or in the thread's scratch buffer."""
    gen = torch.Generator().manual_seed(seed)
    shape = ((g,) if batched else ()) + (t, 2 * k if strided else k)
    x = torch.randint(-2**20, 2**20, shape, generator=gen).to(dtype)
    if strided:
        x = x[..., ::2]
    got = transposed(x, scratch=scratch)
    want = x.transpose(-1, -2).contiguous()
    assert got.dtype == want.dtype and got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want)


def test_scratch_copies_reuse_one_buffer_per_thread():
    """A scratch copy is valid until the next one: a larger copy grows the buffer, a smaller one
    reuses it, each correct when returned; a new tensor is never the scratch buffer."""
    big, small = torch.arange(40 * 30, dtype=torch.float32).view(40, 30), torch.arange(12.0).view(3, 4)
    first = transposed(big, scratch=True)
    assert torch.equal(first, big.t())
    second = transposed(small, scratch=True)
    assert torch.equal(second, small.t())
    assert second.data_ptr() == first.data_ptr()  # the same buffer
    fresh = transposed(small)
    assert fresh.data_ptr() != second.data_ptr() and torch.equal(fresh, small.t())
