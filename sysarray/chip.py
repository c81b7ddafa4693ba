"""``Chip``: one simulated chip (an array, its fault map, the engine that simulates it) and the
operations a workload runs on it.

A workload (an integer network, a fault-aware training step) never reaches into the engines:
it builds a :class:`Chip` and calls :meth:`Chip.gemm`, :meth:`Chip.bmm`, :meth:`Chip.conv2d` or
:meth:`Chip.linear` (or :meth:`Chip.clean_linear`, a fault-free linear layer prepared once).
Each returns the exact int32 accumulators the array produces, bit for bit the same whichever
engine runs, and the timing of the GEMMs (SCALE-Sim v2's numbers). What a workload knows that
lets the fast engine skip work travels as :class:`ConvHints`; results never depend on hints.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sysarray.config import ArrayConfig
from sysarray.faults import FaultMap
from sysarray.mapping import conv_by_gemms, conv_output_size
from sysarray.stats import GemmStats
from sysarray.timing import cached_gemm_timing
from sysarray.validation import check_array_dtype, check_bool, check_device, check_enum, check_instance, check_int

if TYPE_CHECKING:
    from sysarray.repair import RepairPlan

__all__ = ["Chip", "ConvHints", "Engine"]


class Engine(str, enum.Enum):
    """``fast``: whole-matrix torch engine (CPU or CUDA). ``cycle``: the numba clock-level reference."""

    FAST = "fast"
    CYCLE = "cycle"


@dataclass(frozen=True)
class ConvHints:
    """What the caller of :meth:`Chip.conv2d` knows (all optional; the values returned are the same).

    x_bound: a bound on ``|x|`` that holds (the 8-bit code range), sparing a pass over the input.
    saturate: a bound ``L <= 2**24`` such that the caller treats every accumulator at or beyond
    ``L`` (and at or beyond ``-L``) alike, as a requantization that saturates there: outputs the
    faults push beyond it may then come back as ``sign(r) * L`` in a float32 result.
    clean: what this same call returns on the fault-free chip (same input, weights and
    arguments), kept by the caller (a fault-free trace). The fast engine then reuses it, and
    returns ``clean`` itself (the same object) when the chip changes none of its outputs.
    """

    x_bound: int | None = None
    saturate: int | None = None
    clean: torch.Tensor | None = field(default=None, repr=False, compare=False)


_NO_HINTS = ConvHints()


def _pair(value: object, name: str, where: str, lo: int) -> tuple[int, int]:
    v = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(v) != 2:
        raise ValueError(f"The '{name}' argument of {where} must be an integer or a pair of integers. "
                         f"Got {value!r} instead.")
    return check_int(v[0], name, where, lo=lo), check_int(v[1], name, where, lo=lo)


_CODE_DTYPES = (torch.int8, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
_WEIGHT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32,
                  torch.float64)


def _act_signed(a: torch.Tensor, act_signed: bool | None, where: str) -> bool:
    """Whether ``a`` holds int8 codes: its dtype says so, or (for float codes) ``act_signed``."""
    if act_signed is None:
        if a.is_floating_point():
            raise ValueError(f"{where} needs 'act_signed' (True for int8 codes, False for uint8) when 'a' is a "
                             "float tensor of codes.")
        return a.dtype != torch.uint8
    return act_signed


def _check_bmm(a: object, w: object, act_signed: object) -> bool:
    """Chip.bmm's operands: a (G, M, K) codes, w (G, K, N) integer values, on one device, no
    dimension empty; returns whether the codes are int8."""
    where = "Chip.bmm"
    for name, x, dims, dtypes in (("a", a, "(G, M, K)", _CODE_DTYPES), ("w", w, "(G, K, N)", _WEIGHT_DTYPES)):
        check_instance(x, torch.Tensor, name, where, what="a torch tensor")
        if x.ndim != 3 or not min(x.shape):
            raise ValueError(f"The '{name}' argument of {where} must be a 3-D tensor {dims} without an empty "
                             f"dimension. Got shape {tuple(x.shape)} instead.")
        check_array_dtype(x, name, where, dtypes)
    if a.shape[0] != w.shape[0] or a.shape[2] != w.shape[1]:
        raise ValueError(f"{where} needs a (G, M, K) and w (G, K, N) with the same G and K. Got a {tuple(a.shape)} "
                         f"and w {tuple(w.shape)} instead.")
    if a.device != w.device:
        raise ValueError(f"The 'a' and 'w' tensors of {where} must be on one device. Got {a.device} and {w.device} "
                         "instead.")
    if act_signed is not None:
        check_bool(act_signed, "act_signed", where)
        if not a.is_floating_point() and bool(act_signed) != (a.dtype == torch.int8):
            raise ValueError(f"The 'act_signed' argument of {where} must match the dtype of 'a' "
                             f"({str(a.dtype)[6:]}) or be None. Got {act_signed!r} instead.")
    return _act_signed(a, None if act_signed is None else bool(act_signed), where)


@dataclass(frozen=True, eq=False)
class Chip:
    """One chip: ``config`` (the array), ``faults`` (its stuck bits; None for a fault-free chip),
    the ``engine`` that simulates it (``"fast"`` or ``"cycle"``, bit for bit the same results)
    and the torch ``device`` the fast engine runs on (None: where the operands are).

    An array with spare rows or columns (``config.spare_rows``, ``spare_cols``) takes the map of its
    physical array and ``repair``, a :class:`sysarray.repair.RepairPlan` or ``"auto"`` (None:
    ``"auto"``, :func:`sysarray.repair.allocate_repair`). The chip then keeps the given map as
    ``physical_faults``, the plan as ``repair``, and ``faults`` is the logical ``rows x cols`` map
    (:func:`sysarray.repair.logical_map`) that both engines simulate (docs/repair.md). Without
    spares ``repair`` is None (``"auto"`` changes nothing) and ``physical_faults`` is ``faults``."""

    config: ArrayConfig
    faults: FaultMap | None = None
    engine: Engine | str = Engine.FAST
    device: torch.device | str | None = None
    repair: RepairPlan | str | None = None
    physical_faults: FaultMap | None = field(default=None, init=False, repr=False)
    _masks: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_instance(self.config, ArrayConfig, "config", "Chip")
        check_instance(self.faults, FaultMap, "faults", "Chip", none_ok=True)
        object.__setattr__(self, "physical_faults", self.faults)
        if not self.config.has_spares and (self.repair is None or self.repair == "auto"):
            object.__setattr__(self, "repair", None)  # nothing to fuse out
            if self.faults is not None:
                self.faults.check_fits(self.config.rows, self.config.cols, self.config.psum_bits)
        else:
            from sysarray.repair import apply_repair

            plan, logical = apply_repair(self.config, self.faults, self.repair, "Chip")
            object.__setattr__(self, "repair", plan)
            object.__setattr__(self, "faults", logical)
        object.__setattr__(self, "engine", check_enum(self.engine, Engine, "engine", "Chip"))
        object.__setattr__(self, "device", check_device(self.device, "device", "Chip"))

    # ----------------------------------------------------------------------------- properties
    @property
    def faulty(self) -> bool:
        """Whether the chip has any stuck bit."""
        return self.faults is not None and not self.faults.is_empty

    def fault_free(self, engine: Engine | str | None = None) -> "Chip":
        """The same array without faults (on ``engine``, default this chip's)."""
        return Chip(self.config, None, self.engine if engine is None else engine, self.device, self.repair)

    def masks(self, act_signed: bool):
        """The chip's register masks for activations read back signed or not (made once)."""
        from sysarray.engines.registers import chip_masks

        if act_signed not in self._masks:
            self._masks[act_signed] = chip_masks(self.config, self.faults, act_signed=act_signed)
        return self._masks[act_signed]

    def timing(self, m: int, k: int, n: int) -> GemmStats:
        """Cycles and utilization of an (m, k, n) GEMM on this array (shared result: do not modify)."""
        return cached_gemm_timing(m, k, n, self.config)

    def __repr__(self) -> str:
        faults = self.faults.summary() if self.faults is not None else "no faults"
        dev = f", {self.device}" if self.device is not None else ""
        return f"Chip({self.config}; {faults}; {self.engine.value} engine{dev})"

    # ----------------------------------------------------------------------------- operations
    def gemm(self, a: torch.Tensor, w: torch.Tensor, *, act_signed: bool | None = None) -> tuple[torch.Tensor, GemmStats]:
        """``a @ w`` on the chip: a (M, K) int8 or uint8 activations, or a float tensor of 8-bit
        codes with ``act_signed`` saying which; w (K, N) int8 weights (integer values in any
        dtype). Returns (M, N) int32 on the operands' device and the GEMM's timing."""
        act_signed = _act_signed(a, act_signed, "Chip.gemm")
        M, K = a.shape
        N = w.shape[1]
        if self.engine is Engine.CYCLE:
            from sysarray.engines.cycle import cycle_gemm

            codes = a.to(torch.int8 if act_signed else torch.uint8) if a.is_floating_point() else a
            y, stats = cycle_gemm(codes.detach().cpu().numpy(), w.detach().cpu().to(torch.int8).numpy(),
                                  self.config, self.faults)
            return torch.from_numpy(y).to(a.device), stats
        from sysarray.engines.fast import fast_gemm

        y = fast_gemm(a, w, self.config, self.faults, act_signed=act_signed, masks=self.masks(act_signed))
        return y, self.timing(M, K, N)

    def bmm(self, a: torch.Tensor, w: torch.Tensor, *, act_signed: bool | None = None,
            bounds: tuple[int | None, int | None] = (None, None), raw: bool = False
            ) -> tuple[torch.Tensor, list[GemmStats]]:
        """G independent GEMMs ``a[g] @ w[g]`` run one after another on the chip (attention's
        ``Q K^T`` and ``P V``, one per image and head): a (G, M, K) int8 or uint8 activations, or a
        float tensor of 8-bit codes with ``act_signed`` saying which; w (G, K, N) int8 values (any
        dtype). Returns (G, M, N) int32 on the operands' device, ``[g]`` bit for bit
        ``gemm(a[g], w[g])``, and one :class:`GemmStats` per GEMM. The fast engine runs the batch
        as batched tensor operations. ``bounds``: bounds on ``|a|`` and ``|w|`` the caller knows
        (the code ranges; they must hold), sparing the fast engine a pass over each. ``raw``: the
        sums may come back as float32 holding the same values (for a caller that post-processes
        them in one pass)."""
        act_signed = _check_bmm(a, w, act_signed)
        if not (isinstance(bounds, tuple) and len(bounds) == 2):
            raise ValueError(f"The 'bounds' argument of Chip.bmm must be a pair (bound on |a| or None, bound on |w| "
                             f"or None). Got {bounds!r} instead.")
        bounds = tuple(check_int(b, "bounds", "Chip.bmm", lo=0, none_ok=True) for b in bounds)
        G, M, K = a.shape
        N = w.shape[2]
        if self.engine is Engine.CYCLE:
            runs = [self.gemm(a[g], w[g], act_signed=act_signed) for g in range(G)]
            return torch.stack([y for y, _ in runs]), [stats for _, stats in runs]
        from sysarray.engines.fast import clean_bmm, fast_bmm

        y = None
        if not self.faulty and None not in bounds:  # the plain product, where no sum can wrap
            y = clean_bmm(a, w, self.config, act_signed, bounds, raw=bool(raw))
        if y is None:
            y = fast_bmm(a, w, self.config, self.faults, act_signed=act_signed, masks=self.masks(act_signed),
                         bounds=bounds, raw=bool(raw))
        return y, [self.timing(M, K, N)] * G

    def conv2d(self, x: torch.Tensor, weight: torch.Tensor, *, stride=(1, 1), padding=(0, 0), pad_value: float = 0,
               groups: int = 1, act_signed: bool = False,
               hints: ConvHints | None = None) -> tuple[torch.Tensor, list[GemmStats]]:
        """A convolution on the chip, as the im2col GEMM of each group (:func:`sysarray.mapping.im2col`).

        x: (B, Cin, H, W) float tensor of 8-bit codes (int8 values with ``act_signed``, else
        uint8); weight: (N, Cin/groups, kh, kw) int8 values (any dtype); padding uses
        ``pad_value`` (the input zero point). Returns the accumulators (B, N, oh, ow), exact
        int32 values (int32, or float32 holding them; see :class:`ConvHints` for ``saturate``
        and ``clean``), and one :class:`GemmStats` per group.
        """
        y, _, stats = self._conv2d(x, weight, stride, padding, pad_value, groups, act_signed, hints, False)
        return y, stats

    def conv2d_deferred(self, x: torch.Tensor, weight: torch.Tensor, *, stride=(1, 1), padding=(0, 0),
                        pad_value: float = 0, groups: int = 1, act_signed: bool = False,
                        hints: ConvHints | None = None):
        """:meth:`conv2d` with the replayed outputs of a faulty layer returned apart where that
        saves a pass: ``(y, correction, stats)``. ``correction`` None: ``y`` is :meth:`conv2d`'s
        result. Otherwise (fast engine on CPU, a channels-last result) ``y`` holds the fault-free
        sums at the replayed outputs (it may be ``hints.clean`` itself: not to be written) and
        ``correction`` (:class:`sysarray.corrections.Correction`) gives the outputs the faults
        change, for a caller that reads the whole result anyway to apply in that same pass. The
        ``saturate`` hint does not reach the deferred outputs (they stay exact)."""
        return self._conv2d(x, weight, stride, padding, pad_value, groups, act_signed, hints, True)

    def _conv2d(self, x, weight, stride, padding, pad_value, groups, act_signed, hints, defer: bool):
        hints = _NO_HINTS if hints is None else hints
        stride, padding = _pair(stride, "stride", "Chip.conv2d", 1), _pair(padding, "padding", "Chip.conv2d", 0)
        N = int(weight.shape[0])
        oh, ow = conv_output_size(x.shape[2], x.shape[3], tuple(weight.shape[2:]), stride, padding)
        stats = [self.timing(x.shape[0] * oh * ow, weight.numel() // max(N, 1), N // groups)] * groups
        if self.engine is Engine.CYCLE:
            y = conv_by_gemms(x, weight, stride, padding, pad_value, groups,
                              lambda a, w: self.bmm(a, w, act_signed=act_signed)[0])
            return y, None, stats
        from sysarray.engines.conv import fast_conv2d_deferred

        y, fix = fast_conv2d_deferred(x, weight, self.config, self.faults, stride=stride, padding=padding,
                                      pad_value=pad_value, groups=groups, act_signed=act_signed,
                                      masks=self.masks(act_signed), x_bound=hints.x_bound, saturate=hints.saturate,
                                      clean=hints.clean, defer=defer)
        return y, fix, stats

    def clean_linear(self, weight: torch.Tensor, *, act_signed: bool = False, x_bound: int | None = None):
        """:meth:`linear` of ``weight`` (N, K) int8 values on this chip prepared once for every
        batch, where the chip has no fault and no sum can wrap: a callable that takes ``x`` (B,
        K) float32 codes on the CPU (``|x| <= x_bound``, int8 codes with ``act_signed`` else
        uint8) to the (B, N) accumulators :meth:`linear` returns (exact int32 values, int32 or
        float32). None where this shortcut does not apply (faults, the cycle engine, a device,
        no ``x_bound``, sums that could reach the psum register's range): call :meth:`linear`.
        The timing is :meth:`timing` (B, K, N)."""
        check_instance(weight, torch.Tensor, "weight", "Chip.clean_linear")
        if self.faulty or self.engine is Engine.CYCLE or (self.device is not None and self.device.type != "cpu"):
            return None
        from sysarray.engines.conv.pointwise import clean_linear_product

        return clean_linear_product(weight, self.config, self.masks(act_signed), act_signed, x_bound)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, *, act_signed: bool = False,
               hints: ConvHints | None = None) -> tuple[torch.Tensor, GemmStats]:
        """``x @ weight.t()`` on the chip: x (B, K) float tensor of 8-bit codes, weight (N, K) int8
        values. Returns (B, N) accumulators (exact int32 values, as :meth:`conv2d`) and the timing.
        The fast engine runs it as a 1x1 convolution of 1x1 images (the same GEMM)."""
        B, K = x.shape
        N = weight.shape[0]
        if self.engine is Engine.CYCLE:
            return self.gemm(x, weight.t(), act_signed=act_signed)
        hints = _NO_HINTS if hints is None else hints
        if not self.faulty and hints.clean is None:
            from sysarray.engines.conv.pointwise import clean_linear

            y = clean_linear(x, weight, self.config, self.masks(act_signed), act_signed, hints.x_bound)
            if y is not None:  # the plain product: no fault, no wrap
                return y, self.timing(B, K, N)
        clean = hints.clean.view(B, N, 1, 1) if hints.clean is not None else None
        from sysarray.engines.conv import fast_conv2d_deferred

        # the convolution's own path, without conv2d's checks of a geometry that is fixed here
        y, _ = fast_conv2d_deferred(x.reshape(B, K, 1, 1), weight.reshape(N, K, 1, 1), self.config, self.faults,
                                    act_signed=act_signed, masks=self.masks(act_signed), x_bound=hints.x_bound,
                                    saturate=hints.saturate, clean=clean, defer=False)
        if clean is not None and y is clean:
            return hints.clean, self.timing(B, K, N)  # unchanged: the caller's own tensor, as conv2d promises
        return y.reshape(B, N), self.timing(B, K, N)
