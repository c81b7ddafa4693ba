"""Localization: the fault map that explains the observed test outputs (docs/diagnosis.md §3).

1. Greedy explanation in causal order. Regions (WS/IS: columns west to east; OS: PEs row-major)
   are visited so that every fault that can change a region's outputs lies in the region itself
   or was already explained in an earlier one. While a region's predicted outputs differ from the
   observed ones, the single stuck bit of the region (any PE, register, bit, value) that leaves
   the fewest differing output bits is added; ties go to the candidate that best explains all
   outputs (an act fault also explains the columns east of it). When no single bit helps, pairs
   are tried from the best few.
2. Aliases: each located bit is swapped for every other bit of its region; a swap that still
   reproduces every observed output makes the two an alias group.
3. Refinement: seeded random test GEMMs are applied until every group has one member left (or
   the budget ends); a refinement that contradicts the hypothesis restarts step 1 with all tests.
"""
from __future__ import annotations

import numpy as np

from sysarray.config import ArrayConfig
from sysarray.diagnosis.model import Candidates, enumerate_candidates, hamming32, mismatch_score
from sysarray.faults import FaultMap

Record = tuple[int, int, int, int, int]  # row, col, register code, bit, value
_TIE_LIMIT = 48  # tied candidates scored on all outputs; beyond this the first ones (by row, register, bit) win
_PAIR_SEEDS = 12  # best single candidates extended to pairs when no single one helps
_RESTARTS = 12  # first bits the greedy path restarts from when it ends short


def without(hyp: FaultMap, rec: Record) -> FaultMap:
    """``hyp`` less the bit ``rec``."""
    keep = [r for r in hyp.records.tolist() if tuple(r) != tuple(rec)]
    return FaultMap.from_records(hyp.rows, hyp.cols, np.array(keep, dtype=np.int64).reshape(-1, 5))


def _with(hyp: FaultMap, rec: Record) -> FaultMap:
    return FaultMap.from_records(hyp.rows, hyp.cols, np.concatenate([hyp.records, np.array([rec], dtype=np.int64)]))


def _index_of(cand: Candidates, rec: Record) -> np.ndarray:
    """Indices of ``rec`` among the candidates (empty or one)."""
    return np.flatnonzero((cand.row == rec[0]) & (cand.col == rec[1]) & (cand.reg == rec[2]) & (cand.bit == rec[3])
                          & (cand.value == rec[4]))


def _distance(pred: list[np.ndarray], observed: list[np.ndarray]) -> int:
    return int(sum(int(hamming32(p, o).sum()) for p, o in zip(pred, observed)))


def explains(model, hyp: FaultMap, tests: list, observed: list[np.ndarray]) -> bool:
    """Whether the model predicts every observed output of every test for ``hyp``."""
    return all(np.array_equal(p, o) for p, o in zip(model.predict(hyp, tests), observed))


