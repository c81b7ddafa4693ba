"""Per-register PE sensitivity: the gradient of the loss with respect to every value a PE's
``weight``, ``act`` and ``psum`` registers hold, summed per PE (docs/importance.md, step 1).

One forward and backward pass of the fake-quant twin (its forward equals the integer program's)
gives, for every chip GEMM ``Y[M x N] = A[M x K] . W[K x N]`` on integer codes, the operands
``A`` (im2col of the layer input, zero-point padded), ``W`` and the loss gradient ``G = dL/dY``
(M x N). A stuck bit changes a register's value by ``d`` and, to first order, the loss by
``d * dL/dv`` where ``v`` is the value it holds; which values a PE's register holds, and which
outputs a changed value reaches, follow docs/design.md §2.3-2.6:

====  ==============================================  ============================================
flow  register at PE (r, c)                           values it holds -> gradient of each
====  ==============================================  ============================================
ws    weight (stationary)                             ``W[k, n]``, k%R=r, n%C=c -> ``(A^T G)[k, n]``
ws    act (passed east)                               ``A[m, k]``, k%R=r, per column fold ``fc`` ->
                                                      ``sum_{c'>=c} G[m, n'] W[k, n']``, n'=fc*C+c'
ws    psum (passed south)                             partial sum of ``Y[m, n]``, n%C=c, after row r
                                                      of every row fold -> ``G[m, n]``
os    act (passed east)                               ``A[m, k]``, m%R=r, per column fold ->
                                                      ``sum_{c'>=c} G[m, n'] W[k, n']``
os    weight (passed south)                           ``W[k, n]``, n%C=c, per row fold ``fm`` ->
                                                      ``sum_{r'>=r} A[m', k] G[m', n]``, m'=fm*R+r'
os    psum (stationary accumulator)                   ``Y[m, n]``, m%R=r, n%C=c -> ``G[m, n]``
is    WS on ``Y^T = W^T A^T``: act is stationary, weight passed east, psum passed south
====  ==============================================  ============================================

A PE's sensitivity for a register is ``sum |v * dL/dv|`` over the values it holds (``"wgrad"``,
the value-times-gradient attribution, a one-point approximation of ISimDL's neuron conductance) or
``sum |dL/dv|`` (``"grad"``, the first-order loss change per unit change of the register; times the
``2^bit`` size of a stuck bit's change it is the Taylor estimate of the fault's effect). The
stationary weight of WS holds one value for every image, so its gradient is summed over the images
before ``|.|``; every other value (streamed, partial sums, IS's stationary inputs) is one per image
position, with its own fault-induced change, so ``|.|`` is taken per value and summed. OS folds
are cut per calibration batch. Across layers the sums add: one PE runs every layer, and all
gradients are per unit of the integer code, the unit a stuck bit changes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

SENSITIVITY_MODES = ("wgrad", "grad")
REGISTERS = ("weight", "act", "psum")
# Elements of the largest (chunk, K, N) temporary: bounds memory whatever the layer.
_CHUNK_ELEMENTS = 1 << 22


def _check_mode(mode: str) -> None:
    if mode not in SENSITIVITY_MODES:
        raise ValueError(f"The sensitivity mode must be one of {', '.join(SENSITIVITY_MODES)}. Got {mode!r} instead.")


def _pad(x, rows: int, cols: int):
    import torch.nn.functional as F

    return F.pad(x, (0, cols - x.shape[1], 0, rows - x.shape[0]))


def _suffix(x, dim: int):
    """Sums over positions ``>= i`` along ``dim`` (what a value passed on from position i reaches)."""
    return x.flip(dim).cumsum(dim).flip(dim)


def ws_register_scores(A, W, G, R: int, C: int, mode: str = "wgrad") -> dict[str, np.ndarray]:
    """``{"stationary", "streamed", "psum"}`` -> (R, C) sensitivities of one GEMM on a WS array
    (module docstring). ``A`` (M, K), ``W`` (K, N), ``G`` (M, N): float64 torch tensors."""
    import torch

    _check_mode(mode)
    M, K = A.shape
    N = W.shape[1]
    Kp, Np = -(-K // R) * R, -(-N // C) * C
    A, W, G = _pad(A, M, Kp), _pad(W, Kp, Np), _pad(G, M, Np)
    gW = A.t() @ G  # one value for all images: gradient summed before |.|
    sw = (gW if mode == "grad" else W * gW).abs()
    stationary = sw.reshape(Kp // R, R, Np // C, C).sum(dim=(0, 2))
    streamed = torch.zeros(Kp, C, dtype=torch.float64)
    psum = torch.zeros(R, Np, dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // (Kp * Np))
    for i in range(0, M, step):
        a, g = A[i:i + step], G[i:i + step]
        h = g[:, None, :] * W[None, :, :]  # (m, k, n): G[m, n] W[k, n]
        ga = _suffix(h.reshape(len(a), Kp, Np // C, C), 3)  # act at column c reaches columns >= c
        streamed += (ga if mode == "grad" else a[:, :, None, None] * ga).abs().sum(dim=(0, 2))
        if mode == "grad":
            psum += g.abs().sum(dim=0)[None, :] * (Kp // R)  # every row of every row fold passes it on
        else:
            part = (a[:, :, None] * W[None, :, :]).reshape(len(a), Kp // R, R, Np).cumsum(dim=2)
            psum += (part * g[:, None, None, :]).abs().sum(dim=(0, 1))
    streamed = streamed.reshape(Kp // R, R, C).sum(dim=0)
    psum = psum.reshape(R, Np // C, C).sum(dim=1)
    return {"stationary": stationary.numpy(), "streamed": streamed.numpy(), "psum": psum.numpy()}


def os_register_scores(A, W, G, R: int, C: int, mode: str = "wgrad") -> dict[str, np.ndarray]:
    """``{"weight", "act", "psum"}`` -> (R, C) sensitivities of one GEMM on an OS array
    (module docstring). ``A`` (M, K), ``W`` (K, N), ``G`` (M, N): float64 torch tensors."""
    import torch

    _check_mode(mode)
    M, K = A.shape
    N = W.shape[1]
    Mp, Np = -(-M // R) * R, -(-N // C) * C
    A, W, G = _pad(A, Mp, K), _pad(W, K, Np), _pad(G, Mp, Np)
    act = torch.zeros(Mp, C, dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // (K * Np))
    for i in range(0, Mp, step):
        a, g = A[i:i + step], G[i:i + step]
        ga = _suffix((g[:, None, :] * W[None, :, :]).reshape(len(a), K, Np // C, C), 3)
        act[i:i + step] = (ga if mode == "grad" else a[:, :, None, None] * ga).abs().sum(dim=(1, 2))
    weight = torch.zeros(R, Np, dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // (Mp * Np))
    for j in range(0, K, step):
        a, w = A[:, j:j + step], W[j:j + step]
        gw = _suffix((a[:, :, None] * G[:, None, :]).reshape(Mp // R, R, a.shape[1], Np), 1)  # rows >= r
        weight += (gw if mode == "grad" else w[None, None] * gw).abs().sum(dim=(0, 2))
    y = A @ W
    ps = (G if mode == "grad" else y * G).abs()
    return {"act": act.reshape(Mp // R, R, C).sum(dim=0).numpy(),
            "weight": weight.reshape(R, Np // C, C).sum(dim=1).numpy(),
            "psum": ps.reshape(Mp // R, R, Np // C, C).sum(dim=(0, 2)).numpy()}


def gemm_register_scores(A, W, G, cfg: Any, mode: str = "wgrad") -> dict[str, np.ndarray]:
    """``{"weight", "act", "psum"}`` -> (R, C) float64 sensitivities of one GEMM on ``cfg``'s dataflow."""
    from sysarray.config import Dataflow

    R, C = cfg.rows, cfg.cols
    A, W, G = A.double(), W.double(), G.double()
    if cfg.dataflow is Dataflow.OS:
        return os_register_scores(A, W, G, R, C, mode)
    if cfg.dataflow is Dataflow.IS:  # WS on Y^T = W^T A^T: A^T stationary in the act register
        s = ws_register_scores(W.t(), A.t(), G.t(), R, C, mode)
        return {"act": s["stationary"], "weight": s["streamed"], "psum": s["psum"]}
    s = ws_register_scores(A, W, G, R, C, mode)
    return {"weight": s["stationary"], "act": s["streamed"], "psum": s["psum"]}


