"""``TensorMemo``: values keyed by tensor content identity (address, version, layout), bounded;
and the engine's memoised latched weights follow in-place weight changes."""
from __future__ import annotations

import numpy as np
import torch

import sysarray as sa
from sysarray.tensor_memo import TensorMemo


def test_memo_computes_once_per_tensor_version_and_layout():
    memo, calls = TensorMemo(), []

    def compute(t):
        calls.append(1)
        return t.sum().item()

    w = torch.arange(6, dtype=torch.float32)
    assert memo.get((w,), "k", lambda: compute(w)) == 15.0
    assert memo.get((w,), "k", lambda: compute(w)) == 15.0 and len(calls) == 1
    assert memo.get((w,), "other key", lambda: compute(w)) == 15.0 and len(calls) == 2
    w.add_(1)  # an in-place write bumps the version counter
    assert memo.get((w,), "k", lambda: compute(w)) == 21.0 and len(calls) == 3
    v = w.view(2, 3)  # same storage, another shape: its own entry
    assert memo.get((v,), "k", lambda: compute(v)) == 21.0 and len(calls) == 4


def test_memo_is_bounded_by_entries_and_bytes():
    memo = TensorMemo(max_entries=3, max_bytes=100)
    ts = [torch.zeros(1) + i for i in range(5)]
    for t in ts:
        memo.get((t,), None, lambda: 0, nbytes=lambda v: 10)
    assert len(memo) == 3  # the two oldest went
    big = torch.zeros(1)
    memo.get((big,), None, lambda: 1, nbytes=lambda v: 1000)
    assert len(memo) == 3  # larger than the whole budget: returned, not kept
    for t in ts[:2]:
        memo.get((t,), None, lambda: 0, nbytes=lambda v: 45)
    assert len(memo) == 3 and memo._bytes <= 100


def test_in_place_weight_changes_reach_the_fast_engine():
    """The fast conv engine memoises latched weights; writing the weights in place must not leave
    it on the old ones (checked against the cycle engine, which memoises nothing)."""
    from sysarray.engines.conv import fast_conv2d
    from sysarray.mapping import im2col

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 5, 5)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8))
    cfg = sa.ArrayConfig(8, 4, "ws")
    fm = sa.FaultMap(8, 4).add(2, 1, "psum", 30, 1)
    for _ in range(2):
        y = fast_conv2d(x, w, cfg, fm, padding=(1, 1))
        cols = im2col(x, (3, 3), (1, 1), (1, 1), 0).numpy().astype(np.uint8)
        ref, _ = sa.simulate_gemm(cols, w.reshape(4, -1).t().numpy(), cfg, faults=fm, engine="cycle")
        np.testing.assert_array_equal(y.numpy().reshape(2, 4, 25).transpose(0, 2, 1).reshape(-1, 4), ref)
        w[:, 0] = -w[:, 0].clamp(-127, 127)  # in place: the next round must see it


def test_memo_keeps_a_stable_part_of_a_working_set_too_large_for_it():
    """Five values cycled through a memo of three: least-recently-used eviction would drop each
    value just before its next use; the memo keeps three for good (hits from the second round
    on), and a new program's values still take the place of the old ones."""
    memo, calls = TensorMemo(max_entries=3), []
    ts = [torch.zeros(1) + i for i in range(5)]
    for _ in range(3):
        for i, t in enumerate(ts):
            memo.get((t,), None, lambda i=i: calls.append(i) or i)
    assert len(calls) == 5 + 2 + 2
    new = [torch.zeros(1) + 10 + i for i in range(3)]
    for t in new:
        memo.get((t,), None, lambda: 0)
    calls.clear()
    for t in new:
        memo.get((t,), None, lambda: calls.append(1))
    assert not calls and len(memo) == 3


def test_latched_weights_are_narrow_and_made_once():
    """The latched weights of a (grouped) convolution: the conv form float32, the GEMM form int8,
    made on first use; memoised for healthy weight registers, forced through stuck ones."""
    from sysarray.engines.conv.weights import latched_weights
    from sysarray.engines.registers import chip_masks

    cfg = sa.ArrayConfig(8, 4)
    w = torch.from_numpy(np.random.default_rng(3).integers(-128, 128, size=(6, 2, 3, 3)).astype(np.int8))
    lw = latched_weights(w, cfg, chip_masks(cfg, None, False), groups=3)
    assert lw.conv.w.dtype == torch.float32 and lw.conv.groups == 3 and "gemm" not in vars(lw)
    assert lw.gemm.dtype == torch.int8 and lw.gemm.shape == (3, 24, 4)  # K = 18 in 3 folds, 2 outputs in 1
    for g in range(3):
        np.testing.assert_array_equal(lw.gemm[g, :18, :2].numpy(), w[2 * g:2 * g + 2].reshape(2, -1).t().numpy())
    assert not lw.gemm[:, 18:].any() and not lw.gemm[..., 2:].any()
    assert latched_weights(w, cfg, chip_masks(cfg, None, False), groups=3) is lw
    assert lw.nbytes() < 6 * w.numel()  # float32 and int8 forms (int64 would be 16 bytes a weight)
    stuck = sa.FaultMap(8, 4).add(1, 0, "weight", 7, 1)  # the sign bit of rows 1, 9, 17, column 0
    lf = latched_weights(w, cfg, chip_masks(cfg, stuck, False), groups=3)
    gemm = w.reshape(3, 2, 18).transpose(1, 2).to(torch.int64)
    gemm[:, 1::8, 0] |= -128  # the stuck sign bit: a signed 8-bit read-back
    np.testing.assert_array_equal(lf.gemm[:, :18, :2].numpy(), gemm.numpy())
    np.testing.assert_array_equal(lf.conv.w.numpy(), gemm.transpose(1, 2).reshape(6, 2, 3, 3).numpy())


def test_a_value_kept_for_an_owner_is_keyed_by_its_identity_and_holds_it():
    import gc
    import weakref

    memo = TensorMemo()
    t = torch.arange(4)

    class Owner:
        pass

    a, b = Owner(), Owner()
    calls = []
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert memo.get_for(a, (t,), "k", compute) == 1
    assert memo.get_for(a, (t,), "k", compute) == 1  # same owner, same tensors and key: kept
    assert memo.get_for(b, (t,), "k", compute) == 2  # another owner: its own value
    held = weakref.ref(a)
    del a
    gc.collect()
    assert held() is not None  # the entry holds its owner, so its id cannot be reused meanwhile


def test_transient_keeps_no_value_derived_from_tensors():
    from sysarray.tensor_memo import transient

    memo, calls = TensorMemo(), []
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    kept, once = torch.arange(3), torch.arange(5)
    assert memo.get((kept,), "k", compute) == 1
    with transient():
        assert memo.get((kept,), "k", compute) == 2  # computed afresh: a step's tensors are new ones
        assert memo.get((once,), "k", compute) == 3
        assert memo.get((once,), "k", compute) == 4  # and a new value is not kept
        assert memo.get((), "plan", compute) == 5  # a value keyed by no tensor is kept
        with transient():
            pass
        assert memo.get((once,), "k", compute) == 6  # still transient after a nested block
    assert memo.get((), "plan", compute) == 5
    assert memo.get((kept,), "k", compute) == 1  # the value kept before is still there
    assert memo.get((once,), "k", compute) == 7 and memo.get((once,), "k", compute) == 7  # kept again outside
