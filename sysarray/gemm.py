"""``simulate_gemm``: one integer GEMM on one (possibly faulty) systolic array."""
from __future__ import annotations

import enum

import numpy as np
import torch

from sysarray.config import ArrayConfig
from sysarray.faults import FaultMap
from sysarray.stats import GemmStats


class Engine(str, enum.Enum):
    """``fast``: whole-matrix torch engine (CPU or CUDA). ``cycle``: the numba clock-level reference."""

    FAST = "fast"
    CYCLE = "cycle"


_A_DTYPES = {np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8}


def _dtype_name(x) -> str:
    return str(x.dtype).replace("torch.", "")


def _check_operands(a, w) -> bool:
    """Validate a (M, K) int8/uint8 and w (K, N) int8; return True when they are torch tensors."""
    is_torch = isinstance(a, torch.Tensor)
    for name, x in (("a", a), ("w", w)):
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            raise TypeError(f"The '{name}' argument of simulate_gemm must be a numpy array or torch tensor. Got {type(x).__name__} instead.")
        if isinstance(x, torch.Tensor) != is_torch:
            raise TypeError("The 'a' and 'w' arguments of simulate_gemm must both be numpy arrays or both torch tensors.")
        if x.ndim != 2:
            raise ValueError(f"The '{name}' argument of simulate_gemm must be 2-D. Got shape {tuple(x.shape)} instead.")
        if min(x.shape) < 1:
            raise ValueError(f"The '{name}' argument of simulate_gemm must not be empty. Got shape {tuple(x.shape)} instead.")
    a_ok = a.dtype in (torch.int8, torch.uint8) if is_torch else a.dtype in (np.int8, np.uint8)
    if not a_ok:
        raise TypeError(f"The 'a' argument of simulate_gemm must have dtype int8 or uint8. Got {_dtype_name(a)} instead.")
    w_ok = w.dtype == (torch.int8 if is_torch else np.int8)
    if not w_ok:
        raise TypeError(f"The 'w' argument of simulate_gemm must have dtype int8. Got {_dtype_name(w)} instead.")
    if a.shape[1] != w.shape[0]:
        raise ValueError(
            f"simulate_gemm needs a (M, K) and w (K, N) with the same K. Got a {tuple(a.shape)} and w {tuple(w.shape)} instead."
        )
    if is_torch and a.device != w.device:
        raise ValueError(f"The 'a' and 'w' tensors must be on one device. Got {a.device} and {w.device} instead.")
    return is_torch


def _as_engine(engine) -> Engine:
    try:
        return Engine(getattr(engine, "value", engine))
    except ValueError:
        raise ValueError(f"The 'engine' argument of simulate_gemm must be one of fast, cycle. Got {engine!r} instead.") from None


def check_chip(cfg: ArrayConfig, faults: FaultMap | None, where: str = "simulate_gemm") -> None:
    """Raise unless ``cfg`` is an ArrayConfig and ``faults`` (if any) fits it."""
    if not isinstance(cfg, ArrayConfig):
        raise TypeError(f"The 'cfg' argument of {where} must be an ArrayConfig. Got {type(cfg).__name__} instead.")
    if faults is not None:
        if not isinstance(faults, FaultMap):
            raise TypeError(f"The 'faults' argument of {where} must be a FaultMap or None. Got {type(faults).__name__} instead.")
        faults.check_fits(cfg.rows, cfg.cols, cfg.psum_bits)


def simulate_gemm(a, w, cfg: ArrayConfig, faults: FaultMap | None = None, engine: str = "fast",
                  device: str | torch.device | None = None):
    """Run ``y = a @ w`` on the array ``cfg`` with stuck-at ``faults``.

    a: (M, K) int8 or uint8 activations; w: (K, N) int8 weights; both numpy arrays or both
    torch tensors. Returns ``(y, stats)``: y (M, N) int32 of the same kind (a torch result
    stays on the input's device), and :class:`GemmStats` (cycles and utilization). The
    ``fast`` engine runs on the tensors' device (or ``device`` for numpy inputs); the
    ``cycle`` engine runs on the CPU and counts its statistics from its own clock.
    """
    is_torch = _check_operands(a, w)
    check_chip(cfg, faults)
    eng = _as_engine(engine)
    M, K = a.shape
    N = w.shape[1]
    if eng is Engine.CYCLE:
        from sysarray.engines.cycle import cycle_gemm

        an = a.detach().cpu().numpy() if is_torch else a
        wn = w.detach().cpu().numpy() if is_torch else w
        y, stats = cycle_gemm(an, wn, cfg, faults)
        if is_torch:
            return torch.from_numpy(y).to(a.device), stats
        return y, stats

    from sysarray.engines.fast import fast_gemm
    from sysarray.timing import gemm_timing

    if is_torch:
        at, wt = a, w
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        at = torch.from_numpy(np.ascontiguousarray(a)).to(dev)
        wt = torch.from_numpy(np.ascontiguousarray(w)).to(dev)
    y = fast_gemm(at, wt, cfg, faults)
    stats: GemmStats = gemm_timing(M, K, N, cfg)
    if is_torch:
        return y, stats
    return y.cpu().numpy(), stats
