"""``diagnose``: apply test GEMMs to a black-box chip and reconstruct its fault map
(docs/diagnosis.md).

The chip is only ever asked for GEMM outputs: an oracle ``(a, w) -> y`` with ``a`` (M, K) and
``w`` (K, N) int8 numpy arrays and ``y`` (M, N) int32. The fault-free array and candidate maps
are simulated freely (the test floor's fault simulator): the candidate model to search, the
project's engine (:class:`sysarray.Chip`) to confirm.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from sysarray.config import ArrayConfig, Dataflow
from sysarray.diagnosis.locate import Localizer, with_all, without, explains
from sysarray.diagnosis.model import model_for
from sysarray.diagnosis.patterns import TestGemm, fixed_tests, random_test
from sysarray.diagnosis.report import Diagnosis, as_fault, masked_sites
from sysarray.faults import FaultMap
from sysarray.timing import fold_cycles, gemm_timing
from sysarray.validation import check_instance, check_int, check_seed

Oracle = Callable[[np.ndarray, np.ndarray], np.ndarray]
TILE_STREAM = 3136  # 56 x 56 output pixels: an inference layer's stream length (ResNet's first stage)
_ATTEMPTS = 3  # explain, refine, and explain again with every test when a refinement contradicts


def chip_oracle(chip) -> Oracle:
    """A black-box oracle of a :class:`sysarray.Chip`: only its ``gemm`` is called."""
    import torch

    def gemm(a: np.ndarray, w: np.ndarray) -> np.ndarray:
        y, _ = chip.gemm(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int8)),
                         torch.from_numpy(np.ascontiguousarray(w, dtype=np.int8)))
        return y.numpy().astype(np.int32)

    return gemm


def engine_outputs(cfg: ArrayConfig, faults: FaultMap, tests: list[TestGemm]) -> list[np.ndarray]:
    """The project's engine on ``tests`` for a chip with ``faults``: (M, N) int32 per test."""
    from sysarray.chip import Chip

    return [chip_oracle(Chip(cfg, faults))(t.a, t.w) for t in tests]


def _query(oracle: Oracle, test: TestGemm) -> np.ndarray:
    y = np.asarray(oracle(test.a.astype(np.int8), test.w.astype(np.int8)))
    expected = (test.a.shape[0], test.w.shape[1])
    if y.shape != expected or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"The chip oracle must return an ({expected[0]}, {expected[1]}) integer array for a "
                         f"{test.a.shape} x {test.w.shape} GEMM. Got {y.dtype} {y.shape} instead.")
    return y.astype(np.int32)


def _region_name(region) -> str:
    return f"PE ({region[0]}, {region[1]})" if isinstance(region, tuple) else f"column {region}"


