"""``fast_conv2d`` (convolutions without im2col) equals the fast and cycle engines on the im2col
GEMM, bit for bit, over shapes, strides, paddings, registers, bits, stuck values and bypass."""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sysarray as sa
from tests.strategies import fault_maps
from sysarray.engines.conv import DEFAULT, Kernel, Replay, ReplaySettings, fast_conv2d
from sysarray.engines.conv import replay_direct
from sysarray.engines.simd import VNNI
from sysarray.mapping import im2col

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
NO_BUDGET = 1 << 40  # planes_budget for tests that force image groups


@dataclass
class ConvCase:
    x: torch.Tensor  # (B, Cin, H, W) float codes
    w: torch.Tensor  # (N, Cin/groups, kh, kw) int8
    cfg: sa.ArrayConfig
    faults: sa.FaultMap
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: int
    groups: int
    signed: bool

    def __repr__(self) -> str:
        return (f"ConvCase(cfg={self.cfg}, x{tuple(self.x.shape)} signed={self.signed}, w{tuple(self.w.shape)}, "
                f"stride={self.stride}, padding={self.padding}, pad={self.pad_value}, groups={self.groups}, "
                f"faults={list(self.faults)})")


@st.composite
def conv_cases(draw, registers=("weight", "psum", "act"), dataflows=("ws",), bypass=None) -> ConvCase:
    """Small convolutions on small arrays; K spans several folds and N several column folds;
    faults often share a column (chains with several faulty rows)."""
    R, C = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    pb = draw(st.sampled_from([32, 32, 20, 17]))
    byp = draw(st.booleans()) if bypass is None else bypass
    cfg = sa.ArrayConfig(R, C, draw(st.sampled_from(dataflows)), psum_bits=pb, bypass=byp)
    groups = draw(st.sampled_from([1, 1, 1, 2]))
    cin = groups * draw(st.integers(1, 3))
    n = groups * draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(kh, 7)), draw(st.integers(kw, 7))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    signed = draw(st.booleans())
    style = draw(st.sampled_from(["uniform", "extreme", "small"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi = (-128, 127) if signed else (0, 255)
    if style == "extreme":
        x = rng.choice(np.array([lo, hi, 0]), size=(2, cin, H, W))
        w = rng.choice(np.array([-128, 127, 0, -1]), size=(n, cin // groups, kh, kw))
    elif style == "small":
        x = rng.integers(max(lo, -3), 4, size=(2, cin, H, W))
        w = rng.integers(-3, 4, size=(n, cin // groups, kh, kw))
    else:
        x = rng.integers(lo, hi + 1, size=(2, cin, H, W))
        w = rng.integers(-128, 128, size=(n, cin // groups, kh, kw))
    fm = draw(fault_maps(cfg, 8, registers))
    return ConvCase(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(w.astype(np.int8)), cfg, fm,
                    stride, padding, int(rng.integers(lo, hi + 1)), groups, signed)


def im2col_gemms(case: ConvCase, engine: str) -> np.ndarray:
    """The reference: im2col, one GEMM per group on ``engine``, laid out as (B, N, oh, ow)."""
    kh, kw = case.w.shape[2:]
    cols = im2col(case.x, (kh, kw), case.stride, case.padding, case.pad_value)
    dtype = np.int8 if case.signed else np.uint8
    N, g = case.w.shape[0], case.groups
    ng, kg = N // g, cols.shape[1] // g
    outs = []
    for i in range(g):
        a = cols[:, i * kg:(i + 1) * kg].numpy().astype(dtype)
        w = case.w[i * ng:(i + 1) * ng].reshape(ng, -1).t().numpy()
        outs.append(sa.simulate_gemm(a, w, case.cfg, faults=case.faults, engine=engine)[0])
    y = np.concatenate(outs, axis=1)
    B = case.x.shape[0]
    oh = (case.x.shape[2] + 2 * case.padding[0] - kh) // case.stride[0] + 1
    ow = (case.x.shape[3] + 2 * case.padding[1] - kw) // case.stride[1] + 1
    return y.reshape(B, oh * ow, N).transpose(0, 2, 1).reshape(B, N, oh, ow)


def conv(case: ConvCase, channels_last: bool = False, settings: ReplaySettings = DEFAULT) -> np.ndarray:
    x = case.x.contiguous(memory_format=torch.channels_last) if channels_last else case.x
    y = fast_conv2d(x, case.w, case.cfg, case.faults, stride=case.stride, padding=case.padding,
                    pad_value=case.pad_value, groups=case.groups, act_signed=case.signed, settings=settings)
    assert y.dtype == torch.int32
    return np.ascontiguousarray(y.numpy())


@settings(max_examples=600, **SETTINGS)
@given(conv_cases(registers=("weight", "psum")))
def test_conv_native_equals_fast_gemm(case):
    """Weight and psum faults take the im2col-free path (WS, groups 1)."""
    np.testing.assert_array_equal(conv(case), im2col_gemms(case, "fast"))


@settings(max_examples=300, **SETTINGS)
@given(conv_cases(dataflows=("ws", "is", "os")))
def test_conv_equals_cycle_engine(case):
    """Every register and dataflow, against the cycle-level reference directly."""
    np.testing.assert_array_equal(conv(case), im2col_gemms(case, "cycle"))


@settings(max_examples=100, **SETTINGS)
@given(conv_cases(registers=("weight", "psum"), bypass=False))
def test_conv_fault_free_equals_plain_convolution(case):
    if case.cfg.psum_bits < 32:
        return  # a narrow psum register may wrap fault-free too (docs/design.md "Overflow")
    y = fast_conv2d(case.x, case.w, case.cfg, None, stride=case.stride, padding=case.padding,
                    pad_value=case.pad_value, groups=case.groups, act_signed=case.signed)
    ph, pw = case.padding
    xp = torch.nn.functional.pad(case.x.double(), (pw, pw, ph, ph), value=case.pad_value)
    ref = torch.nn.functional.conv2d(xp, case.w.double(), stride=case.stride, groups=case.groups)
    np.testing.assert_array_equal(y.numpy(), ref.numpy().astype(np.int64))


def test_wide_layer_splits_channels_exactly():
    """K * 255 * 127 >= 2**24: the float32 convolution must be split (ResNet-20's 64-channel 3x3)."""
    rng = np.random.default_rng(1)
    # Mostly 255 * 127 terms of one sign: the sums pass 2**24, where float32 would round them.
    x = torch.from_numpy(rng.choice(np.array([0.0, 255.0], dtype=np.float32), p=[0.02, 0.98], size=(2, 64, 6, 6)))
    w = torch.from_numpy(rng.choice(np.array([-127, 127], dtype=np.int8), p=[0.03, 0.97], size=(8, 64, 3, 3)))
    w[0] = torch.from_numpy(rng.choice(np.array([-127, 127], dtype=np.int8), size=(64, 3, 3)))  # a small-L1 filter
    cfg = sa.ArrayConfig(32, 4, "ws")
    fm = sa.FaultMap(32, 4).add(5, 1, "psum", 30, 1).add(20, 3, "weight", 2, 0)
    for faults in (None, fm):
        y = fast_conv2d(x, w, cfg, faults, padding=(1, 1))
        case = ConvCase(x, w, cfg, faults or sa.FaultMap(32, 4), (1, 1), (1, 1), 0, 1, False)
        np.testing.assert_array_equal(y.numpy(), im2col_gemms(case, "fast"))


def test_tall_array_replays_psum_chains_in_float64():
    """R * 255 * 127 >= 2**24: a fold's segment sums could round in float32, so every replay path
    must keep them exact (float64 or int64; a psum fault near the bottom makes segments long)."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.choice(np.array([0.0, 255.0], dtype=np.float32), p=[0.01, 0.99], size=(2, 128, 5, 5)))
    w = torch.from_numpy(rng.choice(np.array([-127, 127], dtype=np.int8), p=[0.01, 0.99], size=(5, 128, 3, 3)))
    cfg = sa.ArrayConfig(576, 3, "ws")
    fm = sa.FaultMap(576, 3).add(570, 1, "psum", 0, 1).add(575, 2, "psum", 2, 0).add(9, 2, "psum", 30, 1)
    for mode in Replay:
        for stride in ((1, 1), (2, 1)):
            y = fast_conv2d(x, w, cfg, fm, stride=stride, padding=(1, 1), settings=ReplaySettings(replay=mode))
            case = ConvCase(x, w, cfg, fm, stride, (1, 1), 0, 1, False)
            np.testing.assert_array_equal(y.numpy(), im2col_gemms(case, "fast"), err_msg=mode)


@pytest.mark.parametrize("stride,padding,kernel", [((1, 1), (1, 1), 3), ((2, 2), (1, 1), 3), ((2, 1), (0, 1), 2),
                                                    ((2, 2), (0, 0), 1), ((1, 1), (0, 0), 1)])
def test_direct_replay_with_partial_image_groups(stride, padding, kernel):
    """Five images in groups of two side by side (the last group half empty), on strided and
    padded convolutions, psum chains with several faulty rows per column."""
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.integers(0, 256, size=(5, 3, 6, 5)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-128, 128, size=(7, 3, kernel, kernel)).astype(np.int8))
    cfg = sa.ArrayConfig(4, 3, "ws")
    fm = sa.FaultMap(4, 3).add(0, 1, "psum", 3, 1).add(2, 1, "psum", 30, 0).add(3, 2, "psum", 12, 1)
    case = ConvCase(x, w, cfg, fm, stride, padding, 0, 1, False)
    oh = (6 + 2 * padding[0] - kernel) // stride[0] + 1
    wq = -(-(5 + 2 * padding[1]) // stride[1])
    # two images per run
    two_images = ReplaySettings(run_target=2 * oh * wq, planes_budget=NO_BUDGET, segment_conv=False)
    y = fast_conv2d(x, w, cfg, fm, stride=stride, padding=padding, settings=two_images)
    np.testing.assert_array_equal(y.numpy(), im2col_gemms(case, "fast"))


@pytest.mark.parametrize("run", [2, 5, 1024])
@pytest.mark.parametrize("linear_gemm", [False, True])
def test_direct_replay_of_linear_layers_in_image_groups(run, linear_gemm):
    """1x1 images (a linear layer as the program runs it): the planes are the transposed batch, in
    groups of ``run`` images (the last one partial, or one group of all); or the replay is one
    GEMM's chains over the transposed batch."""
    rng = np.random.default_rng(11)
    x = torch.from_numpy(rng.integers(0, 256, size=(7, 9, 1, 1)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-128, 128, size=(8, 9, 1, 1)).astype(np.int8))
    cfg = sa.ArrayConfig(4, 3, "ws")
    fm = sa.FaultMap(4, 3).add(0, 1, "psum", 3, 1).add(2, 1, "psum", 30, 0).add(3, 2, "psum", 12, 1)
    case = ConvCase(x, w, cfg, fm, (1, 1), (0, 0), 0, 1, False)
    from sysarray.engines.conv import conv2d

    conv2d._REPLAY_WAY.force = "gemm" if linear_gemm else "kernel"
    try:
        y = fast_conv2d(x, w, cfg, fm, settings=ReplaySettings(run_target=run, planes_budget=NO_BUDGET))
    finally:
        conv2d._REPLAY_WAY.force = None
    np.testing.assert_array_equal(y.numpy(), im2col_gemms(case, "fast"))


@st.composite
def linear_cases(draw) -> ConvCase:
    """Linear layers as the program runs them (1x1 images and filters): batches past a vector of
    lanes, K over several row folds, outputs over several column folds, psum chains of several
    faulty rows per column, weight faults and bypass besides."""
    R, C = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    cfg = sa.ArrayConfig(R, C, "ws", psum_bits=draw(st.sampled_from([32, 32, 24, 20])), bypass=draw(st.booleans()))
    # batches shorter than a SIMD block (the scalar kernel) and longer (the vector one, its last block overlapping)
    B = draw(st.one_of(st.integers(1, 40), st.integers(64, 150)))
    K, N = draw(st.integers(1, 3 * R + 2)), draw(st.integers(1, 3 * C + 2))
    signed = draw(st.booleans())
    lo, hi = (-128, 127) if signed else (0, 255)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        x, w = rng.choice(np.array([lo, hi, 0]), size=(B, K, 1, 1)), rng.choice(np.array([-128, 127, -1]), size=(N, K, 1, 1))
    else:
        x, w = rng.integers(lo, hi + 1, size=(B, K, 1, 1)), rng.integers(-128, 128, size=(N, K, 1, 1))
    return ConvCase(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(w.astype(np.int8)), cfg,
                    draw(fault_maps(cfg, 10, ("weight", "psum"))), (1, 1), (0, 0), 0, 1, signed)


@settings(max_examples=300, **SETTINGS)
@given(linear_cases(), st.booleans())
def test_linear_layer_replay_as_one_gemm_equals_the_cycle_engine(case, parallel):
    """A linear layer's psum chains replayed from its transposed batch (pinned), on either
    compilation of the scalar and vector kernels: the cycle engine's GEMM, bit for bit."""
    from sysarray.engines import chains_simd, psum
    from sysarray.engines.conv import conv2d

    kernels = (chains_simd.gemm_chains_simd, psum.gemm_chain_totals)
    conv2d._REPLAY_WAY.force = "gemm"
    for k in kernels:
        k.force = "parallel" if parallel else "serial"
    try:
        got = conv(case)
    finally:
        conv2d._REPLAY_WAY.force = None
        for k in kernels:
            k.force = None
    np.testing.assert_array_equal(got, im2col_gemms(case, "cycle"))


@pytest.mark.parametrize("B, C, G", [(7, 9, 2), (40, 37, 16), (40, 37, 17), (33, 64, 64), (5, 3, 8)])
def test_transposed_groups_lays_out_the_batch_group_by_group(B, C, G):
    """The linear layers' planes: ``out[q, c*G + g] = x[q*G + g, c]``, zero past the batch (whole
    groups by the blocked transpose, a partial last group, blocks cut at both edges), from a
    C-ordered batch and from a strided one (attention's products)."""
    from sysarray.engines.conv.planes import transposed_groups

    x = np.random.default_rng(B * C + G).integers(0, 256, size=(B, C)).astype(np.float32)
    NG = -(-B // G)
    want = np.zeros((NG * G, C), dtype=np.float32)
    want[:B] = x
    want = want.reshape(NG, G, C).transpose(0, 2, 1).reshape(NG, C * G)
    np.testing.assert_array_equal(transposed_groups(x, NG, G), want)
    np.testing.assert_array_equal(transposed_groups(np.asfortranarray(x), NG, G), want)  # any strides


@settings(max_examples=150, **SETTINGS)
@given(conv_cases(registers=("weight", "psum")))
def test_every_chain_replay_path_gives_the_same_bits(case):
    """The direct CPU kernel, with one image per run (reading the input in place where it needs
    no padding) and with all images side by side, also on single-fold layers, and CUDA's per-fold
    convolutions with torch chains (run on CPU here) give the same bits as the segment-convolution
    replay of single-fold layers (forced), on plain and channels-last input; so do the chains of
    one GEMM where the layer is a linear one."""
    from sysarray.engines.conv import conv2d

    ways = {}
    for way in ("segment_conv", "gemm"):  # each where it applies, else the kernel; not measured
        conv2d._REPLAY_WAY.force = way
        try:
            ways[way] = conv(case)
        finally:
            conv2d._REPLAY_WAY.force = None
    default = ways["segment_conv"]
    np.testing.assert_array_equal(ways["gemm"], default)
    for mode, run, kernel in (("direct", 1, "simd"), ("direct", 1, "passes"), ("direct", 1 << 30, "simd"),
                              ("direct", 1 << 30, "passes"), ("direct", 1 << 30, "vnni"),
                              ("torch", DEFAULT.run_target, "simd")):
        settings_ = ReplaySettings(replay=mode, kernel=kernel, run_target=run, segment_conv=False, linear_gemm=False,
                                   planes_budget=NO_BUDGET if run > 1024 else DEFAULT.planes_budget)
        for channels_last in (False, True):  # the program keeps activations channels-last on CPU
            np.testing.assert_array_equal(conv(case, channels_last, settings_), default,
                                          err_msg=f"{mode} {run} {kernel} {channels_last}")


@st.composite
def long_run_cases(draw) -> ConvCase:
    """Convolutions whose replay runs are long enough for the SIMD kernel (at least a block of
    lanes, often not a whole number of blocks): psum chains (several faulty rows per column,
    32-bit psums with a linear tail or narrow ones), with weight faults and bypass besides."""
    R, C = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    pb = draw(st.sampled_from([32, 32, 24, 20]))
    cfg = sa.ArrayConfig(R, C, "ws", psum_bits=pb, bypass=draw(st.booleans()))
    cin, n = draw(st.integers(1, 5)), draw(st.integers(1, 10))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    B = draw(st.integers(1, 4))
    H, W = draw(st.integers(max(kh, 8), 14)), draw(st.integers(max(kw, 8), 14))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(0, 256, size=(B, cin, H, W))
    w = rng.integers(-128, 128, size=(n, cin, kh, kw))
    fm = sa.FaultMap(R, C)
    for _ in range(draw(st.integers(1, 10))):
        reg = draw(st.sampled_from(["psum", "psum", "psum", "weight"]))
        width = pb if reg == "psum" else 8
        try:
            fm = fm.add(draw(st.integers(0, R - 1)), draw(st.integers(0, C - 1)), reg,
                        draw(st.integers(0, width - 1)), draw(st.integers(0, 1)))
        except ValueError:
            pass
    return ConvCase(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(w.astype(np.int8)), cfg, fm,
                    stride, padding, 0, 1, False)


def _spied_simd_kernel(calls: list, record=lambda args: 1):
    """A context in which replay_direct's SIMD kernel appends ``record(args)`` to ``calls`` when it runs."""
    import contextlib

    @contextlib.contextmanager
    def spy():
        simd = replay_direct.direct_chains_simd

        def recording(*args, **kwargs):
            calls.append(record(args))
            return simd(*args, **kwargs)
        replay_direct.direct_chains_simd = recording
        try:
            yield
        finally:
            replay_direct.direct_chains_simd = simd
    return spy()


@st.composite
def vnni_cases(draw) -> ConvCase:
    """Stride-1 convolutions the VNNI kernel takes (kernel rows of 2 to 4 taps, runs of at least a
    block): signed and unsigned codes, 16 input channels (the channels-last fill) or a few, groups,
    padding, psum chains cut by fold and segment boundaries inside kernel rows, stuck weight bits."""
    R, C = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    cfg = sa.ArrayConfig(R, C, "ws", psum_bits=draw(st.sampled_from([32, 32, 24])), bypass=False)
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, n = groups * draw(st.sampled_from([1, 3, 16])), groups * draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    B, H, W = draw(st.integers(1, 3)), draw(st.integers(8, 12)), draw(st.integers(16, 20))
    signed = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-128 if signed else 0, 128 if signed else 256, size=(B, cin, H, W))
    w = rng.integers(-128, 128, size=(n, cin // groups, kh, kw))
    return ConvCase(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(w.astype(np.int8)), cfg,
                    draw(fault_maps(cfg, 10, ("psum", "psum", "weight"))), (1, 1), padding, 0, groups, signed)


@pytest.mark.skipif(not VNNI, reason="numba's target has no AVX-512 VNNI here: the VNNI replay does not run")
@settings(max_examples=150, **SETTINGS)
@given(vnni_cases(), st.booleans(), st.booleans())
def test_vnni_replay_kernel_equals_the_simd_kernel_and_fast_gemm(case, channels_last, parallel):
    """The VNNI kernel (a kernel row's taps as one word's bytes) gives the SIMD kernel's and
    fast_gemm's bits, on either compilation, and runs wherever the SIMD kernel would."""
    from sysarray.engines.conv import conv2d
    from sysarray.engines.conv.replay_vnni import direct_chains_vnni

    simd_calls, vnni_calls = [], []
    real = replay_direct.direct_chains_vnni
    direct_chains_vnni.force = "parallel" if parallel else "serial"
    try:
        replay_direct.direct_chains_vnni = lambda *args, **kw: vnni_calls.append(1) or real(*args, **kw)
        got = conv(case, channels_last, ReplaySettings(kernel=Kernel.VNNI, segment_conv=False, linear_gemm=False))
        conv2d._REPLAY_WAY.force = "kernel"  # the SIMD kernel, not the VNNI option the default settings offer
        with _spied_simd_kernel(simd_calls):
            want = conv(case, channels_last, ReplaySettings(segment_conv=False, linear_gemm=False))
    finally:
        replay_direct.direct_chains_vnni = real
        direct_chains_vnni.force = conv2d._REPLAY_WAY.force = None
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, im2col_gemms(case, "fast"))
    assert len(vnni_calls) == len(simd_calls)


@settings(max_examples=120, **SETTINGS)
@given(long_run_cases(), st.booleans())
def test_simd_replay_kernel_equals_the_pass_kernel_and_fast_gemm(case, channels_last):
    """The SIMD kernel (lanes in registers) runs on long runs and gives the pass kernel's bits,
    with the outputs of one array column in pairs and each on its own, and all give fast_gemm's
    on the im2col GEMM."""
    from sysarray.engines.conv import conv2d

    calls = []
    threads = numba.get_num_threads()
    kernels = ReplaySettings(segment_conv=False)  # single-fold layers too
    conv2d._REPLAY_WAY.force = "kernel"  # not a measured other way (the VNNI kernel, a linear layer's GEMM)
    try:
        with _spied_simd_kernel(calls):
            got = conv(case, channels_last, kernels)
        numba.set_num_threads(1)  # one task takes every output: column pairs stay together
        paired = conv(case, channels_last, kernels)
        single = conv(case, channels_last, ReplaySettings(pairs=False, segment_conv=False))  # every output on its own
        passes = conv(case, channels_last, ReplaySettings(kernel=Kernel.PASSES, segment_conv=False))
    finally:
        numba.set_num_threads(threads)
        conv2d._REPLAY_WAY.force = None
    np.testing.assert_array_equal(got, conv(case, channels_last))
    np.testing.assert_array_equal(got, paired)
    np.testing.assert_array_equal(got, single)
    np.testing.assert_array_equal(got, passes)
    np.testing.assert_array_equal(got, im2col_gemms(case, "fast"))
    B, _, H, W = case.x.shape
    kh, kw = case.w.shape[2:]
    (sh, sw), (ph, pw) = case.stride, case.padding
    oh, ow, wq = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1, -(-(W + 2 * pw) // sw)
    per_image = case.x.shape[1] * -(-(H + 2 * ph) // sh) * wq * sh * sw * 4
    g = min(B, max(1, min(round(DEFAULT.run_target / (oh * wq)), DEFAULT.planes_budget // per_image)))
    replayed = not case.cfg.bypass and any(f.register.value == "psum" and f.col < case.w.shape[0] for f in case.faults)
    if replayed and ((oh - 1) * g + g - 1) * wq + ow >= replay_direct.SIMD_BLOCK:
        assert calls, "the SIMD kernel did not run"


@settings(max_examples=200, **SETTINGS)
@given(conv_cases(registers=("weight", "psum")), st.sampled_from([1 << 24, 1 << 20, 1000]))
def test_saturating_results_equal_exact_ones_clamped(case, bound):
    """``fast_conv2d_exact(saturate=L)``: every value is the exact result, or ``sign(r) * L`` where
    the exact ``|r| >= L`` (a requantization that saturates by ``L`` cannot tell them apart)."""
    from sysarray.engines.conv import fast_conv2d_exact

    exact = conv(case).astype(np.int64)
    got = fast_conv2d_exact(case.x, case.w, case.cfg, case.faults, stride=case.stride, padding=case.padding,
                            pad_value=case.pad_value, groups=case.groups, act_signed=case.signed, saturate=bound)
    got = got.to(torch.int64).numpy()
    beyond = np.abs(exact) >= bound
    np.testing.assert_array_equal(got[~beyond], exact[~beyond])
    assert np.all((got[beyond] == exact[beyond]) | (got[beyond] == np.sign(exact[beyond]) * bound))


@pytest.mark.parametrize("channels,width,padding,groups_of", [(16, 16, 1, 2), (32, 21, 2, 2), (16, 37, 0, 3),
                                                               (32, 16, 1, 0)])
def test_simd_kernel_fills_channels_last_planes_by_blocks(channels, width, padding, groups_of):
    """Stride-1 layers with channels-last input of a multiple of LANES (16 or 8) channels: the SIMD
    kernel's fill transposes LANES x LANES blocks (rows of ``width`` pixels: whole blocks and a
    tail, or whole blocks only where 16 pixels are two blocks of 8), with image
    groups side by side (the last one partial) or one image per group; the same bits as the
    pass kernel and as fast_gemm on the im2col GEMM."""
    rng = np.random.default_rng(channels + width)
    x = torch.from_numpy(rng.integers(0, 256, size=(5, channels, 9, width)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-128, 128, size=(6, channels, 3, 3)).astype(np.int8))
    cfg = sa.ArrayConfig(16, 4, "ws")
    fm = sa.FaultMap(16, 4).add(3, 1, "psum", 30, 1).add(9, 1, "psum", 4, 0).add(15, 2, "psum", 12, 1)
    case = ConvCase(x, w, cfg, fm, (1, 1), (padding, padding), 0, 1, False)
    oh, wq = 9 + 2 * padding - 2, width + 2 * padding
    blocks = []
    groups = ReplaySettings(run_target=groups_of * oh * wq if groups_of else 1, planes_budget=NO_BUDGET)
    with _spied_simd_kernel(blocks, lambda args: args[-2].size > 0):  # xcl: the block fill's input
        got = conv(case, True, groups)
    passes = conv(case, True, ReplaySettings(kernel=Kernel.PASSES, run_target=groups.run_target,
                                             planes_budget=NO_BUDGET))
    assert blocks and all(blocks)
    np.testing.assert_array_equal(got, passes)
    np.testing.assert_array_equal(got, im2col_gemms(case, "fast"))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", [None, "float32", "int8"])
@pytest.mark.parametrize("pad_value", [0, 3])
def test_cuda_conv_matches_cpu(kernel, pad_value):
    """On CUDA, with the fault-free product measured or pinned to the float or the int8 kernel
    (int8 tensor cores), the engine gives the CPU's values."""
    from sysarray.engines import int8

    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.integers(0, 256, size=(4, 6, 9, 9)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-127, 128, size=(10, 6, 3, 3)).astype(np.int8))
    cfg = sa.ArrayConfig(8, 4, "ws")
    fm = sa.FaultMap.random(cfg, pe_rate=0.2, registers=("psum", "weight"), seed=0)
    cpu = fast_conv2d(x, w, cfg, fm, padding=(1, 1), pad_value=pad_value)
    a, wk = x[:, :, 0, 0].numpy().astype(np.uint8), w[:, :, 0, 0].t().numpy()  # a GEMM of 4 rows: padded on CUDA
    int8.FORCE = kernel
    try:
        gpu = fast_conv2d(x.cuda(), w.cuda(), cfg, fm, padding=(1, 1), pad_value=pad_value)
        lin = sa.simulate_gemm(a, wk, cfg, faults=fm, engine="fast", device="cuda")[0]
    finally:
        int8.FORCE = None
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu.numpy())
    np.testing.assert_array_equal(lin, sa.simulate_gemm(a, wk, cfg, faults=fm, engine="cycle")[0])


def test_simd_width_is_the_targets_or_the_forced_one():
    """16 lanes with AVX-512, else 8 (the tests of this module run at the other width too, see
    test_simd_width.py); a forced width needs a numba cache of its own."""
    import os
    import subprocess
    import sys

    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    from sysarray.engines import simd

    forced = os.environ.get("SYSARRAY_SIMD_LANES")
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    assert simd.LANES == (int(forced) if forced else 16 if "+avx512f" in features.split(",") else 8)
    assert replay_direct.SIMD_BLOCK == 4 * simd.LANES
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    r = subprocess.run([sys.executable, "-c", "import sysarray.engines.simd"], capture_output=True, text=True,
                       env={**env, "SYSARRAY_SIMD_LANES": "8"})
    assert r.returncode != 0 and "NUMBA_CACHE_DIR" in r.stderr


def test_simd_pairs_share_taps_of_one_column():
    """Outputs n and n + C of a faulty array column are paired (and only those), and a layer whose
    weights have zeros in one output but not its mate gives the same bits paired and alone."""
    from sysarray.engines.conv.plan import pair_outputs

    assert pair_outputs(np.array([1, 3, 5, 7, 9, 11, 13]), 4).tolist() == [2, 3, 0, 1, 6, -1, 4]
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.integers(0, 256, size=(3, 4, 12, 12)).astype(np.float32))
    w = torch.from_numpy(rng.integers(-128, 128, size=(10, 4, 3, 3)).astype(np.int8))
    w[5, :2] = 0  # the mate of output 1 has zero weights where output 1 has none
    cfg = sa.ArrayConfig(8, 4, "ws")
    fm = sa.FaultMap(8, 4).add(5, 1, "psum", 30, 1).add(2, 1, "psum", 7, 0).add(6, 3, "psum", 19, 1)
    case = ConvCase(x, w, cfg, fm, (1, 1), (1, 1), 0, 1, False)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)  # one task takes every output (with more, tasks split the pairs)
        paired = conv(case)
        single = conv(case, settings=ReplaySettings(pairs=False))
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(paired, single)
    np.testing.assert_array_equal(paired, im2col_gemms(case, "fast"))


def test_convolution_of_a_channel_slice_of_channels_last_data_is_exact():
    """torch's CPU float32 convolution read a channel slice of channels-last data wrongly for some
    shapes (found by hypothesis through the per-fold replay); ``plain_conv`` gives it a plain copy."""
    import torch.nn.functional as F

    from sysarray.engines.conv.exact import plain_conv

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(2, 2, 9, 4)).astype(np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.from_numpy(rng.integers(-128, 128, size=(1, 1, 2, 3)).astype(np.float32))
    for c in range(2):
        want = F.conv2d(x[:, c:c + 1].double().contiguous(), w.double(), stride=(1, 2))
        np.testing.assert_array_equal(plain_conv(x[:, c:c + 1], w, (1, 2), (0, 0)).double().numpy(), want.numpy())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), add=st.booleans(), as_float=st.booleans(), channels_last=st.booleans(),
       saturate=st.sampled_from([1 << 31, 1 << 24, 1000, 1]), parallel=st.booleans(), one_pixel=st.booleans())
def test_apply_fix_wraps_and_clamps_like_int64_arithmetic(seed, add, as_float, channels_last, saturate, parallel,
                                                          one_pixel):
    """apply_fix's 32-bit lanes give exactly ``clamp(wrap32(y + t))`` (or the read-back
    ``clamp(force(y))``) computed in int64, for int32 results (any values: the sum wraps) and
    exact float32 ones (|y| <= 2**24), on either layout, and for 1x1 outputs (linear layers)."""
    from sysarray.engines.registers import force
    from sysarray.engines.conv.fix import (ChainFix, _apply_fix, _apply_fix_pixels, _apply_fix_rows, _force_planes,
                                           apply_fix)

    rng = np.random.default_rng(seed)
    # 135 pixels: tiles; 552: several parallel tasks of tiles per image (fix.task_pixels)
    B, N, oh, ow = (3, 7, 1, 1) if one_pixel else (3, 7, 4, 5) if seed % 3 else \
        (2, 7, 9, 15) if seed % 2 else (2, 7, 24, 23)
    if as_float:
        y0 = rng.integers(-(1 << 24), (1 << 24) + 1, size=(B, N, oh, ow)).astype(np.float32)
        saturate = min(saturate, 1 << 24)
    else:
        y0 = rng.integers(-(1 << 31), 1 << 31, size=(B, N, oh, ow), dtype=np.int64).astype(np.int32)
    extremes = np.array([-(1 << 31), (1 << 31) - 1, 0, -1, 1 << 24, -(1 << 24)], dtype=np.int64)
    n_idx = np.array(sorted(rng.choice(N, size=3, replace=False)), dtype=np.int64)
    tot = rng.integers(-(1 << 31), 1 << 31, size=(B, 3, oh * ow), dtype=np.int64)
    tot.flat[:len(extremes)] = extremes
    tot = tot.astype(np.int32)
    y = torch.from_numpy(y0.copy())
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    kernels = (_apply_fix, _apply_fix_pixels, _apply_fix_rows, _force_planes)
    for k in kernels:
        k.force = "parallel" if parallel else "serial"
    padded = np.zeros((B, 3, oh * ow + 5), dtype=np.int32)  # rows may be longer than a plane
    padded[..., :oh * ow] = tot
    stuck = rng.integers(0, 1 << 32, size=3) & rng.integers(0, 1 << 32, size=3)
    keep, ones = ~stuck & 0xFFFFFFFF, stuck & rng.integers(0, 1 << 32, size=3)
    # the totals plane by plane (rows padded or not) or pixel by pixel, on either layout of y, or
    # the plain sums read back through a 32-bit register (no totals)
    fix = (ChainFix(n_idx, tot, add), ChainFix(n_idx, padded, add),
           ChainFix(n_idx, np.ascontiguousarray(tot.transpose(0, 2, 1)), add, pixel_major=True),
           ChainFix(n_idx, None, True, keep=keep.astype(np.int32), ones=ones.astype(np.int32)))[seed % 4]
    try:
        apply_fix(y, fix, saturate)
    finally:
        for k in kernels:
            k.force = None
    want = y0.astype(np.int64)
    if fix.tot is None:
        sub = force(want[:, n_idx], keep.reshape(1, 3, 1, 1), ones.reshape(1, 3, 1, 1), 1 << 31)
    else:
        sub = tot.reshape(B, 3, oh, ow).astype(np.int64) + (want[:, n_idx] if add else 0)
    sub = ((sub + (1 << 31)) % (1 << 32)) - (1 << 31)
    want[:, n_idx] = np.clip(sub, -saturate, saturate)
    np.testing.assert_array_equal(y.numpy().astype(np.int64), want)


@settings(max_examples=200, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), signed=st.booleans(), channels_last=st.booleans(),
       one_pixel=st.booleans(), kernel=st.sampled_from(["float32", "int8"]))
def test_pointwise_gemm_kernels_equal_the_int64_convolution(seed, signed, channels_last, one_pixel, kernel):
    """A pointwise layer's GEMM (sysarray.engines.conv.pointwise) on either kernel, forced, equals
    the int64 convolution for extreme and random codes, on 1x1 images (linear layers) and on
    channels-last or plain pixels (size-1 dimensions included, whose strides are arbitrary)."""
    from sysarray.engines import int8
    from sysarray.engines.conv import pointwise
    from sysarray.engines.conv.weights import ConvWeights

    rng = np.random.default_rng(seed)
    B, K, N = rng.integers(1, 5), rng.integers(1, 40), rng.integers(1, 12)
    H, W = (1, 1) if one_pixel else (rng.integers(1, 6), rng.integers(1, 6))
    lo, hi = (-128, 127) if signed else (0, 255)
    x = torch.from_numpy(rng.choice(np.array([lo, hi, 0, rng.integers(lo, hi + 1)]), size=(B, K, H, W))).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.from_numpy(rng.choice(np.array([-128, 127, 0, rng.integers(-128, 128)]), size=(N, K, 1, 1))).float()
    int8.FORCE = kernel
    try:
        y = pointwise.pointwise_gemm(x, ConvWeights.of(w), signed, hi if not signed else 128, float_exact=True)
    finally:
        int8.FORCE = None
    want = torch.nn.functional.conv2d(x.double(), w.double()).to(torch.int64)
    if y is None:  # not stored as pixels by channels: the caller convolves
        assert not one_pixel and not channels_last and H * W > 1 and K > 1
        return
    np.testing.assert_array_equal(y.to(torch.int64).numpy(), want.numpy())


@settings(max_examples=150, **SETTINGS)
@given(conv_cases(registers=("weight", "psum")), st.sampled_from(["float32", "int8"]))
def test_layers_on_either_product_kernel_equal_the_cycle_engine(case, kernel):
    """With the fault-free product's kernel forced (int8 GEMMs of im2col rows or pixels, or float32
    convolutions), the engine equals im2col + the cycle engine, also on channels-last input."""
    from sysarray.engines import int8

    int8.FORCE = kernel
    try:
        for channels_last in (False, True):
            np.testing.assert_array_equal(conv(case, channels_last), im2col_gemms(case, "cycle"))
    finally:
        int8.FORCE = None


@settings(max_examples=120, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), signed=st.booleans(), single_fold=st.booleans(),
       kernel=st.sampled_from(["float32", "int8"]))
def test_linear_layers_with_psum_and_weight_faults_equal_the_cycle_engine(seed, signed, single_fold, kernel):
    """Chip.linear (1x1 images: the batch is the pixels) on the fast engine, with K within one
    row fold (the segment-convolution replay) or beyond it (the direct replay), and either
    pointwise kernel, equals the cycle engine bit for bit."""
    from sysarray.engines import int8

    rng = np.random.default_rng(seed)
    R, C = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    pb = int(rng.choice([32, 32, 20]))
    cfg = sa.ArrayConfig(R, C, "ws", psum_bits=pb)
    K = int(rng.integers(1, R + 1)) if single_fold else int(rng.integers(R + 1, 3 * R + 2))
    B, N = int(rng.integers(1, 40)), int(rng.integers(1, 2 * C + 2))
    lo, hi = (-128, 127) if signed else (0, 255)
    x = torch.from_numpy(rng.integers(lo, hi + 1, size=(B, K))).float()
    w = torch.from_numpy(rng.integers(-128, 128, size=(N, K))).to(torch.int8)
    fm = sa.FaultMap(R, C)
    for _ in range(int(rng.integers(1, 6))):
        reg = str(rng.choice(["psum", "psum", "weight"]))
        try:
            fm = fm.add(int(rng.integers(0, R)), int(rng.integers(0, C)), reg,
                        int(rng.integers(0, pb if reg == "psum" else 8)), int(rng.integers(0, 2)))
        except ValueError:  # the same bit drawn stuck at the other value
            pass
    bound = max(-lo, hi)
    saturate = int(rng.integers(1, 1 << 24))
    int8.FORCE = kernel
    try:
        fast, _ = sa.Chip(cfg, fm).linear(x, w, act_signed=signed)
        # as a training step or a traced run calls it: the fault-free sums and the input's bound known
        clean, _ = sa.Chip(cfg).linear(x, w, act_signed=signed)
        hinted, _ = sa.Chip(cfg, fm).linear(x, w, act_signed=signed, hints=sa.ConvHints(x_bound=bound, clean=clean))
        capped, _ = sa.Chip(cfg, fm).linear(x, w, act_signed=signed,
                                            hints=sa.ConvHints(x_bound=bound, saturate=saturate, clean=clean))
    finally:
        int8.FORCE = None
    cycle, _ = sa.Chip(cfg, fm, engine="cycle").linear(x, w, act_signed=signed)
    want = cycle.to(torch.int64)
    np.testing.assert_array_equal(fast.to(torch.int64).numpy(), want.numpy())
    np.testing.assert_array_equal(hinted.to(torch.int64).numpy(), want.numpy())
    # a saturating caller may get sums at or beyond the bound back as the bound
    np.testing.assert_array_equal(capped.to(torch.int64).clamp(-saturate, saturate).numpy(),
                                  want.clamp(-saturate, saturate).numpy())
