"""How the convolution path replays psum chains on CPU: a frozen settings object, never a global.

Results never depend on these settings (the property tests run every combination and compare);
they choose between equally exact strategies and size their work units.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from sysarray.validation import check_bool, check_enum, check_positive_int


class Replay(str, enum.Enum):
    """Where the segment sums of psum-faulty columns come from on CPU."""

    DIRECT = "direct"  # one numba kernel straight from the input, chains fused (replay_direct.py)
    TORCH = "torch"  # one small convolution per fold, chains in torch ops (replay_torch.py; the CUDA path)


class Kernel(str, enum.Enum):
    """The direct replay's kernel."""

    SIMD = "simd"  # blocks of lanes held in SIMD registers (replay_simd.py), where it applies
    PASSES = "passes"  # vectorised passes over a buffer (replay_passes.py), everywhere
    VNNI = "vnni"  # int8 dot products of kernel rows on AVX-512 VNNI (replay_vnni.py), where it applies; else SIMD


@dataclass(frozen=True)
class ReplaySettings:
    """replay, kernel: the strategies above (``Kernel.SIMD``, the default, lets the VNNI kernel
    compete by measurement where it applies; ``Kernel.VNNI`` takes it there). segment_conv: a
    direct replay of a layer whose GEMMs fit one row fold (``K <= R``: depthwise and other small
    filters) may take its segment sums from one grouped convolution and run its chains in one
    pass (replay_conv.py) instead of the kernel walking every output's taps; which of the two runs
    is measured per layer shape (False: always the kernel). linear_gemm: a linear layer (1x1
    images, 1x1 filters, one group) may replay as one GEMM's chains straight from its transposed
    batch (replay_linear.py) instead of by the kernel; which runs is measured per layer shape
    (False: always the kernel). pairs: the SIMD kernel runs the outputs of one array column
    (column folds of a wide layer: the same taps) in pairs that share each tap's loads.
    run_target: values per contiguous run of the direct replay (images are laid side by side
    until one tap over their output planes is about this long: long runs amortise loop
    overheads, short ones keep a task's buffers in L1). planes_budget: bytes of one image
    group's phase planes at most (they are read once per tap and output, so they should stay in
    the core's cache)."""

    replay: Replay = Replay.DIRECT
    kernel: Kernel = Kernel.SIMD
    segment_conv: bool = True
    linear_gemm: bool = True
    pairs: bool = True
    run_target: int = 1024
    planes_budget: int = 64 << 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "replay", check_enum(self.replay, Replay, "replay", "ReplaySettings"))
        object.__setattr__(self, "kernel", check_enum(self.kernel, Kernel, "kernel", "ReplaySettings"))
        check_bool(self.segment_conv, "segment_conv", "ReplaySettings")
        check_bool(self.linear_gemm, "linear_gemm", "ReplaySettings")
        check_bool(self.pairs, "pairs", "ReplaySettings")
        check_positive_int(self.run_target, "run_target", "ReplaySettings")
        check_positive_int(self.planes_budget, "planes_budget", "ReplaySettings")


DEFAULT = ReplaySettings()
