"""``simulate_gemm``: one integer GEMM on one (possibly faulty) systolic array, numpy or torch."""
from __future__ import annotations

import numpy as np
import torch

from sysarray.chip import Chip, Engine
from sysarray.config import ArrayConfig
from sysarray.faults import FaultMap
from sysarray.stats import GemmStats
from sysarray.validation import check_array_dtype, check_enum, check_instance

WHERE = "simulate_gemm"


def _check_operands(a, w) -> bool:
    """Validate a (M, K) int8/uint8 and w (K, N) int8; return True when they are torch tensors."""
    is_torch = isinstance(a, torch.Tensor)
    for name, x in (("a", a), ("w", w)):
        check_instance(x, (np.ndarray, torch.Tensor), name, WHERE, what="a numpy array or torch tensor")
        if isinstance(x, torch.Tensor) != is_torch:
            raise TypeError("The 'a' and 'w' arguments of simulate_gemm must both be numpy arrays or both torch tensors.")
        if x.ndim != 2:
            raise ValueError(f"The '{name}' argument of simulate_gemm must be 2-D. Got shape {tuple(x.shape)} instead.")
        if min(x.shape) < 1:
            raise ValueError(f"The '{name}' argument of simulate_gemm must not be empty. Got shape {tuple(x.shape)} instead.")
    check_array_dtype(a, "a", WHERE, (torch.int8, torch.uint8) if is_torch else (np.int8, np.uint8))
    check_array_dtype(w, "w", WHERE, (torch.int8,) if is_torch else (np.int8,))
    if a.shape[1] != w.shape[0]:
        raise ValueError(
            f"simulate_gemm needs a (M, K) and w (K, N) with the same K. Got a {tuple(a.shape)} and w {tuple(w.shape)} instead."
        )
    if is_torch and a.device != w.device:
        raise ValueError(f"The 'a' and 'w' tensors must be on one device. Got {a.device} and {w.device} instead.")
    return is_torch


def simulate_gemm(a, w, cfg: ArrayConfig, faults: FaultMap | None = None, engine: Engine | str = "fast",
                  device: str | torch.device | None = None) -> tuple[object, GemmStats]:
    """Run ``y = a @ w`` on the array ``cfg`` with stuck-at ``faults``.

    a: (M, K) int8 or uint8 activations; w: (K, N) int8 weights; both numpy arrays or both
    torch tensors. Returns ``(y, stats)``: y (M, N) int32 of the same kind (a torch result
    stays on the input's device), and :class:`GemmStats` (cycles and utilization). The
    ``fast`` engine runs on the tensors' device (or ``device`` for numpy inputs); the
    ``cycle`` engine runs on the CPU and counts its statistics from its own clock.
    A :class:`sysarray.Chip` does the same for workloads that run many GEMMs on one chip.
    """
    is_torch = _check_operands(a, w)
    check_instance(cfg, ArrayConfig, "cfg", WHERE)
    check_instance(faults, FaultMap, "faults", WHERE, none_ok=True)
    chip = Chip(cfg, faults, check_enum(engine, Engine, "engine", WHERE), device)
    if is_torch:
        return chip.gemm(a, w)
    dev = chip.device if chip.device is not None and chip.engine is Engine.FAST else torch.device("cpu")
    y, stats = chip.gemm(torch.from_numpy(np.ascontiguousarray(a)).to(dev), torch.from_numpy(np.ascontiguousarray(w)).to(dev))
    return y.cpu().numpy(), stats
