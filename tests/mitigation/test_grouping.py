"""eFAT grouping policies (mitigation/grouping.py) on synthetic chips and a synthetic resilience map."""
from __future__ import annotations

import numpy as np
import pytest

from mitigation.grouping import Chip, fused, get_grouping, grouping_names, make_groups, register_grouping


def step_amount(rate: float) -> float | None:
    """Epochs needed at a PE fault rate: 0 up to 5%, 1 up to 15%, 2 up to 25%, beyond above."""
    if rate <= 0.05:
        return 0.0
    if rate <= 0.15:
        return 1.0
    if rate <= 0.25:
        return 2.0
    return None


def population(n: int, seed: int, lo: float = 0.06, hi: float = 0.12, size: int = 16) -> list[Chip]:
    rng = np.random.default_rng(seed)
    chips = []
    for i in range(n):
        k = int(round(rng.uniform(lo, hi) * size * size))
        faulty = np.zeros(size * size, dtype=bool)
        faulty[rng.choice(size * size, k, replace=False)] = True
        chips.append(Chip(f"c{i}", faulty.reshape(size, size)))
    return chips


def group_cost(chips, groups) -> float:
    return sum(step_amount(float(fused(chips, g).mean())) for g in groups)


@pytest.mark.parametrize("spec", ["greedy", "jaccard", "fixed", "fixed:2", "fixed:5"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policies_partition_and_stay_resilient(spec, seed):
    chips = population(12, seed)
    groups = make_groups(chips, step_amount, spec)
    assert sorted(i for g in groups for i in g) == list(range(12))
    for g in groups:
        assert step_amount(float(fused(chips, g).mean())) is not None
    if spec.startswith("fixed:"):
        assert max(len(g) for g in groups) <= int(spec.split(":")[1])


@pytest.mark.parametrize("spec", ["greedy", "jaccard"])
def test_reward_driven_policies_save_epochs(spec):
    chips = population(12, 3)  # every chip alone needs 1 epoch
    groups = make_groups(chips, step_amount, spec)
    per_chip = sum(step_amount(c.rate) for c in chips)
    assert per_chip == 12
    assert group_cost(chips, groups) < per_chip
    assert len(groups) < 12


def test_greedy_never_merges_when_nothing_is_saved():
    # chips at 0 epochs: joining can only cost, so each stays alone
    chips = population(6, 4, lo=0.01, hi=0.04)
    assert all(step_amount(c.rate) == 0 for c in chips)
    assert make_groups(chips, step_amount, "greedy") == [[i] for i in range(6)]


def test_greedy_joins_overlapping_chips():
    base = np.zeros((8, 8), dtype=bool)
    a = base.copy()
    a[0, :5] = True  # 5/64 = 7.8%: 1 epoch
    b = a.copy()
    b[1, 0] = True  # nearly the same PEs: fused 6/64 = 9.4%, still 1 epoch
    c = base.copy()
    c[4:7, 4:7] = True  # 9/64 = 14%: 1 epoch, but fused with a/b 15/64 = 23%: 2 epochs
    chips = [Chip("a", a), Chip("b", b), Chip("c", c)]
    # a+b saves one epoch; adding c saves 1 + 1 - 2 = 0, not positive: c stays alone
    assert make_groups(chips, step_amount, "greedy") == [[0, 1], [2]]


def test_jaccard_merges_the_most_overlapping_pair_first():
    a = np.zeros((8, 8), dtype=bool)
    a[0, :4] = True
    b = a.copy()
    b[0, 4] = True  # Jaccard(a, b) = 4/5
    c = np.zeros((8, 8), dtype=bool)
    c[5, :6] = True  # disjoint: fused with a and b 11/64 = 17% needs 2 epochs, no saving
    chips = [Chip("a", a), Chip("c", c), Chip("b", b)]
    assert make_groups(chips, step_amount, "jaccard") == [[0, 2], [1]]



def test_beyond_resilience_groups_are_refused():
    # a broken policy that puts everyone together, beyond resilience
    @register_grouping("_all_together")
    def together(chips, amount):
        return [list(range(len(chips)))]

    chips = population(10, 5, lo=0.1, hi=0.14)
    with pytest.raises(ValueError, match="beyond resilience"):
        make_groups(chips, step_amount, "_all_together")


def test_unknown_policy_lists_the_known_ones():
    assert {"greedy", "jaccard", "fixed"} <= set(grouping_names())
    with pytest.raises(ValueError, match="must be one of .*fixed.*greedy.*jaccard"):
        get_grouping("kmeans")
    with pytest.raises(ValueError, match="positive integer group size"):
        get_grouping("fixed:zero")
