"""Batched GEMMs (``Chip.bmm``, ``fast_bmm``) and grouped convolutions, computed as one batched
operation, equal the cycle engine and the GEMM-by-GEMM loop bit for bit: faults in every
register, every dataflow, signed and unsigned activations, narrow and 32-bit psums, bypass."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysarray as sa
from sysarray.engines import fast, simd
from sysarray.engines.conv import DEFAULT, Kernel, Replay, ReplaySettings
from sysarray.timing import gemm_timing
from tests.strategies import fault_maps
from tests.sysarray.engines.test_conv import ConvCase, conv, im2col_gemms

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _values(rng: np.random.Generator, shape, lo: int, hi: int, style: str) -> np.ndarray:
    """Integers in ``lo..hi``: uniform, only the ends of the range (overflow and sign), or small."""
    if style == "extreme":
        return rng.choice(np.array([lo, hi, 0, -1 if lo < 0 else 1]), size=shape)
    if style == "small":
        return rng.integers(max(lo, -3), 4, size=shape)
    return rng.integers(lo, hi + 1, size=shape)


@dataclass
class BatchCase:
    a: torch.Tensor  # (G, M, K) int8 or uint8
    w: torch.Tensor  # (G, K, N) int8
    cfg: sa.ArrayConfig
    faults: sa.FaultMap

    def __repr__(self) -> str:
        return (f"BatchCase(cfg={self.cfg}, a={self.a.dtype}{tuple(self.a.shape)}, w{tuple(self.w.shape)}, "
                f"faults={list(self.faults)})")


@st.composite
def batch_cases(draw, max_rc: int = 5, max_g: int = 4, max_faults: int = 8, registers=("weight", "act", "psum"),
                dataflows=("ws", "os", "is"), psum_bits=(32, 32, 20, 17), bypass=None, rows=None) -> BatchCase:
    """G GEMMs of one shape on a small faulty chip: M may be 1, K and N span several folds.
    ``rows``: the array's row counts to draw from (default 1 .. ``max_rc``)."""
    R = draw(st.integers(1, max_rc) if rows is None else st.sampled_from(rows))
    C = draw(st.integers(1, max_rc))
    byp = draw(st.booleans()) if bypass is None else bypass
    cfg = sa.ArrayConfig(R, C, draw(st.sampled_from(dataflows)), psum_bits=draw(st.sampled_from(psum_bits)),
                         bypass=byp)
    G = draw(st.integers(1, max_g))
    M = draw(st.one_of(st.just(1), st.integers(1, 9)))
    K = draw(st.integers(1, 3 * R + R - 1))
    N = draw(st.integers(1, 3 * C + C - 1))
    signed = draw(st.booleans())
    style = draw(st.sampled_from(["uniform", "extreme", "small"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = _values(rng, (G, M, K), -128 if signed else 0, 127 if signed else 255, style)
    w = _values(rng, (G, K, N), -128, 127, style)
    return BatchCase(torch.from_numpy(a.astype(np.int8 if signed else np.uint8)), torch.from_numpy(w.astype(np.int8)),
                     cfg, draw(fault_maps(cfg, max_faults, registers)))


def loop(case: BatchCase, engine: str) -> np.ndarray:
    """The reference: one ``Chip.gemm`` per GEMM of the batch."""
    chip = sa.Chip(case.cfg, case.faults, engine)
    return np.stack([chip.gemm(case.a[g], case.w[g])[0].numpy() for g in range(case.a.shape[0])])


@settings(max_examples=500, **SETTINGS)
@given(batch_cases())
def test_bmm_equals_the_gemm_loop_and_the_cycle_engine(case):
    want = loop(case, "cycle")
    np.testing.assert_array_equal(loop(case, "fast"), want)
    G, M, K = case.a.shape
    for engine in ("fast", "cycle"):
        y, stats = sa.Chip(case.cfg, case.faults, engine).bmm(case.a, case.w)
        assert y.dtype == torch.int32 and y.shape == (G, M, case.w.shape[2])
        np.testing.assert_array_equal(y.numpy(), want, err_msg=engine)
        assert len(stats) == G and all(s == gemm_timing(M, K, case.w.shape[2], case.cfg) for s in stats)


@settings(max_examples=300, **SETTINGS)
@given(batch_cases(max_rc=8, max_faults=24, bypass=False))
def test_bmm_with_dense_faults_equals_the_cycle_engine(case):
    """Many stuck bits, several per column and row: long psum chains, act corrections and
    stationary faults together."""
    got, _ = sa.Chip(case.cfg, case.faults).bmm(case.a, case.w)
    np.testing.assert_array_equal(got.numpy(), loop(case, "cycle"))


@settings(max_examples=150, **SETTINGS)
@given(batch_cases(), st.booleans())
def test_bmm_takes_float_codes_and_any_weight_dtype(case, transposed):
    """Activations as a float tensor of codes (``act_signed`` says which), weights as float or
    int64 values, and non-contiguous operands (attention's ``K^T`` is a transposed view)."""
    signed = case.a.dtype == torch.int8
    w = case.w.transpose(1, 2).contiguous().transpose(1, 2) if transposed else case.w
    chip = sa.Chip(case.cfg, case.faults)
    want = loop(case, "fast")
    for wv in (w.float(), w.to(torch.int64)):
        y, _ = chip.bmm(case.a.float(), wv, act_signed=signed)
        np.testing.assert_array_equal(y.numpy(), want)
        raw, _ = chip.bmm(case.a.float(), wv, act_signed=signed, raw=True)  # int32, or float32 holding the sums
        assert raw.dtype in (torch.int32, torch.float32)
        np.testing.assert_array_equal(raw.to(torch.int64).numpy(), want)


# The int8 replay exists where numba's target has AVX-512 VNNI; pinning it elsewhere would
# silently take the first replay instead.
REPLAYS = ["stream_major", "fold_major", "direct"] + (["vnni"] if simd.VNNI else [])


@settings(max_examples=300, **SETTINGS)
@given(batch_cases(max_faults=12, registers=("weight", "psum")), st.sampled_from(REPLAYS))
def test_every_psum_replay_of_a_batch_equals_the_cycle_engine(case, replay):
    """The replays of the psum chains a batch may take (segment sums stream-last or fold-major,
    chains straight from the operands, and the int8 one on VNNI), each pinned: the same bits as
    the cycle engine's GEMM loop."""
    fast._REPLAY.force = replay
    try:
        got, _ = sa.Chip(case.cfg, case.faults).bmm(case.a, case.w)
    finally:
        fast._REPLAY.force = None
    np.testing.assert_array_equal(got.numpy(), loop(case, "cycle"))


@settings(max_examples=100, **SETTINGS)
@given(batch_cases(max_faults=12, registers=("weight", "psum"), dataflows=("ws", "is")), st.integers(64, 150),
       st.booleans())
def test_direct_replay_of_long_streams_equals_the_cycle_engine(case, M, parallel):
    """The replay straight from the operands on streams of at least a SIMD block (the vector
    kernel, its last block overlapping the one before), pinned, on either compilation: the cycle
    engine's bits."""
    from sysarray.engines import chains_simd

    rng = np.random.default_rng(M)
    G, _, K = case.a.shape
    signed = case.a.dtype == torch.int8
    a = torch.from_numpy(rng.integers(-128 if signed else 0, 128 if signed else 256, size=(G, M, K))
                         .astype(np.int8 if signed else np.uint8))
    long = BatchCase(a, case.w, case.cfg, case.faults)
    fast._REPLAY.force = "direct"
    chains_simd.bmm_chains_simd.force = "parallel" if parallel else "serial"
    try:
        got, _ = sa.Chip(long.cfg, long.faults).bmm(long.a, long.w)
    finally:
        fast._REPLAY.force = chains_simd.bmm_chains_simd.force = None
    np.testing.assert_array_equal(got.numpy(), loop(long, "cycle"))


@pytest.mark.skipif(not simd.VNNI, reason="numba's target has no AVX-512 VNNI here: the int8 replay does not run")
@settings(max_examples=150, **SETTINGS)
@given(batch_cases(max_rc=8, max_faults=16, registers=("weight", "psum"), dataflows=("ws", "is"), rows=(4, 8),
                   bypass=False),
       st.integers(1, 150), st.integers(1, 40), st.booleans())
def test_int8_replay_equals_the_cycle_engine(case, M, K, parallel):
    """The VNNI replay, pinned, on streams shorter and longer than its blocks and inner sizes
    that are not a multiple of its groups of four rows, signed and unsigned codes, stuck weight
    bits, either compilation of both of its kernels: the cycle engine's bits; and it ran."""
    from sysarray.engines import chains_vnni

    rng = np.random.default_rng(M * 41 + K)
    G, _, _ = case.a.shape
    N = case.w.shape[2]
    signed = case.a.dtype == torch.int8
    a = torch.from_numpy(rng.integers(-128 if signed else 0, 128 if signed else 256, size=(G, M, K))
                         .astype(np.int8 if signed else np.uint8))
    w = torch.from_numpy(rng.integers(-128, 128, size=(G, K, N)).astype(np.int8))
    long = BatchCase(a, w, case.cfg, case.faults)
    ran = []
    real = chains_vnni.bmm_chains_vnni
    fast._REPLAY.force = "vnni"
    for kernel in (chains_vnni._pack, chains_vnni._replay):
        kernel.force = "parallel" if parallel else "serial"
    try:
        chains_vnni.bmm_chains_vnni = lambda *args: ran.append(1) or real(*args)
        got, _ = sa.Chip(long.cfg, long.faults).bmm(long.a, long.w)
    finally:
        chains_vnni.bmm_chains_vnni = real
        fast._REPLAY.force = chains_vnni._pack.force = chains_vnni._replay.force = None
    np.testing.assert_array_equal(got.numpy(), loop(long, "cycle"))
    replayed = any(f.register == sa.Register.PSUM and f.col < min(N, case.cfg.cols) for f in case.faults)
    assert not replayed or ran or case.cfg.dataflow == "is"  # IS streams the weights: wider stationary codes


@pytest.mark.parametrize("budget", [1, 40, 300])
def test_bmm_replays_in_blocks_of_the_stream(monkeypatch, budget):
    """Segment sums are made in blocks of whole GEMMs or, for a GEMM larger than a block, of its
    rows; the blocks change no bit (a tiny budget forces both kinds)."""
    rng = np.random.default_rng(budget)
    cfg = sa.ArrayConfig(4, 3, "ws", psum_bits=20)
    fm = sa.FaultMap(4, 3).add(1, 1, "psum", 3, 1).add(3, 1, "psum", 18, 0).add(2, 2, "act", 7, 1)
    a = torch.from_numpy(rng.integers(0, 256, size=(5, 11, 9)).astype(np.uint8))
    w = torch.from_numpy(rng.integers(-128, 128, size=(5, 9, 7)).astype(np.int8))
    want = loop(BatchCase(a, w, cfg, fm), "cycle")
    monkeypatch.setattr(fast, "_SEG_BUDGET", budget)
    np.testing.assert_array_equal(sa.Chip(cfg, fm).bmm(a, w)[0].numpy(), want)


def test_attention_sized_batches_equal_the_gemm_loop():
    """Many small GEMMs (a ViT's ``Q K^T`` per image and head) on a chip with psum, weight and act
    faults, in every dataflow: the batch equals the GEMM-by-GEMM loop."""
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.integers(-128, 128, size=(96, 17, 16)).astype(np.int8))
    k = torch.from_numpy(rng.integers(-128, 128, size=(96, 16, 17)).astype(np.int8))
    for flow in ("ws", "os", "is"):
        cfg = sa.ArrayConfig(8, 8, flow)
        fm = sa.FaultMap.random(cfg, 0.1, seed=3, psum_bits=32)
        case = BatchCase(q, k, cfg, fm)
        np.testing.assert_array_equal(sa.Chip(cfg, fm).bmm(q, k)[0].numpy(), loop(case, "fast"), err_msg=flow)


# ------------------------------------------------------------------------------------------ grouped convolutions
@st.composite
def grouped_cases(draw, registers=("weight", "psum", "act"), dataflows=("ws",), depthwise=None) -> ConvCase:
    """Grouped and depthwise convolutions (channel multiplier 1..3) on small faulty arrays; a
    group's K spans several folds on short arrays, its outputs several column folds."""
    R, C = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    cfg = sa.ArrayConfig(R, C, draw(st.sampled_from(dataflows)), psum_bits=draw(st.sampled_from([32, 32, 20, 17])),
                         bypass=draw(st.booleans()))
    groups = draw(st.integers(2, 5))
    dw = draw(st.booleans()) if depthwise is None else depthwise
    cg = 1 if dw else draw(st.integers(1, 3))
    ng = draw(st.integers(1, 3)) if dw else draw(st.integers(1, 2 * C + 1))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(kh, 7)), draw(st.integers(kw, 7))
    signed = draw(st.booleans())
    lo, hi = (-128, 127) if signed else (0, 255)
    style = draw(st.sampled_from(["uniform", "extreme", "small"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _values(rng, (draw(st.integers(1, 3)), groups * cg, H, W), lo, hi, style)
    w = _values(rng, (groups * ng, cg, kh, kw), -128, 127, style)
    return ConvCase(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(w.astype(np.int8)), cfg,
                    draw(fault_maps(cfg, 8, registers)), (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
                    (draw(st.integers(0, 1)), draw(st.integers(0, 1))), int(rng.integers(lo, hi + 1)), groups, signed)


@settings(max_examples=300, **SETTINGS)
@given(grouped_cases(dataflows=("ws", "os", "is")))
def test_grouped_conv_equals_the_cycle_engine_group_by_group(case):
    """Every register and dataflow: the batched grouped convolution (native WS path, or im2col
    and one batch of all groups' GEMMs) equals the cycle engine run group by group."""
    want = im2col_gemms(case, "cycle")
    np.testing.assert_array_equal(conv(case), want)
    np.testing.assert_array_equal(im2col_gemms(case, "fast"), want)


@settings(max_examples=200, **SETTINGS)
@given(grouped_cases(registers=("weight", "psum")))
def test_every_replay_of_a_grouped_conv_gives_the_same_bits(case):
    """Weight and psum faults take the native path: the segment convolution of single-fold groups,
    the direct CPU kernels (SIMD and passes, one image per run or all side by side) and the
    per-fold convolutions of the CUDA path (run on CPU here), on plain and channels-last input,
    equal the GEMM-by-GEMM loop."""
    want = im2col_gemms(case, "fast")
    for mode, run, kernel, seg in (("direct", DEFAULT.run_target, "simd", True), ("direct", 1024, "simd", False),
                                   ("direct", 1, "passes", False), ("direct", 1 << 30, "simd", False),
                                   ("direct", 1 << 30, "passes", False), ("torch", 1024, "simd", True)):
        s = ReplaySettings(replay=mode, kernel=kernel, run_target=run, segment_conv=seg,
                           planes_budget=1 << 40 if run > 1024 else 64 << 10)
        for channels_last in (False, True):
            np.testing.assert_array_equal(conv(case, channels_last, s), want,
                                          err_msg=f"{mode} {run} {kernel} {channels_last}")


@settings(max_examples=60, **SETTINGS)
@given(grouped_cases(dataflows=("ws", "os", "is")))
def test_chip_grouped_conv_is_the_same_on_both_engines(case):
    kw = dict(stride=case.stride, padding=case.padding, pad_value=case.pad_value, groups=case.groups,
              act_signed=case.signed)
    fast_y, fast_stats = sa.Chip(case.cfg, case.faults).conv2d(case.x, case.w, **kw)
    cycle_y, cycle_stats = sa.Chip(case.cfg, case.faults, "cycle").conv2d(case.x, case.w, **kw)
    np.testing.assert_array_equal(fast_y.to(torch.int64).numpy(), cycle_y.to(torch.int64).numpy())
    assert fast_stats == cycle_stats and len(fast_stats) == case.groups


def test_wide_groups_split_channels_exactly():
    """Each group's K * 255 * 127 >= 2**24: the grouped float32 convolution is cut into channel
    chunks of every group, summed in int64, with psum and weight faults replayed."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.choice(np.array([0.0, 255.0], dtype=np.float32), p=[0.02, 0.98], size=(2, 128, 6, 6)))
    w = torch.from_numpy(rng.choice(np.array([-127, 127], dtype=np.int8), p=[0.03, 0.97], size=(8, 64, 3, 3)))
    cfg = sa.ArrayConfig(32, 4, "ws")
    fm = sa.FaultMap(32, 4).add(5, 1, "psum", 30, 1).add(20, 3, "weight", 2, 0)
    for faults in (None, fm):
        case = ConvCase(x, w, cfg, faults or sa.FaultMap(32, 4), (1, 1), (1, 1), 0, 2, False)
        for s in (DEFAULT, ReplaySettings(replay=Replay.TORCH), ReplaySettings(kernel=Kernel.PASSES)):
            np.testing.assert_array_equal(conv(case, settings=s), im2col_gemms(case, "fast"))


@pytest.mark.parametrize("rows", [(12,), (8,), (2,), (3, 14), (0, 5, 9)])
@pytest.mark.parametrize("psum_bits", [32, 24])
def test_depthwise_replays_of_every_kind_equal_the_cycle_engine(rows, psum_bits):
    """Depthwise 3x3 (K = 9 rows of a 16-row array; a channel multiplier of 2 puts every group on
    columns 0 and 1, so every channel replays): a 32-bit register's one faulty row below every
    tap makes the outputs their plain sums read back (no segment sums at all); faulty rows among
    the taps split them into segments; a narrow register adds the healthy tail's wrap. The
    segment convolution and the direct kernel, on both layouts, give the cycle engine's bits."""
    from sysarray.engines.conv.replay_conv import replay_by_segment_conv
    from sysarray.engines.conv.weights import latched_weights
    from sysarray.engines.registers import chip_masks

    rng = np.random.default_rng(sum(rows))
    x = torch.from_numpy(rng.integers(0, 256, size=(2, 6, 7, 9)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-127, 128, size=(12, 1, 3, 3)).astype(np.int8))  # channel multiplier 2
    cfg = sa.ArrayConfig(16, 16, "ws", psum_bits=psum_bits)
    fm = sa.FaultMap(16, 16)
    for i, r in enumerate(rows):
        fm = fm.add(r, 0, "psum", (7 * i + 3) % psum_bits, i % 2).add(r, 1, "psum", psum_bits - 1, 1)
    case = ConvCase(x, w, cfg, fm, (1, 1), (1, 1), 0, 6, False)
    want = im2col_gemms(case, "cycle")
    for s in (DEFAULT, ReplaySettings(segment_conv=False)):
        for channels_last in (False, True):
            np.testing.assert_array_equal(conv(case, channels_last, s), want, err_msg=f"{s} {channels_last}")
    clean = torch.nn.functional.conv2d(x, w.float(), padding=1, groups=6).numpy()
    assert (want != clean).any(axis=(0, 2, 3)).all()  # every channel's GEMM uses the faulty columns
    cm = chip_masks(cfg, fm, False)
    fix = replay_by_segment_conv(x, latched_weights(w, cfg, cm, 6).gemm, cfg, cm, cm.psum_columns, (3, 3), (1, 1),
                                 (1, 1), 255, 12, psum_bits == 32)
    # the read-back needs no segment sums: one faulty row at or below the last tap (row 8)
    assert (fix.tot is None) == (psum_bits == 32 and len(rows) == 1 and rows[0] >= 8)


@pytest.mark.parametrize("pixel_major", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("psum_bits", [32, 24])
def test_segment_chains_equal_a_plain_loop_serial_and_parallel(pixel_major, steps, psum_bits):
    """The segment convolution's chain pass, in 32-bit lanes, in either layout, both
    compilations: ``p = force_s(p + seg_s)`` over the steps, giving the sum of ``force(q) - q``
    (32-bit registers) or the chain's value, mod 2**32."""
    from sysarray.engines.conv.replay_conv import segment_chains
    from sysarray.engines.registers import force, wrap

    rng = np.random.default_rng(steps * psum_bits + pixel_major)
    B, J, L = 2, 5, 70
    seg = rng.integers(-(1 << 20), 1 << 20, size=(B, J, steps, L))
    full = (1 << psum_bits) - 1
    stuck = rng.integers(0, full + 1, size=(steps, J)) & rng.integers(0, full + 1, size=(steps, J))
    keep, ones = full & ~stuck, stuck & rng.integers(0, full + 1, size=(steps, J))
    want = np.zeros((B, J, L), dtype=np.int64)
    for b, j, i in np.ndindex(B, J, L):
        p = fix = 0
        for s in range(steps):
            q = p + int(seg[b, j, s, i])
            p = force(q, int(keep[s, j]), int(ones[s, j]), 1 << (psum_bits - 1))
            fix += p - q
        want[b, j, i] = wrap(fix if psum_bits == 32 else p, 32)
    seg3 = seg.reshape(B, J * steps, L).astype(np.float32)
    if pixel_major:
        seg3 = np.ascontiguousarray(seg3.transpose(0, 2, 1))
    for kernel in (segment_chains.serial, segment_chains.parallel):
        tot = np.empty((B, L, J) if pixel_major else (B, J, L), dtype=np.int32)
        kernel(seg3, keep.astype(np.int32), ones.astype(np.int32), 1 << (psum_bits - 1), psum_bits == 32, pixel_major,
               tot)
        np.testing.assert_array_equal(tot.transpose(0, 2, 1) if pixel_major else tot, want)


@settings(max_examples=200, **SETTINGS)
@given(batch_cases(max_faults=0), st.sampled_from(["int8", "float32", None]), st.booleans())
def test_bmm_on_a_fault_free_chip_with_known_bounds_is_the_cycle_engines(case, kernel, raw):
    """The fault-free batch's own path (the plain product where no sum can reach the psum
    register's range, else the general one) on either kernel, raw or not: the cycle engine's
    bits, wrapped sums included."""
    from sysarray.engines import int8

    signed = case.a.dtype == torch.int8
    int8.FORCE = kernel
    try:
        got, _ = sa.Chip(case.cfg).bmm(case.a.float(), case.w, act_signed=signed, bounds=(128 if signed else 255, 128),
                                       raw=raw)
    finally:
        int8.FORCE = None
    assert got.dtype in ((torch.int32, torch.float32) if raw else (torch.int32,))
    np.testing.assert_array_equal(got.to(torch.int64).numpy(), loop(BatchCase(case.a, case.w, case.cfg, None), "cycle"))
