"""Pluggable chip-grouping policies for eFAT (docs/design.md §6.5).

A group of chips is retrained once, for its *fused* fault map: the union (OR) of its members'
faulty PEs. In bypass mode a model pruned and retrained for the fused map is exact on every member
(a member's faulty PEs are a subset of the fused ones, whose weights are already 0).

A policy is a function ``policy(chips, amount, **options) -> list[list[int]]``: ``chips`` are
:class:`Chip` records (only chips within resilience), ``amount(rate) -> epochs or None`` is the
resilience map's least retraining at a fault rate (None: beyond resilience); it returns groups as
lists of positions in ``chips``, every chip in exactly one group, and no group whose fused rate is
beyond resilience. Policies are registered by name with :func:`register_grouping`; a name may
carry an integer option after a colon (``fixed:4``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

AmountFn = Callable[[float], "float | None"]
Policy = Callable[..., "list[list[int]]"]

_POLICIES: dict[str, Policy] = {}


@dataclass(frozen=True)
class Chip:
    """One chip for grouping: a name, its (R, C) bool faulty-PE view and its PE fault rate."""

    name: str
    faulty: np.ndarray

    @property
    def rate(self) -> float:
        return float(self.faulty.mean())


def register_grouping(name: str) -> Callable[[Policy], Policy]:
    """Register a grouping policy under ``name`` (decorator)."""
    def deco(fn: Policy) -> Policy:
        _POLICIES[name] = fn
        return fn
    return deco


def grouping_names() -> list[str]:
    return sorted(_POLICIES)


def get_grouping(spec: str) -> tuple[Policy, dict]:
    """``"greedy"``, ``"jaccard"``, ``"fixed"`` or ``"fixed:K"`` -> (policy, options)."""
    name, _, arg = str(spec).partition(":")
    if name not in _POLICIES:
        raise ValueError(f"The grouping policy must be one of {', '.join(grouping_names())} "
                         f"(fixed takes a group size, e.g. fixed:4). Got {spec!r} instead.")
    if not arg:
        return _POLICIES[name], {}
    try:
        size = int(arg)
        if size < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"The grouping option after ':' must be a positive integer group size. Got {spec!r} instead.") from None
    return _POLICIES[name], {"size": size}


def fused(chips: Sequence[Chip], members: Sequence[int]) -> np.ndarray:
    """(R, C) bool: the union of the members' faulty PEs."""
    out = np.zeros_like(chips[members[0]].faulty)
    for i in members:
        out |= chips[i].faulty
    return out


def _amount_of(faulty: np.ndarray, amount: AmountFn) -> float | None:
    return amount(float(faulty.mean()))


@register_grouping("greedy")
def greedy(chips: Sequence[Chip], amount: AmountFn) -> list[list[int]]:
    """eFAT's greedy grouping: chips in ascending fault rate (ties by position); each joins the
    group where the reward ``E_G + E_i - E_{G+i}`` (epochs saved) is largest and positive and the
    fused rate stays within resilience (ties: the earliest group), otherwise opens a new group."""
    order = sorted(range(len(chips)), key=lambda i: (chips[i].rate, i))
    groups: list[tuple[list[int], np.ndarray, float]] = []
    for i in order:
        e_i = amount(chips[i].rate)
        best, best_reward = None, 0.0
        for g, (members, faulty, e_g) in enumerate(groups):
            merged = faulty | chips[i].faulty
            e_new = _amount_of(merged, amount)
            if e_new is None:
                continue
            reward = e_g + e_i - e_new
            if reward > best_reward:
                best, best_reward = g, reward
        if best is None:
            groups.append(([i], chips[i].faulty.copy(), e_i))
        else:
            members, faulty, _ = groups[best]
            merged = faulty | chips[i].faulty
            groups[best] = (members + [i], merged, _amount_of(merged, amount))
    return [sorted(m) for m, _, _ in groups]


@register_grouping("jaccard")
def jaccard(chips: Sequence[Chip], amount: AmountFn) -> list[list[int]]:
    """Agglomerative grouping by overlap: start from single chips and repeatedly merge the two
    groups whose faulty-PE sets have the highest Jaccard index ``|A & B| / |A | B|`` among the
    merges that save epochs (``E_A + E_B - E_{A|B} > 0``) and stay within resilience (ties: the
    larger saving, then the lowest positions); stop when no merge qualifies."""
    groups: list[tuple[list[int], np.ndarray, float]] = [([i], c.faulty.copy(), amount(c.rate)) for i, c in enumerate(chips)]
    while True:
        best, best_key = None, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                fa, fb = groups[a][1], groups[b][1]
                merged = fa | fb
                e_new = _amount_of(merged, amount)
                if e_new is None:
                    continue
                reward = groups[a][2] + groups[b][2] - e_new
                if reward <= 0:
                    continue
                union = int(merged.sum())
                jac = int((fa & fb).sum()) / union if union else 1.0
                key = (jac, reward, -a, -b)
                if best_key is None or key > best_key:
                    best, best_key = (a, b), key
        if best is None:
            break
        a, b = best
        merged = groups[a][1] | groups[b][1]
        groups[a] = (groups[a][0] + groups[b][0], merged, _amount_of(merged, amount))
        del groups[b]
    return [sorted(m) for m, _, _ in groups]


@register_grouping("fixed")
def fixed(chips: Sequence[Chip], amount: AmountFn, size: int = 4) -> list[list[int]]:
    """Fixed group size: chips in ascending fault rate fill groups of ``size`` in turn; a chip whose
    addition would make the fused rate beyond resilience starts the next group instead. The
    reward is ignored (a baseline for the reward-driven policies)."""
    order = sorted(range(len(chips)), key=lambda i: (chips[i].rate, i))
    groups: list[list[int]] = []
    faulty = None
    for i in order:
        if groups and len(groups[-1]) < size and _amount_of(faulty | chips[i].faulty, amount) is not None:
            groups[-1].append(i)
            faulty = faulty | chips[i].faulty
        else:
            groups.append([i])
            faulty = chips[i].faulty.copy()
    return [sorted(g) for g in groups]


def make_groups(chips: Sequence[Chip], amount: AmountFn, spec: str = "greedy") -> list[list[int]]:
    """Group ``chips`` with the policy named by ``spec`` and check the policy's answer (a partition
    of the chips, every fused rate within resilience). Groups come back sorted by their first member."""
    policy, options = get_grouping(spec)
    groups = policy(chips, amount, **options)
    seen = sorted(i for g in groups for i in g)
    if seen != list(range(len(chips))):
        raise ValueError(f"Grouping policy {spec!r} must put every chip in exactly one group. Got {groups!r} instead.")
    for g in groups:
        if _amount_of(fused(chips, g), amount) is None:
            raise ValueError(f"Grouping policy {spec!r} made a group beyond resilience: {g!r}.")
    return sorted((sorted(g) for g in groups), key=lambda g: g[0])


__all__ = ["Chip", "fixed", "fused", "get_grouping", "greedy", "grouping_names", "jaccard", "make_groups",
           "register_grouping"]