def _gemm_operands(op: Any, x, wq, acc):
    """``(A, W, G)`` per group of one chip layer from the twin's hook values (G from ``acc.grad``)."""
    from sysarray.mapping import im2col

    N = wq.shape[0]
    w = wq.detach().reshape(N, -1).double()
    g = acc.grad.double()
    if op.kind == "conv":
        a = im2col(x.detach().double(), tuple(wq.shape[2:]), op.stride, op.padding, float(op.in_qp.zero_point))
        g = g.permute(0, 2, 3, 1).reshape(-1, N)  # rows in (b, oh, ow) order, as im2col's
        groups = op.groups
    else:
        a = x.detach().double().reshape(-1, w.shape[1])
        g = g.reshape(-1, N)
        groups = 1
    kg, ng = a.shape[1] // groups, N // groups
    return [(a[:, i * kg:(i + 1) * kg], w[i * ng:(i + 1) * ng].t(), g[:, i * ng:(i + 1) * ng]) for i in range(groups)]


def register_sensitivity(program: Any, images: Any, labels: Any, cfg: Any, mode: str = "wgrad",
                         batch_size: int = 256) -> dict[str, np.ndarray]:
    """``{"weight", "act", "psum"}`` -> (R, C) float64 sensitivity of each PE register on ``cfg``
    from one backward pass of the fake-quant twin over ``images`` (N, C, H, W) with ``labels``.

    The loss is the mean cross-entropy over all images. Only the program's chip GEMMs count
    (attention MatMuls are not mapped onto PE registers here).
    """
    import torch
    import torch.nn.functional as F

    from accel_models.fakequant import FakeQuantProgram
    from accel_models.program import Gemm

    _check_mode(mode)
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"register_sensitivity needs as many labels as images, at least one. "
                         f"Got {len(images)} images and {len(labels)} labels instead.")
    twin = FakeQuantProgram(program)
    out = {reg: np.zeros((cfg.rows, cfg.cols)) for reg in REGISTERS}
    n = len(labels)
    stationary_grad: dict[str, Any] = {}
    for i in range(0, n, batch_size):
        seen: list = []

        def hook(op, x, wq, acc):
            if isinstance(op, Gemm):
                acc.retain_grad()
                seen.append((op, x, wq, acc))
            return acc

        twin.zero_grad()
        logits = twin(images[i:i + batch_size], gemm_hook=hook)
        loss = F.cross_entropy(logits.float(), labels[i:i + batch_size], reduction="sum") / n
        loss.backward()
        with torch.no_grad():
            for op, x, wq, acc in seen:
                for gi, (a, w, g) in enumerate(_gemm_operands(op, x, wq, acc)):
                    key = f"{op.name}/{gi}"
                    # the stationary operand's gradient sums over every batch before |.|: kept apart
                    s = gemm_register_scores(a, w, g, cfg, mode)
                    for reg in REGISTERS:
                        if reg != _stationary(cfg):
                            out[reg] += s[reg]
                    if _stationary(cfg) is not None:
                        prev = stationary_grad.get(key)
                        part = _stationary_grad(a, w, g, cfg)
                        stationary_grad[key] = part if prev is None else (prev[0] + part[0], part[1])
    reg = _stationary(cfg)
    if reg is not None:
        for gsum, value in stationary_grad.values():
            score = (gsum if mode == "grad" else value * gsum).abs().numpy()
            out[reg] += _fold_stationary(score, cfg)
    return out


def _stationary(cfg: Any) -> str | None:
    """The register whose one value serves every image: the WS weight (IS holds one act value per
    image position, OS none)."""
    from sysarray.config import Dataflow

    return "weight" if cfg.dataflow is Dataflow.WS else None


def _stationary_grad(a, w, g, cfg: Any):
    """``(dL/dW, W)`` of one GEMM batch: summed over batches before ``|.|``."""
    return a.t() @ g, w


def _fold_stationary(score: np.ndarray, cfg: Any) -> np.ndarray:
    from sysarray.mapping import per_pe_sum

    return per_pe_sum(score, cfg.rows, cfg.cols)


__all__ = ["REGISTERS", "SENSITIVITY_MODES", "gemm_register_scores", "os_register_scores", "register_sensitivity",
           "ws_register_scores"]
