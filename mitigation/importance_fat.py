"""Importance-guided fault-aware training (ISimDL's second use; docs/importance.md, step 5).

ISimDL draws faults with its importance sampler, keeps those that turn out critical, and injects
them during training, so the training sees the faults that matter instead of mostly harmless
random ones. Here the faults are single stuck bits on the chip and the training is the stuck-at FAT
of :func:`mitigation.fat.stuckat_fat` (forward on the chip's exact fast engine, straight-through
gradients), whose batches alternate over the given fault maps. :func:`found_critical` picks the
sampler's distinct critical draws, :func:`one_fault_maps` makes them maps and :func:`guided_fat`
does both and trains. At an equal number of maps and epochs the optimizer steps, and so the
training cost, are those of random-fault FAT on faults drawn uniformly from the same space
(:func:`uniform_faults`), its baseline.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from mitigation.importance import FaultSpace, draw


def fault_map_of(space: FaultSpace, records: np.ndarray) -> Any:
    """One :class:`sysarray.FaultMap` holding every fault of the (n, 5) ``records``."""
    from sysarray import FaultMap
    from sysarray.faults import REGISTER_ORDER

    fm = FaultMap(space.rows, space.cols)
    for r, c, g, b, v in np.asarray(records, dtype=np.int64).reshape(-1, 5).tolist():
        fm = fm.add(row=r, col=c, register=REGISTER_ORDER[g].value, bit=b, value=v)
    return fm


def one_fault_maps(space: FaultSpace, index: np.ndarray) -> list:
    """One one-fault :class:`sysarray.FaultMap` per fault index."""
    return [fault_map_of(space, space.records(np.array([f]))) for f in np.asarray(index, dtype=np.int64).tolist()]


def found_critical(index: np.ndarray, critical: np.ndarray, n_maps: int) -> np.ndarray:
    """Up to ``n_maps`` distinct critical faults among the draws ``index`` (``critical`` their
    flags), in order of first draw."""
    index = np.asarray(index, dtype=np.int64)
    crit = np.asarray(critical, dtype=bool)
    if index.shape != crit.shape:
        raise ValueError(f"found_critical needs one critical flag per draw. Got {crit.shape} flags for "
                         f"{index.shape} draws instead.")
    return np.array(list(dict.fromkeys(index[crit].tolist()))[:int(n_maps)], dtype=np.int64)


def uniform_faults(space: FaultSpace, n_maps: int, seed: int) -> np.ndarray:
    """``n_maps`` distinct faults drawn uniformly from ``space`` with ``seed`` (random-fault FAT's maps)."""
    return np.random.default_rng(seed).choice(space.size, size=min(int(n_maps), space.size), replace=False)


def guided_fat(model: Any, program: Any, cfg: Any, space: FaultSpace, q: np.ndarray,
               critical_of: Callable[[np.ndarray], np.ndarray], budget: int, n_maps: int, x: Any, y: Any,
               epochs: float, seed: int = 0, **fat_options: Any) -> tuple[Any, Any, list]:
    """Draw ``budget`` faults from ``q`` (seeded), keep up to ``n_maps`` distinct critical ones and
    run stuck-at FAT on them (:func:`mitigation.fat.stuckat_fat`, options ``fat_options``).

    Returns ``(model, RetrainResult, maps)``; raises ValueError when no draw was critical.
    """
    from mitigation.fat import stuckat_fat

    index = draw(q, budget, np.random.default_rng(seed))
    maps = one_fault_maps(space, found_critical(index, critical_of(index), n_maps))
    if not maps:
        raise ValueError(f"guided_fat found no critical fault in {budget} draws: nothing to train on.")
    trained, res = stuckat_fat(model, program, cfg, maps, x, y, epochs, seed=seed, **fat_options)
    return trained, res, maps


def mean_accuracy(program: Any, images: Any, labels: Any, cfg: Any, maps: Sequence[Any]) -> float:
    """Mean test accuracy of ``program`` over the chips ``cfg`` + each of ``maps``."""
    accs = [program.run(images, cfg, faults=fm, count_changes=False).accuracy(labels) for fm in maps]
    return float(np.mean(accs))


__all__ = ["fault_map_of", "found_critical", "guided_fat", "mean_accuracy", "one_fault_maps", "uniform_faults"]