class Localizer:
    """Greedy explanation and alias search for one chip's observations (arrays in the model's
    orientation: one int64 output array per test)."""

    def __init__(self, cfg: ArrayConfig, model, tests: list, observed: list[np.ndarray]) -> None:
        self.cfg, self.model, self.tests, self.observed = cfg, model, tests, observed

    def _best(self, region, hyp: FaultMap, cand: Candidates, scores: np.ndarray) -> Record:
        """The lowest-scoring candidate; ties broken by the distance over all outputs."""
        tied = np.flatnonzero(scores == scores.min())
        if len(tied) == 1:
            return cand.record(int(tied[0]))
        best, best_d = None, None
        for i in tied[:_TIE_LIMIT]:
            rec = cand.record(int(i))
            d = _distance(self.model.predict(_with(hyp, rec), self.tests), self.observed)
            if best_d is None or d < best_d:
                best, best_d = rec, d
        return best

    def _pair(self, region, hyp: FaultMap, cand: Candidates, scores: np.ndarray, obs: np.ndarray, now: int):
        """The best pair of candidates of ``region`` when it beats ``now`` differing bits, else None."""
        best, best_score = None, now
        for i in np.argsort(scores, kind="stable")[:_PAIR_SEEDS]:
            first = cand.record(int(i))
            h1 = _with(hyp, first)
            c2 = enumerate_candidates(self.cfg, h1, self.model.region_pes(region))
            s2 = self.model.score(region, h1, c2, self.tests, obs)
            j = int(np.argmin(s2))
            if s2[j] < best_score:
                best, best_score = (first, c2.record(j)), int(s2[j])
                if best_score == 0:
                    break
        return best

    def _swap_pass(self, region, hyp: FaultMap, obs: np.ndarray, now: int) -> tuple[FaultMap, int]:
        """Replace each bit of ``region`` by the best bit given the others while that lowers the
        differing output bits (an early greedy pick can be wrong when a region holds several)."""
        pes = set(self.model.region_pes(region))
        improved = True
        while improved and now:
            improved = False
            for rec in map(tuple, hyp.records.tolist()):
                if (rec[0], rec[1]) not in pes:
                    continue
                rest = without(hyp, rec)
                cand = enumerate_candidates(self.cfg, rest, list(pes))
                scores = self.model.score(region, rest, cand, self.tests, obs)
                j = int(np.argmin(scores))
                if scores[j] < now:
                    hyp, now, improved = _with(rest, cand.record(j)), int(scores[j]), True
                    break
        return hyp, now

    def _greedy(self, region, hyp: FaultMap, obs: np.ndarray, forbid: Record | None = None,
                repair: bool = True) -> tuple[FaultMap, int]:
        """Add bits of ``region`` one at a time (swaps and pairs when stuck) until its outputs are
        reproduced or nothing helps; returns the map and its remaining score (0: explained).
        ``forbid``: a bit never added; ``repair``: try swaps and pairs when no single bit helps."""
        model, pes = self.model, self.model.region_pes(region)
        now = int(mismatch_score(model.region_outputs(region, model.predict(hyp, self.tests))[None], obs)[0])
        for _ in range(3 * len(pes) + 8):
            if now == 0:
                break
            cand = enumerate_candidates(self.cfg, hyp, pes)
            if not len(cand):
                break
            scores = model.score(region, hyp, cand, self.tests, obs)
            if forbid is not None:
                scores[_index_of(cand, forbid)] = np.iinfo(np.int64).max
            if scores.min() < now:
                hyp = _with(hyp, self._best(region, hyp, cand, scores))
            elif not repair:
                break
            else:
                swapped, after = self._swap_pass(region, hyp, obs, now)
                if after < now:
                    hyp = swapped
                else:
                    pair = self._pair(region, hyp, cand, scores, obs, now)
                    if pair is None:
                        break
                    hyp = _with(_with(hyp, pair[0]), pair[1])
            now = int(mismatch_score(model.region_outputs(region, model.predict(hyp, self.tests))[None], obs)[0])
        return hyp, now

    def explain(self) -> tuple[FaultMap, list]:
        """``(hypothesis, unexplained regions)``: step 1 of the module docstring. Where the greedy
        path ends short of an explanation, it is restarted from each of the best few first bits."""
        cfg, model = self.cfg, self.model
        hyp = FaultMap(cfg.rows, cfg.cols)
        unexplained = []
        for region in model.regions():
            obs = model.region_outputs(region, self.observed)
            if np.array_equal(model.region_outputs(region, model.predict(hyp, self.tests)), obs):
                continue
            found, left = self._greedy(region, hyp, obs)
            if left:
                cand = enumerate_candidates(cfg, hyp, model.region_pes(region))
                scores = model.score(region, hyp, cand, self.tests, obs)
                for i in np.argsort(scores, kind="stable")[:_RESTARTS]:
                    tried, rest = self._greedy(region, _with(hyp, cand.record(int(i))), obs)
                    if rest < left:
                        found, left = tried, rest
                    if not left:
                        break
            hyp = found
            if left:
                unexplained.append(region)
        return hyp, unexplained

    def region_of(self, rec: Record):
        """The region whose outputs a stuck bit at ``rec``'s PE reaches first."""
        r, c = rec[0], rec[1]
        return c if not isinstance(self.model.regions()[0], tuple) else (r, c)

    def in_region(self, hyp: FaultMap, region) -> tuple[Record, ...]:
        """The bits of ``hyp`` at PEs of ``region``."""
        pes = set(self.model.region_pes(region))
        return tuple(tuple(r) for r in hyp.records.tolist() if (r[0], r[1]) in pes)

    def aliases(self, hyp: FaultMap) -> dict[object, list[tuple[Record, ...]]]:
        """For each region with bits in ``hyp``: the sets of its bits that reproduce every
        observed output with the rest of ``hyp`` (``hyp``'s own set first). Alternatives come from
        swapping one bit for any other of the region, and from searching the region again with
        one bit forbidden (a different combination)."""
        groups: dict[object, list[tuple[Record, ...]]] = {}
        regions = []
        for rec in map(tuple, hyp.records.tolist()):
            region = self.region_of(rec)
            if region not in regions:
                regions.append(region)
        for region in regions:
            chosen = self.in_region(hyp, region)
            outside = hyp
            for rec in chosen:
                outside = without(outside, rec)
            obs = self.model.region_outputs(region, self.observed)
            sets = [chosen]
            for rec in chosen:
                rest = without(hyp, rec)
                cand = enumerate_candidates(self.cfg, rest, self.model.region_pes(region))
                scores = self.model.score(region, rest, cand, self.tests, obs)
                for i in np.flatnonzero(scores == 0):
                    alt = tuple(sorted(set(chosen) - {rec} | {cand.record(int(i))}))
                    if alt not in sets and explains(self.model, with_all(outside, alt), self.tests, self.observed):
                        sets.append(alt)
                found, left = self._greedy(region, outside, obs, forbid=rec, repair=False)
                alt = self.in_region(found, region)
                if not left and alt not in sets and explains(self.model, found, self.tests, self.observed):
                    sets.append(alt)
            groups[region] = sets
        return groups


def with_all(hyp: FaultMap, recs) -> FaultMap:
    """``hyp`` with the bits ``recs`` added."""
    return FaultMap.from_records(hyp.rows, hyp.cols, np.concatenate(
        [hyp.records, np.array(list(recs), dtype=np.int64).reshape(-1, 5)]))
