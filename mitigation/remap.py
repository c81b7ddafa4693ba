"""Fault-aware mapping of output channels onto array columns (docs/remap.md; after SalvageDNN,
Hanif and Shafique, Phil. Trans. R. Soc. A 378:20190164, 2020, §3: permute a layer's filters so
that the least salient weights land on the faulty PEs).

Where a channel goes (docs/design.md §2.4-2.6): in WS and OS, GEMM column ``p`` of a layer (its
``p``-th weight row) sits in array column ``p % C`` of column fold ``p // C``; every fault that
can touch an output of that channel lies in that array column (its weight, act and psum registers)
or, for act faults, in the same row west of it. So the damage of putting channel ``n`` at position
``p`` depends only on ``(n, p % C)``, and an exact assignment of the ``N`` channels to the ``N``
positions (:func:`scipy.optimize.linear_sum_assignment`, per group of a grouped conv) minimises
the total over the whole layer, across its column folds. In IS the output channels stream in time
through every PE: a permutation changes nothing, and the layer is left as it is.

Costs ``cost[n, c]`` of channel ``n`` on array column ``c``:

- ``"magnitude"`` (SalvageDNN's weight saliency): the sum of ``|w|`` over the channel's weights
  that the faulty PEs of column ``c`` hold (WS: ``W[k, n]`` with ``k % R`` a faulty row of the
  column; OS: every weight of the channel, once per faulty PE of the column, since all pass it).
- ``"taylor"``: the same with the first-order saliency ``|w dL/dw|`` from one backward pass of
  the fake-quant twin over calibration images.
- ``"effect"``: the measured first-order loss change of the actual stuck bits: on calibration
  images, the layer is run on the faulty chip with every channel at every column at once (a GEMM
  of ``N x C`` columns, channel ``n`` at position ``n C + c``, whose column ``c`` sees exactly the
  faults channel ``n`` would meet there), and ``cost = sum |dL/dq| |q_faulty - q|`` over the
  outputs (``q`` output codes after requantization and clamp, ``dL/dq`` from the twin; the
  logits layer uses its accumulators). With ``repair=True`` each candidate is first repaired by
  :mod:`mitigation.arith_repair`, so the mapping prefers placements the repairs neutralise.

Input channels (``channels="in"`` or ``"both"``): in WS and IS the GEMM's K rows sit on array rows
``k % R``, a conv's input channel being a block of ``kh*kw`` consecutive rows, so the channel at
input position ``q`` meets rows ``(q kh kw + j) % R``. The cost of channel ``c`` at position ``q``
is the saliency of its weights (``"magnitude"`` or ``"taylor"``; ``"effect"`` uses ``"taylor"``
here) on the faulty PEs of those rows, in WS only in the columns its layer's outputs use (after
the output mapping), in IS once per faulty PE of the row (the weights stream east along it). One
exact assignment per group of a grouped conv; OS streams K in time, so nothing changes there.
With ``"both"``, outputs are mapped first and the inputs then given them (one round).

The chosen permutations are carried by :attr:`accel_models.program.Gemm.out_order` (weight rows
in array order, accumulators gathered back in the post-processing unit) and
:attr:`accel_models.program.Gemm.in_order` (weight inputs in array order, input codes gathered by
the input buffer's addressing): on a fault-free chip a remapped program computes exactly what the
original does.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from accel_models.ppu import Layout
from accel_models.program import Gemm, Program, gather_weight_inputs, layer_accumulators, postprocess
from mitigation.arith_repair import check_chip, repair_op
from sysarray import ArrayConfig, Chip, Dataflow, FaultMap
from sysarray.validation import check_choice, check_instance, check_positive_int

SALIENCIES = ("magnitude", "taylor", "effect")
CHANNELS = ("out", "in", "both")


@dataclass
class LayerRemap:
    """One Gemm layer's mapping: ``moved`` output channels whose array position changed, the cost of
    the plain mapping and of the chosen one (same units, the saliency's), the same for the input
    channels (``*_in``; the plain input mapping is the one the layer had), and why nothing moved."""

    name: str
    moved: int = 0
    cost_identity: float = 0.0
    cost_chosen: float = 0.0
    moved_in: int = 0
    cost_in_identity: float = 0.0
    cost_in_chosen: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------- permutations
def channel_weight(op: Gemm) -> torch.Tensor:
    """The op's weight in channel order (undoing an existing ``out_order``)."""
    return op.weight if op.out_order is None else op.weight[op.out_order.to(op.weight.device)]


def permute_op(op: Gemm, perm: np.ndarray | torch.Tensor) -> Gemm:
    """A copy of ``op`` whose array position ``i`` computes channel ``perm[i]`` (a permutation of
    ``range(N)`` that keeps every group's channels in the group). Everything but the weight rows
    and ``out_order`` stays in channel order (see :class:`accel_models.program.Gemm`)."""
    check_instance(op, Gemm, "op", "permute_op")
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.int64)
    n = op.out_channels
    if perm.shape != (n,) or not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ValueError(f"The 'perm' argument of permute_op must be a permutation of range({n}) for layer "
                         f"{op.name!r}. Got {perm.tolist()[:16]} instead.")
    groups = op.groups if op.kind == "conv" else 1
    ng = n // groups
    if groups > 1 and not torch.equal(perm // ng, torch.arange(n) // ng):
        raise ValueError(f"The 'perm' argument of permute_op must keep each of the {groups} groups of layer "
                         f"{op.name!r} ({ng} channels each) within itself. Got {perm.tolist()[:16]} instead.")
    new = copy.copy(op)
    new.weight = channel_weight(op)[perm]
    new.out_order = None if torch.equal(perm, torch.arange(n)) else torch.argsort(perm)
    return new


def _groups(op: Gemm) -> int:
    return op.groups if op.kind == "conv" else 1


def input_weight(op: Gemm) -> torch.Tensor:
    """The op's weight with rows in array order and input channels in channel order (undoing an
    existing ``in_order``)."""
    if op.in_order is None:
        return op.weight
    return gather_weight_inputs(op.weight, op, torch.argsort(op.in_order))


def in_channels(op: Gemm) -> int:
    """The op's input channels: conv ``C`` (all groups), linear ``K``."""
    return int(op.weight.shape[1]) * _groups(op) if op.kind == "conv" else int(op.weight[0].numel())


def permute_inputs(op: Gemm, perm: np.ndarray | torch.Tensor) -> Gemm:
    """A copy of ``op`` whose input position ``i`` reads input channel ``perm[i]`` (a permutation of
    the input channels that keeps every group's channels in the group; see
    :attr:`accel_models.program.Gemm.in_order`). The output mapping is kept."""
    check_instance(op, Gemm, "op", "permute_inputs")
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.int64)
    n = in_channels(op)
    if perm.shape != (n,) or not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ValueError(f"The 'perm' argument of permute_inputs must be a permutation of range({n}) for layer "
                         f"{op.name!r}. Got {perm.tolist()[:16]} instead.")
    cg = n // _groups(op)
    if _groups(op) > 1 and not torch.equal(perm // cg, torch.arange(n) // cg):
        raise ValueError(f"The 'perm' argument of permute_inputs must keep each of the {op.groups} groups of layer "
                         f"{op.name!r} ({cg} input channels each) within itself. Got {perm.tolist()[:16]} instead.")
    new = copy.copy(op)
    new.weight = gather_weight_inputs(input_weight(op), op, perm)
    new.in_order = None if torch.equal(perm, torch.arange(n)) else perm
    return new


def _assign_full(cost: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Exact assignment on a (channel, position) cost: ``(perm, current cost, chosen cost)``,
    ``perm[q]`` the channel at position ``q``, never worse than ``current`` (same form)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(cost), dtype=np.int64)
    perm[cols] = rows
    ident = float(cost[current, np.arange(len(cost))].sum())
    chosen = float(cost[rows, cols].sum())
    if chosen > ident:  # rounding in the solver: never worse than the current mapping
        return current.copy(), ident, ident
    return perm, ident, chosen


def _assign(cost_nc: np.ndarray, C: int) -> tuple[np.ndarray, float, float]:
    """Exact assignment of ``Ng`` channels to positions ``0..Ng-1`` with ``cost[n, p % C]``:
    ``(perm, identity cost, chosen cost)``, ``perm[p]`` the channel at position ``p``."""
    from scipy.optimize import linear_sum_assignment

    ng = cost_nc.shape[0]
    full = cost_nc[:, np.arange(ng) % C]  # (channel, position)
    rows, cols = linear_sum_assignment(full)
    perm = np.empty(ng, dtype=np.int64)
    perm[cols] = rows
    ident = float(full[np.arange(ng), np.arange(ng)].sum())
    chosen = float(full[rows, cols].sum())
    if chosen > ident:  # rounding in the solver: never worse than the plain mapping
        return np.arange(ng), ident, ident
    return perm, ident, chosen


# ----------------------------------------------------------------------------------- saliencies
def _weight_cost(s_kn: np.ndarray, cfg: ArrayConfig, faulty: np.ndarray) -> np.ndarray:
    """(Ng, C) cost from per-weight saliency ``s_kn`` (K, Ng) of one group (module docstring)."""
    R = cfg.rows
    K, ng = s_kn.shape
    if cfg.dataflow is Dataflow.OS:
        return s_kn.sum(axis=0)[:, None] * faulty.sum(axis=0)[None, :].astype(np.float64)
    per_row = np.zeros((R, ng))
    np.add.at(per_row, np.arange(K) % R, s_kn)
    return (faulty.T.astype(np.float64) @ per_row).T  # (Ng, C)


def _input_cost(s: np.ndarray, cfg: ArrayConfig, faulty: np.ndarray) -> np.ndarray:
    """(Cg, Cg) cost of input channel ``c`` at input position ``q`` from per-weight saliency ``s``
    (Ng, Cg, kh*kw) of one group, rows in array order: the channel's block of K rows is
    ``q kh kw + j``, on array row ``(q kh kw + j) % R`` (WS and IS, module docstring)."""
    R, C = cfg.rows, cfg.cols
    ng, cg, khw = s.shape
    j = np.arange(khw)
    row = (np.arange(cg)[:, None] * khw + j[None, :]) % R  # (position, j)
    if cfg.dataflow is Dataflow.IS:  # every channel streams east along the row past its faulty PEs
        b = s.sum(axis=0)[:, :, None] * faulty.sum(axis=1).astype(np.float64)[None, None, :]
    else:  # WS: output position p sits in column p % C
        a = np.zeros((C, cg, khw))
        np.add.at(a, np.arange(ng) % C, s)
        b = np.einsum("ocj,ro->cjr", a, faulty.astype(np.float64))  # (Cg, khw, R)
    return b[:, j[None, :], row].sum(axis=2)


def _input_costs(program: Program, cfg: ArrayConfig, faulty: np.ndarray,
                 taylor: dict[str, np.ndarray] | None) -> dict[str, list[np.ndarray]]:
    out = {}
    for op in program.gemms:
        n, groups = op.out_channels, _groups(op)
        if taylor is None:
            s = input_weight(op).double().abs().reshape(n, -1).numpy()
        else:  # channel order in both dims: rows to array order
            s = taylor[op.name] if op.out_order is None else taylor[op.name][torch.argsort(op.out_order).numpy()]
        cg = in_channels(op) // groups
        s = s.reshape(n, cg, -1)
        ng = n // groups
        out[op.name] = [_input_cost(s[g * ng:(g + 1) * ng], cfg, faulty) for g in range(groups)]
    return out


class _GradProbe(Layout):
    """An identity op after a layer's output that keeps the twin's gradient with respect to it."""

    def __init__(self, name: str, sink: dict):
        super().__init__(input=name, output=name, op="alias.default")
        self.sink = sink

    def fake(self, xs, rc):
        y = xs[0].view_as(xs[0])
        y.retain_grad()
        self.sink[self.output] = y
        return y


def _twin_pass(program: Program, images: torch.Tensor, labels: torch.Tensor, probes: bool):
    """One forward and backward pass of the twin: ``(twin, {gemm name: dL/d output})`` with the
    gradient per output code of hidden layers and per accumulator of the logits layer."""
    import torch.nn.functional as F

    from accel_models.fakequant import FakeQuantProgram

    sink: dict[str, torch.Tensor] = {}
    ops = []
    for op in program.ops:
        ops.append(op)
        if probes and isinstance(op, Gemm) and op.out_qp is not None:
            ops.append(_GradProbe(op.output, sink))
    twin = FakeQuantProgram(replace(program, ops=ops, meta=dict(program.meta)))
    accs: dict[str, torch.Tensor] = {}

    def hook(op, x, wq, acc):
        if isinstance(op, Gemm) and op.out_qp is None:
            acc.retain_grad()
            accs[op.name] = acc
        return acc

    logits = twin(images, gemm_hook=hook if probes else None)
    F.cross_entropy(logits.float(), labels, reduction="sum").backward()
    grads = {}
    for op in program.gemms:
        t = accs.get(op.name) if op.out_qp is None else sink.get(op.output)
        if t is not None and t.grad is not None:
            grads[op.name] = t.grad.detach().double()
    return twin, grads


def _virtual_op(op: Gemm, group: int, C: int) -> Gemm:
    """One group of ``op`` as a layer of ``Ng * C`` channels, channel ``n`` at positions
    ``n C .. n C + C - 1`` (every array column), per-channel arrays repeated alike."""
    groups = op.groups if op.kind == "conv" else 1
    ng = op.out_channels // groups
    sl = slice(group * ng, (group + 1) * ng)
    rep = lambda t: None if t is None else t[sl].repeat_interleave(C, dim=0)  # noqa: E731
    v = copy.copy(op)
    v.weight = rep(channel_weight(op))
    v.bias, v.m0, v.shift, v.acc_scale = rep(op.bias), rep(op.m0), rep(op.shift), rep(op.acc_scale)
    if op.clip_codes is not None and op.clip_codes.dim() and op.clip_codes.shape[0] == op.out_channels:
        v.clip_codes = rep(op.clip_codes)
    v.groups, v.out_order = 1, None
    if op.in_order is not None and groups > 1:  # the group's own input channels
        cg = op.weight.shape[1]
        v.in_order = op.in_order[group * cg:(group + 1) * cg] - group * cg
    return v


def _effect_costs(program: Program, cfg: ArrayConfig, faults: FaultMap, images, labels, batch_size: int,
                  repair: bool) -> dict[str, list[np.ndarray]]:
    """``{gemm name: [(Ng, C) cost per group]}`` of the ``"effect"`` saliency (module docstring)."""
    chip, clean = Chip(cfg, faults), Chip(cfg)
    costs = {op.name: [np.zeros((op.out_channels // (op.groups if op.kind == "conv" else 1), cfg.cols))
                       for _ in range(op.groups if op.kind == "conv" else 1)] for op in program.gemms}
    virtual = {}
    for op in program.gemms:
        for g in range(len(costs[op.name])):
            v = _virtual_op(op, g, cfg.cols)
            virtual[op.name, g] = repair_op(v, cfg, faults)[0] if repair and not cfg.bypass and faults else v
    for i in range(0, len(images), batch_size):
        xb, yb = images[i:i + batch_size], labels[i:i + batch_size]
        _, grads = _twin_pass(program, xb, yb, probes=True)
        seen: dict[str, tuple] = {}
        with torch.no_grad():
            program.execute(xb, clean, on_layer=lambda op, x, acc, st: seen.setdefault(op.name, (x, acc)),
                            saturate=False)
            for op in program.gemms:
                x, acc = seen[op.name]
                ref = postprocess(acc, op).double()  # (B, N, ...) channel order
                grad = grads.get(op.name)
                if grad is None:
                    continue
                groups = len(costs[op.name])
                ng = op.out_channels // groups
                for g in range(groups):
                    v = virtual[op.name, g]
                    xg = x[:, g * v.weight.shape[1]:(g + 1) * v.weight.shape[1]] if groups > 1 else x
                    acc_v, _ = layer_accumulators(xg, v, chip, saturate=False)
                    q = postprocess(acc_v, v).double()
                    q = q.reshape(q.shape[0], ng, cfg.cols, *q.shape[2:])
                    r = ref.reshape(ref.shape[0], -1, *ref.shape[2:])[:, g * ng:(g + 1) * ng].unsqueeze(2)
                    gr = grad.reshape(ref.shape)[:, g * ng:(g + 1) * ng].unsqueeze(2).abs()
                    d = ((q - r).abs() * gr)
                    costs[op.name][g] += d.sum(dim=(0,) + tuple(range(3, d.dim()))).numpy()
    return costs


def _taylor_saliency(program: Program, images, labels, batch_size: int) -> dict[str, np.ndarray]:
    """``{gemm name: (N, K) |w dL/dw|}`` in channel order, gradients summed over the batches."""
    total: dict[str, torch.Tensor] = {}
    twin = None
    for i in range(0, len(images), batch_size):
        twin, _ = _twin_pass(program, images[i:i + batch_size], labels[i:i + batch_size], probes=False)
        for op in program.gemms:
            p = twin.weights[twin.key(op)]
            g = p.grad.detach().double().reshape(op.out_channels, -1)
            total[op.name] = total.get(op.name, 0) + g
    return {op.name: (twin.weights[twin.key(op)].detach().double().reshape(op.out_channels, -1)
                      * total[op.name]).abs().numpy() for op in program.gemms}


# ----------------------------------------------------------------------------------- the method
def _labels_for(program: Program, images, labels, cfg: ArrayConfig, batch_size: int) -> torch.Tensor:
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"The 'labels' argument of remap_program must hold one class index per image: shape "
                             f"({len(images)},). Got shape {tuple(labels.shape)} instead.")
        return labels.long()
    return program.run(images, cfg, batch_size=batch_size, count_changes=False).predictions  # fault-free predictions


def _calibration(program: Program, cfg: ArrayConfig, saliency: str, images, labels, batch_size: int, where: str):
    if saliency == "magnitude":
        return images, labels
    if images is None:
        raise ValueError(f"The {saliency!r} saliency of {where} needs calibration 'images'. Got None.")
    images = program.check_images(images)
    return images, _labels_for(program, images, labels, cfg, batch_size)


def _out_costs(program: Program, cfg: ArrayConfig, faults: FaultMap, saliency: str, images, labels, batch_size: int,
               repair: bool, taylor: dict[str, np.ndarray] | None) -> dict[str, list[np.ndarray]]:
    if saliency == "effect":
        return _effect_costs(program, cfg, faults, images, labels, batch_size, repair)
    faulty = faults.faulty_pes()
    out = {}
    for op in program.gemms:
        if taylor is None:
            s = channel_weight(op).reshape(op.out_channels, -1).double().abs().numpy()
        else:  # channel order in both dims: inputs to array order
            s = torch.from_numpy(taylor[op.name]).reshape(op.weight.shape)
            s = (s if op.in_order is None else gather_weight_inputs(s, op, op.in_order)).reshape(op.out_channels, -1).numpy()
        groups = _groups(op)
        ng = op.out_channels // groups
        out[op.name] = [_weight_cost(s[g * ng:(g + 1) * ng].T, cfg, faulty) for g in range(groups)]
    return out


def channel_costs(program: Program, cfg: ArrayConfig, faults: FaultMap, saliency: str = "effect", images=None,
                  labels=None, *, batch_size: int = 64, repair: bool = False) -> dict[str, list[np.ndarray]]:
    """``{gemm name: [(Ng, C) float64 cost of channel n on array column c, per group]}`` (module
    docstring); channels in channel order. ``images`` (N, C, H, W) calibration images are needed
    by ``"taylor"`` and ``"effect"``; ``labels`` default to the fault-free predictions."""
    check_instance(program, Program, "program", "channel_costs")
    check_chip(cfg, faults, "channel_costs")
    check_choice(saliency, "saliency", "channel_costs", SALIENCIES)
    batch_size = check_positive_int(batch_size, "batch_size", "channel_costs")
    images, labels = _calibration(program, cfg, saliency, images, labels, batch_size, "channel_costs")
    taylor = _taylor_saliency(program, images, labels, batch_size) if saliency == "taylor" else None
    return _out_costs(program, cfg, faults, saliency, images, labels, batch_size, repair, taylor)


def input_costs(program: Program, cfg: ArrayConfig, faults: FaultMap, saliency: str = "taylor", images=None,
                labels=None, *, batch_size: int = 64) -> dict[str, list[np.ndarray]]:
    """``{gemm name: [(Cg, Cg) float64 cost of input channel c at input position q, per group]}``
    for the program's current output mapping (module docstring), WS and IS; channels in channel
    order, positions in array order. ``"effect"`` scores inputs with the Taylor saliency."""
    check_instance(program, Program, "program", "input_costs")
    check_chip(cfg, faults, "input_costs")
    check_choice(saliency, "saliency", "input_costs", SALIENCIES)
    batch_size = check_positive_int(batch_size, "batch_size", "input_costs")
    if cfg.dataflow is Dataflow.OS:
        raise ValueError("input_costs needs a WS or IS array: OS streams the K dimension in time through every PE, "
                         "so no input permutation changes what it meets. Got dataflow OS.")
    images, labels = _calibration(program, cfg, saliency, images, labels, batch_size, "input_costs")
    taylor = None if saliency == "magnitude" else _taylor_saliency(program, images, labels, batch_size)
    return _input_costs(program, cfg, faults.faulty_pes(), taylor)


def remap_program(program: Program, cfg: ArrayConfig, faults: FaultMap, saliency: str = "effect", images=None,
                  labels=None, *, batch_size: int = 64, repair: bool = False,
                  channels: str = "out") -> tuple[Program, list[LayerRemap]]:
    """The fault-aware mapping of every Gemm layer of ``program`` on the chip ``cfg`` + ``faults``:
    ``(remapped program, [LayerRemap per Gemm])``. See :func:`channel_costs` for the arguments;
    ``repair=True`` (``"effect"`` only) scores each placement after :mod:`mitigation.arith_repair`
    (apply :func:`mitigation.arith_repair.repair_program` to the result to get those repairs).
    ``channels``: permute the output channels (``"out"``, WS and OS), the input channels (``"in"``,
    WS and IS, :func:`input_costs`) or both, outputs first and then inputs given them (one round)."""
    check_choice(channels, "channels", "remap_program", CHANNELS)
    check_choice(saliency, "saliency", "remap_program", SALIENCIES)
    if repair and saliency != "effect":
        raise ValueError(f"The 'repair' option of remap_program scores repaired placements and needs the 'effect' "
                         f"saliency. Got saliency={saliency!r} instead.")
    check_chip(cfg, faults, "remap_program")
    do_out = channels != "in" and cfg.dataflow is not Dataflow.IS
    do_in = channels != "out" and cfg.dataflow is not Dataflow.OS
    notes = []
    if channels != "in" and not do_out:
        notes.append("IS streams the output channels in time through every PE: no permutation changes what they meet")
    if channels != "out" and not do_in:
        notes.append("OS streams the input channels (K) in time through every PE: no permutation changes what they meet")
    if not faults or not (do_out or do_in):
        notes = notes if faults else ["fault-free chip"]
        return replace(program, meta=dict(program.meta)), [LayerRemap(op.name, notes=list(notes)) for op in program.gemms]
    batch_size = check_positive_int(batch_size, "batch_size", "remap_program")
    images, labels = _calibration(program, cfg, saliency, images, labels, batch_size, "remap_program")
    taylor = _taylor_saliency(program, images, labels, batch_size) \
        if saliency == "taylor" or (do_in and saliency == "effect") else None
    reports = {op.name: LayerRemap(op.name, notes=list(notes)) for op in program.gemms}
    for op in program.gemms:
        if op.kind == "conv" and op.groups > 1 and op.out_channels == op.groups:
            reports[op.name].notes.append("depthwise: one channel per group, nothing to permute")
    if do_out:
        costs = _out_costs(program, cfg, faults, saliency, images, labels, batch_size, repair,
                           taylor if saliency == "taylor" else None)
        ops = []
        for op in program.ops:
            if isinstance(op, Gemm):
                rep, perms = reports[op.name], []
                for g, cost in enumerate(costs[op.name]):
                    perm, ident, chosen = _assign(cost, cfg.cols)
                    perms.append(perm + g * cost.shape[0])
                    rep.cost_identity += ident
                    rep.cost_chosen += chosen
                perm = np.concatenate(perms)
                rep.moved = int((perm != np.arange(len(perm))).sum())
                op = permute_op(op, perm)
            ops.append(op)
        program = replace(program, ops=ops, meta=dict(program.meta))
    if do_in:
        if saliency == "effect":
            for rep in reports.values():
                rep.notes.append("input channels scored with the taylor saliency")
        costs = _input_costs(program, cfg, faults.faulty_pes(), taylor)
        ops = []
        for op in program.ops:
            if isinstance(op, Gemm):
                rep, perms = reports[op.name], []
                current = np.arange(in_channels(op)) if op.in_order is None else op.in_order.numpy()
                for g, cost in enumerate(costs[op.name]):
                    cg = cost.shape[0]
                    perm, ident, chosen = _assign_full(cost, current[g * cg:(g + 1) * cg] - g * cg)
                    perms.append(perm + g * cg)
                    rep.cost_in_identity += ident
                    rep.cost_in_chosen += chosen
                perm = np.concatenate(perms)
                rep.moved_in = int((perm != current).sum())
                op = permute_inputs(op, perm)
            ops.append(op)
        program = replace(program, ops=ops)
    return replace(program, meta=dict(program.meta)), [reports[op.name] for op in program.gemms]


__all__ = ["CHANNELS", "LayerRemap", "SALIENCIES", "channel_costs", "channel_weight", "in_channels", "input_costs",
           "input_weight", "permute_inputs", "permute_op", "remap_program"]