def diagnose(oracle: Oracle, config: ArrayConfig, *, seed: int = 0, refinements: int = 8,
             tile_stream: int = TILE_STREAM) -> Diagnosis:
    """Reconstruct the fault map of a chip of ``config`` from the outputs of test GEMMs.

    oracle: the chip as a black box, ``(a, w) -> y`` (``a`` (M, K), ``w`` (K, N) int8 numpy,
    ``y`` (M, N) int32), or a :class:`sysarray.Chip` (only its ``gemm`` is used). config: the
    array (geometry, dataflow, psum width); bypass must be off. seed: the OS patterns and the
    refinement tests. refinements: at most this many adaptive random test GEMMs (0: fixed tests
    only). tile_stream: the stream length of the reference tile that ``tile_share`` divides by.
    """
    where = "diagnose"
    check_instance(config, ArrayConfig, "config", where)
    seed = check_seed(seed, where)
    refinements = check_int(refinements, "refinements", where, lo=0, hi=1000)
    tile_stream = check_int(tile_stream, "tile_stream", where, lo=1)
    if config.bypass:
        raise ValueError("diagnose needs an array without bypass: a bypassed PE's stuck bits change nothing, so "
                         "only the faulty PE, never its register or bit, could be found. Got bypass=True.")
    if hasattr(oracle, "gemm"):
        oracle = chip_oracle(oracle)
    elif not callable(oracle):
        raise TypeError(f"The 'oracle' argument of {where} must be a callable (a, w) -> y or a Chip. "
                        f"Got {type(oracle).__name__} instead.")

    model = model_for(config)
    tests: list[TestGemm] = list(fixed_tests(config, seed))
    raw = [_query(oracle, t) for t in tests]
    observed = [t.normalise(y, config).astype(np.int64) for t, y in zip(tests, raw)]
    used = 0
    hyp, unexplained, groups = FaultMap(config.rows, config.cols), [], {}
    for _ in range(_ATTEMPTS):
        loc = Localizer(config, model, tests, observed)
        hyp, unexplained = loc.explain()
        for rec in map(tuple, hyp.records.tolist()):  # a bit whose removal changes no prediction is not evidenced
            if explains(model, without(hyp, rec), tests, observed):
                hyp = without(hyp, rec)
        groups = loc.aliases(hyp)
        contradicted = False
        while used < refinements and any(len(g) > 1 for g in groups.values()):
            test = random_test(config, seed, used)
            used += 1
            tests.append(test)
            y = _query(oracle, test)
            raw.append(y)
            observed.append(test.normalise(y, config).astype(np.int64))
            new_groups = {}
            for region, sets in groups.items():
                outside = hyp
                for rec in loc.in_region(hyp, region):
                    outside = without(outside, rec)
                keep = [alt for alt in sets if explains(model, with_all(outside, alt), tests, observed)]
                if not keep:
                    contradicted = True
                    break
                new_groups[region] = keep
                hyp = with_all(outside, keep[0])
            if contradicted:
                break
            groups = new_groups
        if not contradicted and explains(model, hyp, tests, observed):
            break

    # confirmation: the project's engine must reproduce every observed output bit for bit
    simulated = engine_outputs(config, hyp, tests)
    bad_regions = set()
    for t, sim, y in zip(tests, simulated, raw):
        diff = t.normalise(sim != y, config)
        if config.dataflow is Dataflow.OS:
            bad_regions.update(map(tuple, np.argwhere(diff).tolist()))
        else:
            bad_regions.update(np.flatnonzero(diff.any(axis=0)).tolist())
    confirmed = not bad_regions and not unexplained
    withheld = set(unexplained) | bad_regions
    certain, aliased = set(), []
    for region, sets in groups.items():
        common = set(sets[0]).intersection(*map(set, sets[1:]))
        certain |= common
        if len(sets) > 1:
            aliased.append(tuple(as_fault(m) for m in sorted(set().union(*map(set, sets)) - common)))
    aliased = tuple(aliased)

    def region_of(rec) -> object:
        return (rec[0], rec[1]) if config.dataflow is Dataflow.OS else rec[1]

    located = [r for r in hyp.records.tolist() if tuple(r) in certain and region_of(r) not in withheld]
    faults = FaultMap.from_records(config.rows, config.cols, np.array(located, dtype=np.int64).reshape(-1, 5))
    stats = [gemm_timing(t.a.shape[0], t.a.shape[1], t.w.shape[1], config) for t in tests]
    return Diagnosis(
        config=config, faults=faults, hypothesis=hyp, aliased=aliased,
        undetectable=tuple(masked_sites(hyp, config)),
        unexplained=tuple(_region_name(r) for r in sorted(withheld, key=lambda r: (isinstance(r, tuple), r))),
        confirmed=confirmed, tests=len(tests), refinement_tests=used,
        cycles=int(sum(s.cycles for s in stats)), macs=int(sum(s.macs for s in stats)),
        tile_cycles=int(fold_cycles(tile_stream, config)), tile_stream=tile_stream,
        test_kinds=tuple(t.kind for t in tests),
    )
