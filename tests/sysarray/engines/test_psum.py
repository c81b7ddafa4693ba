"""The register force and the psum chain: one definition, every form of it the same."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from sysarray import ArrayConfig, FaultMap
from sysarray.engines import psum
from sysarray.engines.registers import chip_masks, force, force_i32, force_jit, wrap

int32s = st.integers(-(1 << 31), (1 << 31) - 1)


def reference_force(x: int, stuck: int, ones: int, width: int, signed: bool = True) -> int:
    """docs/design.md §2.3, bit by bit: set the stuck bits, read back as a ``width``-bit number."""
    bits = [(x >> b) & 1 for b in range(width)]
    for b in range(width):
        if (stuck >> b) & 1:
            bits[b] = (ones >> b) & 1
    v = sum(bit << b for b, bit in enumerate(bits))
    return v - (1 << width) if signed and bits[-1] else v


@settings(max_examples=300, deadline=None)
@given(x=st.integers(-(1 << 40), 1 << 40), stuck=st.integers(0, (1 << 32) - 1), ones=st.integers(0, (1 << 32) - 1),
       width=st.sampled_from([8, 17, 20, 32]), signed=st.booleans())
def test_force_is_the_register_read_back_in_every_form(x, stuck, ones, width, signed):
    full = (1 << width) - 1
    stuck, ones = stuck & full, ones & stuck & full
    keep, sign = ~stuck & full, (1 << (width - 1)) if signed else 0
    want = reference_force(x, stuck, ones, width, signed)
    assert force(x, keep, ones, sign) == want
    assert int(force(np.int64(x), np.int64(keep), np.int64(ones), np.int64(sign))) == want
    assert int(force(torch.tensor([x]), keep, ones, sign)[0]) == want
    assert force_jit(np.int64(x), np.int64(keep), np.int64(ones), np.int64(sign)) == want
    if not stuck:
        assert wrap(x, width) == (want if signed else reference_force(x, 0, 0, width, True))


@njit
def _force_i32(q, k, on, sign):
    return force_i32(np.int32(q), np.int32(k), np.int32(on), np.int32(sign))


@settings(max_examples=300, deadline=None)
@given(q=int32s, stuck=st.integers(0, (1 << 32) - 1), ones=st.integers(0, (1 << 32) - 1))
def test_force_in_32_bit_lanes_equals_the_int64_force(q, stuck, ones):
    ones &= stuck
    keep = ~stuck & 0xFFFFFFFF
    as_i32 = lambda v: ((v + (1 << 31)) % (1 << 32)) - (1 << 31)  # noqa: E731  (a bit pattern as int32)
    want = as_i32(force(q, keep, ones, 1 << 31))
    assert _force_i32(q, as_i32(keep), as_i32(ones), as_i32(1 << 31)) == want


def test_chain_plan_cuts_columns_after_their_faulty_rows():
    """Column 1 has faulty rows 0 and 2, column 3 row 3: outputs n = 1, 3 (fold 0) and 5 (fold 1,
    column 1) replay; segments end at each faulty row (inclusive), the tail is the last segment."""
    cfg = ArrayConfig(4, 4)
    fm = FaultMap(4, 4).add(0, 1, "psum", 5, 1).add(2, 1, "psum", 30, 0).add(3, 3, "psum", 7, 1)
    cm = chip_masks(cfg, fm, act_signed=False)
    p = psum.plan(cm, cfg, cm.psum_columns, col_folds=2, N=7, linear_tail=False)
    assert p.n_idx.tolist() == [1, 3, 5] and p.J == 2
    assert p.seg_of_row.tolist() == [[0, 1, 1, 2], [0, 0, 0, 0], [0, 1, 1, 2]]
    full = (1 << 32) - 1
    assert p.keep[0].tolist() == [full & ~(1 << 5), full & ~(1 << 30), full]
    assert p.ones[0].tolist() == [1 << 5, 0, 0]
    assert p.keep[1].tolist() == [full & ~(1 << 7), full, full] and p.n_seg.tolist() == [3, 3, 3]
    tail = psum.plan(cm, cfg, cm.psum_columns, col_folds=2, N=7, linear_tail=True)
    assert tail.keep.shape == (3, 2) and tail.n_seg.tolist() == [2, 1, 2]
    assert psum.plan(cm, cfg, np.array([2], dtype=np.int64), 1, 2, False) is None  # column 2: no output < N


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), linear_tail=st.booleans(), S=st.integers(1, 4), Fr=st.integers(1, 3))
def test_the_cpu_and_torch_chains_agree_with_a_plain_loop(seed, linear_tail, S, Fr):
    rng = np.random.default_rng(seed)
    T, V, sign = 5, 6, 1 << 31
    seg = rng.integers(-(1 << 30), 1 << 30, size=(Fr, T, S, V))
    stuck = rng.integers(0, 1 << 32, size=(S, V)) & rng.integers(0, 1 << 32, size=(S, V))
    keep, ones = ~stuck & 0xFFFFFFFF, stuck & rng.integers(0, 1 << 32, size=(S, V))
    want = np.zeros((T, V), dtype=np.int64)
    for t in range(T):
        for v in range(V):
            tot = 0
            for f in range(Fr):
                p = 0
                for s in range(S):
                    p = force(p + int(seg[f, t, s, v]), int(keep[s, v]), int(ones[s, v]), sign)
                tot += p - (int(seg[f, t, :, v].sum()) if linear_tail else 0)
            want[t, v] = wrap(tot, 32)
    # into the outputs' columns of y: over the plain sums y holds with a linear tail, else in their place
    base = rng.integers(-(1 << 31), 1 << 31, size=(T, V + 2)).astype(np.int32)
    y, cols = base.copy(), rng.permutation(V + 2)[:V]
    psum.chain_totals_cpu(seg.transpose(0, 2, 3, 1), keep, ones, sign, linear_tail, y, cols, work=0)
    np.testing.assert_array_equal(y[:, cols], wrap(want + (base[:, cols] if linear_tail else 0), 32))
    threaded = base.copy()  # the parallel compilation (work split over the outputs and the stream)
    psum.chain_totals_cpu.parallel(seg.transpose(0, 2, 3, 1), keep, ones, sign, linear_tail, threaded, cols)
    np.testing.assert_array_equal(threaded, y)
    untouched = np.setdiff1d(np.arange(V + 2), cols)
    np.testing.assert_array_equal(y[:, untouched], base[:, untouched])
    folds = psum.fold_chain_torch(torch.from_numpy(seg).permute(2, 0, 1, 3), torch.from_numpy(keep).view(S, 1, 1, V),
                                  torch.from_numpy(ones).view(S, 1, 1, V), sign, linear_tail)
    np.testing.assert_array_equal(wrap(folds.sum(dim=0), 32).numpy(), want)
