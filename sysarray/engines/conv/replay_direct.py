"""The direct psum replay on CPU: segment sums straight from the input, chains fused, one kernel call."""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch

from sysarray.config import ArrayConfig
from sysarray.engines.conv.fix import ChainFix
from sysarray.engines.conv.plan import direct_plan
from sysarray.engines.conv.planes import transposed_groups
from sysarray.engines.conv.replay_passes import direct_chains
from sysarray.engines.conv import replay_vnni
from sysarray.engines.conv.replay_simd import SIMD_BLOCK, direct_chains_simd
from sysarray.engines.conv.replay_vnni import direct_chains_vnni, vnni_plan
from sysarray.engines.conv.settings import Kernel, ReplaySettings
from sysarray.engines.registers import ChipMasks
from sysarray.engines.simd import LANES, VNNI
from sysarray.mapping import conv_output_size
from sysarray.tensor_memo import TensorMemo


# Per chip (its masks), latched weights and input geometry: the plan and tap tables, kept for every
# batch the chip runs.
_DIRECT_PLANS = TensorMemo(max_entries=1024, max_bytes=256 << 20)


def replay_direct(xp: torch.Tensor, Wp: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, chain_cols: np.ndarray, kernel,
                  stride, padding, amax: int, N: int, linear_tail: bool, settings: ReplaySettings) -> ChainFix | None:
    """CPU: the segment sums come straight from the input in one jitted kernel that also replays
    the chains; only the nonzero latched weights of each segment are visited (a segment ends at
    its faulty row, so with ``linear_tail`` about half a fold).

    The input is laid out as phase planes of ``G`` images side by side (:mod:`sysarray.engines.conv.planes`),
    in which one kernel tap over the whole output planes of the ``G`` images is one contiguous
    run of about ``settings.run_target`` values, so a segment sum is a sum of vectorised axpys. A task is
    (group of images, chunk of replayed outputs): it lays out its group in a buffer that stays in
    cache across all its outputs' taps, so the input is read from memory once.

    Wp: (groups, Fr*R, Fc*C) int8, each group's latched GEMM weights (a grouped convolution is
    one GEMM per group; every group's replayed outputs run in the same kernel call); N: the
    layer's output channels. The replayed columns' outputs are returned as a :class:`ChainFix`
    (``None``: no output has a faulty column). The plan and tap tables come from one jitted call
    and the arrays are numpy's: this runs once per faulty layer and chip, and small Python and
    torch calls around the kernel would cost as much as a small layer's replay."""
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    x = xp.numpy()  # (B, C, H, W) stored either way: channels-last input is laid out by the tasks
    B, Cin, H, W = x.shape
    oh, ow = conv_output_size(H, W, kernel, stride, padding)
    Hq, Wq = -(-(H + 2 * ph) // sh), -(-(W + 2 * pw) // sw)
    per_image = Cin * Hq * Wq * sh * sw * x.itemsize  # its phase planes at most
    G = min(B, max(1, min(round(settings.run_target / (oh * Wq)), settings.planes_budget // per_image)))
    run = ((oh - 1) * G + G - 1) * Wq + ow  # values per run (see direct_chains)
    # The SIMD kernel needs float32 input, runs of at least a block of lanes and float32 sums.
    simd = x.dtype == np.float32 and run >= SIMD_BLOCK and settings.kernel is not Kernel.PASSES
    preg = cm.psum
    groups = Wp.shape[0]
    signed = cm.act.sign != 0
    if (settings.kernel is Kernel.VNNI and VNNI and replay_vnni.applies(kernel, stride, x.dtype, run)
            and amax <= (128 if signed else 255)):
        return _replay_vnni(x, Wp, cfg, cm, chain_cols, kernel, padding, N, linear_tail, G, Hq, Wq, oh, ow, run,
                            signed)

    def plan():
        out = direct_plan(preg.faulty, preg.keep, preg.ones, chain_cols, Wp.numpy(), N // groups, cfg.cols,
                          (1 << cfg.psum_bits) - 1, linear_tail, Cin // groups * kh * kw, kh, kw, sh, sw, Hq, G * Wq,
                          simd, amax, settings.pairs)
        if out[7]:  # every partial sum exact in float32: the kernels read float32 weights
            out = out[:6] + (out[6].astype(np.float32),) + out[7:]
        return out
    key = (chain_cols.tobytes(), N, cfg.cols, cfg.psum_bits, linear_tail, Cin, kh, kw, sh, sw, Hq, G * Wq, simd, amax,
           settings.pairs)
    n_idx, keep, ones, n_seg, ptr, toff, tw, f32, plane_of, mates, simd = _DIRECT_PLANS.get_for(
        cm, (Wp,), key, plan, nbytes=lambda v: sum(a.nbytes for a in v if isinstance(a, np.ndarray)))
    if not len(n_idx):
        return None
    layout = _layout(x, plane_of, G, Hq, Wq, padding, stride, len(n_idx), oh, ow)
    args = (*layout.before, toff, tw, ptr, n_seg, keep, ones, 1 << (cfg.psum_bits - 1), linear_tail,
            Wp.shape[1] // cfg.rows, *layout.after)
    if simd:
        direct_chains_simd(*args, layout.xcl, mates, work=len(toff) * run * layout.NG)
    else:
        direct_chains(*args, work=len(toff) * run * layout.NG)
    return ChainFix(n_idx, layout.tot, linear_tail)


class _Layout(NamedTuple):
    """A direct kernel's input layout and output: ``before`` its arguments before the plan's
    (xg, x, in_place, geometry, plane_of), ``after`` those after it (chunks, oh, ow, tot)."""

    before: tuple
    after: tuple
    xcl: np.ndarray
    NG: int
    tot: np.ndarray


def _layout(x: np.ndarray, plane_of: np.ndarray, G: int, Hq: int, Wq: int, padding, stride, O: int, oh: int,
            ow: int) -> _Layout:
    """How the direct kernels read ``x`` (B, C, H, W) for ``O`` replayed outputs in image groups
    of ``G``, and their totals (B, O, >= oh*ow) int32."""
    B, Cin, H, W = x.shape
    (ph, pw), (sh, sw) = padding, stride
    NG = -(-B // G)
    in_place = True
    if H == W == Hq == Wq == 1:  # 1x1 images (linear layers): the planes are the transposed batch
        xg = transposed_groups(x.reshape(B, Cin), NG, G)
    elif G == 1 and plane_of.max() == 0 and not (ph or pw or sh > 1 or sw > 1) and x.flags.c_contiguous:
        xg = x.reshape(B, -1)  # stride 1, no padding, one plain image per group: its own plane
    else:
        xg, in_place = np.empty((0, 0), dtype=x.dtype), False
    # Tasks are (group, chunk of outputs); a task fills its group's planes once for all its outputs.
    chunks = min(O, -(-4 * numba.get_num_threads() // NG))
    geometry = np.array([Cin, H, W, ph, pw, sh, sw, Hq, G, Wq], dtype=np.int64)
    # rows of 4 KiB multiples would share cache sets; a channels-last fix reads a column of them
    row = oh * ow + (16 if oh * ow % 1024 == 0 else 0)
    tot = np.empty((B, O, row), dtype=np.int32)
    # Stride 1 from float32 channels-last input of a multiple of LANES channels: the fill
    # transposes blocks in registers, the costliest part of a narrow layer's replay otherwise
    pixels = x.transpose(0, 2, 3, 1)
    cl = (not in_place and sh == sw == 1 and Cin % LANES == 0 and W >= LANES and pixels.flags.c_contiguous
          and x.dtype == np.float32)
    xcl = pixels.reshape(-1) if cl else np.empty(0, dtype=np.float32)
    return _Layout((xg, x, in_place, geometry, plane_of), (chunks, oh, ow, tot), xcl, NG, tot)


def _replay_vnni(x, Wp, cfg, cm, chain_cols, kernel, padding, N, linear_tail, G, Hq, Wq, oh, ow, run, signed):
    """:func:`replay_direct` on the VNNI kernel (:mod:`sysarray.engines.conv.replay_vnni`; stride 1)."""
    kh, kw = kernel
    B, Cin = x.shape[:2]
    preg = cm.psum
    plane_of = np.zeros(1, dtype=np.int64)  # stride 1: one phase

    def plan():
        return vnni_plan(preg.faulty, preg.keep, preg.ones, chain_cols, Wp.numpy(), N // Wp.shape[0], cfg.cols,
                         (1 << cfg.psum_bits) - 1, linear_tail, Cin // Wp.shape[0] * kh * kw, kh, kw, Hq, G * Wq,
                         signed)
    key = ("vnni", chain_cols.tobytes(), N, cfg.cols, cfg.psum_bits, linear_tail, Cin, kh, kw, Hq, G * Wq, signed)
    n_idx, keep, ones, n_seg, eptr, eoff, eword, corr = _DIRECT_PLANS.get_for(
        cm, (Wp,), key, plan, nbytes=lambda v: sum(a.nbytes for a in v if isinstance(a, np.ndarray)))
    if not len(n_idx):
        return None
    layout = _layout(x, plane_of, G, Hq, Wq, padding, (1, 1), len(n_idx), oh, ow)
    direct_chains_vnni(*layout.before, eptr, eoff, eword, corr, n_seg, keep, ones, 1 << (cfg.psum_bits - 1),
                       linear_tail, Wp.shape[1] // cfg.rows, *layout.after, layout.xcl, 128 if signed else 0,
                       work=len(eoff) * 3 * run * layout.NG)
    return ChainFix(n_idx, layout.tot, linear_tail)
