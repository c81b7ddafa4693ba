"""Convolutions on the faulty array without im2col: the fast engine's WS path in conv form.

A convolution runs on the array as the im2col GEMM ``Y[M, N] = A[M, K] @ W[K, N]`` with
``M = B*oh*ow``, ``K = Cin*kh*kw`` in PyTorch's ``(c, kh, kw)`` order and ``W = weight.reshape(N,
K).t()`` (chip.md section 1). ``fast_conv2d`` returns exactly ``fast_gemm(im2col(x), W)`` (same
bits, shown by the property tests) but computes it with convolutions, which is several times
faster than materialising the ``M x K`` operand:

- the stationary weights as latched by each PE (stuck bits applied, bypassed PEs zeroed) are a
  modified conv weight, and the fault-free part of every output is one exact float convolution
  (input channels split into chunks when a float32 sum could round);
- a column with psum faults is cut at its faulty rows into segments (as in ``fast.py``); the
  segment sums of fold ``fr`` only involve the ``R`` taps ``k = fr*R .. fr*R + R - 1``, i.e. a
  few input channels, so they come from one small convolution per fold with masked weights;
  the chain ``p = force(p + segment)`` is then replayed per output in a jitted kernel.

Cases this form does not cover (stuck bits in the streamed ``act`` register, IS/OS dataflows,
grouped convolutions, psum registers narrow enough for a fold to wrap) go through ``im2col`` and
``fast_gemm``, which handle everything.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from sysarray.config import ArrayConfig, Dataflow
from sysarray.engines._exact import force, wrap
from sysarray.engines._prep import ChipMasks, chip_masks
from sysarray.engines.fast import fast_gemm
from sysarray.faults import FaultMap

_F32_LIMIT = 1 << 24
# Psum-chain replay on CPU. "auto" (:func:`_direct_pays`): the direct kernel unless its input copy
# outweighs its work or a large output plane (> DIRECT_MAX_PIXELS) meets fewer than
# DIRECT_MIN_FOLDS row folds, where per-fold convolutions with numba chains win. "direct",
# "folds" and "torch" (CUDA's per-fold convolutions and torch chains) force one path: the tests
# check all three on CPU.
CPU_REPLAY = "auto"
DIRECT_MAX_PIXELS = 256
DIRECT_MIN_FOLDS = 8


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           pad_value: float) -> torch.Tensor:
    """Images (B, C, H, W) -> GEMM operand (B*oh*ow, C*kh*kw), padding with ``pad_value``;
    K order (c, kh, kw), rows in (b, oh, ow) order.

    Built from strided windows and one copy (torch's F.unfold is orders of magnitude slower here).
    """
    kh, kw = kernel
    ph, pw = padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=pad_value)
    win = x.unfold(2, kh, stride[0]).unfold(3, kw, stride[1])  # (B, C, oh, ow, kh, kw)
    B, C, oh, ow = win.shape[:4]
    return win.permute(0, 2, 3, 1, 4, 5).reshape(B * oh * ow, C * kh * kw)


def _conv_dtype(device: torch.device) -> torch.dtype:
    # cuDNN may use TF32 (or other reduced-precision algorithms) for float32 convolutions.
    return torch.float32 if device.type == "cpu" else torch.float64


def _exact_conv(x: torch.Tensor, w: torch.Tensor, stride, padding, amax: int, wmax: int) -> torch.Tensor:
    """``conv2d(x, w)`` exactly for integer-valued tensors (zero padding, groups 1).

    Every partial sum of output ``n`` is bounded by ``amax * sum|w[n]|`` whatever the summation
    order, so one float32 convolution is exact when that L1 bound stays below 2**24 for every
    filter (returns float). Otherwise input channels are cut greedily into chunks that keep the
    bound, each chunk convolved in float32 and summed in int64 (float64 if one channel's taps
    alone could round; always on CUDA, where cuDNN may use TF32).
    """
    dtype = _conv_dtype(x.device)
    a = max(1, amax)
    if dtype == torch.float64 or w.shape[2] * w.shape[3] * a * max(1, wmax) >= _F32_LIMIT:
        return F.conv2d(x.double(), w.double(), stride=stride, padding=padding).to(torch.int64)
    l1 = w.abs().sum(dim=(2, 3)).to(torch.int64)  # (N, C) per-filter, per-channel L1 norms
    if w.numel() == 0 or int(l1.sum(dim=1).max()) * a < _F32_LIMIT:
        return F.conv2d(x, w.to(x.dtype), stride=stride, padding=padding)
    out, lo, C = None, 0, w.shape[1]
    run = torch.cumsum(l1, dim=1)  # (N, C)
    while lo < C:
        base = run[:, lo - 1:lo] if lo else torch.zeros_like(run[:, :1])
        # the longest chunk lo..hi-1 with every filter's L1 * amax below 2**24 (at least one channel)
        hi = lo + max(1, int(((run[:, lo:] - base).max(dim=0).values * a < _F32_LIMIT).sum()))
        part = F.conv2d(x[:, lo:hi], w[:, lo:hi].to(x.dtype), stride=stride, padding=padding).to(torch.int64)
        out = part if out is None else out + part
        lo = hi
    return out


def conv_native_ok(cfg: ArrayConfig, cm: ChipMasks, groups: int) -> bool:
    """True when :func:`fast_conv2d` can skip im2col for this chip and layer."""
    return cfg.dataflow is Dataflow.WS and groups == 1 and not cm.act.faulty.any()


def fast_conv2d(x: torch.Tensor, weight: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None, *,
                stride=(1, 1), padding=(0, 0), pad_value: float = 0.0, groups: int = 1,
                act_signed: bool = False, masks: ChipMasks | None = None) -> torch.Tensor:
    """A convolution of 8-bit codes on the faulty array, exact.

    x: (B, Cin, H, W) float tensor of activation codes (uint8 or int8 values, ``act_signed``);
    weight: (N, Cin/groups, kh, kw) int8 codes; padding uses ``pad_value`` (the input zero point).
    Returns (B, N, oh, ow) int32: for each group, ``fast_gemm(im2col(x_g), weight_g.reshape(N_g,
    -1).t())`` laid out as a convolution output. ``masks``: ``chip_masks(cfg, faults, act_signed)``
    when the caller already has them.
    """
    y = fast_conv2d_exact(x, weight, cfg, faults, stride=stride, padding=padding, pad_value=pad_value,
                          groups=groups, act_signed=act_signed, masks=masks)
    return y.to(torch.int32)


def fast_conv2d_exact(x: torch.Tensor, weight: torch.Tensor, cfg: ArrayConfig, faults: FaultMap | None, *,
                      stride=(1, 1), padding=(0, 0), pad_value: float = 0.0, groups: int = 1,
                      act_signed: bool = False, masks: ChipMasks | None = None) -> torch.Tensor:
    """:func:`fast_conv2d` without the final conversion: a float or integer tensor whose values
    are the int32 results exactly (callers that post-process in one fused pass skip a copy)."""
    cm = masks if masks is not None else chip_masks(cfg, faults, act_signed=act_signed)
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    if not conv_native_ok(cfg, cm, groups):
        return _conv_by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, cm)
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    N = int(weight.shape[0])
    K = int(weight[0].numel())
    Fr, Fc = -(-K // R), -(-N // C)
    Wp = _latched_weights(weight.reshape(N, K).t(), cfg, cm, Fr, Fc)  # (Fr*R, Fc*C) int64
    lo, hi = torch.aminmax(x) if x.numel() else (torch.zeros(()), torch.zeros(()))
    amax = max(-int(lo), int(hi), abs(int(pad_value)) if any(padding) else 0)
    wmax = int(Wp.abs().max()) if Wp.numel() else 0
    if R * amax * wmax >= 1 << (pb - 1):
        # A fold's partial sum could wrap inside the psum register: every column replays.
        return _conv_by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, cm)
    # Zero padding is the convolution's own (no padded copy of the input).
    ph, pw = padding
    if pad_value == 0 or not (ph or pw):
        xp, conv_pad = x, (ph, pw)
    else:
        xp, conv_pad = F.pad(x, (pw, pw, ph, ph), value=float(pad_value)), (0, 0)
    w_conv = Wp[:K, :N].t().reshape(N, -1, kh, kw)
    y = _exact_conv(xp, w_conv, stride, conv_pad, amax, wmax)
    chain_cols = np.flatnonzero(cm.psum.faulty.any(axis=0))
    if K * amax * wmax >= 1 << 31:
        y = wrap(y.to(torch.int64), 32)
    if len(chain_cols):
        y = y.to(torch.int32)
        _replay_conv_chains(xp, Wp, cfg, cm, chain_cols, (kh, kw), stride, conv_pad, amax, y,
                            linear_tail=pb == 32)
    return y


def _conv_by_im2col(x, weight, cfg, faults, stride, padding, pad_value, groups, act_signed, masks=None) -> torch.Tensor:
    B = x.shape[0]
    N, kh, kw = int(weight.shape[0]), int(weight.shape[2]), int(weight.shape[3])
    cols = im2col(x, (kh, kw), stride, padding, pad_value)
    oh = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    ng, kg = N // groups, cols.shape[1] // groups
    outs = []
    for g in range(groups):
        a = cols[:, g * kg:(g + 1) * kg] if groups > 1 else cols
        w = weight[g * ng:(g + 1) * ng].reshape(ng, -1).t().contiguous()
        outs.append(fast_gemm(a, w, cfg, faults, act_signed=act_signed, masks=masks))
    y = outs[0] if groups == 1 else torch.cat(outs, dim=1)
    return y.reshape(B, oh * ow, N).transpose(1, 2).reshape(B, N, oh, ow)


def _latched_weights(Wst: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks, Fr: int, Fc: int) -> torch.Tensor:
    """(K, N) weights -> (Fr*R, Fc*C) int64 as every PE of every fold latches them: zero-padded,
    forced through the PE's weight register, zero where the PE is bypassed."""
    R, C = cfg.rows, cfg.cols
    K, N = Wst.shape
    dev = Wst.device
    Wp = torch.zeros((Fr * R, Fc * C), dtype=torch.int64, device=dev)
    Wp[:K, :N] = Wst.to(torch.int64)
    reg = cm.weight
    if reg.faulty.any():
        keep = torch.from_numpy(np.tile(reg.keep, (Fr, Fc))).to(dev)
        ones = torch.from_numpy(np.tile(reg.ones, (Fr, Fc))).to(dev)
        Wp = force(Wp, keep, ones, reg.sign)
    if cm.bypassed.any():
        Wp[torch.from_numpy(np.tile(cm.bypassed, (Fr, Fc))).to(dev)] = 0
    return Wp


def _replay_conv_chains(xp: torch.Tensor, Wp: torch.Tensor, cfg: ArrayConfig, cm: ChipMasks,
                        chain_cols: np.ndarray, kernel, stride, padding, amax: int, y: torch.Tensor,
                        linear_tail: bool) -> None:
    """Overwrite (or, with ``linear_tail``, correct) the outputs of the psum-faulty array columns
    of ``y`` (B, N, oh, ow) int32, in place, by replaying their chains over per-fold segment sums."""
    R, C, pb = cfg.rows, cfg.cols, cfg.psum_bits
    dev = xp.device
    kh, kw = kernel
    taps = kh * kw
    N = y.shape[1]
    K = xp.shape[1] * taps
    Fr = Wp.shape[0] // R
    preg = cm.psum
    full = (1 << pb) - 1
    # Replayed outputs: every output channel n whose array column n % C has psum faults.
    outs = [(fc * C + int(c), int(c)) for fc in range(Wp.shape[1] // C) for c in chain_cols if fc * C + c < N]
    if not outs:
        return
    n_idx = np.array([n for n, _ in outs], dtype=np.int64)
    O = len(outs)
    fault_rows = {int(c): np.flatnonzero(preg.faulty[:, c]) for c in chain_cols}
    J = max(len(r) for r in fault_rows.values())
    S = J if linear_tail else J + 1
    # Segment s of a column: the rows after its faulty row s-1 up to its faulty row s (inclusive),
    # read back through that row's psum register (keep/ones); segment J is the healthy tail.
    seg_of_row = np.zeros((O, R), dtype=np.int64)
    keep = np.full((O, S), full, dtype=np.int64)
    ones = np.zeros((O, S), dtype=np.int64)
    for o, (_, c) in enumerate(outs):
        for s, r in enumerate(fault_rows[c]):
            seg_of_row[o, r + 1:] = s + 1
            keep[o, s] = preg.keep[r, c]
            ones[o, s] = preg.ones[r, c]
    sign = 1 << (pb - 1)
    mode = CPU_REPLAY if dev.type == "cpu" else "torch"
    if mode in ("auto", "direct"):
        w_cols = Wp[:, torch.from_numpy(n_idx)].numpy()
        used = _segment_taps(w_cols, seg_of_row, K, R, S)
        if mode == "auto":
            mode = "direct" if _direct_pays(xp, len(used[0]), w_cols.shape[0] // R, y, padding) else "folds"
    if mode == "direct":
        _replay_direct(xp, w_cols, used, keep, ones, sign, n_idx, kernel, stride, padding, amax, R, S, y, linear_tail)
    else:
        _replay_by_fold_convs(xp, Wp, seg_of_row, keep, ones, sign, n_idx, kernel, stride, padding, amax, K,
                              R, J, S, y, linear_tail, torch_chains=mode == "torch")


def _segment_taps(w_cols: np.ndarray, seg_of_row: np.ndarray, K: int, R: int, S: int):
    """``(o_of, k_of, seg)``: every (replayed output, K index) whose latched weight is nonzero and
    whose row lies in a replayed segment, ordered by output then K; ``seg`` (O, Fr*R) segment ids."""
    ks = np.arange(w_cols.shape[0])
    seg = seg_of_row[:, ks % R]  # (O, Fr*R)
    used = (ks < K)[None, :] & (seg < S) & (w_cols.T != 0)
    o_of, k_of = np.nonzero(used)
    return o_of, k_of, seg


def _direct_pays(xp, taps: int, folds: int, y, padding) -> bool:
    """The "auto" choice between the replays, from measurements (docs/design.md, "Engines"): the
    direct kernel wins unless its batch-last copy of the input outweighs its work (fewer than 4
    MACs per copied value, e.g. strided 1x1 shortcuts) or a large output plane meets few folds
    (few, large per-fold convolutions are efficient: ResNet-20's 32x32 layers on a 32-row array).
    ``taps``: the direct kernel's taps per image and output pixel (:func:`_segment_taps`)."""
    L = y.shape[2] * y.shape[3]
    if L == 1:
        return True  # linear layers: per-fold convolutions of 1x1 images are pure overhead
    copied = xp.shape[1] * (xp.shape[2] + 2 * padding[0]) * (xp.shape[3] + 2 * padding[1])
    return taps * L >= 4 * copied and (L <= DIRECT_MAX_PIXELS or folds >= DIRECT_MIN_FOLDS)


def _replay_direct(xp, w_cols, used, keep, ones, sign, n_idx, kernel, stride, padding, amax, R, S, y,
                   linear_tail) -> None:
    """CPU: the segment sums come straight from the input windows in one jitted kernel that also
    replays the chains and writes ``y``; only the nonzero latched weights of each segment are
    visited (a segment ends at its faulty row, so with ``linear_tail`` about half a fold).

    w_cols: (Fr*R, O) int64 latched weights of the replayed outputs; used: their
    :func:`_segment_taps`."""
    kh, kw = kernel
    taps = kh * kw
    O = len(n_idx)
    Fr = w_cols.shape[0] // R
    o_of, k_of, seg = used  # grouped by (output, fold, segment)
    slot = (o_of * Fr + k_of // R) * S + seg[o_of, k_of]
    ptr = np.zeros(O * Fr * S + 1, dtype=np.int64)
    np.cumsum(np.bincount(slot, minlength=O * Fr * S), out=ptr[1:])
    # Partial sums of at most R products: float32 is exact below 2**24, else float64.
    wmax = int(np.abs(w_cols).max(initial=0))
    dtype = np.float32 if R * max(1, amax) * max(1, wmax) < _F32_LIMIT else np.float64
    B, Cin, H, W = xp.shape
    ph, pw = padding
    xt = _scratch((Cin, H + 2 * ph, W + 2 * pw, B), dtype)
    _batch_last_padded(xp.numpy(), ph, pw, xt)
    tap = k_of % taps
    _direct_chains(xt.reshape(-1), xt.shape[1], xt.shape[2], B, k_of // taps, tap // kw, tap % kw,
                   w_cols[k_of, o_of].astype(dtype), ptr, keep, ones, sign, linear_tail, n_idx, Fr, S,
                   stride[0], stride[1], y.numpy())


_SCRATCH = threading.local()


def _scratch(shape, dtype) -> np.ndarray:
    """An uninitialised array from a per-thread buffer that grows and is reused: a fresh multi-MB
    allocation every layer costs more in page faults than the copy that fills it."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _SCRATCH.buf = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


@njit(cache=True, parallel=True)
def _batch_last_padded(x, ph, pw, out):
    """x (B, C, H, W) -> out (C, H + 2 ph, W + 2 pw, B), zero padded (batch innermost, so that one
    kernel tap of one output row is a contiguous run of ``ow * B`` values)."""
    B, C, H, W = x.shape
    Hp = out.shape[1]
    for ci in prange(C * Hp):
        c = ci // Hp
        io = ci % Hp
        row = out[c, io]
        i = io - ph
        if i < 0 or i >= H:
            row[:] = 0
            continue
        for j in range(pw):
            row[j, :] = 0
            row[W + pw + j, :] = 0
        for b in range(B):
            for j in range(W):
                row[j + pw, b] = x[b, c, i, j]


@njit(cache=True, parallel=True)
def _direct_chains(xf, Hp, Wp, B, tc, ti, tj, tw, ptr, keep, ones, sign, linear_tail, n_idx, Fr, S, sh, sw, y):
    """Segment sums and psum chains of the replayed outputs, straight from the padded input.

    xf: the (Cin, Hp, Wp, B) batch-last padded input, flattened, float holding exact codes; taps
    ``t`` of segment ``(o, fold, s)`` are ``ptr[(o*Fr + fold)*S + s] .. ptr[...+1]`` with input
    channel ``tc``, kernel offsets ``ti, tj`` and weight ``tw``; keep/ones: (O, S) int64;
    y: (B, N, oh, ow) int32, its columns ``n_idx`` overwritten (``wrap32(sum over folds of the
    chain)``) or, with ``linear_tail``, corrected (``wrap32(y + sum over folds of (chain - sum of
    segments))``). One task per (output, output row, chunk of images), the chunk sized so the
    task's three row buffers stay in L1; the chain state is int32: a psum register value fits
    (psum_bits <= 32, and p + segment < 2**psum_bits by the caller's wrap guard) and the fold
    totals are only needed mod 2**32.
    """
    O = n_idx.shape[0]
    oh, ow = y.shape[2], y.shape[3]
    bc = min(B, max(8, 2048 // ow))  # images per task: about 2048 values per row buffer
    nb = (B + bc - 1) // bc
    for task in prange(O * oh * nb):
        o = task // (oh * nb)
        r = (task // nb) % oh
        b0 = (task % nb) * bc
        nbc = min(bc, B - b0)
        W = ow * nbc
        tot = np.zeros(W, dtype=np.int32)
        v = np.empty(W, dtype=xf.dtype)
        p = np.empty(W, dtype=np.int32)
        for f in range(Fr):
            p[:] = 0
            for s in range(S):
                v[:] = 0
                base = (o * Fr + f) * S + s
                for t in range(ptr[base], ptr[base + 1]):
                    w = tw[t]
                    off = ((tc[t] * Hp + r * sh + ti[t]) * Wp + tj[t]) * B + b0
                    if sw == 1 and nbc == B:
                        xs = xf[off:off + W]  # slices keep the indices non-negative: the loop vectorizes
                        for e in range(W):
                            v[e] += w * xs[e]
                    else:
                        for q in range(ow):
                            xs = xf[off + q * sw * B:off + q * sw * B + nbc]
                            vs = v[q * nbc:q * nbc + nbc]
                            for b in range(nbc):
                                vs[b] += w * xs[b]
                k = keep[o, s]
                on = ones[o, s]
                for i in range(W):
                    p[i] = ((((np.int64(p[i]) + np.int64(np.int32(v[i]))) & k) | on) ^ sign) - sign
                if linear_tail:
                    for i in range(W):
                        tot[i] -= np.int32(v[i])
            for i in range(W):
                tot[i] += p[i]
        n = n_idx[o]
        for b in range(nbc):  # images outermost: each image's output row is one contiguous run
            yr = y[b0 + b, n, r]
            for q in range(ow):
                val = np.int64(tot[q * nbc + b]) + (np.int64(yr[q]) if linear_tail else 0)
                yr[q] = ((val & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


def _replay_by_fold_convs(xp, Wp, seg_of_row, keep, ones, sign, n_idx, kernel, stride, padding, amax, K, R, J, S, y,
                          linear_tail, torch_chains: bool) -> None:
    """Each fold's segment sums from one small convolution over the fold's input channels with
    masked "virtual filters" ``Wv[fr, o, s, r]``; the chains are replayed fold by fold by a numba
    kernel (CPU) or by torch ops (``torch_chains``: CUDA)."""
    dev = xp.device
    kh, kw = kernel
    taps = kh * kw
    B, N = y.shape[0], y.shape[1]
    O = len(n_idx)
    Fr = Wp.shape[0] // R
    n_t = torch.from_numpy(n_idx).to(dev)
    seg_mask = F.one_hot(torch.from_numpy(seg_of_row).to(dev), J + 1)[..., :S]  # (O, R, S)
    Wsel = Wp.view(Fr, R, -1)[:, :, n_t]  # (Fr, R, O)
    Wv = (Wsel.permute(0, 2, 1).unsqueeze(2) * seg_mask.permute(0, 2, 1).unsqueeze(0))  # (Fr, O, S, R)
    wmax = int(Wv.abs().max()) if Wv.numel() else 0
    yv = y.view(B, N, -1)
    tot = torch.zeros((B, O, yv.shape[2]), dtype=torch.int64, device=dev)
    keep_t = torch.from_numpy(keep).to(dev).view(1, O, S, 1)
    ones_t = torch.from_numpy(ones).to(dev).view(1, O, S, 1)
    for fr in range(Fr):
        k0, k1 = fr * R, min(K, fr * R + R)
        c_lo, c_hi = k0 // taps, (k1 - 1) // taps
        local = torch.zeros((O * S, (c_hi - c_lo + 1) * taps), dtype=torch.int64, device=dev)
        local[:, k0 - c_lo * taps:k1 - c_lo * taps] = Wv[fr, :, :, :k1 - k0].reshape(O * S, -1)
        w_fold = local.view(O * S, c_hi - c_lo + 1, kh, kw)
        seg = _exact_conv(xp[:, c_lo:c_hi + 1], w_fold, stride, padding, amax, wmax)  # (B, O*S, oh, ow)
        if not torch_chains:
            seg = seg.contiguous()  # float32 or, past 2**24, int64 (the kernel reads either exactly)
            _fold_psum_chains(seg.view(B, O, S, -1).numpy(), keep, ones, sign, linear_tail, tot.numpy())
            continue
        seg = seg.to(torch.int64).view(B, O, S, -1)
        p = torch.zeros_like(tot)
        for s in range(S):
            p = force(p + seg[:, :, s], keep_t[:, :, s], ones_t[:, :, s], sign)
        tot += p - seg.sum(dim=2) if linear_tail else p
    if not torch_chains:
        _finish_chains(yv.numpy(), n_idx, tot.numpy(), linear_tail)
    elif linear_tail:
        yv[:, n_t] = wrap(yv[:, n_t].to(torch.int64) + tot, 32).to(yv.dtype)
    else:
        yv[:, n_t] = wrap(tot, 32).to(yv.dtype)


@njit(cache=True, parallel=True)
def _fold_psum_chains(seg, keep, ones, sign, linear_tail, tot):
    """One fold of the psum chains: ``p = force_s(p + seg_s)`` over the segments, added to ``tot``.

    seg: (B, O, S, L) exact integers (float32 or int64); keep/ones: (O, S) int64; tot: (B, O, L) int64.
    With ``linear_tail`` the segments stop at the last faulty row and ``tot`` gets ``p - sum(seg)``,
    the correction to the plain sums (exact mod 2**32 when the psum register is 32 bits wide).
    """
    B, O, S, L = seg.shape
    for bo in prange(B * O):
        b = bo // O
        o = bo % O
        p = np.zeros(L, dtype=np.int64)
        for s in range(S):
            k = keep[o, s]
            on = ones[o, s]
            for i in range(L):
                x = np.int64(seg[b, o, s, i])
                q = p[i] + x
                p[i] = (((q & k) | on) ^ sign) - sign
                if linear_tail:
                    tot[b, o, i] -= x
        for i in range(L):
            tot[b, o, i] += p[i]


@njit(cache=True, parallel=True)
def _finish_chains(y, n_idx, tot, linear_tail):
    """Write the replayed outputs: ``y[:, n_idx[o]] = wrap32(y + tot)`` (``linear_tail``) or
    ``wrap32(tot)``. y: (B, N, L) int32; tot: (B, O, L) int64."""
    B, O, L = tot.shape
    for bo in prange(B * O):
        b = bo // O
        o = bo % O
        n = n_idx[o]
        for i in range(L):
            v = tot[b, o, i] + (np.int64(y[b, n, i]) if linear_tail else 0)
            y[b, n, i] = ((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
